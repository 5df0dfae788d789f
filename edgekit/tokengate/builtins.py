"""A token-gating checkpoint (``edgekit export CKPT.pt``) as a model source that exports itself
(embed + per-layer + head graphs and the token_gating pipeline)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.core.errors import EdgekitError, UsageError
from edgekit.exporters.source import ModelSource
from edgekit.exporters.targets import pipeline_targets
from edgekit.tokengate.checkpoint import export_checkpoint


def tokengate_checkpoint(path: str) -> ModelSource:
    def exporter(out: Path, targets: Any, name: str | None, progress: Any = None):
        chosen = ",".join(pipeline_targets(targets, kind="token_gating"))
        try:
            return export_checkpoint(path, str(out), targets=chosen, name=name)
        except EdgekitError:
            raise
        except Exception as e:  # whatever torch.load / the loader raise on a foreign file
            raise UsageError(f"{path} is not a token-gating checkpoint ({type(e).__name__}: {e})",
                             "pass a .pt written by `edgekit tokengate train`") from None

    return ModelSource(module=None, example_inputs={}, output_names=[], exporter=exporter, name=Path(path).stem,
                       description="token-gating checkpoint (embed + per-layer + head graphs)")
