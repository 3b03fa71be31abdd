"""Pictures of the review pages: view images, anomaly-map overlays, mask outlines, thumbnails.

Maps are ``(h, w)`` per-pixel NLL at the feature grid; they are upsampled bilinearly to the image
size and coloured with the jet colour map over the class's fixed range ``[lo, hi]`` (1st and 99.9th
percentile of the class's maps), so colours compare across objects and views.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from multiflow._atomic import write_bytes

THUMB_SIZE = 192


def view_rgb(path: str, flip: str | None) -> np.ndarray:
    """``(H, W, 3)`` uint8 image of one view in the orientation of its map (the load-time flip applied)."""
    from multiflow.data.images import read_image_array

    arr, _ = read_image_array(path, flip=flip)
    return np.ascontiguousarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))


def _colour(map_hw: np.ndarray, size: tuple[int, int], lo: float, hi: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 jet colours of the map bilinearly upsampled to ``size``."""
    from matplotlib import colormaps

    up = np.asarray(Image.fromarray(np.asarray(map_hw, dtype=np.float32), mode="F").resize(
        (size[1], size[0]), Image.BILINEAR))
    norm = np.clip((up - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    return (colormaps["jet"](norm)[..., :3] * 255 + 0.5).astype(np.uint8)


def heat_png(map_hw: np.ndarray, size: tuple[int, int], lo: float, hi: float) -> bytes:
    """The anomaly map upsampled to ``size`` ``(H, W)`` as an RGBA PNG: jet over ``[lo, hi]``, with
    alpha rising with the value (``255 * clip((v - lo) / (hi - lo), 0, 1)``), so that low-scoring
    pixels leave the image visible under the overlay."""
    from matplotlib import colormaps

    up = np.asarray(Image.fromarray(np.asarray(map_hw, dtype=np.float32), mode="F").resize(
        (size[1], size[0]), Image.BILINEAR))
    norm = np.clip((up - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    rgba = (colormaps["jet"](norm) * 255 + 0.5).astype(np.uint8)
    rgba[..., 3] = (norm * 255 + 0.5).astype(np.uint8)
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")


def outline_png(mask: np.ndarray) -> bytes:
    """``(H, W)`` bool mask -> RGBA PNG: the mask's boundary opaque green, everything else transparent."""
    from scipy.ndimage import binary_erosion

    width = max(1, round(max(mask.shape) / 300))
    edge = mask & ~binary_erosion(mask, iterations=width, border_value=0)
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[edge] = (0, 255, 64, 255)
    return encode(Image.fromarray(rgba, mode="RGBA"), "PNG")


def small_rgb(path: str, flip: str | None, size: int = THUMB_SIZE) -> Image.Image:
    """The view reduced to ``size`` pixels (longest side), flipped like its map.

    JPEGs are decoded at a reduced scale (``Image.draft``), which makes thumbnails of 2,000 px
    views several times cheaper than decoding them in full.
    """
    from multiflow.data.images import check_flip_mode
    from multiflow.errors import DataError

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            small = im.convert("RGB")
            small.thumbnail((size, size), Image.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image: {exc}", path) from None
    if flip:
        check_flip_mode(flip)
        if "lr" in flip:
            small = small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if "ud" in flip:
            small = small.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return small


def thumbnail_jpeg(im: Image.Image, map_hw: np.ndarray, lo: float, hi: float) -> bytes:
    """JPEG of a reduced view (:func:`small_rgb`) with its anomaly map blended in at 40 %."""
    small = np.asarray(im, dtype=np.float32)
    heat = _colour(map_hw, small.shape[:2], lo, hi).astype(np.float32)
    return encode(Image.fromarray((0.6 * small + 0.4 * heat + 0.5).astype(np.uint8)), "JPEG")


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()


def cached(path: Path, make) -> bytes:
    """The bytes at ``path``, or ``make()`` written there atomically first (a per-run picture cache)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = make()
    try:
        write_bytes(path, data)
    except OSError:  # a read-only run folder still serves the pictures, just uncached
        pass
    return data


PICTURES = ("view.jpg", "thumb.jpg", "heat.png", "outline.png")


def picture(data, i: int, k: int, kind: str, folder: Path) -> tuple[bytes, str]:
    """``(bytes, media type)`` of one picture of view ``k`` of object ``i`` of a tested class
    (:class:`~multiflow.review.store.TestedClass`), made on demand and cached in ``folder``.

    ``kind``: ``view.jpg`` (the view, flipped like its map; an unflipped JPEG is sent as stored),
    ``thumb.jpg`` (:func:`thumbnail_jpeg`), ``heat.png`` (:func:`heat_png` at the image size) or
    ``outline.png`` (:func:`outline_png` of the ground-truth mask).
    """
    from multiflow.data.ground_truth import native_size
    from multiflow.data.images import read_mask_array
    from multiflow.review.store import NotFound

    if not 0 <= k < len(data.view_names):
        raise NotFound(f"class {data.name!r} has no view #{k}")
    s = data.samples[i]
    flip = data.flips.get(data.view_names[k])
    lo, hi = data.map_range
    path = s["image_paths"][k]
    if kind == "view.jpg":
        if flip is None and Path(path).suffix.lower() in (".jpg", ".jpeg"):
            return Path(path).read_bytes(), "image/jpeg"
        return cached(folder / f"view_{i}_{k}.jpg",
                      lambda: encode(Image.fromarray(view_rgb(path, flip)), "JPEG")), "image/jpeg"
    if kind == "thumb.jpg":
        return cached(folder / f"thumb_{i}_{k}.jpg", lambda: thumbnail_jpeg(
            small_rgb(path, flip), np.asarray(data.maps[i, k], dtype=np.float32), lo, hi)), "image/jpeg"
    if kind == "heat.png":
        size = native_size(path)
        return cached(folder / f"heat_{i}_{k}.png",
                      lambda: heat_png(np.asarray(data.maps[i, k], dtype=np.float32), size, lo, hi)), "image/png"
    if kind == "outline.png":
        mp = s["mask_paths"][k]
        if mp is None:
            raise NotFound(f"view {data.view_names[k]!r} of {s['sample_id']!r} has no ground-truth mask")
        return cached(folder / f"outline_{i}_{k}.png",
                      lambda: outline_png(read_mask_array(mp, flip=flip)[0])), "image/png"
    raise NotFound(f"unknown picture {kind!r} ({', '.join(PICTURES)})")
