"""A new user's models and inputs the earlier audits had not tried: model files saved every way
torch saves them, structured inputs/outputs, unused inputs, NaN/inf outputs, the user's model left
in its own train/eval state, bundle names, SIGTERM mid-export, strict --json, a re-saved model dir.
Each test was a bug found by running the CLI/API on such a model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgekit
from edgekit.core.errors import BundleError, UsageError
from tests.conftest import run_cli


class Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 3)

    def forward(self, x):
        return self.l(x)


class DictIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 3)

    def forward(self, batch):
        return self.l(batch["a"]) + batch["b"]


NT = namedtuple("NT", ["probs", "logits"])


class NTOut(Lin):
    def forward(self, x):
        f = self.l(x)
        return NT(f.softmax(-1), f)


class UnusedFirst(Lin):
    def forward(self, mask, x):  # `mask` is never read: the ONNX exporters drop such inputs
        return self.l(x)


class BNDrop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn, self.d = nn.BatchNorm1d(4), nn.Dropout(0.5)

    def forward(self, x):
        return self.d(self.bn(x))


def test_dict_example_input_is_one_clear_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"example input 'batch' is a dict \(keys \['a', 'b'\]\).*wrap the model"):
        edgekit.export(DictIn(), ({"a": torch.randn(2, 4), "b": torch.randn(2, 3)},), out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_namedtuple_outputs_are_named_after_their_fields(tmp_path):
    b = edgekit.export(NTOut(), torch.randn(2, 4), out=tmp_path)
    assert [o.name for o in b.manifest.outputs] == ["probs", "logits"]
    out = edgekit.load(b.root).run({"x": np.ones((2, 4), np.float32)})
    np.testing.assert_allclose(out["probs"].sum(-1), 1.0, rtol=1e-5)


def test_export_leaves_the_users_model_in_its_own_mode(tmp_path):
    m = BNDrop().train()
    m.d.eval()  # a mixed state must come back exactly
    edgekit.export(m, torch.randn(3, 4), out=tmp_path)
    assert m.training and m.bn.training and not m.d.training


def test_unused_input_stays_an_input_of_the_onnx_artifact(tmp_path):
    import onnx

    b = edgekit.export(UnusedFirst(), (torch.randn(5, 7), torch.randn(2, 4)), out=tmp_path,
                       dynamic={"x": {0: "batch"}}, precision="fp32,fp16")
    assert all(a.status == "ok" for a in b.manifest.artifacts), [a.status_reason for a in b.manifest.artifacts]
    g = onnx.load(str(b.path(b.find("onnx", precision="fp32")))).graph
    assert [i.name for i in g.input] == ["mask", "x"]
    assert [d.dim_param or d.dim_value for d in g.input[1].type.tensor_type.shape.dim] == ["batch", 4]
    out = edgekit.load(b.root, backend="onnxruntime").run({"mask": np.zeros((5, 7), np.float32),
                                                           "x": np.ones((3, 4), np.float32)})
    assert out["output"].shape == (3, 3)


@pytest.mark.parametrize("ref, got, ok", [
    ([-np.inf, 1.0], [-np.inf, 5.0], False),   # before: one -inf made the tolerance inf, so this passed
    ([-np.inf, 1.0], [-np.inf, 1.0], True),
    ([np.nan, 1.0], [0.0, 1.0], False),        # before: NaN differences were skipped
    ([np.nan, 1.0], [np.nan, 1.0], True),
    ([np.inf, 1.0], [-np.inf, 1.0], False),
    ([1.0, 2.0], [np.nan, 2.0], False),
])
def test_validation_with_nan_or_inf_in_the_reference(ref, got, ok):
    from edgekit.exporters.validate import compare

    v = compare([{"y": np.array(ref, np.float32)}], [{"y": np.array(got, np.float32)}], "fp32")
    assert v.passed is ok
    assert np.isfinite(v.tolerance) and v.tolerance == pytest.approx(1e-4 * 2.0 if ref[0] == 1.0 else 1e-4)


def test_json_output_is_strict_json(capsys):
    from edgekit.cli import output as cli

    cli.emit_json({"a": float("nan"), "b": np.array([1.0, np.inf, -np.inf]), "c": np.float32(2.5), "d": [np.int64(3)]})
    text = capsys.readouterr().out
    d = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON literal {c}"))
    assert d == {"a": None, "b": [1.0, None, None], "c": 2.5, "d": [3]}


def test_manifest_that_is_not_an_object_is_a_bundle_error(tmp_path):
    (tmp_path / "b.edgekit").mkdir()
    (tmp_path / "b.edgekit" / "manifest.json").write_text("[]")
    with pytest.raises(BundleError, match="holds a JSON list, not a bundle manifest"):
        edgekit.load(tmp_path / "b.edgekit")


@pytest.mark.parametrize("name", ["../escape", "a/b", ".", ".hidden", "..", " x"])
def test_bundle_names_must_stay_inside_out(tmp_path, name):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="is not a plain file name"):
        edgekit.export(Lin(), torch.randn(2, 4), out=out, name=name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []  # nothing written, inside or outside


def test_explicit_targets_take_the_precisions_they_support():
    from edgekit.exporters.targets import resolve_targets

    assert [t.name for t in resolve_targets("onnx,openvino", ["fp16", "int8"])] == ["onnx", "openvino"]
    with pytest.raises(UsageError, match="target onnx does not support precision int8w"):
        resolve_targets("onnx", ["int8w"])


# ------------------------------------------------------------------ model files: .pt / .pth
def test_torchscript_pickled_module_and_state_dict_files(tmp_path, monkeypatch):
    from edgekit.models.resolve import resolve

    m, x = Lin().eval(), torch.randn(2, 4)
    torch.jit.trace(m, x).save(str(tmp_path / "traced.pt"))
    torch.jit.script(m).save(str(tmp_path / "scripted.pth"))
    torch.save(m.state_dict(), tmp_path / "weights.pt")
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    subprocess.run([sys.executable, "-c", "import torch\nclass Net(torch.nn.Linear): pass\n"
                    "torch.save(Net(4, 3), 'script_model.pt')"], cwd=tmp_path, check=True)
    for f in ("traced.pt", "scripted.pth"):
        with pytest.raises(UsageError, match="without example inputs.*--input"):
            resolve(str(tmp_path / f))
        src = resolve(str(tmp_path / f), ["x:2x4"], ["x:0=batch"])
        b = edgekit.export(src, targets="onnx", out=tmp_path / "out")
        a = b.find("onnx")
        assert a.status == "ok" and a.extra["exporter"] == "torchscript", a.status_reason
        got = edgekit.load(b.root).run({"x": np.ones((5, 4), np.float32)})["output"]
        np.testing.assert_allclose(got, m(torch.ones(5, 4)).detach().numpy(), atol=1e-5)
    for f, msg in [("weights.pt", "holds a state_dict .*package.module:function"),
                   ("other.pt", "holds a dict, not a model"), ("junk.pt", "not a file torch.load can read"),
                   ("script_model.pt", r"cannot be imported .*defined in the script that saved it \(__main__\)"),
                   ("missing.pth", "does not exist")]:
        with pytest.raises(edgekit.core.errors.EdgekitError, match=msg):
            resolve(str(tmp_path / f), ["x:2x4"])


def test_cli_exports_a_pickled_module_from_a_path_with_spaces(tmp_path):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__(); self.l = nn.Linear(4, 3)
            def forward(self, x):
                return self.l(x)
    """))
    subprocess.run([sys.executable, "-c", "import torch, mymodels; torch.save(mymodels.Net(), 'my model.pt')"],
                   cwd=tmp_path, check=True)
    r = run_cli("export", "my model.pt", "--input", "x:2x4", "-t", "onnx", "--no-bench", "--json", "--out", "o",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["bundle"] == "o/my model.edgekit" and d["artifacts"][0]["status"] == "ok"
    r = run_cli("export", "my model.pt", "-t", "onnx", "--no-bench", "--out", "o", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == ("edgekit: error: my model.pt gives a module without example inputs "
                                                "(fix: pass --input NAME:SHAPE[:DTYPE] for each input)")


# ------------------------------------------------------------------ SIGTERM mid-export
def test_sigterm_mid_export_leaves_nothing_behind(tmp_path):
    """`kill` (SIGTERM) used to end the process with the hidden staging bundle in --out and the
    work directory in $TMPDIR left behind (only Ctrl-C unwound)."""
    (tmp_path / "slow.py").write_text(textwrap.dedent("""
        import time, pathlib, torch
        class Slow(torch.nn.Module):
            calls = 0
            def forward(self, x):
                Slow.calls += 1
                if Slow.calls == 2:   # the first reference case: the bundle is being staged
                    pathlib.Path("staging").touch()
                    time.sleep(60)
                return x * 2
        def make():
            return Slow(), torch.randn(2, 3)
    """))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "edgekit", "export", "slow:make", "-t", "onnx", "--no-bench",
                          "--out", "out"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        deadline = time.time() + 40
        while not (tmp_path / "staging").exists():
            assert p.poll() is None and time.time() < deadline, p.communicate()
            time.sleep(0.1)
        assert any(d.name.endswith(".tmp") for d in (tmp_path / "out").iterdir())  # staged, not committed
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143 and err.strip().splitlines()[-1] == "edgekit: terminated"
    assert list((tmp_path / "out").iterdir()) == []
    assert [d.name for d in tmpdir.iterdir() if d.name.startswith("edgekit-")] == []


# ------------------------------------------------------------------ token gating: a re-saved model dir
def test_tokengate_cache_key_follows_the_model_directory_content(tmp_path):
    """The ungated fine-tune cache was keyed on the model directory's path: re-saving another model
    into the same directory reused the old fine-tune (a state_dict error, or silently stale weights)."""
    from edgekit.tokengate.checkpoint import _cache_key

    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text('{"hidden_size": 32}')
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    k1 = _cache_key(d, None, 64)
    assert _cache_key(d, None, 64) == k1
    (d / "model.safetensors").write_bytes(b"\1" * 64)
    k2 = _cache_key(d, None, 64)
    (d / "config.json").write_text('{"hidden_size": 48}')
    assert len({k1, k2, _cache_key(d, None, 64)}) == 3


# ------------------------------------------------------------------ run counts, torch tensors as feeds
@pytest.mark.parametrize("args, msg", [
    (["bench", "{b}", "--iters", "0"], "--iters 0: at least one timed run is needed"),
    (["bench", "{b}", "--batch", "0"], "--batch 0: a batch needs at least one sample"),
    (["bench", "{b}", "--warmup", "-1"], "--warmup -1 is negative"),
    (["export", "builtin:digits-cnn", "-t", "onnx", "--iters", "-3", "--out", "{o}"], "--iters -3"),
])
def test_run_counts_are_checked_before_any_work(digits_bundle, tmp_path, args, msg):
    """--iters 0 / --batch 0 used to end in an internal IndexError (after the whole export)."""
    r = run_cli(*[a.format(b=digits_bundle, o=tmp_path / "o") for a in args])
    assert r.returncode == 1 and r.stdout == "" and "internal error" not in r.stderr
    assert msg in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


def test_session_takes_torch_tensors_even_ones_that_require_grad(tmp_path):
    m = Lin()
    b = edgekit.export(m, torch.randn(2, 4), out=tmp_path, dynamic={"x": {0: "batch"}})
    x = torch.randn(3, 4, requires_grad=True)
    got = edgekit.load(b.root).run({"x": x})["output"]
    np.testing.assert_allclose(got, m(x).detach().numpy(), atol=1e-5)


# ------------------------------------------------------------------ token gating: users' text files
ODD = ["good film\nreally good", "odd\u2028line separator", "nel\x85char", "tab\x0bvtab", "x", "y"]


def test_text_files_keep_rows_whole_and_read_semicolon_csv(tmp_path):
    """Rows were split with str.splitlines(), which also breaks at U+2028/U+0085/\\x0b (in users' texts,
    and written raw by json.dumps(ensure_ascii=False)); a ';'-separated CSV (spreadsheet export) was
    read as one column."""
    import csv

    from edgekit.tokengate.text_files import load_text_dataset
    from edgekit.core.errors import DataError

    rows = [(t, ["pos", "neg"][i % 2]) for i, t in enumerate(ODD)] * 4
    for name, delim in (("d.csv", ","), ("semi.csv", ";")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow(["text", "label"])
            w.writerows(rows)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t, "label": y}, ensure_ascii=False)
                                                for t, y in rows), encoding="utf-8")
    for name in ("d.csv", "semi.csv", "d.jsonl"):
        ds = load_text_dataset(tmp_path / name)
        assert sorted(ds["train"][0] + ds["dev"][0] + ds["test"][0]) == sorted(t for t, _ in rows), name
        assert ds["labels"] == ["neg", "pos"]
    with pytest.raises(DataError, match="is a directory, not a data file"):
        load_text_dataset(tmp_path)


@pytest.mark.parametrize("kwargs, msg", [
    ({"knob": float("nan")}, "--knob must be a number >= 0, got nan"),
    ({"max_len": 0}, "--max-len must be >= 2"),            # was an IndexError inside the embedding
    ({"steps": -5}, "--steps must be >= 0"),                # was an IndexError
    ({"hard_steps": -1}, "--hard-steps must be >= 0"),
    ({"limit": 0}, "--limit must be >= 1"),                 # was silently "no limit"
    ({"gate_lr": -1.0}, "--gate-lr must be > 0"),           # was accepted
    ({"kd": -0.5}, "--kd must be >= 0"),
])
def test_tokengate_train_arguments_are_checked_first(kwargs, msg):
    from edgekit.tokengate.checkpoint import train_checkpoint

    args = {"knob": 2.0, **kwargs}
    with pytest.raises(UsageError, match=msg):
        train_checkpoint(args.pop("knob"), model="/nonexistent-model-dir", data="/nonexistent.csv", **args)


def test_a_file_in_the_way_of_out_is_one_clear_error(digits_bundle, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(UsageError, match="output directory .*afile/sub.* a file is in the way"):
        edgekit.export(Lin(), torch.randn(2, 4), out=tmp_path / "afile" / "sub")
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    r = run_cli("run", digits_bundle, "--input", tmp_path / "x.npy", "--output", tmp_path / "afile" / "o.npz")
    assert r.returncode == 1 and "internal error" not in r.stderr  # was: internal error: FileExistsError
    assert r.stderr.strip().splitlines()[-1].startswith("edgekit: error: ") and "afile" in r.stderr
