"""The one validation routine: scale-relative tolerances, task inference, int8 judges, held-out
calibration, and the evidence a traced graph with value-dependent control flow must show."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from edgekit.exporters.metrics import output_role, sample_cosines, topk_contains
from edgekit.exporters.targets import JUDGES
from edgekit.exporters.validate import compare, magnitude_cases, split_holdout
from edgekit.runtimes.bench import validation_summary as summary
from torch import nn

import edgekit
from edgekit.core.errors import ExportError

RNG = np.random.default_rng(0)


def _cases(n=5, shape=(4, 10)):
    return [{"logits": RNG.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def test_fp_tolerance_is_relative_to_each_outputs_own_scale():
    big = RNG.standard_normal((2, 3)).astype(np.float32) * 100
    tiny = np.full((2, 3), 2e-9, np.float32)  # e.g. an untrained network's outputs
    refs = [{"big": big, "tiny": tiny}]
    v = compare(refs, [{"big": big + 1e-3, "tiny": np.zeros_like(tiny)}], "fp32")
    assert not v.passed  # all-zero output of a 2e-9 output is wrong, whatever the other output's scale
    assert v.detail["failed"] == ["output tiny: max abs err 2e-09 > tolerance 2e-13 (0.0001 x its max |PyTorch "
                                  "value| 2e-09)"]
    assert v.detail["outputs"]["big"]["max_abs_err"] <= v.detail["outputs"]["big"]["tolerance"]
    assert compare(refs, [{"big": big, "tiny": tiny * (1 + 1e-6)}], "fp32").passed


def test_task_inference_and_roles():
    assert output_role("y", np.zeros((2, 10), np.float32), "auto")[0] == "class-scores"
    assert "inferred" in output_role("y", np.zeros((2, 10), np.float32), "auto")[1]
    assert output_role("y", np.zeros((2, 1), np.float32), "auto")[0] == "signal"        # one column: a score
    assert output_role("h", np.zeros((2, 5, 8), np.float32), "auto")[0] == "signal"
    assert output_role("e", np.zeros((2, 384), np.float32), "embedding") == ("signal", "task=embedding (given)")
    assert output_role("t", np.zeros((2, 5, 8), np.float32), "classification")[0] == "class-scores"
    assert output_role("i", np.zeros((2,), np.int64), "auto")[0] == "labels"


def test_int8_class_scores_judged_by_top1_and_top5():
    refs = _cases(10)
    flip = [{"logits": r["logits"].copy()} for r in refs]
    for f in flip[:5]:  # swap the top-2 of one row in 5 of 40 rows: top-1 0.875, top-5 still 1.0
        row = f["logits"][0]
        i, j = np.argsort(-row)[:2]
        row[i], row[j] = row[j], row[i]
    v = compare(refs, flip, "int8")
    o = v.detail["outputs"]["logits"]
    assert o["top1_agreement"] == 35 / 40 and o["top5_contains"] == 1.0 and o["rows"] == 40
    assert not v.passed and "top-1 agreement with PyTorch 0.875 < 0.9" in v.detail["failed"][0]
    assert compare(refs, [{"logits": r["logits"] + 1e-3} for r in refs], "int8").passed
    assert "top1 1.000 top5 1.000" in summary(compare(refs, refs, "int8"))
    # the same outputs, declared embeddings: judged by SQNR and per-row cosine instead
    v = compare(refs, flip, "int8", task="embedding")
    assert v.detail["outputs"]["logits"]["sqnr_db"] > JUDGES["int8"].sqnr_db and "top1_agreement" not in v.detail
    assert not v.passed and "min cosine 0.9" in v.detail["failed"][0]


def test_int8_signal_outputs_judged_by_sqnr_and_cosine():
    refs = [{"emb": RNG.standard_normal((4, 6, 32))} for _ in range(3)]
    noisy = [{"emb": r["emb"] + 0.05 * RNG.standard_normal(r["emb"].shape)} for r in refs]  # ~26 dB
    assert compare(refs, noisy, "int8").passed
    very = [{"emb": r["emb"] + 0.3 * RNG.standard_normal(r["emb"].shape)} for r in refs]    # ~10 dB
    v = compare(refs, very, "int8")
    assert not v.passed and "SQNR" in v.detail["failed"][0]
    assert v.detail["outputs"]["emb"]["samples"] == 12
    # weight-only int8 is held to the tighter cosine
    mid = [{"emb": r["emb"] + 0.08 * RNG.standard_normal(r["emb"].shape)} for r in refs]    # cos ~0.997
    assert compare(refs, mid, "int8").passed
    assert compare(refs, [{"emb": r["emb"] + 0.12 * RNG.standard_normal(r["emb"].shape)} for r in refs],
                   "int8w").passed is False


def test_judged_cases_and_metrics_helpers():
    refs = _cases(4)
    gots = [dict(r) for r in refs]
    gots[0] = {"logits": -refs[0]["logits"]}  # the example (case 0) disagrees: not judged
    v = compare(refs, gots, "int8", judged=[1, 2, 3])
    assert v.passed and v.detail["judged_cases"] == 3 and v.cases == 4
    assert topk_contains(np.eye(3), np.eye(3)[::-1], k=1) == 1
    assert np.allclose(sample_cosines(np.ones((2, 3)), np.zeros((2, 3))), 0.0)
    assert np.allclose(sample_cosines(np.zeros((2, 3)), np.zeros((2, 3))), 1.0)


def test_holdout_split_and_magnitude_cases():
    samples = [{"x": np.full((1, 2), i, np.float32)} for i in range(20)]
    fit, judge, how = split_holdout(samples)
    assert len(fit) == 10 and len(judge) == 10 and judge[0]["x"][0, 0] == 10 and "last 10 of 20" in how
    fit, judge, how = split_holdout(samples[:5])
    assert len(fit) == len(judge) == 5 and "too few" in how
    ex = {"x": np.ones((1, 2), np.float32), "ids": np.ones((1, 2), np.int64)}
    mags = magnitude_cases(ex)
    assert np.allclose([float(m["x"][0, 0]) for m in mags], [-1.0, 0.01, 10.0, 100.0])
    assert all(m["ids"] is ex["ids"] for m in mags)
    assert magnitude_cases({"ids": ex["ids"]}) == []


class Halve(nn.Module):
    """The loop count depends on tensor values: the trace bakes in one trip count."""

    def forward(self, y):
        while y.abs().max() > 1:
            y = y / 2
        return y


class Guarded(nn.Module):
    """Python control flow on values that never changes the result for inputs it accepts."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        if x.abs().max() > 50:
            raise ValueError("inputs must stay within +-50")
        return self.lin(x)


def test_value_dependent_loop_is_never_ok_without_evidence(tmp_path):
    x = torch.full((1, 4), 3.0)
    with pytest.raises(ExportError, match="disagrees with PyTorch at other input magnitudes"):
        edgekit.export(Halve(), x, targets="onnx", out=tmp_path)
    b = edgekit.export(Halve(), x, targets="onnx", out=tmp_path, accept_traced_control_flow=True)
    a = b.find("onnx")
    assert a.status == "ok" and a.validation.detail["control_flow"]["evidence"].startswith("failed on")


def test_benign_traced_control_flow_passes_with_evidence(tmp_path):
    torch.manual_seed(0)
    b = edgekit.export(Guarded().eval(), torch.rand(2, 4), targets="onnx", out=tmp_path)
    a = b.find("onnx")
    cf = a.validation.detail["control_flow"]
    assert a.status == "ok" and cf["tracer_warnings"] and cf["evidence"].startswith("agreed with PyTorch on 3 cases")


def test_token_outputs_are_judged_at_real_tokens_and_embeddings_pooled():
    h = RNG.standard_normal((4, 6, 8))
    mask = np.ones((4, 6), np.int64)
    mask[:, 4:] = 0
    got = h + 0.02 * RNG.standard_normal(h.shape)
    got[:, 4:] += 50.0  # what the model computes at its own padding: nobody's output
    case = [{"input_ids": np.ones((4, 6), np.int64), "attention_mask": mask}]
    v = compare([{"h": h}], [{"h": got}], "int8", cases=case)
    assert v.passed and v.detail["outputs"]["h"]["judged_at"].startswith("real tokens only")
    v = compare([{"h": h}], [{"h": got}], "int8", task="embedding", cases=case)
    o = v.detail["outputs"]["h"]
    assert v.passed and o["role"] == "pooled" and o["samples"] == 4 and o["judged_at"].startswith("the masked mean")
    assert not compare([{"h": h}], [{"h": got}], "int8").passed  # without the inputs, padding counts
