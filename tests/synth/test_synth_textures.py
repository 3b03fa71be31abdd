"""Procedural textures: multiflow.synth.textures."""

from __future__ import annotations

import numpy as np

from multiflow.synth.scene import sample_scene
from multiflow.synth.textures import grain_noise, texture_noise


def test_noise_ranges():
    p = np.random.default_rng(0).uniform(-1, 1, (4000, 3)).astype(np.float32)
    waves = sample_scene("bottle_cap", np.random.default_rng(0)).waves
    tn = texture_noise(p, waves)
    gn = grain_noise(p)
    assert np.abs(tn).max() <= np.sqrt(2) + 1e-5 and tn.std() > 0.2
    assert gn.min() >= -1 and gn.max() <= 1 and abs(float(gn.mean())) < 0.1 and gn.std() > 0.4
