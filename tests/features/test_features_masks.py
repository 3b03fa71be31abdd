"""Mask providers, the paper's post-processing and the mask cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multiflow.errors import ConfigError, DataError
from multiflow.features.masks import (
    NoMasks,
    ThresholdMasks,
    compute_masks,
    make_provider,
    postprocess_mask,
    reduce_to_grid,
)

from features_fakes import FakeDataset


def _object_on_gradient(seed=0, size=128):
    """An elliptical object on a colour gradient, with sensor noise and dark dust specks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    bg = np.stack([0.3 + 0.4 * xx / size, 0.35 + 0.3 * yy / size, 0.5 - 0.2 * xx / size], -1)
    obj = ((yy - 60) ** 2 / 40**2 + (xx - 70) ** 2 / 30**2) < 1
    img = bg.copy()
    img[obj] = [0.8, 0.3, 0.15]
    img += rng.normal(0, 0.02, img.shape)
    dust = 0
    while dust < 20:
        y, x = rng.integers(3, size - 5, 2)
        if not obj[max(0, y - 3) : y + 5, max(0, x - 3) : x + 5].any():
            img[y : y + 2, x : x + 2] = 0.05
            dust += 1
    return np.clip(img, 0, 1).astype(np.float32), obj


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_threshold_provider_segments_object_on_gradient_with_dust():
    for seed in range(3):
        img, obj = _object_on_gradient(seed)
        mask = ThresholdMasks()(img)
        assert _iou(mask, obj) > 0.95
        # a global threshold on the raw colour would fail: the gradient spans more than the noise
        assert not mask[:10, :10].any() and not mask[-10:, -10:].any()


def test_threshold_provider_on_blank_image_is_empty():
    img = np.full((32, 32, 3), 0.5, np.float32)
    assert not ThresholdMasks()(img).any()
    with pytest.raises(ConfigError):
        ThresholdMasks(border=0.7)


def test_post_processing_fills_holes():
    yy, xx = np.mgrid[0:64, 0:64]
    ring = ((yy - 32) ** 2 + (xx - 32) ** 2 < 20**2) & ((yy - 32) ** 2 + (xx - 32) ** 2 >= 10**2)
    full, _ = postprocess_mask(ring, dilation=1)
    disk = (yy - 32) ** 2 + (xx - 32) ** 2 < 20**2
    np.testing.assert_array_equal(full, disk)
    # a notch open to the outside is not a hole: unchanged
    c = disk.copy()
    c[28:36, 32:] = False
    np.testing.assert_array_equal(postprocess_mask(c, dilation=1)[0], c)


def test_dilation_is_exactly_8x8():
    m = np.zeros((40, 40), bool)
    m[20, 20] = True
    full, _ = postprocess_mask(m)
    ys, xs = np.nonzero(full)
    assert full.sum() == 64
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (8, 8)
    # a straight edge moves outwards by 4 pixels on one side and 3 on the other (8 = 4 + 1 + 3)
    m = np.zeros((40, 40), bool)
    m[15:25, 15:25] = True
    ys, xs = np.nonzero(postprocess_mask(m)[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (11, 27, 11, 27)
    assert postprocess_mask(m)[0].sum() == 17 * 17


def test_grid_reduction_sizes_and_rules():
    m = np.zeros((64, 96), bool)
    m[:, :48] = True
    _, g = postprocess_mask(m, (2, 3), dilation=1)
    assert g.shape == (2, 3)
    # cells are 32 x 32: columns 0 (all fg), 1 (half fg -> not > 0.5), 2 (none)
    assert g.tolist() == [[True, False, False]] * 2
    m[:, 48:49] = True  # now column 1 is 17/32 foreground
    assert reduce_to_grid(m, (2, 3)).tolist() == [[True, True, False]] * 2
    assert reduce_to_grid(m, (2, 3), mode="nearest").tolist() == [[True, True, False]] * 2
    # non-divisible sizes: every pixel belongs to exactly one cell
    rng = np.random.default_rng(0)
    r = rng.random((50, 37)) > 0.3
    assert reduce_to_grid(r, (7, 5)).shape == (7, 5)
    assert reduce_to_grid(np.ones((50, 37), bool), (7, 5)).all()
    assert not reduce_to_grid(np.zeros((50, 37), bool), (7, 5)).any()
    with pytest.raises(ConfigError):
        reduce_to_grid(r, (7, 5), mode="bicubic")


def test_none_and_file_providers(tmp_path):
    img = np.zeros((10, 12, 3), np.float32)
    assert NoMasks()(img).shape == (10, 12) and NoMasks()(img).all()
    image_root, mask_root = tmp_path / "realiad_64", tmp_path / "silhouettes_64"
    ipath = image_root / "cls" / "OK" / "S0001" / "cls_0001_OK_C1_2023.jpg"
    mpath = mask_root / "cls" / "OK" / "S0001" / "cls_0001_OK_C1_2023.png"
    ipath.parent.mkdir(parents=True)
    mpath.parent.mkdir(parents=True)
    ipath.write_bytes(b"")
    want = np.zeros((5, 6), bool)
    want[1:4, 2:5] = True
    Image.fromarray(want.astype(np.uint8) * 255).save(mpath)
    prov = make_provider("file", mask_root=mask_root, image_root=image_root)
    got = prov(img, str(ipath))  # mask 5x6 resized (nearest) to the 10x12 image
    np.testing.assert_array_equal(got, want.repeat(2, 0).repeat(2, 1))
    mpath.unlink()
    with pytest.raises(DataError, match="cls_0001_OK_C1_2023.png"):
        prov(img, str(ipath))
    with pytest.raises(ConfigError):
        make_provider("mvanet")


def test_compute_masks_cached(tmp_path):
    imgs = np.stack([np.stack([_object_on_gradient(s * 2 + v, 64)[0] for v in range(2)]) for s in range(3)])
    ds = FakeDataset(tmp_path / "data", imgs)
    ds.image_size = (64, 64)
    cm = compute_masks(ds, ThresholdMasks(), tmp_path / "cache", grid=(4, 4), keep_full=True, progress=False)
    assert cm.grid.shape == (3, 2, 4, 4) and cm.grid.dtype == bool
    assert cm.full.shape == (3, 2, 64, 64)
    for s in range(3):
        for v in range(2):
            expect_full, expect_grid = postprocess_mask(ThresholdMasks()(imgs[s, v]), (4, 4))
            np.testing.assert_array_equal(cm.full[s, v], expect_full)
            np.testing.assert_array_equal(cm.grid[s, v], expect_grid)
    loads = ds.loads
    again = compute_masks(ds, ThresholdMasks(), tmp_path / "cache", grid=(4, 4), keep_full=True, progress=False)
    assert again.path == cm.path and ds.loads == loads
    other = compute_masks(ds, NoMasks(), tmp_path / "cache", grid=(4, 4), progress=False)
    assert other.path != cm.path and other.grid.all() and other.full is None


def test_margin_grows_by_a_fraction_of_the_bounding_box_diagonal():
    m = np.zeros((64, 64), dtype=bool)
    m[20:30, 10:50] = True  # 10 x 40 box: diagonal sqrt(10^2 + 40^2)
    diag = np.hypot(10, 40)
    full, _ = postprocess_mask(m, dilation=1, margin=0.1)
    # oracle: brute-force Euclidean distance from every pixel to the nearest foreground pixel
    yy, xx = np.mgrid[0:64, 0:64]
    fy, fx = np.nonzero(m)
    dist = np.sqrt((yy[..., None] - fy) ** 2 + (xx[..., None] - fx) ** 2).min(-1)
    np.testing.assert_array_equal(full, dist <= 0.1 * diag)
    assert full.sum() > m.sum() and (full >= m).all()
    # scaled with the object: the same shape twice as large grows by twice as many pixels
    big = np.zeros((128, 128), dtype=bool)
    big[40:60, 20:100] = True
    grown = postprocess_mask(big, dilation=1, margin=0.1)[0]
    assert grown[:, 60].sum() - 20 == 2 * (full[:, 30].sum() - 10)
    # no margin = the paper's masks; an empty mask stays empty; negative margins are refused
    np.testing.assert_array_equal(postprocess_mask(m, dilation=1, margin=0.0)[0], m)
    assert not postprocess_mask(np.zeros((8, 8), bool), margin=0.5)[0].any()
    with pytest.raises(ConfigError):
        postprocess_mask(m, margin=-0.1)


def test_margin_is_part_of_the_mask_cache_key(tmp_path):
    imgs = np.stack([np.stack([_object_on_gradient(s + v, 64)[0] for v in range(2)]) for s in range(2)])
    ds = FakeDataset(tmp_path / "data", imgs)
    ds.image_size = (64, 64)
    plain = compute_masks(ds, ThresholdMasks(), tmp_path / "cache", grid=(8, 8), progress=False)
    wide = compute_masks(ds, ThresholdMasks(), tmp_path / "cache", grid=(8, 8), margin=0.2, progress=False)
    assert wide.path != plain.path and "margin" not in plain.key["post"]
    assert wide.grid.sum() > plain.grid.sum() and (wide.grid >= plain.grid).all()
    expect = postprocess_mask(ThresholdMasks()(imgs[1, 0]), (8, 8), margin=0.2)[1]
    np.testing.assert_array_equal(wide.grid[1, 0], expect)
