"""Robust image/mask I/O: conversions, resizing, flips, and every bad file a DataError."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multiflow.data.images import apply_flip, load_image, load_mask, resolve_inside
from multiflow.errors import ConfigError, DataError


def save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    Image.fromarray(arr, mode=mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def test_rgb_png_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    img, native = load_image(save(tmp_path / "a.png", arr))
    assert native == (5, 7) and img.shape == (3, 5, 7) and img.dtype == torch.float32
    assert torch.equal(img, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_greyscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    img, _ = load_image(save(tmp_path / "g.png", arr))
    assert img.shape == (3, 3, 4)
    for c in range(3):
        assert torch.equal(img[c], torch.from_numpy(arr).float() / 255)


def test_rgba_is_composited_over_black(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[..., :3] = 200
    arr[..., 3] = [[0, 255], [128, 255]]
    img, _ = load_image(save(tmp_path / "a.png", arr))
    assert img[:, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(img[:, 0, 1], torch.full((3,), 200 / 255))
    assert torch.allclose(img[:, 1, 0], torch.full((3,), 200 * 128 / 255 / 255), atol=1 / 255)
    la = np.stack([np.full((2, 2), 100, np.uint8), np.array([[0, 255], [255, 0]], np.uint8)], axis=-1)
    img, _ = load_image(save(tmp_path / "la.png", la, mode="LA"))
    assert img[:, 0, 0].tolist() == [0.0] * 3 and torch.allclose(img[:, 0, 1], torch.full((3,), 100 / 255))


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putdata([0, 1])
    p.save(tmp_path / "p.png")
    img, _ = load_image(tmp_path / "p.png")
    assert torch.allclose(img[:, 0, 1] * 255, torch.tensor([200.0, 100.0, 50.0]))
    p.save(tmp_path / "pt.png", transparency=1)
    img, _ = load_image(tmp_path / "pt.png")
    assert img[:, 0, 1].tolist() == [0.0] * 3 and torch.allclose(img[:, 0, 0] * 255, torch.tensor([10.0, 20.0, 30.0]))


def test_sixteen_bit_is_scaled_not_truncated(tmp_path: Path) -> None:
    arr = np.array([[0, 257, 65535], [1000, 32768, 40000]], dtype=np.uint16)
    img, native = load_image(save(tmp_path / "d.png", arr))
    assert native == (2, 3)
    expected = torch.from_numpy(arr.astype(np.float32) / 65535)
    for c in range(3):
        assert torch.allclose(img[c], expected, atol=1e-6)
    # 1000/65535 is not a multiple of 1/255: no 8-bit round trip happened
    assert abs(float(img[0, 1, 0]) - 1000 / 65535) < 1e-6


def test_float_tiff_clipped_and_nan_rejected(tmp_path: Path) -> None:
    arr = np.array([[-0.5, 0.25, 2.0]], dtype=np.float32)
    img, _ = load_image(save(tmp_path / "f.tif", arr, mode="F"))
    assert torch.allclose(img[0, 0], torch.tensor([0.0, 0.25, 1.0]))
    arr[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        load_image(save(tmp_path / "n.tif", arr, mode="F"))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    img, _ = load_image(tmp_path / "c.jpg")
    assert img.shape == (3, 4, 4) and float(img[0].mean()) > 0.9 and float(img[1].mean()) < 0.1


def test_resize_bilinear_and_flip(tmp_path: Path) -> None:
    arr = np.zeros((8, 8, 3), dtype=np.uint8)
    arr[:, 4:] = 255
    path = save(tmp_path / "h.png", arr)
    img, native = load_image(path, size=(4, 6))
    assert native == (8, 8) and img.shape == (3, 4, 6)
    assert float(img[0, 0, 0]) == 0.0 and float(img[0, 0, -1]) == 1.0
    assert 0.0 < float(img[0, 0, 2:4].mean()) < 1.0  # bilinear blends at the edge
    lr, _ = load_image(path, flip="lr")
    assert torch.equal(lr, load_image(path)[0].flip(-1))
    with pytest.raises(ConfigError):
        load_image(path, flip="sideways")
    with pytest.raises(ConfigError):
        load_image(path, size=0)


def test_apply_flip_modes() -> None:
    x = torch.arange(6).reshape(1, 2, 3)
    assert torch.equal(apply_flip(x, "lr"), x.flip(-1))
    assert torch.equal(apply_flip(x, "ud"), x.flip(-2))
    assert torch.equal(apply_flip(x, "lrud"), x.rot90(2, dims=(-2, -1)))
    assert apply_flip(x, None) is x


def test_fast_jpeg_gives_the_requested_size_and_similar_pixels(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:256, 0:256]
    arr = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)
    path = save(tmp_path / "big.jpg", arr, quality=95)
    slow, native = load_image(path, size=32)
    fast, native_fast = load_image(path, size=32, fast_jpeg=True)
    assert native == native_fast == (256, 256) and fast.shape == slow.shape == (3, 32, 32)
    assert float((fast - slow).abs().mean()) < 0.02


def test_mask_binarised_at_127_and_nearest_resized(tmp_path: Path) -> None:
    arr = np.array([[0, 127, 128, 255]], dtype=np.uint8).repeat(4, axis=0)
    mask, nonempty = load_mask(save(tmp_path / "m.png", arr))
    assert nonempty and mask.dtype == torch.bool and mask[0].tolist() == [False, False, True, True]
    small, _ = load_mask(tmp_path / "m.png", size=(2, 2))
    assert small.tolist() == [[False, True], [False, True]]
    m16, ne16 = load_mask(save(tmp_path / "m16.png", np.array([[32639, 32640, 65535]], dtype=np.uint16)))
    assert ne16 and m16.tolist() == [[False, True, True]]
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = 255
    mrgb, _ = load_mask(save(tmp_path / "mrgb.png", rgb))
    assert mrgb.tolist() == [[True, False], [False, False]]
    empty, ne = load_mask(save(tmp_path / "e.png", np.zeros((3, 3), np.uint8)))
    assert not ne and not empty.any()


def test_tiny_defect_counts_for_the_label_even_if_resizing_drops_it(tmp_path: Path) -> None:
    arr = np.zeros((64, 64), dtype=np.uint8)
    arr[1, 1] = 255
    mask, nonempty = load_mask(save(tmp_path / "t.png", arr), size=4)
    assert nonempty and not mask.any()


def test_mask_size_mismatch_names_both_sizes(tmp_path: Path) -> None:
    path = save(tmp_path / "m.png", np.zeros((5, 6), np.uint8))
    with pytest.raises(DataError, match=r"mask size 5x6 \(HxW\) differs from its image size 8x8") as err:
        load_mask(path, expected_size=(8, 8))
    assert err.value.path == str(path)


@pytest.mark.parametrize("loader", [load_image, load_mask])
def test_missing_directory_garbage_and_truncated_files(tmp_path: Path, loader) -> None:
    with pytest.raises(DataError, match="not found") as err:
        loader(tmp_path / "nope.png")
    assert err.value.path == str(tmp_path / "nope.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match="not a regular file"):
        loader(tmp_path / "dir.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match="unknown format or corrupt header"):
        loader(tmp_path / "garbage.png")
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match="truncated|unreadable|cannot open") as err:
        loader(tmp_path / "cut.png")
    assert err.value.path == str(tmp_path / "cut.png")


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:600])
    with pytest.raises(DataError, match="truncated"):
        load_image(tmp_path / "cut.jpg")


def test_resolve_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert resolve_inside(root, "a/x.png") == (root / "a" / "x.png").resolve()
    assert resolve_inside(root, "a/../a/x.png") == (root / "a" / "x.png").resolve()
    with pytest.raises(DataError, match="outside the data root") as err:
        resolve_inside(root, "../x.png", source=tmp_path / "list.json")
    assert err.value.path == str(tmp_path / "list.json")
    with pytest.raises(DataError, match="outside the data root"):
        resolve_inside(root, str(tmp_path / "other.png"))
    os.symlink(tmp_path, root / "link")
    with pytest.raises(DataError, match="outside the data root"):
        resolve_inside(root, "link/secret.png")
    with pytest.raises(DataError, match="NUL"):
        resolve_inside(root, "a\x00b")
    with pytest.raises(DataError, match="empty"):
        resolve_inside(root, "  ")
