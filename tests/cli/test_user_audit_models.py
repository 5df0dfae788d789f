"""A new user's models, continued from test_user_audit.py: a transformer encoder with a padding
mask, an int8 export's --json stdout, an ONNX source with external data, bfloat16 inputs/outputs,
and a model function named by a Python file path. Each test was a bug found by running the CLI/API
on such a model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgekit
from edgekit.core.errors import UsageError
from tests.conftest import run_cli
from tests.cli.test_user_audit import Lin


class EncMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2,
                                         enable_nested_tensor=True)

    def forward(self, x, pad):
        return self.enc(x, src_key_padding_mask=pad)


def test_transformer_encoder_with_a_padding_mask_validates(tmp_path):
    """PyTorch's eval fast path (nested tensors) writes 0 where the padding mask hides tokens; the
    exported graph computes the regular path there, so every such model failed validation
    (max abs err ~2) although both agree on every real token."""
    torch.manual_seed(0)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 5:] = True
    b = edgekit.export(EncMask(), (torch.randn(2, 7, 16), pad), out=tmp_path)
    a = b.find("onnx")
    assert a.status == "ok" and a.validation.max_abs_err < 1e-4, a.status_reason
    assert torch.backends.mha.get_fastpath_enabled()  # the global switch is restored


def test_int8_export_json_stdout_is_only_json(tmp_path):
    """NNCF's rich progress bars ("Statistics collection ...") were printed on stdout before the JSON."""
    r = run_cli("export", "builtin:digits-cnn", "-t", "openvino", "-p", "int8", "--no-bench", "--json",
                "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [(a["target"], a["precision"]) for a in d["artifacts"]] == [("onnx", "fp32"), ("openvino", "int8")]


def test_onnx_source_with_external_data_is_stored_inline(tmp_path):
    """torch.onnx (dynamo) and Optimum write weights to model.onnx.data beside the .onnx; the exporter
    copied only the .onnx, so every such file failed ("... .onnx.data, but it is not regular file")."""
    import onnx

    from edgekit.models.resolve import resolve

    m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    torch.onnx.export(m, (torch.randn(1, 32),), str(tmp_path / "tmp.onnx"), input_names=["x"],
                      output_names=["y"], dynamo=False)
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(onnx.load(str(tmp_path / "tmp.onnx")), str(src / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=1024)
    assert (src / "model.onnx.data").stat().st_size >= 4096  # the 32x32 weight
    b = edgekit.export(resolve(str(src / "model.onnx")), targets="onnx,openvino", out=tmp_path / "out")
    assert [a.status for a in b.manifest.artifacts] == ["ok", "ok"], [a.status_reason for a in b.manifest.artifacts]
    assert sorted(p.name for p in b.root.iterdir()) == ["main.onnx", "main.openvino", "manifest.json", "validation"]
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    np.testing.assert_allclose(edgekit.load(b.root, backend="onnxruntime").run({"x": x})["y"],
                               m(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


class BF16Out(Lin):
    def __init__(self) -> None:
        super().__init__()
        self.l = self.l.bfloat16()

    def forward(self, x):
        return self.l(x.to(torch.bfloat16))


def test_bfloat16_inputs_and_outputs_are_named_clearly(tmp_path):
    """A bfloat16 model used to end in 'internal error: TypeError: Got unsupported ScalarType BFloat16'
    (input) or 'the model fails on its own example inputs' (output), though it runs fine."""
    with pytest.raises(UsageError, match="example input 'x' is bfloat16.*float32 example inputs"):
        edgekit.export(Lin().bfloat16(), torch.randn(2, 4).bfloat16(), out=tmp_path)
    with pytest.raises(UsageError, match=r"output 'output' is bfloat16.*out.float\(\)"):
        edgekit.export(BF16Out(), torch.randn(2, 4), out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_model_function_from_a_python_file_path(tmp_path):
    """`edgekit export path/to/models.py:make` (what users type) was 'cannot understand MODEL' or
    'No module named models.py'; a module failing at import was an internal error."""
    from edgekit.models.resolve import resolve

    sub = tmp_path / "my code"
    sub.mkdir()
    (sub / "helpers.py").write_text("import torch.nn as nn\nclass Net(nn.Module):\n"
                                    "    def __init__(self):\n        super().__init__(); self.l = nn.Linear(4, 2)\n"
                                    "    def forward(self, x):\n        return self.l(x)\n")
    (sub / "mymodels.py").write_text("import torch, helpers\ndef make():\n    return helpers.Net(), torch.randn(1, 4)\n")
    (sub / "broken.py").write_text("x = = 1\n")
    src = resolve(f"{sub}/mymodels.py:make")
    assert src.name == "make" and list(src.example_inputs) == ["x"]
    for ref, msg in [(f"{sub}/nope.py:make", "no such file"), (f"{sub}/mymodels.py:nofn", "has no attribute 'nofn'"),
                     (f"{sub}/broken.py:make", "SyntaxError")]:
        with pytest.raises(UsageError, match=msg):
            resolve(ref)
