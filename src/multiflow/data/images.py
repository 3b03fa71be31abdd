"""Robust image and mask I/O shared by every data source.

Everything a user can get wrong on disk ends in a :class:`~multiflow.errors.DataError` that names
the file and the problem: a missing file, a directory where a file was expected, an unreadable or
truncated image, an unsupported pixel format, a mask whose size differs from its image, a path
that escapes the data root (through ``..`` or a symlink).

Conversions (all images come out as RGB float32 in ``[0, 1]``):

* ``RGB`` (8 bit): ``x / 255``.
* greyscale ``L`` / ``1``: replicated to three channels.
* ``RGBA`` / ``LA`` / palette with transparency: composited over a black background, i.e.
  ``rgb * alpha / 255`` (a fully transparent pixel is black, an opaque one is unchanged).
* 16-bit greyscale (``I;16*``, or ``I`` holding 16-bit PNG values): ``x / 65535``, so the full
  16-bit range maps to ``[0, 1]`` without losing precision to an 8-bit round trip.
* float greyscale ``F``: taken as intensities, clipped to ``[0, 1]`` (NaN is an error).
* ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV``: converted to RGB by Pillow.

Masks come out as ``(H, W)`` bool: a pixel is defective iff its intensity is ``> 127/255`` of the
full scale (the official Real-IAD / ADEval binarisation ``> 127`` for 8-bit masks; 16-bit masks
are scaled first). Colour masks are converted to luma first.

Resizing (``size=(H, W)``): bilinear for images (Pillow's, which low-pass filters when
shrinking), nearest for masks. Flips (``"lr"``: left-right, i.e. along W; ``"ud"``: up-down,
along H; ``"lrud"``: both = rotation by 180 degrees) are applied on load, never written to disk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from multiflow.errors import ConfigError, DataError

__all__ = [
    "FLIP_MODES",
    "apply_flip",
    "check_flip_mode",
    "load_image",
    "load_mask",
    "read_image_array",
    "read_mask_array",
    "resolve_inside",
]

#: Valid flip modes: left-right (along W), up-down (along H), both (180 degree rotation).
FLIP_MODES: tuple[str, ...] = ("lr", "ud", "lrud")

_OPEN_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, Image.DecompressionBombError)


def resolve_inside(root: str | PathLike, path: str | PathLike, *, source: str | PathLike | None = None) -> Path:
    """Resolve ``path`` (relative to ``root``, or absolute) and make sure it stays inside ``root``.

    Both are resolved with :func:`os.path.realpath`, so ``..`` components and symlinks that lead
    outside the data root are caught. ``source`` is the file that named ``path`` (a JSON or CSV),
    used in the error message.

    Returns:
        The resolved absolute path (it need not exist).

    Raises:
        DataError: empty path, NUL byte, or a path that escapes ``root``.
    """
    where = source if source is not None else root
    text = os.fspath(path)
    if not isinstance(text, str) or text.strip() == "":
        raise DataError(f"empty file path {text!r}", where)
    if "\x00" in text:
        raise DataError(f"file path {text!r} contains a NUL byte", where)
    try:
        real_root = os.path.realpath(root)
        real = os.path.realpath(os.path.join(real_root, text))
        inside = os.path.commonpath([real_root, real]) == real_root
    except (ValueError, OSError) as exc:
        raise DataError(f"invalid file path {text!r}: {exc}", where) from exc
    if not inside:
        raise DataError(
            f"file path {text!r} resolves to {real}, outside the data root {real_root} "
            "('..' components and symlinks may not leave the data root)",
            where,
        )
    return Path(real)


def check_flip_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`FLIP_MODES`, else raise :class:`ConfigError`."""
    if mode not in FLIP_MODES:
        raise ConfigError(f"unknown flip mode {mode!r}; expected one of {list(FLIP_MODES)}")
    return mode


def apply_flip(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """Flip the last two axes ``(..., H, W)`` of ``x``: ``"lr"`` along W, ``"ud"`` along H, ``"lrud"`` both."""
    if mode is None:
        return x
    check_flip_mode(mode)
    dims = {"lr": (-1,), "ud": (-2,), "lrud": (-2, -1)}[mode]
    return torch.flip(x, dims=dims)


def _np_flip(x: np.ndarray, mode: str | None) -> np.ndarray:
    """:func:`apply_flip` for numpy arrays ``(..., H, W)`` (a view, no copy)."""
    if mode is None:
        return x
    check_flip_mode(mode)
    axes = {"lr": (-1,), "ud": (-2,), "lrud": (-2, -1)}[mode]
    return np.flip(x, axis=axes)


def _pil_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``(H, W)`` or a square side -> Pillow's ``(W, H)``."""
    if size is None:
        return None
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ConfigError(f"image size must be positive, got {size!r}")
    return (w, h)


def _open(path: str | PathLike, what: str) -> Image.Image:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} file not found", p)
    if not p.is_file():
        raise DataError(f"{what} path is not a regular file", p)
    try:
        return Image.open(p)
    except UnidentifiedImageError as exc:
        raise DataError(f"not a readable {what} (unknown format or corrupt header)", p) from exc
    except _OPEN_ERRORS as exc:
        raise DataError(f"cannot open {what}: {exc}", p) from exc


def _to_float_or_rgb(im: Image.Image, path: Path) -> Image.Image:
    """Convert a loaded image to ``RGB`` (8 bit) or ``F`` (one channel, values in ``[0, 1]``)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB")
    if mode == "P":
        if "transparency" in im.info:
            mode, im = "RGBA", im.convert("RGBA")
        else:
            return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.float32)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"integer image values outside the 16-bit range [0, 65535] (mode {mode})", path)
        return Image.fromarray((arr / 65535.0).astype(np.float32))
    if mode == "F":
        arr = np.asarray(im).astype(np.float32)
        if not np.isfinite(arr).all():
            raise DataError("float image contains NaN or infinite values", path)
        return Image.fromarray(np.clip(arr, 0.0, 1.0).astype(np.float32))
    try:
        return im.convert("RGB")
    except _OPEN_ERRORS as exc:
        raise DataError(f"unsupported image mode {mode!r}: {exc}", path) from exc


def read_image_array(
    path: str | PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    flip: str | None = None,
    fast_jpeg: bool = False,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Read one image as an RGB array ``(3, H, W)`` float32 (see :func:`load_image`).

    Args:
        path: image file.
        size: output ``(H, W)`` (or a square side); ``None`` keeps the native size. Resized with
            Pillow's bilinear filter.
        flip: one of :data:`FLIP_MODES` or ``None``, applied after resizing.
        fast_jpeg: let libjpeg decode at a reduced scale (1/2, 1/4, 1/8) that is still at least
            ``size`` before the bilinear resize. Much faster for large JPEGs; the result differs
            slightly from decoding at full size.

    Returns:
        ``(image, native_size)``: ``image`` is a C-contiguous ``(3, H, W)`` float32 array in ``[0, 1]``;
        ``native_size`` is the file's ``(H, W)`` before any resize (for checking masks).

    Raises:
        DataError: missing, unreadable, truncated or unsupported image (names the file).
    """
    p = Path(path)
    return _decode(_open(p, "image"), p, size=size, flip=flip, fast_jpeg=fast_jpeg)


def read_image_bytes(
    data: bytes,
    *,
    name: str,
    size: int | tuple[int, int] | None = None,
    flip: str | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image_array` for an encoded image in memory (an upload): the same conversion,
    resize and flip, so a file and its bytes give the same array.

    ``name`` labels errors; with ``max_pixels`` an image whose header announces more pixels is
    refused (:class:`ImageTooLarge`) before any pixel is decoded; so is an image over Pillow's
    decompression-bomb limit (``2 * Image.MAX_IMAGE_PIXELS``), whatever ``max_pixels`` says.
    """
    import io

    if not data:
        raise DataError("empty image file", name)
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise DataError("not a readable image (unknown format or corrupt header)", name) from exc
    except Image.DecompressionBombError:  # Pillow's own guard fired first: an image too large all the same
        pillow_limit = 2 * int(Image.MAX_IMAGE_PIXELS)  # the error is only raised when that is set
        limit = pillow_limit if max_pixels is None else min(max_pixels, pillow_limit)
        raise ImageTooLarge(f"image has more than {limit} pixels (refused before decoding)", name) from None
    except _OPEN_ERRORS as exc:
        raise DataError(f"cannot open image: {exc}", name) from exc
    if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
        w, h = im.size
        im.close()
        raise ImageTooLarge(f"image {w}x{h} has more than {max_pixels} pixels", name)
    return _decode(im, Path(name), size=size, flip=flip, fast_jpeg=False)


class ImageTooLarge(DataError):
    """An image whose header announces more pixels than allowed (nothing was decoded)."""


def resize_images(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize ``(N, 3, H, W)`` float images in ``[0, 1]`` exactly as the data sets do at load time.

    The values are taken as 8-bit (``round(255 x)``, what every 8-bit file decodes to) and resized
    with Pillow's bilinear filter, then divided by 255: for images decoded from 8-bit files the
    result equals :func:`read_image_array` with ``size``. Images already at ``size`` are returned
    unchanged.
    """
    target = _pil_size(size)
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if (int(images.shape[-1]), int(images.shape[-2])) == target:
        return images.float()
    u8 = np.rint(images.detach().float().clamp(0, 1).cpu().numpy() * 255.0).astype(np.uint8)
    out = []
    for img in u8:
        im = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), mode="RGB")
        arr = np.asarray(im.resize(target, resample=Image.Resampling.BILINEAR))
        out.append(np.divide(np.ascontiguousarray(arr.transpose(2, 0, 1)), np.float32(255.0), dtype=np.float32))
    return torch.from_numpy(np.stack(out))


def _decode(
    im: Image.Image, p: Path, *, size: int | tuple[int, int] | None, flip: str | None, fast_jpeg: bool
) -> tuple[np.ndarray, tuple[int, int]]:
    """The one decoding path: convert (:func:`_to_float_or_rgb`), bilinear resize, flip, ``[0, 1]``."""
    target = _pil_size(size)
    try:
        with im:
            native = (im.size[1], im.size[0])
            if fast_jpeg and target is not None and im.format == "JPEG":
                im.draft("RGB", target)
            im.load()
            im = _to_float_or_rgb(im, p)
            if target is not None and im.size != target:
                im = im.resize(target, resample=Image.Resampling.BILINEAR)
            arr = np.asarray(im)
    except DataError:
        raise
    except _OPEN_ERRORS as exc:
        raise DataError(f"unreadable or truncated image: {exc}", p) from exc
    # Conversion and flips in numpy: torch's multi-threaded kernels on small tensors cost more
    # than the decode itself when the cores are shared (measured 4x slower per image).
    if arr.ndim == 2:  # "F": one channel already in [0, 1]
        chw = np.broadcast_to(np.asarray(arr, dtype=np.float32), (3, *arr.shape))
    else:
        chw = np.divide(np.ascontiguousarray(arr.transpose(2, 0, 1)), np.float32(255.0), dtype=np.float32)
    return np.ascontiguousarray(_np_flip(chw, flip), dtype=np.float32), native


def read_mask_array(
    path: str | PathLike,
    *,
    expected_size: tuple[int, int] | None = None,
    size: int | tuple[int, int] | None = None,
    flip: str | None = None,
) -> tuple[np.ndarray, bool]:
    """Read a mask as a bool array ``(H, W)`` (see :func:`load_mask`).

    Binarised at ``> 127/255`` of full scale.

    Args:
        path: mask file (any format Pillow reads; 8/16-bit greyscale, colour, palette).
        expected_size: the image's native ``(H, W)``; a mask of another size is an error that
            names both sizes.
        size: output ``(H, W)`` (or square side), nearest-neighbour resize; ``None`` keeps it.
        flip: one of :data:`FLIP_MODES` or ``None``.

    Returns:
        ``(mask, nonempty)``: ``mask`` is an ``(H, W)`` bool array; ``nonempty`` tells whether the mask
        at its *native* resolution has any defect pixel (resizing may drop tiny regions, labels
        must not).
    """
    p = Path(path)
    target = _pil_size(size)
    im = _open(p, "mask")
    try:
        with im:
            native = (im.size[1], im.size[0])
            if expected_size is not None and tuple(expected_size) != native:
                raise DataError(
                    f"mask size {native[0]}x{native[1]} (HxW) differs from its image size "
                    f"{expected_size[0]}x{expected_size[1]}",
                    p,
                )
            im.load()
            mode = im.mode
            if mode == "1":
                binary = np.asarray(im).astype(bool)
            elif mode.startswith("I;16") or mode == "I" or mode == "F":
                arr = np.asarray(im).astype(np.float64)
                scale = 1.0 if mode == "F" else 65535.0
                binary = arr / scale > 127.0 / 255.0
            else:
                binary = np.asarray(_to_float_or_rgb(im, p).convert("L")) > 127
    except DataError:
        raise
    except _OPEN_ERRORS as exc:
        raise DataError(f"unreadable or truncated mask: {exc}", p) from exc
    nonempty = bool(binary.any())
    if target is not None and (binary.shape[1], binary.shape[0]) != target:
        small = Image.fromarray(binary.astype(np.uint8) * 255).resize(target, Image.Resampling.NEAREST)
        binary = np.asarray(small) > 127
    return np.array(_np_flip(binary, flip), dtype=bool, copy=True), nonempty


def load_image(
    path: str | PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    flip: str | None = None,
    fast_jpeg: bool = False,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Read one image: ``(image (3, H, W) float32 in [0, 1], native (H, W))``.

    Arguments, conversions and errors as :func:`read_image_array` (which returns a numpy array).
    """
    arr, native = read_image_array(path, size=size, flip=flip, fast_jpeg=fast_jpeg)
    return torch.from_numpy(arr), native


def load_mask(
    path: str | PathLike,
    *,
    expected_size: tuple[int, int] | None = None,
    size: int | tuple[int, int] | None = None,
    flip: str | None = None,
) -> tuple[torch.Tensor, bool]:
    """Read a mask: ``(mask (H, W) bool, nonempty at native size)``; see :func:`read_mask_array`."""
    arr, nonempty = read_mask_array(path, expected_size=expected_size, size=size, flip=flip)
    return torch.from_numpy(arr), nonempty


def flips_for(flips: Mapping[str, str] | None, view_names: list[str] | tuple[str, ...]) -> list[str | None]:
    """Per-view flip modes in view order from a ``{view: mode}`` table (``None`` = no flip)."""
    if not flips:
        return [None] * len(view_names)
    return [flips.get(v) for v in view_names]
