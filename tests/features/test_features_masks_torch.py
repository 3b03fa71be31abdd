"""The batched torch path of the foreground masks, step by step against the NumPy/SciPy/scikit-image
reference (the oracle: ``ThresholdMasks(backend="numpy")``, ``postprocess_mask``, scipy, skimage)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.cluster.vq import kmeans2
from skimage.filters import threshold_otsu

from multiflow.errors import ConfigError
from multiflow.features import masks_torch as mt
from multiflow.features.masks import (
    NoMasks,
    ThresholdMasks,
    batch_view_masks,
    compute_masks,
    keep_large_components_np,
    postprocess_mask,
    reduce_to_grid,
    view_mask,
)

from features_fakes import FakeDataset

STEPS = ["torch", "scipy"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _blobs(seed: int, n: int = 6, size: tuple[int, int] = (48, 56), density: float = 0.5) -> np.ndarray:
    """``(n, H, W)`` bool: thresholded smoothed noise (blobs with holes, specks, border contact)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        noise = ndimage.gaussian_filter(rng.random(size), 1.0 + i % 3)
        out.append(noise > np.quantile(noise, 1 - density))
    return np.stack(out)


def _edge_masks(h: int = 12, w: int = 15) -> np.ndarray:
    """Empty, all-foreground, a single pixel (inside and in a corner), a ring (one hole)."""
    empty = np.zeros((h, w), bool)
    single, corner, ring = empty.copy(), empty.copy(), empty.copy()
    single[5, 7] = True
    corner[0, w - 1] = True
    ring[2:9, 3:10] = True
    ring[4:7, 5:8] = False
    return np.stack([empty, ~empty, single, corner, ring])


def _spiral(size: int = 41) -> np.ndarray:
    """One long 4-connected spiral corridor: a geodesic far longer than the image side."""
    m = np.zeros((size, size), bool)
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top <= bottom and left <= right:
        m[top, left : right + 1] = True
        m[top : bottom + 1, right] = True
        if top + 2 <= bottom:
            m[bottom, left : right + 1] = True
        if left + 2 <= right and top + 2 <= bottom:
            m[top + 2 : bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom and left - 2 >= 0:
            m[top, left - 2 : left] = True
    return m


# ----------------------------------------------------------------------------- per step


def test_otsu_equals_skimage_on_random_images():
    rng = np.random.default_rng(0)
    imgs = [
        rng.random((40, 50)),
        rng.normal(0, 1, (40, 50)) ** 2,
        np.concatenate([rng.normal(0.2, 0.05, 900), rng.normal(0.7, 0.1, 1100)]).reshape(40, 50),
        rng.integers(0, 7, (40, 50)) / 6.0,  # few values, many on bin edges: ties in the histogram
        np.round(rng.random((40, 50)) * 256) / 256,
    ]
    x = torch.from_numpy(np.stack(imgs))
    got = mt.otsu_threshold(x).numpy()
    want = np.array([threshold_otsu(im) for im in imgs])
    np.testing.assert_array_equal(got, want)
    const = torch.full((1, 5, 5), 0.25, dtype=torch.float64)  # one value: the value itself
    assert mt.otsu_threshold(const).item() == 0.25


def test_histogram_equals_numpy_with_values_on_the_edges():
    rng = np.random.default_rng(5)
    imgs = []
    for lo, hi in ((0.1, 0.8), (0.42654310306871945, 1.1119879058923028), (1.2530809568010897, 21.299860675726446),
                   (0.2, 0.2 + 1e-9)):
        # every edge and its neighbours: the scaled value puts some of them a bin too low or too high
        edges = np.linspace(lo, hi, 257)
        near = np.concatenate([edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf)])
        imgs.append(np.concatenate([np.clip(near, lo, hi), rng.uniform(lo, hi, 229)]))
    x = np.stack(imgs)
    counts, edges = mt.histogram(torch.from_numpy(x))
    for i, row in enumerate(x):
        want_counts, want_edges = np.histogram(row, bins=256)
        np.testing.assert_array_equal(edges[i].numpy(), want_edges)
        np.testing.assert_array_equal(counts[i].numpy(), want_counts)


def test_kmeans_pp_equals_scipy_kmeans2():
    rng = np.random.default_rng(1)
    data = np.stack([
        np.concatenate([rng.normal(c, 0.03, (70, 3)) for c in rng.random((5, 3))]) for _ in range(3)
    ])
    got = mt.kmeans_pp(torch.from_numpy(data), 6, seed=3).numpy()
    for i in range(3):
        want, _ = kmeans2(data[i], 6, seed=np.random.default_rng(3), minit="++")
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", STEPS)
def test_border_centres_equal_the_reference(steps):
    cols = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.1, 0.2, 0.3]], dtype=torch.float64)
    few = cols[torch.arange(30) % 3]  # two colours: the colours themselves, no k-means
    many = torch.from_numpy(np.random.default_rng(4).random((30, 3)))
    got = mt.border_centres(torch.stack([few, many]), 4, seed=1, steps=steps)
    assert got.shape == (2, 4, 3)
    assert {tuple(r) for r in got[0].tolist()} == {(0.1, 0.2, 0.3), (0.5, 0.5, 0.5)}
    want, _ = kmeans2(many.numpy(), 4, seed=np.random.default_rng(1), minit="++")
    np.testing.assert_allclose(got[1].numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(40, 33), (3, 5), (1, 9)])
def test_gaussian_blur_equals_scipy(shape):
    x = np.random.default_rng(2).random((2, *shape))
    for sigma in (0.6, 1.0, 2.5):
        got = mt.gaussian_blur(torch.from_numpy(x), sigma).numpy()
        want = np.stack([ndimage.gaussian_filter(im, sigma) for im in x])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_label_components_partition_equals_scipy(connectivity):
    spiral = np.zeros((1, 48, 56), bool)
    spiral[0, :, :48] = _spiral(48)
    masks = np.concatenate([_blobs(3, density=0.45), _edge_masks(48, 56), spiral])
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    lab = mt.label_components(torch.from_numpy(masks), connectivity).numpy()
    for m, got in zip(masks, lab):
        want, n = ndimage.label(m, structure=structure)
        assert ((got > 0) == m).all()
        pairs = set(zip(want[m].tolist(), got[m].tolist()))
        assert len(pairs) == n == len({g for _, g in pairs})  # a bijection between the labellings
        # the label is 1 + the largest row-major index of the component
        for k in range(1, n + 1):
            idx = np.flatnonzero(want.ravel() == k)
            assert (got.ravel()[idx] == idx.max() + 1).all()


def test_label_components_on_a_spiral_and_edge_cases():
    spiral = _spiral(41)
    lab = mt.label_components(torch.from_numpy(spiral[None]), 4)[0].numpy()
    assert ndimage.label(spiral)[1] == 1 and len(np.unique(lab[spiral])) == 1
    edges = _edge_masks()
    lab = mt.label_components(torch.from_numpy(edges), 8).numpy()
    assert (lab[0] == 0).all() and (lab[1] == lab[1].size).all()
    assert lab[2].sum() == 5 * 15 + 7 + 1 and lab[3].sum() == 15


@pytest.mark.parametrize("steps", STEPS)
def test_fill_holes_equals_scipy(steps):
    masks = np.concatenate([_blobs(4, density=0.6), _blobs(5, density=0.3), _edge_masks(48, 56)])
    got = mt.fill_holes(torch.from_numpy(masks), steps=steps).numpy()
    want = np.stack([ndimage.binary_fill_holes(m) for m in masks])
    np.testing.assert_array_equal(got, want)
    assert (want.sum((1, 2)) > masks.sum((1, 2))).any()  # some holes were filled


@pytest.mark.parametrize("steps", STEPS)
def test_keep_large_components_equals_numpy(steps):
    masks = np.concatenate([_blobs(6, density=0.3), _edge_masks(48, 56)])
    for fraction in (0.02, 0.3, 1.0):
        got = mt.keep_large_components(torch.from_numpy(masks), fraction, steps=steps).numpy()
        want = np.stack([keep_large_components_np(m, fraction) for m in masks])
        np.testing.assert_array_equal(got, want)
    assert (want.sum((1, 2)) < masks.sum((1, 2))).any()  # some components were dropped


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8, 9])
def test_dilate_square_equals_scipy(size):
    masks = np.concatenate([_blobs(7, density=0.03), _edge_masks(48, 56)])
    got = mt.dilate_square(torch.from_numpy(masks), size).numpy()
    want = np.stack([ndimage.binary_dilation(m, structure=np.ones((size, size), bool)) if size > 1 else m
                     for m in masks])
    np.testing.assert_array_equal(got, want)


def test_margin_equals_numpy_postprocessing():
    masks = np.concatenate([_blobs(8, density=0.05), _edge_masks(48, 56)])
    for margin in (0.03, 0.1, 0.4):
        got = mt.add_margin(torch.from_numpy(masks), margin).numpy()
        want = np.stack([postprocess_mask(m, fill_holes=False, dilation=1, margin=margin)[0] for m in masks])
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["area", "nearest"])
def test_reduce_to_grid_equals_numpy(mode):
    masks = np.concatenate([_blobs(9, density=0.5), _edge_masks(48, 56)])
    for grid in ((6, 7), (5, 9), (48, 56), (1, 1)):
        got = mt.reduce_to_grid(torch.from_numpy(masks), grid, mode).numpy()
        want = np.stack([reduce_to_grid(m, grid, mode) for m in masks])
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ConfigError):
        mt.reduce_to_grid(torch.from_numpy(masks), (60, 60), "area")


@pytest.mark.parametrize("steps", STEPS)
def test_postprocess_masks_equals_numpy(steps):
    masks = np.concatenate([_blobs(10, density=0.3), _edge_masks(48, 56)])
    for margin in (0.0, 0.05):
        full, grid = mt.postprocess_masks(torch.from_numpy(masks), (6, 7), margin=margin, steps=steps)
        for m, f, g in zip(masks, full.numpy(), grid.numpy()):
            want_f, want_g = postprocess_mask(m, (6, 7), margin=margin)
            np.testing.assert_array_equal(f, want_f)
            np.testing.assert_array_equal(g, want_g)


# ----------------------------------------------------------------------------- the provider


@pytest.fixture(scope="module")
def renders():
    """Every synthetic family, a normal and a defective object, 3 views at 96 px: ``(F*2*3, 96, 96, 3)``."""
    from multiflow.synth import FAMILIES, render_sample

    out = [render_sample(fam, defect=d, size=96, n_views=3, seed=2).images for fam in sorted(FAMILIES)
           for d in (None, "HS")]
    return np.concatenate(out)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("steps", STEPS)
def test_threshold_masks_match_the_reference_on_synthetic_renders(renders, precision, steps):
    ref = ThresholdMasks(backend="numpy")
    want = [ref(im) for im in renders]
    provider = ThresholdMasks(precision=precision)
    raw = provider.batch(torch.from_numpy(renders).permute(0, 3, 1, 2), steps=steps).numpy()
    grid = (12, 12)
    full, g = mt.postprocess_masks(torch.from_numpy(raw), grid, steps=steps)
    cells = 0
    for w, r, f, gg in zip(want, raw, full.numpy(), g.numpy()):
        assert w.any() and _iou(r, w) >= (0.99 if precision == "float32" else 0.999)
        want_f, want_g = postprocess_mask(w, grid)
        assert _iou(f, want_f) >= 0.99
        cells += int((gg != want_g).sum())
    assert cells <= 0.01 * len(want) * grid[0] * grid[1]  # grid masks: at most 1 % of the cells differ


def test_threshold_masks_edge_cases():
    blank = np.full((2, 32, 32, 3), 0.5, np.float32)
    assert not ThresholdMasks().batch(torch.from_numpy(blank).permute(0, 3, 1, 2)).any()
    # a bright square on a dark tray, as uint8: one object, as the reference finds it
    img = np.full((40, 40, 3), 30, np.uint8)
    img[12:30, 10:25] = 200
    got = ThresholdMasks().batch(torch.from_numpy(img).permute(2, 0, 1)[None])[0].numpy()
    np.testing.assert_array_equal(got, ThresholdMasks(backend="numpy")(img))
    assert got[15:27, 13:22].all() and not got[:8].any()
    assert ThresholdMasks().batch(torch.zeros(0, 3, 8, 8)).shape == (0, 8, 8)
    with pytest.raises(ValueError):
        ThresholdMasks().batch(torch.zeros(2, 4, 8, 8))
    for bad in ({"backend": "cupy"}, {"precision": "float16"}, {"keep_fraction": 1.5}):
        with pytest.raises(ConfigError):
            ThresholdMasks(**bad)


def test_cache_keys_tell_the_backends_apart():
    numpy_key = ThresholdMasks(backend="numpy").key()
    assert numpy_key == {  # the key caches were written under before the torch path existed
        "provider": "threshold", "border": 0.04, "sigma": 1.0, "otsu_scale": 0.7, "clusters": 12, "seed": 0,
        "min_contrast": 0.04, "keep_fraction": 0.02,
    }
    torch_key = ThresholdMasks().key()
    assert torch_key == {**numpy_key, "backend": "torch", "precision": "float32"}
    assert ThresholdMasks(precision="float64").key() != torch_key


def test_batch_view_masks_equal_view_mask_for_both_paths(renders):
    imgs = torch.from_numpy(renders[:6]).permute(0, 3, 1, 2).reshape(2, 3, 3, 96, 96)
    for provider in (ThresholdMasks(), NoMasks()):  # batched, and view by view
        full, grid = batch_view_masks(provider, imgs, (8, 8), margin=0.02)
        assert full.shape == (2, 3, 96, 96) and grid.shape == (2, 3, 8, 8) and full.dtype == torch.bool
        for b in range(2):
            for v in range(3):
                f, g = view_mask(provider, renders[b * 3 + v], None, (8, 8), margin=0.02)
                np.testing.assert_array_equal(full[b, v].numpy(), f)
                np.testing.assert_array_equal(grid[b, v].numpy(), g)
    with pytest.raises(ValueError):
        batch_view_masks(ThresholdMasks(), imgs[0], (8, 8))


def test_compute_masks_torch_path_matches_the_reference(tmp_path, renders):
    imgs = (renders[:6].astype(np.float32) / 255).reshape(2, 3, 96, 96, 3)
    ds = FakeDataset(tmp_path / "data", imgs)
    ds.image_size = (96, 96)
    fast = compute_masks(ds, ThresholdMasks(), tmp_path / "cache", grid=(8, 8), keep_full=True, progress=False,
                         device="cpu")
    ref = compute_masks(ds, ThresholdMasks(backend="numpy"), tmp_path / "cache", grid=(8, 8), keep_full=True,
                        progress=False)
    assert fast.path != ref.path  # the backends do not share cache entries
    for s in range(2):
        for v in range(3):
            assert _iou(fast.full[s, v], ref.full[s, v]) >= 0.99
            assert (fast.grid[s, v] != ref.grid[s, v]).sum() <= 1


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 3), (2, 7), (9, 9), (30, 4)])
def test_threshold_masks_on_tiny_images_equal_the_reference(shape):
    """Images smaller than the blur and the border frame: one pixel, one row, a frame that is everything."""
    rng = np.random.default_rng(sum(shape))
    noise = rng.random((*shape, 3)).astype(np.float32)
    spot = np.full((*shape, 3), 0.2, np.float32)
    spot[shape[0] // 2, shape[1] // 2] = [0.9, 0.9, 0.1]
    for img in (noise, spot):
        want = ThresholdMasks(backend="numpy")(img)
        for precision in ("float32", "float64"):
            for steps in STEPS:
                got = ThresholdMasks(precision=precision).batch(
                    torch.from_numpy(img).permute(2, 0, 1)[None], steps=steps)[0].numpy()
                np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_view_masks_on_cuda_match_the_cpu(renders):
    imgs = torch.from_numpy(renders).permute(0, 3, 1, 2).float().div(255).reshape(-1, 3, 3, 96, 96)
    for precision in ("float32", "float64"):
        provider = ThresholdMasks(precision=precision)
        full_cpu, grid_cpu = batch_view_masks(provider, imgs, (12, 12))
        full_gpu, grid_gpu = batch_view_masks(provider, imgs.cuda(), (12, 12), margin=0.0)
        assert full_gpu.is_cuda and grid_gpu.is_cuda
        for a, b in zip(full_gpu.cpu().reshape(-1, 96, 96).numpy(), full_cpu.reshape(-1, 96, 96).numpy()):
            assert _iou(a, b) >= 0.99
        assert (grid_gpu.cpu() != grid_cpu).sum() <= 0.01 * grid_cpu.numel()
