"""A new user's journey through the CLI and the API: checks before slow work, errors as one line (or
one JSON object under --json), choices said aloud (replaced bundles, the backend/precision/artifact a
run used), progress where it takes long and quiet elsewhere, third-party chatter captured. The CLI
runs in a subprocess, as a user runs it."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import edgekit
from edgekit.core.notices import EdgekitWarning
from edgekit.core.version import __version__
from tests.conftest import REPO, assert_user_error, run_cli
from tests.fixtures.models import tiny_mlp

MODELS = textwrap.dedent("""
    import torch
    class Boom(torch.nn.Module):
        def forward(self, x):
            raise ValueError("my forward is broken")
    def boom():
        return Boom(), torch.randn(2, 3)
""")


# ------------------------------------------------------------------ checks first, one line each
def test_wrong_input_shape_is_one_line_naming_input_before_any_work(tmp_path):
    """A wrong --input shape ended as "internal error" (exit 70): the default benchmark ran first."""
    r = run_cli("export", "tests.fixtures.models:tiny_mlp", "--input", "x:1x5", "--out", tmp_path / "o", cwd=REPO)
    assert_user_error(r, "the model fails on --input x:1x5", "mat1 and mat2 shapes", "fix: give each input the shape")
    assert r.stderr.count("\n") == 1  # in a pipe: no progress, no library chatter, just the error
    assert not (tmp_path / "o").exists()


def test_wrong_input_dtype_and_a_raising_forward_are_usage_errors(tmp_path):
    from edgekit.core.errors import UsageError
    from edgekit.models.resolve import check_runs, resolve

    src = resolve("tests.fixtures.models:tiny_mlp", ["x:1x6:int64"])
    with pytest.raises(UsageError, match=r"fails on --input x:1x6:int64 \(RuntimeError: .*dtype"):
        check_runs(src, ["x:1x6:int64"])
    (tmp_path / "mine.py").write_text(MODELS)
    r = run_cli("export", "mine.py:boom", "-t", "onnx", "--out", "o", cwd=tmp_path)
    assert_user_error(r, "the model fails on its own example inputs x:2x3:float32",
                      "ValueError: my forward is broken", "fix: fix the model's forward")
    assert not (tmp_path / "o").exists()


def test_int8_without_calibration_fails_before_the_export(tmp_path):
    r = run_cli("export", "tests.fixtures.models:tiny_mlp", "--input", "x:1x6", "-t", "openvino", "-p", "int8",
                "--out", tmp_path / "o", cwd=REPO)
    assert_user_error(r, "int8 needs calibration data", "fix: pass --calib DATA.npz")
    assert not (tmp_path / "o").exists()  # nothing exported, nothing benchmarked


def test_missing_model_path_does_not_exist(tmp_path):
    r = run_cli("export", "my_model_dir/", "--out", tmp_path / "o", cwd=tmp_path)
    assert_user_error(r, "MODEL 'my_model_dir/' does not exist", "builtin:NAME")


def test_version_and_global_flags_anywhere():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"edgekit {__version__}" and r.stderr == ""
    r = run_cli("models", "--verbose", "--json")
    assert r.returncode == 0 and any(m["default"] for m in json.loads(r.stdout))


# ------------------------------------------------------------------ --json: errors are JSON too
def test_json_errors_are_one_object_on_stdout(tmp_path, capsys, monkeypatch):
    r = run_cli("info", tmp_path / "nope.edgekit", "--json")
    assert r.returncode == 1 and r.stderr == ""
    assert json.loads(r.stdout) == {"error": f"bundle '{tmp_path / 'nope.edgekit'}' does not exist",
                                    "fix": "check the path; `edgekit export` prints where it wrote the bundle",
                                    "type": "MissingFileError", "exit_code": 1}
    r = run_cli("info", "--json", "--bogus")  # a usage error, click's own
    assert r.returncode == 2 and r.stderr == ""
    d = json.loads(r.stdout)
    assert d["type"] == "UsageError" and "--bogus" in d["error"] and d["fix"] == "see edgekit info --help"
    # an internal error (a bug): still one object, exit 70
    from edgekit.cli import main
    from edgekit.models import registry

    monkeypatch.setattr(registry, "DESCRIPTIONS", None)  # `edgekit models` now hits an AttributeError
    with pytest.raises(SystemExit) as e:
        main.main(["models", "--json"])
    assert e.value.code == 70
    d = json.loads(capsys.readouterr().out)
    assert d["type"] == "InternalError" and d["exit_code"] == 70 and d["error"].startswith("AttributeError: ")


# ------------------------------------------------------------------ choices are said
def test_run_says_backend_precision_and_artifact(digits_bundle, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    r = run_cli("run", digits_bundle, "--input", tmp_path / "x.npy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (f"backend onnxruntime, precision fp32, artifact {digits_bundle / 'main.onnx'} "
                                        "(ok, device CPUExecutionProvider)")
    r = run_cli("run", digits_bundle, "--input", tmp_path / "x.npy", "--precision", "fp32", "--json")
    ran = json.loads(r.stdout)["ran"]
    assert ran == [{"graph": "main", "backend": "onnxruntime", "precision": "fp32", "status": "ok",
                    "artifact": str(digits_bundle / "main.onnx"), "device": "CPUExecutionProvider",
                    "threads": os.environ.get("EDGEKIT_THREADS")}]


def test_replacing_a_bundle_needs_force_and_is_said(tmp_path):
    """Re-exporting replaced a bundle without a word; model.pt2 and model.onnx both wrote model.edgekit."""
    b = edgekit.export(tiny_mlp(), torch.randn(2, 6), out=tmp_path / "out", name="model")
    (tmp_path / "model.onnx").write_bytes((b.root / "main.onnx").read_bytes())
    with pytest.warns(EdgekitWarning, match=r"replacing .*model.edgekit: it holds bundle 'model' with 1 artifact"):
        edgekit.export(tiny_mlp(), torch.randn(2, 6), out=tmp_path / "out", name="model")  # the API warns
    r = run_cli("export", "model.onnx", "-t", "onnx", "--out", "out", cwd=tmp_path)
    assert_user_error(r, "out/model.edgekit already exists (bundle 'model' with 1 artifact(s): onnx/fp32)",
                      "fix: pass --force to replace it, or --name NEW / --out DIR")
    # --force on a terminal: the spinner names each stage, the warning says what was replaced
    code, out, tty = _on_a_terminal(["export", "model.onnx", "-t", "onnx", "--out", "out", "--force", "--iters", "3"],
                                    tmp_path)
    assert code == 0, tty[-2000:]
    assert ("edgekit: warning: replacing out/model.edgekit: it holds bundle 'model' with 1 artifact(s): onnx/fp32"
            in tty)
    # the spinner redraws ~10 times a second: the slow first stage always shows, quick later ones may not
    assert "resolving the model" in tty and "0:00:0" in tty, tty[-2000:]
    assert any(stage in tty for stage in ("running the model once", "computing reference outputs", "exporting onnx fp32",
                                          "validating onnx fp32", "side by side")), tty[-2000:]
    assert "edgekit: error" not in tty and "Warning" not in tty  # no library chatter
    assert "p50 ms" in out and "vs torch" not in out  # the "vs torch" column swung 7x-788x: gone from export
    assert json.loads((tmp_path / "out" / "model.edgekit" / "manifest.json").read_text())["metadata"]["source"] == \
        "model.onnx"


def _on_a_terminal(args: list[str], cwd) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (as in an interactive shell); stdout piped."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "edgekit", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=slave,
                         stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out = p.communicate(timeout=120)[0].decode()
    os.close(master)
    return p.returncode, out, seen.decode(errors="replace")


def test_validate_a_personalized_bundle_checks_it_and_ppp_names_agree(tmp_path):
    """validate said "skipped" with no reason and exit 0 on a torch-free personalized bundle; the two
    personalization paths named their bundles ppp-fashion-ppp and ppp_fashion-ppp."""
    from edgekit.runtimes.pipelines.ppp import personal_name, personalize_bundle

    from edgekit.data.fashion_mnist import load_digits
    from edgekit.ppp import personalize as ppp
    from edgekit.ppp.export import export_gated

    # the names both paths give: from the checkpoint file stem, and from the gated bundle's name
    assert personal_name("ppp_fashion") == personal_name("ppp-fashion-gated") == "ppp-fashion-ppp"
    g, _ = ppp.load_checkpoint(REPO / "edgekit/ppp/weights/ppp_digits.safetensors")
    x, _ = load_digits("test")
    np.savez(tmp_path / "me.npz", x=x[:16])
    gated = export_gated(g, {"labels": [str(i) for i in range(10)]}, tmp_path, name="ppp-digits-gated").root
    free = personalize_bundle(gated, tmp_path / "me.npz", tmp_path / "a", keep_ratio=0.5)["bundle"]
    assert os.path.basename(free) == "ppp-digits-ppp.edgekit"
    r = run_cli("validate", free, "--json")
    assert r.returncode == 0, r.stdout
    assert [a["result"] for a in json.loads(r.stdout)["artifacts"]] == ["pass"]


def test_validate_that_checks_nothing_fails_with_reasons(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    del m["files"]["validation/main.npz"]
    (bundle_copy / "validation" / "main.npz").unlink()
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    r = run_cli("validate", bundle_copy)
    assert r.returncode == 1 and "no reference outputs" in r.stdout
    assert r.stderr.strip().splitlines()[-1].startswith("edgekit: error: 1 artifact(s)/file(s) failed validation")


# ------------------------------------------------------------------ progress and noise
def test_vos_torch_backend_reports_frames_with_verbose(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from PIL import Image

    np.save(tmp_path / "v.npy", np.random.default_rng(0).integers(0, 255, (3, 24, 30, 3), dtype=np.uint8))
    m = np.zeros((24, 30), np.uint8)
    m[4:12, 4:14] = 1
    Image.fromarray(m).save(tmp_path / "m.png")
    r = run_cli("vos", tmp_path / "v.npy", "--mask", tmp_path / "m.png", "--out", tmp_path / "o", "--backend",
                "torch", "--no-gif", "--threads", "1", "--max-frames", "3", "--json", "--verbose")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == 3
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edgekit: ")]
    assert any("loading the PyTorch model" in ln for ln in lines)
    assert any(ln.endswith("segmenting: frame 3 of 3") for ln in lines), r.stderr


def test_noise_is_captured_unless_verbose(capfd, monkeypatch):
    from edgekit.core.notices import quiet_noise, warn

    monkeypatch.delenv("EDGEKIT_VERBOSE", raising=False)
    monkeypatch.delenv("EDGEKIT_DEBUG", raising=False)
    with pytest.warns(EdgekitWarning, match="a choice made for you"):  # edgekit's own warnings pass through
        with quiet_noise():
            os.write(1, b"C-level stdout chatter\n")
            os.write(2, b"C-level stderr chatter\n")
            print("python chatter")
            print("python stderr chatter", file=sys.stderr)
            warn("a choice made for you")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    monkeypatch.setenv("EDGEKIT_VERBOSE", "1")
    with quiet_noise():
        os.write(1, b"C-level stdout chatter\n")
        print("python chatter")
    out, err = capfd.readouterr()
    assert out == "" and "C-level stdout chatter" in err and "python chatter" in err  # stdout stays clean


def test_api_progress_default(monkeypatch, capsys):
    from edgekit.core import notices

    seen = []
    notices.stage_reporter(seen.append)("a stage")
    assert seen == ["a stage"]
    notices.stage_reporter(False)("silent")
    notices.stage_reporter(None)("not a terminal: silent")
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(notices._UserStream, "isatty", lambda self: True)
    notices.stage_reporter(None)("[main] exporting onnx fp32")
    assert capsys.readouterr().err == "edgekit: [main] exporting onnx fp32\n"
