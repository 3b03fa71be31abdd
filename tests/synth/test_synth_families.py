"""Object families: multiflow.synth.families."""

from __future__ import annotations

import pytest

from multiflow.synth.families import canonical_class


def test_aliases():
    assert canonical_class("brick") == "toy_brick"
    with pytest.raises(ValueError, match="unknown synthetic class"):
        canonical_class("teapot")
