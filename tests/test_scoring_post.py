"""Image-score reducers against independent numpy / scipy oracles; the removed per-view calibrations."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from scipy import ndimage

from multiflow.engine.bundle import ScoringSpec
from multiflow.scoring import ImageScoreSpec, ScorePostprocess, image_score
from multiflow.scoring.image_score import smooth
from multiflow.errors import ConfigError, DataError


def _maps_and_masks(seed=0, n=3, v=2, h=5, w=6, ties=False):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, v, h, w))
    if ties:
        maps = np.round(maps, 0)  # many equal values
    fg = rng.random((n, v, h, w)) > 0.4
    fg[0, 1] = False  # one view without foreground: every pixel counts
    return maps, fg


def _fg_values(maps, fg, i, j):
    sel = fg[i, j] if fg[i, j].any() else np.ones_like(fg[i, j])
    return maps[i, j][sel]


@pytest.mark.parametrize("ties", [False, True])
def test_max_equals_foreground_max(ties):
    maps, fg = _maps_and_masks(ties=ties)
    got = image_score(torch.from_numpy(maps), torch.from_numpy(fg)).numpy()
    want = np.array([[_fg_values(maps, fg, i, j).max() for j in range(2)] for i in range(3)])
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [0.01, 0.3, 1.0, 4.0, 1000.0])
def test_topk_mean_against_sorting(k, ties):
    maps, fg = _maps_and_masks(seed=1, ties=ties)
    got = image_score(maps, fg, ImageScoreSpec(name="topk_mean", k=k)).numpy()
    for i in range(3):
        for j in range(2):
            vals = np.sort(_fg_values(maps, fg, i, j))[::-1]
            kk = math.ceil(k * len(vals)) if k < 1 else min(int(k), len(vals))
            assert got[i, j] == pytest.approx(vals[: max(kk, 1)].mean(), rel=1e-12)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("q", [0.0, 0.37, 0.9, 0.99, 1.0])
def test_quantile_against_numpy(q, ties):
    maps, fg = _maps_and_masks(seed=2, ties=ties)
    got = image_score(maps, fg, ImageScoreSpec(name="quantile", q=q)).numpy()
    want = np.array([[np.quantile(_fg_values(maps, fg, i, j), q) for j in range(2)] for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_background_never_counts():
    maps, fg = _maps_and_masks(seed=3)
    spiked = maps.copy()
    spiked[~fg] = 1e6  # huge values only in the background of views that have a foreground
    spiked[0, 1] = maps[0, 1]  # (the view without foreground keeps its values)
    for spec in [ImageScoreSpec(), ImageScoreSpec(name="topk_mean", k=0.2), ImageScoreSpec(name="quantile", q=1.0)]:
        np.testing.assert_allclose(image_score(spiked, fg, spec).numpy(), image_score(maps, fg, spec).numpy())


@pytest.mark.parametrize("sigma", [0.7, 1.5, 2.0])
def test_smooth_against_scipy(sigma):
    rng = np.random.default_rng(4)
    img = rng.normal(size=(2, 17, 19))
    got = smooth(torch.from_numpy(img), sigma).numpy()
    want = np.stack([ndimage.gaussian_filter(x, sigma, mode="mirror", truncate=4.0) for x in img])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_smoothed_max_against_scipy_on_upsampled_map():
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(2, 3, 4, 4))
    fg = np.ones_like(maps, dtype=bool)
    fg[..., 0, :] = False
    size, sigma = 16, 1.2
    got = image_score(maps, fg, ImageScoreSpec(name="smoothed_max", sigma=sigma), image_size=size).numpy()
    up = torch.nn.functional.interpolate(torch.from_numpy(maps).reshape(-1, 1, 4, 4), size=(size, size),
                                         mode="bilinear", align_corners=False).reshape(2, 3, size, size).numpy()
    fg_up = np.ones((size, size), dtype=bool)
    fg_up[:4] = False  # row 0 of the 4x4 grid covers rows 0-3 (bilinear weight of row 1 >= 0.5 from row 4 on)
    for i in range(2):
        for j in range(3):
            sm = ndimage.gaussian_filter(up[i, j], sigma, mode="mirror", truncate=4.0)
            assert got[i, j] == pytest.approx(sm[fg_up].max(), rel=1e-10)
    # the smoothed max of a single hot pixel is below the raw max (smoothing spreads it)
    spike = np.zeros((1, 1, 8, 8))
    spike[0, 0, 4, 4] = 10.0
    assert image_score(spike, None, ImageScoreSpec(name="smoothed_max", sigma=2.0, size=8)).item() < 10.0 * 0.2


def test_bad_inputs():
    with pytest.raises(ConfigError):
        ImageScoreSpec(name="median")
    with pytest.raises(ConfigError):
        ImageScoreSpec(name="quantile", q=1.5)
    with pytest.raises(DataError):
        image_score(np.zeros((2, 3, 3)), np.ones((2, 3, 4)))
    with pytest.raises(DataError):
        image_score(np.full((1, 2, 2), np.nan))
    with pytest.raises(ConfigError):
        image_score(np.zeros((1, 2, 2)), spec=ImageScoreSpec(name="smoothed_max"))


# ------------------------------------------------------------------- removed calibration
@pytest.mark.parametrize("mode", ["zscore", "tail"])
def test_removed_calibrations_are_refused_with_the_reason(mode):
    """zscore and tail measured worse than no calibration and were removed: a scoring section, a
    configuration or an override that names one is refused, naming the mode and why."""
    from multiflow.config import load_config
    from multiflow.scoring import check_overrides

    with pytest.raises(ConfigError, match=f"{mode}.*removed.*measured worse"):
        ScoringSpec.from_dict({"calibration": {"mode": mode, "loc": [0.0], "scale": [1.0]}})
    with pytest.raises(ConfigError, match="eval.calibration.*removed"):
        load_config(None, [f"eval.calibration={mode}"])
    with pytest.raises(ConfigError, match="removed"):
        check_overrides({"calibration": mode})
    # "none" (what every model scores with) still loads, as a mapping of format 2 or a plain name
    assert ScoringSpec.from_dict({"calibration": {"mode": "none", "loc": [], "scale": [], "knots": [],
                                                  "levels": []}}) == ScoringSpec()
    assert check_overrides({"calibration": "none"}) == {"calibration": "none"}


def test_module_matches_functions_and_meta_round_trip():
    rng = np.random.default_rng(9)
    maps = torch.from_numpy(rng.normal(size=(4, 3, 6, 6))).float()
    fg = torch.from_numpy(rng.random((4, 3, 6, 6)) > 0.3).float()
    spec = ImageScoreSpec(name="topk_mean", k=0.1)
    back = ScoringSpec.from_dict(json.loads(json.dumps(asdict(ScoringSpec(image_score=spec)))))
    assert back.image_score == spec
    scores = ScorePostprocess(spec=back.image_score)(maps, fg)
    np.testing.assert_allclose(scores.numpy(), image_score(maps, fg, spec).numpy(), rtol=1e-6)
    assert ScoringSpec.from_dict({}) == ScoringSpec()  # bundles without the fields score as the paper


def test_image_score_defaults_live_in_the_spec_only():
    """The configuration's image-score defaults are DEFAULT_IMAGE_SCORE's, and the reducers take their
    parameters from the spec (smoothed_max has no sigma default of its own to drift from it)."""
    import inspect

    from multiflow.config import EvalConfig
    from multiflow.scoring import DEFAULT_IMAGE_SCORE
    from multiflow.scoring.image_score import smoothed_max, topk_mean, quantile

    assert EvalConfig().image_score_spec() == DEFAULT_IMAGE_SCORE
    for fn in (smoothed_max, topk_mean, quantile):
        params = list(inspect.signature(fn).parameters.values())[2:]
        assert all(p.default is inspect.Parameter.empty for p in params), fn.__name__
