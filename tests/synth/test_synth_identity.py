"""The generator's output is pinned: refactoring the synth package (or adding opt-in defect codes or
variation) must not change what the default and realistic presets render.

The pins (per-array means, ``tests/synth/data/render_pins.json``) were computed with the generator
before ``synth/scene.py`` was split (commit 215caba). A deliberate change of the rendered output must update them *and* bump ``GENERATOR_VERSION``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import pytest

from multiflow.synth import DEFAULT_DEFECTS, FAMILIES, VARIATIONS, render_sample

#: Per rendered array (images, masks, silhouettes of every code and view) its mean, computed with the
#: generator before ``synth/scene.py`` was split (commit 215caba; ML and LB when they were added).
#: Means rather than a byte hash: numpy's transcendental functions differ by an ulp between CPU
#: instruction sets (AVX2 vs AVX-512 dispatch), which can flip a rounded pixel; a changed shape, colour
#: or defect moves a 24 px image's mean by far more than ``TOL``.
PINS = json.loads((Path(__file__).parent / "data" / "render_pins.json").read_text())
TOL = 0.02  # 8-bit grey levels (images) or mask fraction x 255 (masks): ~ a dozen flipped pixel values


def digest(family: str, variation: str, codes: list[str | None], labels: bool = False) -> list[float]:
    lots, pose_jitter = VARIATIONS[variation]
    out: list[float] = []
    for code in codes:
        s = render_sample(family, defect=code, size=24, n_views=5, seed=11, sample_id=2, lots=lots,
                          pose_jitter=pose_jitter, labels=labels)
        for a in (s.images, s.masks, s.silhouettes):
            a = np.asarray(a)
            per_view = a.reshape(a.shape[0], -1).astype(np.float64)
            scale = 255.0 if a.dtype == bool else 1.0
            out += [round(float(m), 4) for m in per_view.mean(axis=1) * scale]
    return out


CODES = {"standard": [None, *DEFAULT_DEFECTS], "fm": ["FM"]}


def _check(key: str, got: list[float]) -> None:
    want = PINS[key]
    assert len(got) == len(want), key
    worst = max(abs(g - w) for g, w in zip(got, want))
    assert worst <= TOL, f"{key}: a rendered array's mean moved by {worst:.4f} (> {TOL})"


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("variation", sorted(VARIATIONS))
@pytest.mark.parametrize("codes", sorted(CODES))
def test_renders_are_pinned(family, variation, codes):
    _check(f"{family}/{variation}/{codes}", digest(family, variation, CODES[codes]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_new_cross_view_codes_are_pinned(family):
    """The opt-in cross-view codes ML and LB (realistic preset; LB in a line with label variants)."""
    _check(f"{family}/realistic/cross_view", digest(family, "realistic", ["ML", "LB"], labels=True))
