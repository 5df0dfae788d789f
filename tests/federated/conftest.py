"""Fixtures of the federated tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fed_digits():
    """The federated digits data set (pool / public / validation / test splits), seed 0."""
    from edgekit.federated.data import load_dataset

    return load_dataset("digits", 0)
