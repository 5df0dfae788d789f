"""PPP (PyTorch path): gated training, prototype -> keep-mask -> physically pruned module, export."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgekit.ppp import personalize as ppp  # noqa: E402
from edgekit.runtimes.pipelines.ppp_proto import keep_masks, prototype  # noqa: E402
from edgekit.core.errors import DataError, UsageError  # noqa: E402
from edgekit.ppp.nets import build_gated  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    from edgekit.data.fashion_mnist import load_digits

    return (*load_digits("train"), *load_digits("test"))


WEIGHTS = Path(ppp.__file__).resolve().parent / "weights"


@pytest.fixture(scope="module")
def gated():
    torch.set_num_threads(1)
    g, meta = ppp.load_checkpoint(WEIGHTS / "ppp_digits.safetensors")  # scripts/train_ppp.py digits
    assert meta["dataset"] == "sklearn-digits"
    return g


def test_committed_digits_model_is_accurate_and_gated(gated, digits):
    from edgekit.ppp.train import evaluate

    _, _, xt, yt = digits
    assert evaluate(gated, xt, yt) > 0.9
    probs = ppp.gate_probs(gated, xt)
    usage = np.mean([(p > 0.5).mean() for p in probs])
    assert usage < 0.8, "the budget term must close gates"


def test_gated_training_learns_and_closes_gates(digits):
    from edgekit.ppp.train import consistency, evaluate, train_gated

    x, y, xt, yt = digits
    torch.manual_seed(0)
    g = build_gated("tiny", 10)
    hist = train_gated(g, x, y, epochs=4, lr=1e-2, target=0.4, log=lambda *_: None)["history"]
    assert hist[-1]["ce"] < hist[0]["ce"] and hist[-1]["use"] < hist[0]["use"]
    assert evaluate(g, xt, yt) > 0.15  # better than chance after 4 short epochs
    p = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.5, 0.5]])
    assert float(consistency([p], torch.tensor([0, 0, 1]))) == pytest.approx(0.125 / 2)  # per-class mean; singleton class adds 0


def test_keep_masks_rules():
    proto = [np.array([0.9, 0.1, 0.5, 0.7]), np.array([0.2, 0.3])]
    m = keep_masks(proto, keep_ratio=0.5, multiple=1)
    assert m[0].tolist() == [True, False, False, True] and m[1].tolist() == [False, True]
    t = keep_masks(proto, threshold=0.6, multiple=1)
    assert t[0].tolist() == [True, False, False, True] and t[1].sum() == 1  # at least one channel kept
    wide = keep_masks([np.linspace(0, 1, 48)], keep_ratio=0.3)[0]  # 15 -> rounded up to 16
    assert wide.sum() == 16 and wide[-16:].all()
    with pytest.raises(UsageError):
        keep_masks(proto, keep_ratio=1.5)
    assert np.allclose(prototype([np.array([[0.0, 1.0], [1.0, 1.0]])])[0], [0.5, 1.0])


def test_pruned_module_is_smaller_equal_and_kept_weights_unchanged(gated, digits):
    _, _, xt, yt = digits
    base = {k: v.clone() for k, v in gated.state_dict().items()}
    gated.zero_grad(set_to_none=True)
    res = ppp.personalize(gated, xt[yt < 3][:32], keep_ratio=0.3)
    # no weight of the gated model changed, no gradient was produced
    for k, v in gated.state_dict().items():
        assert torch.equal(v, base[k]), k
    assert all(p.grad is None for p in gated.parameters())
    # every kept channel's values are copied bit-exactly; removed channels are physically gone
    sd = res.module.state_dict()
    for i, (u, m) in enumerate(zip(gated.units(), res.masks)):
        keep = torch.from_numpy(np.flatnonzero(m))
        pre = "head." if u.kind == "head" else f"blocks.{i}."
        if u.kind == "basic":
            pairs = [("conv1.weight", 0), ("conv2.weight", 1)]
        elif u.kind == "inv":
            pairs = [("expand.weight", 0), ("dw.weight", 0), ("project.weight", 1), ("bn2.running_var", 0)]
            assert res.module.blocks[i].dw.groups == len(keep)
        else:
            pairs = [("conv.weight", 0), ("fc.weight", 1)]
        for name, axis in pairs:
            assert sd[pre + name].shape[axis] == len(keep) < m.size
            assert torch.equal(sd[pre + name], base[pre + name].index_select(axis, keep)), pre + name
    assert res.info["flops_after"] < 0.6 * res.info["flops_before"]
    assert res.info["params_after"] < res.info["params_before"]
    assert not any("gate" in k for k in sd)
    # the pruned network computes exactly what the gated network does with its gates frozen to the mask
    ref = ppp.masked(gated, res.masks)
    with torch.no_grad():
        a = res.module(torch.from_numpy(xt))
        b = ref(torch.from_numpy(xt))
        c = ppp.fold_bn(res.module)(torch.from_numpy(xt))
    assert float((a - b).abs().max()) <= 1e-5
    assert float((a - c).abs().max()) <= 1e-4


def test_personalization_32_samples_under_1s():
    torch.set_num_threads(1)
    w = WEIGHTS / "ppp_fashion.safetensors"
    if w.exists():
        g, _ = ppp.load_checkpoint(w)
    else:  # timing does not depend on the weight values
        g = build_gated("fashion", 10).eval()
        g.cfg["input_shape"] = [1, 28, 28]
    x = np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32)
    ppp.personalize(g, x[:2], keep_ratio=0.4)  # warm-up (first call allocates)
    t0 = time.perf_counter()
    res = ppp.personalize(g, x, keep_ratio=0.4)
    secs = time.perf_counter() - t0
    assert secs <= 1.0, f"personalization took {secs:.3f} s"
    assert res.info["flops_after"] * 2 <= res.info["flops_before"]


def test_baseline_masks_match_ppp_flops(gated):
    rng = np.random.default_rng(0)
    a = ppp.prune(gated, ppp.l1_masks(gated, 0.5))
    b = ppp.prune(gated, ppp.random_masks(gated, 0.5, rng))
    assert ppp.cost(a, (1, 8, 8)) == ppp.cost(b, (1, 8, 8))


@pytest.mark.parametrize("bad", ["shape", "nan", "empty", "missing", "noarrays"])
def test_bad_personal_data_clear_error_nothing_written(gated, tmp_path, bad):
    from edgekit.ppp.export import personalize_checkpoint

    ck = ppp.save_checkpoint(gated, tmp_path / "g.safetensors", {"input_name": "x", "labels": list("0123456789")})
    f = tmp_path / "p.npz"
    if bad == "shape":
        np.savez(f, x=np.zeros((4, 1, 9, 9), np.float32))
    elif bad == "nan":
        np.savez(f, x=np.full((4, 1, 8, 8), np.nan, np.float32))
    elif bad == "empty":
        np.savez(f, x=np.zeros((0, 1, 8, 8), np.float32))
    elif bad == "noarrays":
        np.savez(f)
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        personalize_checkpoint(ck, f, out, keep_ratio=0.5)
    assert "\n" not in str(e.value) and "fix:" in str(e.value)
    assert not out.exists() or not any(out.iterdir())


def test_export_personalized_bundle_with_provenance(gated, digits, tmp_path):
    import onnxruntime as ort

    from edgekit.ppp.export import export_personalized

    _, _, xt, yt = digits
    res = ppp.personalize(gated, xt[:32], keep_ratio=0.5)
    b = export_personalized(res, "tiny-gated", {"labels": list("0123456789"), "input_shape": [1, 8, 8]}, tmp_path)
    prov = b.manifest.metadata["provenance"]
    for k in ("base_model", "prototype_size", "keep_ratio", "flops_before", "flops_after", "params_before",
              "params_after"):
        assert k in prov
    assert prov["prototype_size"] == 32 and prov["flops_after"] < prov["flops_before"]
    art = b.find("onnx")
    assert art.status == "ok" and art.validation.passed
    sess = ort.InferenceSession(str(b.path(art)), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = res.module(torch.from_numpy(xt)).numpy()
    assert np.abs(sess.run(None, {"x": xt})[0] - ref).max() <= 1e-4


def test_checkpoint_roundtrip_and_not_ppp(gated, tmp_path):
    from safetensors.torch import save_file

    p = ppp.save_checkpoint(gated, tmp_path / "g.safetensors", {"input_name": "x"})
    g2, meta = ppp.load_checkpoint(p)
    for k, v in gated.state_dict().items():
        if "num_batches" not in k:
            assert torch.equal(v, g2.state_dict()[k])
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ppp.NotPPPError, match="not trained for PPP"):
        ppp.load_checkpoint(tmp_path / "plain.safetensors")
