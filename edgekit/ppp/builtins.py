"""The built-in PPP models: the gated classifiers (``builtin:ppp-fashion``, ``builtin:ppp-kws``) and
their personalizable multi-graph bundles (``builtin:ppp-fashion-gated``, ``builtin:ppp-kws-gated``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.exporters.source import ModelSource
from edgekit.exporters.targets import pipeline_targets
from edgekit.ppp.personalize import load_checkpoint

WEIGHTS = Path(__file__).resolve().parent / "weights"


def _builtin(task: str, fname: str, description: str):
    gated, meta = load_checkpoint(WEIGHTS / fname)
    shape = tuple(gated.cfg["input_shape"])
    md = {k: meta[k] for k in ("labels", "preprocessing", "dataset", "test_acc") if k in meta}
    md.update({"task": "classification", "ppp": {"personalize": f"edgekit ppp export builtin:ppp-{task} --out DIR, "
                                                 "then edgekit personalize DIR/... --data personal.npz"}})
    return ModelSource(module=gated, example_inputs={"x": np.zeros((1, *shape), np.float32)}, output_names=["logits"],
                       dynamic={"x": {0: "batch"}}, metadata=md, description=description, name=f"ppp-{task}")


def builtin_fashion():
    return _builtin("fashion", "ppp_fashion.safetensors",
                    "PPP gated ResNet-style net, Fashion-MNIST 28x28, 10 classes (dynamic channel gates)")


def builtin_kws():
    return _builtin("kws", "ppp_kws.safetensors",
                    "PPP gated CNN, keyword spotting (10 words, 40x49 log-mel, synthetic voices)")


def _ppp_gated(weights: str, default: str) -> ModelSource:
    def exporter(out: Path, targets: Any, name: str | None, progress: Any = None):
        from edgekit.ppp.export import export_gated_checkpoint

        return export_gated_checkpoint(WEIGHTS / weights, out, name=name or default,
                                       targets=pipeline_targets(targets))

    return ModelSource(module=None, example_inputs={}, output_names=[], exporter=exporter, name=default,
                       description="PPP gated model, personalizable on the device")


def ppp_fashion_gated() -> ModelSource:
    return _ppp_gated("ppp_fashion.safetensors", "ppp-fashion-gated")


def ppp_kws_gated() -> ModelSource:
    return _ppp_gated("ppp_kws.safetensors", "ppp-kws-gated")
