"""Fixtures of the deployment tests; the helpers live in :mod:`deploy_helpers`."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_helpers import make_bundle


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A class folder whose threshold is the median sample score of two random samples' range."""
    return make_bundle(tmp_path_factory.mktemp("run") / "tiny", threshold=1.0)
