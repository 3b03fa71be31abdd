"""Sampling the 3D surface defects: multiflow.synth.defects."""

from __future__ import annotations

import numpy as np
import pytest

from multiflow.synth.defects import DEFECT_CODES, cast, sample_defect
from multiflow.synth.scene import sample_scene


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
