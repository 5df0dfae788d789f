"""Built-in models by name. Each entry is "module:function"; the function returns a ModelSource.

Listing names costs nothing; building a model imports its module (and torch) only then.
"""
from __future__ import annotations

import importlib

from edgekit.core.errors import UsageError

DEFAULT = "digits-cnn"

BUILTINS: dict[str, str] = {
    "digits-cnn": "edgekit.models.digits:builtin",
    "ppp-fashion": "edgekit.ppp.builtins:builtin_fashion",
    "ppp-kws": "edgekit.ppp.builtins:builtin_kws",
    "efficientnet-lite0": "edgekit.models.zoo:builtin_efficientnet_lite0",
    # multi-graph models (they export themselves into pipeline bundles)
    "ppp-fashion-gated": "edgekit.ppp.builtins:ppp_fashion_gated",
    "ppp-kws-gated": "edgekit.ppp.builtins:ppp_kws_gated",
    "vos-skip": "edgekit.vos.export:vos_skip",
}

DESCRIPTIONS: dict[str, str] = {
    "digits-cnn": "small CNN, 8x8 handwritten digits (sklearn load_digits), 10 classes — the embedded default",
    "ppp-fashion": "PPP gated ResNet-style net, Fashion-MNIST, 10 classes (personalize: `edgekit ppp export`)",
    "ppp-kws": "PPP gated CNN, keyword spotting, 10 words, synthetic voices (personalize: `edgekit ppp export`)",
    "efficientnet-lite0": "EfficientNet-Lite0, real ImageNet weights; int8 calibrates on real photos (needs the vos extra)",
    "ppp-fashion-gated": "PPP Fashion-MNIST model as a personalizable bundle (gate outputs + static graph + gate map)",
    "ppp-kws-gated": "PPP keyword-spotting model as a personalizable bundle (gate outputs + static graph + gate map)",
    "vos-skip": "skip-path video object segmentation: stem/gate/heavy/light graphs + vos_skip pipeline",
}


def get(name: str):
    if name not in BUILTINS:
        raise UsageError(f"unknown built-in model {name!r}", f"`edgekit models` lists them: {', '.join(BUILTINS)}")
    mod, fn = BUILTINS[name].split(":")
    return getattr(importlib.import_module(mod), fn)()
