"""Run user mistakes and odd models through the edgekit CLI, each in its own subprocess as a user
runs it, and write docs/audit.md: command -> exit code -> what the user sees -> verdict.

    python scripts/audit.py              # every case (a few minutes), rewrites docs/audit.md
    python scripts/audit.py --only ID    # some cases (comma list), printed, docs/audit.md untouched

A verdict is "ok" when the case behaves as the house rules say: a user mistake exits 1 (2 for a
command-line usage error) with one ``edgekit: error: ... (fix: ...)`` line, nothing on stdout and no
traceback (under --json: one JSON object {error, fix, type, exit_code} on stdout, nothing on
stderr); a working case exits 0. Anything else is "PROBLEM: ...". tests/cli/test_audit_doc.py
checks that docs/audit.md was written from the current case list.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "audit.md"


@dataclass(frozen=True)
class Case:
    id: str
    what: str
    args: tuple[str, ...]  # after `edgekit`; {b} = a good bundle, {bad} = a corrupt one
    expect: str            # "error" (exit 1), "usage" (exit 2), "json-error", "ok"
    needle: str = ""       # the line the user sees must contain this


E, U, J, OK = "error", "usage", "json-error", "ok"
TINY = ("models:tiny", "--input", "x:2x6")
CASES = (
    # ---- what to export
    Case("missing-onnx", "a model file that is not there", ("export", "nope.onnx"), E, "does not exist"),
    Case("missing-dir", "a model directory that is not there", ("export", "my_model/"), E, "does not exist"),
    Case("unknown-builtin", "a built-in that does not exist", ("export", "builtin:resnet"), E, "unknown built-in"),
    Case("bad-ref", "a module:function that cannot be imported", ("export", "nomodule:make"), E, "cannot import"),
    Case("not-a-module", "a function returning something else", ("export", "models:not_a_module"), E,
         "not a torch.nn.Module"),
    Case("no-example", "a pickled model without --input", ("export", "pickled.pt"), E, "--input"),
    Case("state-dict", "a state_dict instead of a model", ("export", "weights.pt", "--input", "x:2x6"), E,
         "state_dict"),
    Case("junk-pt", "a .pt file that is not a torch file", ("export", "junk.pt", "--input", "x:2x6"), E,
         "torch.load"),
    Case("junk-onnx", "an .onnx file that is not ONNX", ("export", "junk.onnx"), E, "not a readable ONNX"),
    # ---- arguments
    Case("bad-target", "an unknown target", ("export", *TINY, "-t", "tflite"), E, "unknown target"),
    Case("bad-precision", "an unknown precision", ("export", *TINY, "-p", "int4"), E, "int4"),
    Case("onnx-int8", "a precision the target lacks", ("export", *TINY, "-t", "onnx", "-p", "int8"), E,
         "does not support precision int8"),
    Case("bad-input-spec", "an --input that does not parse", ("export", "models:tiny", "--input", "x=2x6"), E,
         "cannot parse --input"),
    Case("bad-dynamic", "a --dynamic that does not parse", ("export", *TINY, "--dynamic", "x:batch"), E,
         "cannot parse --dynamic"),
    Case("bad-option", "an --option without a target", ("export", *TINY, "--option", "opset=17"), E,
         "cannot parse --option"),
    Case("iters-0", "--iters 0", ("export", *TINY, "--iters", "0"), E, "--iters 0"),
    Case("escaping-name", "a --name that leaves --out", ("export", *TINY, "--name", "../x"), E,
         "not a plain file name"),
    Case("out-is-file", "--out names a file", ("export", *TINY, "--out", "afile"), E, "is a file"),
    Case("calib-missing", "--calib names no file", ("export", *TINY, "-t", "openvino", "-p", "int8", "--calib",
                                                       "nope.npz"), E, "--calib nope.npz does not exist"),
    Case("unknown-flag", "an option that does not exist", ("export", "--bogus"), U, "No such option"),
    # ---- the model on its inputs (checked before any export)
    Case("wrong-shape", "an --input shape the model cannot take", ("export", "models:tiny", "--input", "x:2x5"), E,
         "fails on --input x:2x5"),
    Case("wrong-dtype", "an --input dtype the model cannot take", ("export", "models:tiny", "--input",
                                                                    "x:2x6:int64"), E, "fails on --input"),
    Case("forward-raises", "a model whose forward raises", ("export", "models:boom"), E,
         "fails on its own example inputs"),
    Case("int8-no-calib", "int8 without calibration data", ("export", *TINY, "-t", "openvino", "-p", "int8"), E,
         "int8 needs calibration data"),
    Case("exists", "exporting over an existing bundle", ("export", *TINY, "--name", "good", "--out", "b"), E,
         "already exists"),
    Case("collision", "model.onnx after model.pt2 (same bundle name)", ("export", "model.onnx", "--out", "b2"), E,
         "already exists"),
    Case("json-error", "a mistake under --json", ("export", "nope.onnx", "--json"), J, "does not exist"),
    # ---- bundles
    Case("info-missing", "info on a path that is not there", ("info", "nope.edgekit"), E, "does not exist"),
    Case("info-not-bundle", "info on a folder that is no bundle", ("info", "afolder"), E, "manifest"),
    Case("run-no-input", "run without inputs", ("run", "{b}"), E, "no inputs given"),
    Case("run-shape", "run with the wrong input shape", ("run", "{b}", "--input", "x5.npy"), E, "the model needs 6"),
    Case("run-dtype", "run with the wrong input dtype", ("run", "{b}", "--input", "xi.npy"), E, "dtype"),
    Case("run-backend", "run on a backend the bundle lacks", ("run", "{b}", "--input", "x.npy", "-b", "coreml"),
         E, "coreml"),
    Case("run-precision", "run at a precision the bundle lacks", ("run", "{b}", "--input", "x.npy", "-p",
                                                                   "int8"), E, "int8"),
    Case("corrupt", "validate a bundle with a corrupt artifact", ("validate", "{bad}"), E, "sha256"),
    Case("bench-iters", "bench --iters 0", ("bench", "{b}", "--iters", "0"), E, "--iters 0"),
    Case("personalize-not-ppp", "personalize a bundle not trained for PPP", ("personalize", "{b}", "--data",
                                                                              "personal.npz", "--out", "p"), E,
         "not trained for PPP"),
    Case("vos-missing", "vos on a video that is not there", ("vos", "nope.mp4", "--mask", "m.png", "--out", "v"),
         E, "nope.mp4"),
    # ---- working paths and odd models
    Case("version", "the version", ("--version",), OK, "edgekit "),
    Case("run-ok", "run a bundle: backend, precision, artifact said", ("run", "{b}", "--input", "x.npy"), OK,
         "backend onnxruntime, precision fp32"),
    Case("force", "--force replaces, with a warning", ("export", *TINY, "--name", "good", "--out", "b", "--force",
                                                       "-t", "onnx", "--no-bench"), OK, "good.edgekit"),
    Case("dict-out", "a model returning a dict", ("export", "models:dict_out", "-t", "onnx", "--no-bench"), OK,
         "dict_out.edgekit"),
    Case("two-inputs", "two inputs: float image + int64 ids", ("export", "models:two_in", "-t", "onnx",
                                                               "--no-bench"), OK, "two_in.edgekit"),
    Case("pt2", "a torch.export program", ("export", "model.pt2", "-t", "onnx", "--no-bench"), OK, "model.edgekit"),
)

MODELS = textwrap.dedent("""
    import torch
    from torch import nn

    def tiny():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    class Boom(nn.Module):
        def forward(self, x):
            raise ValueError("my forward is broken")

    def boom():
        return Boom(), torch.randn(2, 3)

    def not_a_module():
        return {"weights": 1}

    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 5)
        def forward(self, x):
            return {"scores": self.a(x), "probs": self.b(x).softmax(-1)}

    def dict_out():
        return DictOut(), torch.randn(2, 3)

    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.emb, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Embedding(50, 8), nn.Linear(8, 4)
        def forward(self, image, ids):
            return self.head(torch.relu(self.conv(image)).mean(dim=(2, 3)) + self.emb(ids).mean(dim=1))

    def two_in():
        return TwoIn(), (torch.randn(1, 3, 16, 16), torch.randint(0, 50, (1, 5)))
""")


def signature() -> str:
    """Changes whenever a case is added, removed or changed (docs/audit.md records it)."""
    return hashlib.sha256(json.dumps([[c.id, list(c.args), c.expect, c.needle] for c in CASES]).encode()).hexdigest()[:16]


def setup(work: Path) -> None:
    """The files the cases name: models, model files, a good and a corrupt bundle, inputs."""
    import numpy as np
    import torch

    import edgekit

    (work / "models.py").write_text(MODELS)
    sys.path.insert(0, str(work))
    import models  # noqa: E402 - the file just written

    torch.save(models.tiny(), work / "pickled.pt")
    torch.save(models.tiny().state_dict(), work / "weights.pt")
    (work / "junk.pt").write_bytes(b"not a torch file")
    (work / "junk.onnx").write_bytes(b"not onnx either")
    torch.export.save(torch.export.export(models.tiny(), (torch.randn(2, 6),)), work / "model.pt2")
    good = edgekit.export(models.tiny(), torch.randn(2, 6), targets="onnx", out=work / "b", name="good",
                          dynamic={"x": {0: "batch"}}, progress=False).root
    shutil.copyfile(good / "main.onnx", work / "model.onnx")
    edgekit.export(models.tiny(), torch.randn(2, 6), targets="onnx", out=work / "b2", name="model", progress=False)
    shutil.copytree(good, work / "bad.edgekit")
    blob = bytearray((work / "bad.edgekit" / "main.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (work / "bad.edgekit" / "main.onnx").write_bytes(bytes(blob))
    np.save(work / "x.npy", np.zeros((2, 6), np.float32))
    np.save(work / "x5.npy", np.zeros((2, 5), np.float32))
    np.save(work / "xi.npy", np.zeros((2, 6), np.int64))
    np.savez(work / "personal.npz", x=np.zeros((4, 6), np.float32))
    (work / "afile").write_text("")
    (work / "afolder").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(work / "m.png")


def verdict(case: Case, rc: int, out: str, err: str) -> tuple[str, str]:
    """(what the user sees first, verdict)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if case.expect == OK:
        seen = (out.strip().splitlines() or lines or [""])[0]
        bad = [] if rc == 0 else [f"exit {rc}"]
    elif case.expect == J:
        try:
            d = json.loads(out)
            seen = json.dumps(d)
            bad = [] if set(d) == {"error", "fix", "type", "exit_code"} and rc == d["exit_code"] != 0 else ["keys"]
        except ValueError:
            seen, bad = (out.strip().splitlines() or [""])[0], ["stdout is not one JSON object"]
        bad += ["stderr not empty"] if err.strip() else []
    else:
        seen = lines[-1] if lines else ""
        want = 1 if case.expect == E else 2
        bad = [f"exit {rc}, not {want}"] if rc != want else []
        if case.expect == E:
            bad += ["stdout not empty"] if out.strip() else []
            bad += ["not one 'edgekit: error: ... (fix: ...)' line"] if not (
                seen.startswith("edgekit: error: ") and "(fix: " in seen) else []
    bad += ["traceback"] if "Traceback" in err else []
    bad += ["internal error"] if "internal error" in err or '"InternalError"' in out else []
    bad += [f"does not say {case.needle!r}"] if case.needle and case.needle not in seen else []
    return seen, "ok" if not bad else "PROBLEM: " + "; ".join(bad)


def run_case(case: Case, work: Path) -> dict:
    args = [a.format(b=work / "b" / "good.edgekit", bad=work / "bad.edgekit") for a in case.args]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgekit", *args], cwd=work, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    seen, v = verdict(case, r.returncode, r.stdout, r.stderr)
    shown = " ".join(a.replace(str(work) + os.sep, "") for a in args)
    return {"id": case.id, "what": case.what, "command": f"edgekit {shown}", "rc": r.returncode,
            "seen": seen.replace(str(work) + os.sep, ""), "verdict": v, "seconds": round(time.perf_counter() - t0, 1)}


def write_doc(rows: list[dict]) -> None:
    from edgekit.core.version import __version__

    def cell(s: object) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")[:260]

    ok = sum(r["verdict"] == "ok" for r in rows)
    head = f"""<!-- written by scripts/audit.py; cases {signature()} -->
# CLI audit: user mistakes and odd models

`python scripts/audit.py` runs each case below through the CLI in its own subprocess (as a user
runs it) and rewrites this page. "What the user sees" is the error line (the last line on stderr)
for a mistake, the JSON object under `--json`, and the first line of output otherwise. A verdict is
"ok" when the case follows the house rules: a user mistake exits 1 (2 for a command-line usage
error) with one `edgekit: error: ... (fix: ...)` line, nothing on stdout and no traceback; under
`--json` one JSON object `{{error, fix, type, exit_code}}` on stdout and nothing on stderr; a
working case exits 0.

{ok} of {len(rows)} cases ok — edgekit {__version__}, Python {platform.python_version()},
{platform.system()} {platform.machine()}, {time.strftime('%Y-%m-%d')}.

| case | what | command | exit | what the user sees | verdict |
|---|---|---|---|---|---|
"""
    body = "".join(f"| {r['id']} | {cell(r['what'])} | `{cell(r['command'])}` | {r['rc']} | {cell(r['seen'])} | "
                   f"{cell(r['verdict'])} |\n" for r in rows)
    DOC.write_text(head + body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma list of case ids (printed; docs/audit.md untouched)")
    a = ap.parse_args()
    cases = [c for c in CASES if not a.only or c.id in a.only.split(",")]
    if a.only and not cases:
        sys.exit(f"no case named {a.only!r}; cases: {', '.join(c.id for c in CASES)}")
    with tempfile.TemporaryDirectory(prefix="edgekit-audit-") as tmp:
        work = Path(tmp)
        setup(work)
        rows = []
        for c in cases:
            rows.append(run_case(c, work))
            print(f"{rows[-1]['verdict'][:40]:40s} {c.id:22s} {rows[-1]['seen'][:120]}", flush=True)
    if not a.only:
        write_doc(rows)
        print(f"wrote {DOC.relative_to(REPO)}")
    if any(r["verdict"] != "ok" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
