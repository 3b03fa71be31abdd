"""Image-score reducers and per-view calibration against independent numpy / scipy oracles."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from scipy import ndimage

from multiflow.engine.bundle import ScoringSpec
from multiflow.scoring import ImageScoreSpec, ScorePostprocess, ViewCalibration, image_score
from multiflow.scoring_post import smooth
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


# ------------------------------------------------------------------------------- calibration
def test_zscore_matches_numpy_and_equalises_spread():
    rng = np.random.default_rng(6)
    normal = np.stack([rng.normal(1, 0.1, 50), rng.normal(5, 3.0, 50)], axis=1)
    cal = ViewCalibration.fit(normal, "zscore")
    n = len(normal)
    log_sd = np.log(normal.std(axis=0, ddof=1))
    shrunk = np.exp(((n - 1) * log_sd + 2 * log_sd.mean()) / (n + 1))
    z = cal.apply(torch.from_numpy(normal)).numpy()
    np.testing.assert_allclose(z, (normal - normal.mean(0)) / shrunk, rtol=1e-12)
    assert 0.85 < z[:, 0].std() / z[:, 1].std() < 1.0 / 0.85


def test_zscore_tiny_n_is_finite():
    for normal in (np.array([[1.0, 2.0]]), np.array([[1.0, 2.0], [1.0, 2.0]])):
        cal = ViewCalibration.fit(normal, "zscore")
        out = cal.apply(np.array([[3.0, 0.0]])).numpy()
        assert np.isfinite(out).all() and out[0, 0] > 0 > out[0, 1]


def test_tail_levels_are_empirical_tail_probabilities():
    normal = np.array([[1.0, 0.0], [2.0, 0.0], [2.0, 1.0], [4.0, 3.0]])
    cal = ViewCalibration.fit(normal, "tail")
    got = cal.apply(normal).numpy()
    for j in range(2):
        for i in range(4):
            p = (normal[:, j] >= normal[i, j]).sum() / 5.0
            assert got[i, j] == pytest.approx(-np.log10(p), rel=1e-12)
    # between knots: linear interpolation of -log10 p
    mid = cal.apply(np.array([[3.0, 2.0]])).numpy()[0]
    assert mid[0] == pytest.approx(0.5 * (-np.log10(3 / 5) - np.log10(1 / 5)))  # between knots 2 and 4
    assert mid[1] == pytest.approx(0.5 * (-np.log10(2 / 5) - np.log10(1 / 5)))


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_tail_is_strictly_increasing_and_finite(n):
    rng = np.random.default_rng(n)
    normal = np.round(rng.gamma(2.0, size=(n, 3)) * [1, 10, 0.1], 1)  # ties and different spreads
    cal = ViewCalibration.fit(normal, "tail")
    grid = np.linspace(-50, 500, 4001)
    out = cal.apply(np.repeat(grid[:, None], 3, axis=1)).numpy()
    assert np.isfinite(out).all()
    assert (np.diff(out, axis=0) > 0).all()
    # beyond the largest normal score the tail grows linearly with slope 1 / (sigma ln 10)
    s_max = normal.max(0)
    far = cal.apply((s_max + 10 * np.array(cal.scale))[None]).numpy()[0]
    at = cal.apply(s_max[None]).numpy()[0]
    np.testing.assert_allclose(far - at, 10 / np.log(10), rtol=1e-10)


def test_calibration_dict_round_trip_and_map_axis():
    rng = np.random.default_rng(8)
    normal = rng.normal(size=(9, 3))
    for mode in ("none", "zscore", "tail"):
        cal = ViewCalibration.fit(normal, mode)
        back = ViewCalibration.from_dict(cal.to_dict())
        x = rng.normal(size=(5, 3)) * 3
        np.testing.assert_array_equal(back.apply(x).numpy(), cal.apply(x).numpy())
        maps = rng.normal(size=(2, 3, 4, 4))
        on_maps = cal.apply(maps, view_axis=1).numpy()
        per_pixel = cal.apply(np.moveaxis(maps, 1, -1)).numpy()
        np.testing.assert_allclose(on_maps, np.moveaxis(per_pixel, -1, 1))
    with pytest.raises(ConfigError):
        ViewCalibration.from_dict({"mode": "tail", "loc": [0.0], "scale": [1.0], "knots": [], "levels": []})
    with pytest.raises(ConfigError):
        ViewCalibration.from_dict({"mode": "bogus"})
    with pytest.raises(DataError):
        ViewCalibration.fit(np.zeros((0, 2)), "zscore")
    with pytest.raises(DataError):
        ViewCalibration.fit(normal, "zscore").apply(np.zeros((2, 4)))


def test_module_matches_functions_and_meta_round_trip():
    rng = np.random.default_rng(9)
    maps = torch.from_numpy(rng.normal(size=(4, 3, 6, 6))).float()
    fg = torch.from_numpy(rng.random((4, 3, 6, 6)) > 0.3).float()
    spec = ImageScoreSpec(name="topk_mean", k=0.1)
    cal = ViewCalibration.fit(rng.normal(size=(10, 3)), "tail")
    back = ScoringSpec.from_dict(json.loads(json.dumps(asdict(ScoringSpec(image_score=spec, calibration=cal)))))
    spec2, cal2 = back.image_score, back.calibration
    assert spec2 == spec and cal2 == cal
    raw, calibrated = ScorePostprocess(spec=spec2, calibration=cal2)(maps, fg)
    np.testing.assert_allclose(raw.numpy(), image_score(maps, fg, spec).numpy(), rtol=1e-6)
    np.testing.assert_allclose(calibrated.numpy(), cal.apply(raw.double()).numpy(), rtol=1e-5)
    assert ScoringSpec.from_dict({}) == ScoringSpec()  # bundles without the fields score as the paper
