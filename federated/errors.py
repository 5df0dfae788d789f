"""The errors of edgekit.federated (on top of edgekit's user-error base, one line with the fix)."""
from __future__ import annotations

from edgekit.core.errors import EdgekitError


class CheckpointError(EdgekitError):
    """A server checkpoint exists but cannot be used (corrupt, truncated, another run's)."""


class DeployError(EdgekitError):
    """A Flower process could not be started, did not answer, or is not ours."""
