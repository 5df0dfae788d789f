"""TensorRT logic that does not need TensorRT: op check, profiles, version dispatch, cache keys,
the exporter's artifact, and the errors a machine without TensorRT gives."""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.core.errors import BackendUnavailableError, InputShapeError, UsageError
from edgekit.exporters.trt_ops import check_onnx_ops, support_for
from edgekit.runtimes.trt_cache import (EngineCache, build_plan, check_in_profile, derive_profiles,
                                        engine_cache_key, parse_nvidia_smi, parse_profile_overrides,
                                        parse_trt_version)
from edgekit.core.specs import TensorSpec


def _model(nodes, opset=18, extra_opsets=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    g = helper.make_graph(nodes, "g", [x], [y])
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    return helper.make_model(g, opset_imports=imports)


def test_op_check_names_unsupported_nodes():
    m = _model([helper.make_node("Relu", ["x"], ["a"], name="relu_ok"),
                helper.make_node("MyPlugin", ["a"], ["b"], name="my_plugin_node", domain="com.acme"),
                helper.make_node("Det", ["b"], ["c"], name="the_det"),
                helper.make_node("FancyNewOp", ["c"], ["y"], name="fancy")], extra_opsets=["com.acme"])
    res = check_onnx_ops(m, 10)
    bad = {u["node"]: u for u in res["unsupported"]}
    assert set(bad) == {"my_plugin_node", "the_det", "fancy"}
    assert "plugin" in bad["my_plugin_node"]["reason"]
    assert "listed as unsupported" in bad["the_det"]["reason"]
    assert "not in the TensorRT 10" in bad["fancy"]["reason"]
    assert res["op_counts"]["Relu"] == 1 and res["opset_ok"]


def test_op_check_versions_differ_and_opset_range():
    m = _model([helper.make_node("Swish", ["x"], ["y"], name="sw")], opset=25)
    r10, r11 = check_onnx_ops(m, 10), check_onnx_ops(m, 11)
    assert [u["node"] for u in r10["unsupported"]] == ["sw"] and not r11["unsupported"]
    assert not r10["opset_ok"] and r11["opset_ok"]  # 25 > TRT10's 24
    assert support_for(12).major == 11  # newer than the table: newest known
    with pytest.raises(UsageError):
        support_for(8)


def test_op_check_walks_subgraphs_and_restrictions():
    then_g = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="inner_unique")], "then", [],
                               [helper.make_tensor_value_info("u", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="inner_relu")], "else", [],
                               [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    cond = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)
    pool = helper.make_node("MaxPool", ["x"], ["p", "idx"], name="pool_with_idx", kernel_shape=[2])
    res = check_onnx_ops(_model([cond, pool]), 10)
    names = {u["node"] for u in res["unsupported"]}
    assert "branch/then_branch/inner_unique" in names and "pool_with_idx" in names
    assert not any("inner_relu" in n for n in names)


def test_profiles_shared_symbols_static_and_overrides():
    ins = [TensorSpec("input_ids", "int64", ("batch", "seq")), TensorSpec("attention_mask", "int64", ("batch", "seq")),
           TensorSpec("image", "float32", (1, 3, 8, 8))]
    ex = {"input_ids": [2, 16], "attention_mask": [2, 16], "image": [1, 3, 8, 8]}
    p = derive_profiles(ins, ex)
    assert p["input_ids"] == {"min": [1, 1], "opt": [2, 16], "max": [32, 64]}
    assert p["attention_mask"] == p["input_ids"]
    assert p["image"] == {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [1, 3, 8, 8]}
    p2 = derive_profiles(ins, ex, parse_profile_overrides(["seq=8,128,512"]))
    assert p2["input_ids"]["max"] == [32, 512] and p2["attention_mask"]["opt"] == [2, 128]
    with pytest.raises(UsageError, match="min <= opt <= max"):
        derive_profiles(ins, ex, {"seq": (8, 4, 512)})
    with pytest.raises(UsageError, match="unknown dimension"):
        derive_profiles(ins, ex, {"height": (1, 2, 3)})
    with pytest.raises(UsageError, match="SYMBOL=MIN,OPT,MAX"):
        parse_profile_overrides(["seq=1,2"])
    check_in_profile(p, {"input_ids": (4, 40)})
    with pytest.raises(InputShapeError, match="build-engine"):
        check_in_profile(p, {"input_ids": (4, 65)})


def test_version_dispatch():
    files = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "qdq": "model_qdq.onnx", "calib": "calib.npz"}
    assert parse_trt_version("10.15.1.29") == (10, 15, 1)
    p = build_plan("10.15.1", "fp16", files)
    assert p["onnx"] == "model.onnx" and p["flags"] == ["FP16"] and not p["strongly_typed"]
    p = build_plan("10.3", "int8", files)
    assert p["flags"] == ["INT8", "FP16"] and p["calibrator"] == "calib.npz"
    p = build_plan("10.3", "int8", {k: v for k, v in files.items() if k != "calib"})
    assert p["onnx"] == "model_qdq.onnx" and "INT8" not in p["flags"]
    for prec, f in (("fp32", "model.onnx"), ("fp16", "model_fp16.onnx"), ("int8", "model_qdq.onnx")):
        p = build_plan("11.2.1", prec, files)
        assert p["onnx"] == f and p["flags"] == [] and p["calibrator"] is None and p["strongly_typed"]
    assert "newer" in build_plan("12.0", "fp32", files)["note"]
    with pytest.raises(UsageError, match="too old"):
        build_plan("8.6.1", "fp32", files)
    with pytest.raises(UsageError, match="no fp16 graph"):
        build_plan("11.0", "fp16", {"fp32": "model.onnx"})


def test_cache_keys_and_store(tmp_path):
    base = dict(onnx_sha256="ab" * 32, precision="fp16", trt_version="10.15.1", gpu_name="NVIDIA Jetson Orin",
                compute_capability="8.7", profiles={"x": {"min": [1, 3], "opt": [4, 3], "max": [32, 3]}})
    k = engine_cache_key(**base)
    assert k == engine_cache_key(**dict(base))
    for field, value in (("trt_version", "10.15.2"), ("compute_capability", "8.6"), ("gpu_name", "RTX 4090"),
                         ("precision", "int8"), ("profiles", {"x": {"min": [1, 3], "opt": [4, 3], "max": [64, 3]}})):
        assert engine_cache_key(**{**base, field: value}) != k, field
    cache = EngineCache(tmp_path / "c")
    assert cache.get(k) is None
    path = cache.put(k, b"plan-bytes", {"gpu": "x"})
    assert cache.get(k) == path and path.read_bytes() == b"plan-bytes" and cache.meta(k) == {"gpu": "x"}
    assert [e["key"] for e in cache.entries()] == [k]
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_nvidia_smi_parse():
    gpus = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 9.0, 550.54\nOrin, 8.7, 540.3\n")
    assert gpus[0] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "550.54"}
    assert len(gpus) == 2 and parse_nvidia_smi("") == []


def test_missing_tensorrt_is_one_clear_line(monkeypatch):
    from edgekit.runtimes import tensorrt as rt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError) as e:
        rt._trt()
    assert 'pip install "edgekit[tensorrt]"' in str(e.value) and "\n" not in str(e.value)
    assert rt.TensorRTBackend.available() is False


@pytest.fixture(scope="module")
def det_bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    import edgekit

    class WithDet(torch.nn.Module):  # torch.linalg.det -> ONNX Det: not supported by TensorRT's parser
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 9)

        def forward(self, x):
            return torch.linalg.det(self.lin(x).reshape(-1, 3, 3))

    torch.manual_seed(0)
    return edgekit.export(WithDet().eval(), torch.randn(2, 4), targets="tensorrt", name="det",
                          out=tmp_path_factory.mktemp("trt"), dynamic={"x": {0: "batch"}})


def test_exporter_flags_unsupported_op_by_name(det_bundle):
    art = det_bundle.find(target="tensorrt", usable=False)
    assert art.status == "failed" and "(Det)" in art.status_reason
    bad = art.extra["op_check"]["10"]["unsupported"]
    assert bad and bad[0]["op_type"] == "Det" and bad[0]["node"] in art.status_reason
    assert art.validation.detail["unsupported"][0]["op_type"] == "Det"


def test_trt_artifact_layout_and_status(tmp_path):
    torch = pytest.importorskip("torch")
    from edgekit.core.bundle import Bundle
    from edgekit.cli.main import main
    import edgekit

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5)).eval()
    calib = np.random.default_rng(0).standard_normal((8, 1, 6, 6)).astype(np.float32)
    b = edgekit.export(net, torch.randn(1, 1, 6, 6), targets="tensorrt", out=tmp_path, name="cnn",
                       precision="fp32,int8", dynamic={"x": {0: "batch"}}, calib=calib)
    for prec in ("fp32", "int8"):
        art = b.find(target="tensorrt", precision=prec)
        assert art.status == "not-validated" and "not executed here" in art.status_reason
        assert art.extra["engine_built"] is False and art.validation.passed is None
        plan = json.loads((b.path(art) / "trt.json").read_text())
        assert plan["profiles"]["x"] == {"min": [1, 1, 6, 6], "opt": [1, 1, 6, 6], "max": [32, 1, 6, 6]}
        assert plan["sha256"]["model.onnx"] and "not executed here" in plan["engine"]
    int8 = b.path(b.find(target="tensorrt", precision="int8"))
    assert (int8 / "model_qdq.onnx").is_file() and (int8 / "calib.npz").is_file()
    q = onnx.load(str(int8 / "model_qdq.onnx"))
    zps = [n for n in q.graph.initializer if n.name.endswith("zero_point")]
    assert zps and all(not onnx.numpy_helper.to_array(z).any() for z in zps)  # TensorRT wants zero points 0
    proxy = b.find(target="tensorrt", precision="int8").validation.detail["onnx_proxy"]
    assert proxy["ran"] and "not TensorRT" in proxy["runner"]
    with pytest.raises(SystemExit) as e:
        main(["build-engine", str(b.root)])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        main(["trt-check", str(b.root), "--json"])
    assert e.value.code == 0
    assert Bundle.load(b.root).find(target="tensorrt") is not None


def test_backend_runtimes_stay_torch_free():
    import subprocess

    code = ("import sys, edgekit.runtimes.openvino, edgekit.runtimes.coreml, edgekit.runtimes.tensorrt, "
            "edgekit.runtimes.trt_cache, edgekit.cli.backends; "
            "bad = [m for m in ('torch', 'openvino', 'coremltools', 'tensorrt', 'onnx') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
