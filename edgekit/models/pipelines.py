"""Built-in multi-graph models: sources that export themselves (several graphs + a pipeline entry).

``edgekit export builtin:vos-skip`` or ``builtin:ppp-fashion-gated`` and ``edgekit export CKPT.pt``
(a token-gating checkpoint) go through these; the bundles run with ``edgekit.load``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.source import ModelSource

PIPELINE_TARGETS = ("onnx", "openvino")  # pipelines run on these runtimes


def pipeline_targets(targets: Any) -> tuple[str, ...]:
    """``all`` means every pipeline-capable target installed here; otherwise the names given."""
    from edgekit.errors import UsageError
    from edgekit.exporters.targets import TARGETS

    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    if names == ["all"]:
        return tuple(t for t in PIPELINE_TARGETS if TARGETS[t].installed())
    bad = [n for n in names if n not in PIPELINE_TARGETS]
    if bad:
        raise UsageError(f"multi-graph models export to {', '.join(PIPELINE_TARGETS)}, not {bad[0]}",
                         f"use --target {','.join(PIPELINE_TARGETS)}")
    return tuple(names)


def vos_skip() -> ModelSource:
    def exporter(out: Path, targets: Any, name: str | None, progress: Any = None):
        from edgekit.models.vos.export import NAME, export_bundle

        return export_bundle(out, targets=pipeline_targets(targets), name=name or NAME, progress=progress)

    return ModelSource(module=None, example_inputs={}, output_names=[], exporter=exporter, name="vos-skip",
                       description="skip-path video object segmentation (4 graphs + vos_skip pipeline)")


def _ppp_gated(weights: str, default: str) -> ModelSource:
    def exporter(out: Path, targets: Any, name: str | None, progress: Any = None):
        from edgekit.compress.ppp_export import export_gated_checkpoint
        from edgekit.models.digits import WEIGHTS_DIR

        return export_gated_checkpoint(WEIGHTS_DIR / weights, out, name=name or default,
                                       targets=pipeline_targets(targets))

    return ModelSource(module=None, example_inputs={}, output_names=[], exporter=exporter, name=default,
                       description="PPP gated model, personalizable on the device")


def ppp_fashion_gated() -> ModelSource:
    return _ppp_gated("ppp_fashion.safetensors", "ppp-fashion-gated")


def ppp_kws_gated() -> ModelSource:
    return _ppp_gated("ppp_kws.safetensors", "ppp-kws-gated")


def tokengate_checkpoint(path: str) -> ModelSource:
    def exporter(out: Path, targets: Any, name: str | None, progress: Any = None):
        from edgekit.commands.tokengate import export_checkpoint
        from edgekit.errors import EdgekitError, UsageError

        chosen = ",".join(pipeline_targets(targets))
        try:
            return export_checkpoint(path, str(out), targets=chosen, name=name)
        except EdgekitError:
            raise
        except Exception as e:  # whatever torch.load / the loader raise on a foreign file
            raise UsageError(f"{path} is not a token-gating checkpoint ({type(e).__name__}: {e})",
                             "pass a .pt written by `edgekit tokengate train`") from None

    return ModelSource(module=None, example_inputs={}, output_names=[], exporter=exporter, name=Path(path).stem,
                       description="token-gating checkpoint (embed + per-layer + head graphs)")
