"""Object families and defect sampling of multiflow.synth.scene."""

from __future__ import annotations

import numpy as np
import pytest

from multiflow.synth.scene import (
    DEFECT_CODES,
    FAMILIES,
    GROUP_PALETTES,
    canonical_class,
    cast,
    grain_noise,
    sample_defect,
    sample_scene,
    texture_noise,
)


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


@pytest.mark.parametrize("code", sorted(DEFECT_CODES))
def test_every_defect_code_can_be_sampled(code):
    scene = sample_scene("toy_brick", np.random.default_rng(3))
    d = sample_defect(scene, code, np.random.default_rng(4))
    assert d.code == code and 0 <= d.part < len(scene.parts)
    if code == "QS":
        assert scene.removed == d.part and scene.parts[d.part].removable
        assert len(scene.visible_parts()) == len(scene.parts) - 1
    elif code == "CI":
        assert np.abs(d.colour - scene.parts[d.part].material.albedo).max() > 0.1
    elif code == "YW":
        assert d.extra_parts and scene.removed == -1
    else:
        # the anchor lies on the surface of the part it names
        t, _, part = cast(scene, d.anchor + 0.5 * d.normal, -d.normal)
        assert part == d.part and t == pytest.approx(0.5, abs=1e-3)
        assert abs(float(d.tangent @ d.normal)) < 1e-5
    assert d.to_dict()["type"] == DEFECT_CODES[code]


def test_noise_ranges_and_aliases():
    p = np.random.default_rng(0).uniform(-1, 1, (4000, 3)).astype(np.float32)
    waves = sample_scene("bottle_cap", np.random.default_rng(0)).waves
    tn = texture_noise(p, waves)
    gn = grain_noise(p)
    assert np.abs(tn).max() <= np.sqrt(2) + 1e-5 and tn.std() > 0.2
    assert gn.min() >= -1 and gn.max() <= 1 and abs(float(gn.mean())) < 0.1 and gn.std() > 0.4
    assert canonical_class("brick") == "toy_brick"
    with pytest.raises(ValueError, match="unknown synthetic class"):
        canonical_class("teapot")
