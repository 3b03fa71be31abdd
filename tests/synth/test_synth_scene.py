"""Composing one instance on the tray: multiflow.synth.scene."""

from __future__ import annotations

import numpy as np
import pytest

from multiflow.synth.defects import cast
from multiflow.synth.families import FAMILIES, GROUP_PALETTES
from multiflow.synth.scene import sample_scene


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_instances_vary_and_sit_on_the_tray(family):
    a = sample_scene(family, np.random.default_rng(1))
    b = sample_scene(family, np.random.default_rng(2))
    assert a.params != b.params
    assert any(p.removable for p in a.parts)
    assert any((family, p.group) in GROUP_PALETTES for p in a.parts)
    # rays straight down near the object's centre hit an upward face above the tray (the nut has a
    # hole in the middle, hence several offsets)
    hits = [cast(a, np.array([x, 0.0, 5.0]), np.array([0.0, 0.0, -1.0])) for x in (0.0, 0.25)]
    assert any(np.isfinite(t) and 5.0 - t > 0.05 and n[2] > 0.99 and part >= 0 for t, n, part in hits)
    same = sample_scene(family, np.random.default_rng(1))
    assert same.params == a.params
