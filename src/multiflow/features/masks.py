"""Foreground masks (paper Sec. 3.2): providers, the paper's post-processing, and a mask cache.

The flow is trained and scored on foreground feature cells only. A *provider* turns one RGB image
``(H, W, 3)`` in ``[0, 1]`` into a raw foreground mask ``(H, W)`` bool:

* ``isnet``: IS-Net dichotomous segmentation (ONNX; stand-in for the paper's MVANet), probability
  > ``threshold`` (:class:`IsNetMasks`, needs ``multiflow setup-isnet``);
* ``threshold``: classical, for homogeneous (possibly graded) backgrounds
  (:class:`ThresholdMasks`);
* ``file``: the user's own mask images (:class:`FileMasks`; the data set's load-time view flips
  are applied to them by :func:`compute_masks`);
* ``none``: everything is foreground (:class:`NoMasks`).

Post-processing (:func:`postprocess_mask`), as in the paper: binary hole filling, then *one*
dilation with an 8 x 8 square structuring element (at the resolution the mask is given in), then
reduction to the feature grid ``(h, w)``. The reduction is by area: the image is divided into the
``h x w`` cells the backbone's stride induces (cell boundaries at ``i * H / h``), and a cell is
foreground iff more than half of its pixels are (``"area"``, default; robust to thin structures
falling between sample points). ``"nearest"`` (the paper's choice: sample the pixel nearest to the
cell centre) is available.

:func:`compute_masks` computes the masks of a whole data set once and caches them like features
(``(N, V, h, w)`` bool on the feature grid, optionally ``(N, V, H, W)`` at image resolution).

The ``threshold`` provider and the post-processing run as batched tensor operations on the
device of the images (:mod:`multiflow.features.masks_torch`; ``ThresholdMasks(backend="torch")``,
the default): :func:`batch_view_masks` takes all views of several objects at once ``(B, V, 3, H,
W)``. The NumPy/SciPy path (``backend="numpy"``) is the reference the tests compare with; the
torch path gives the same masks up to pixels on the threshold (IoU >= 0.99 on the synthetic
renders; connected components, hole filling, dilation and grid reduction exact), and its cache
key differs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy import ndimage

from multiflow.errors import ConfigError, DataError
from multiflow.features.masks_torch import DILATION, PRECISIONS
from multiflow.ranks import DistContext

#: how :class:`ThresholdMasks` computes: batched tensor operations, or the NumPy reference
BACKENDS = ("torch", "numpy")


class MaskProvider(Protocol):
    """``provider(image, path) -> (H, W) bool``; ``key()`` describes it for cache keys."""

    name: str

    def __call__(self, image: np.ndarray, path: str | None = None) -> np.ndarray: ...

    def key(self) -> dict[str, Any]: ...


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    return img.astype(np.float64) / (255.0 if img.dtype == np.uint8 else 1.0)


class NoMasks:
    """Every pixel is foreground (the paper's "without masks" ablation)."""

    name = "none"

    def __call__(self, image: np.ndarray, path: str | None = None) -> np.ndarray:
        return np.ones(np.asarray(image).shape[:2], dtype=bool)

    def key(self) -> dict[str, Any]:
        return {"provider": self.name}


class ThresholdMasks:
    """Classical foreground segmentation for homogeneous backgrounds.

    1. Background models from the image border (a frame ``border`` x the shorter side wide):
       (a) per colour channel a plane ``b_c(y, x) = a_c + p_c y + q_c x`` fitted by least squares
       to the border pixels, so smooth illumination gradients are background; (b) the
       ``clusters`` k-means centres ``c_k`` of the border colours (seeded), so a background made
       of several flat regions (a tray edge, a darker band) is background too.
    2. Distance ``d(y, x) = min(|| I(y, x) - b(y, x) ||_2, min_k || I(y, x) - c_k ||_2)`` over
       RGB (a pixel either model explains is background), smoothed by a Gaussian of ``sigma``
       pixels.
    3. Threshold ``otsu_scale`` x Otsu's threshold on ``d`` (:func:`skimage.filters.threshold_otsu`),
       never below ``min_contrast`` (so a blank image gives an empty mask rather than noise). A
       scale below 1 errs towards foreground: a pixel wrongly called background hides any defect
       on it for good, one wrongly called foreground only costs a little training signal (in a
       check on a small synthetic set, 0.7 instead of 1 lost far fewer defect pixels for about
       one point of IoU; ``benchmarks/bench_masks.py`` measures the current defaults).
    4. Keep connected components (8-connectivity) of at least ``keep_fraction`` of the largest
       one's area: dust and specks on the background are dropped, separate thin parts (pins)
       are kept.

    ``backend="torch"`` (default) computes all of this as batched tensor operations on the
    images' device (:meth:`batch`, :func:`multiflow.features.masks_torch.threshold_masks`), in
    ``precision`` (``"float32"`` default; ``"float64"`` follows the reference up to rounding
    order); ``backend="numpy"`` is the NumPy/SciPy/scikit-image reference, whose cache key is
    the one masks had before the torch path existed. The two agree up to pixels on the threshold
    (see :mod:`multiflow.features.masks_torch` for the tolerance per step).

    Known limits: object parts of the background's colour are lost (hole filling in
    :func:`postprocess_mask` recovers enclosed ones only), defects through which the background
    shows (a missing ring of a nut) are cut away, and cast shadows count as foreground. Prefer
    ``isnet`` on real photographs.
    """

    name = "threshold"

    def __init__(
        self,
        *,
        border: float = 0.04,
        sigma: float = 1.0,
        otsu_scale: float = 0.7,
        clusters: int = 12,
        min_contrast: float = 0.04,
        keep_fraction: float = 0.02,
        seed: int = 0,
        backend: str = "torch",
        precision: str = "float32",
    ) -> None:
        if not 0.0 < border < 0.5:
            raise ConfigError(f"border must be in (0, 0.5), got {border}")
        if not 0.0 <= keep_fraction <= 1.0:
            raise ConfigError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
        if backend not in BACKENDS:
            raise ConfigError(f"threshold masks backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ConfigError(f"threshold masks precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.backend = backend
        self.precision = precision
        self.border = float(border)
        self.sigma = float(sigma)
        self.otsu_scale = float(otsu_scale)
        self.clusters = int(clusters)
        self.seed = int(seed)
        self.min_contrast = float(min_contrast)
        self.keep_fraction = float(keep_fraction)

    def key(self) -> dict[str, Any]:
        key = {
            "provider": self.name, "border": self.border, "sigma": self.sigma, "otsu_scale": self.otsu_scale,
            "clusters": self.clusters, "seed": self.seed,
            "min_contrast": self.min_contrast, "keep_fraction": self.keep_fraction,
        }
        if self.backend != "numpy":  # the numpy reference keeps the key its caches were written under
            key.update(backend=self.backend, precision=self.precision)
        return key

    @property
    def batched(self) -> bool:
        """Whether :meth:`batch` is the provider's own path (:func:`batch_view_masks` uses it)."""
        return self.backend == "torch"

    def batch(self, images: torch.Tensor, *, steps: str = "auto") -> torch.Tensor:
        """Raw masks ``(N, H, W)`` bool of ``images (N, 3, H, W)`` (uint8, or float in ``[0, 1]``),
        computed on the images' device (:func:`multiflow.features.masks_torch.threshold_masks`).
        ``steps``: ``"auto"`` (the border-colour k-means, component labelling and hole filling by
        SciPy on the CPU, as tensor operations elsewhere), ``"torch"`` or ``"scipy"``; the masks do
        not depend on it."""
        from multiflow.features.masks_torch import threshold_masks

        return threshold_masks(
            images, border=self.border, sigma=self.sigma, otsu_scale=self.otsu_scale, clusters=self.clusters,
            min_contrast=self.min_contrast, keep_fraction=self.keep_fraction, seed=self.seed,
            precision=self.precision, steps=steps,
        )

    def _frame(self, h: int, w: int) -> np.ndarray:
        b = max(1, int(round(self.border * min(h, w))))
        frame = np.zeros((h, w), dtype=bool)
        frame[:b], frame[-b:], frame[:, :b], frame[:, -b:] = True, True, True, True
        return frame

    def background(self, img: np.ndarray) -> np.ndarray:
        """The fitted background plane ``(H, W, 3)`` of a float image in ``[0, 1]``."""
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        frame = self._frame(h, w)
        design = np.stack([np.ones(frame.sum()), yy[frame] / h, xx[frame] / w], axis=1)
        coef, *_ = np.linalg.lstsq(design, img[frame], rcond=None)  # (3, 3): terms x channels
        full = np.stack([np.ones(h * w), yy.ravel() / h, xx.ravel() / w], axis=1)
        return (full @ coef).reshape(h, w, 3)

    def __call__(self, image: np.ndarray, path: str | None = None) -> np.ndarray:
        img = _check_image(image)
        if self.backend == "torch":
            return self.batch(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None])[0].numpy()
        return self.reference(img)

    def reference(self, img: np.ndarray) -> np.ndarray:
        """The NumPy/SciPy/scikit-image computation of the mask of one float image ``(H, W, 3)``."""
        from skimage.filters import threshold_otsu

        dist = np.linalg.norm(img - self.background(img), axis=2)
        if self.clusters > 0:
            border_px = img[self._frame(*img.shape[:2])]
            border_px = border_px[:: max(1, len(border_px) // 4000)]
            centres = border_colours_np(border_px, self.clusters, self.seed)
            for c in centres:  # min distance to any border colour, one centre at a time (memory)
                np.minimum(dist, np.linalg.norm(img - c, axis=2), out=dist)
        if self.sigma > 0:
            dist = ndimage.gaussian_filter(dist, self.sigma)
        if float(dist.max()) < self.min_contrast:
            return np.zeros(dist.shape, dtype=bool)
        t = max(self.otsu_scale * float(threshold_otsu(dist)), self.min_contrast)
        return keep_large_components_np(dist > t, self.keep_fraction)


def border_colours_np(border_px: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """The background colours of :class:`ThresholdMasks` from the sampled border pixels
    ``(M, 3)``: their distinct colours if at most ``clusters``, else the k-means++ centres
    (``scipy.cluster.vq.kmeans2``, seeded)."""
    centres = np.unique(border_px, axis=0)
    return kmeans_colours_np(border_px, clusters, seed) if len(centres) > clusters else centres


def kmeans_colours_np(border_px: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """``scipy.cluster.vq.kmeans2(border_px, clusters, minit="++")`` seeded with ``default_rng(seed)``."""
    from scipy.cluster.vq import kmeans2

    with warnings.catch_warnings():  # an empty cluster is harmless here
        warnings.simplefilter("ignore")
        centres, _ = kmeans2(border_px, clusters, seed=np.random.default_rng(seed), minit="++")
    return centres


def keep_large_components_np(mask: np.ndarray, keep_fraction: float) -> np.ndarray:
    """The 8-connected components of ``mask (H, W)`` with at least ``keep_fraction`` of the
    largest one's area (step 4 of :class:`ThresholdMasks`)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n > 1:
        areas = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(areas >= keep_fraction * areas.max()) + 1
        mask = np.isin(labels, keep)
    return mask


class FileMasks:
    """User-provided masks: for an image ``<image_root>/<rel>.<ext>``, the mask file is
    ``<mask_root>/<rel>.png`` (the layout of the synthetic generator's silhouettes:
    ``silhouettes_<size>/<class>/...`` next to ``realiad_<size>/<class>/...``). Pixels > 127 are
    foreground; a mask of another size is resized (nearest) to the image."""

    name = "file"
    #: masks come from files in the files' orientation: load-time flips must be applied to them
    reads_files = True

    def __init__(self, *, mask_root: str | os.PathLike, image_root: str | os.PathLike, suffix: str = ".png") -> None:
        self.mask_root = Path(mask_root)
        self.image_root = Path(image_root)
        self.suffix = suffix

    def key(self) -> dict[str, Any]:
        return {"provider": self.name, "mask_root": str(self.mask_root.resolve()), "image_root": str(self.image_root.resolve())}

    def mask_path(self, image_path: str | os.PathLike) -> Path:
        try:
            rel = Path(image_path).resolve().relative_to(self.image_root.resolve())
        except ValueError as exc:
            raise DataError(f"image is not inside the image root {self.image_root}", image_path) from exc
        return (self.mask_root / rel).with_suffix(self.suffix)

    def __call__(self, image: np.ndarray, path: str | None = None) -> np.ndarray:
        from PIL import Image

        if path is None:
            raise ConfigError("file masks need the image path")
        mpath = self.mask_path(path)
        try:
            with Image.open(mpath) as im:
                m = im.convert("L")
                h, w = np.asarray(image).shape[:2]
                if m.size != (w, h):
                    m = m.resize((w, h), Image.NEAREST)
                return np.asarray(m) > 127
        except FileNotFoundError as exc:
            raise DataError("mask file not found", mpath) from exc
        except OSError as exc:
            raise DataError(f"cannot read mask image: {exc}", mpath) from exc


class IsNetMasks:
    """IS-Net foreground probability ``> threshold`` (see :mod:`multiflow.features.isnet`)."""

    name = "isnet"

    def __init__(
        self, *, model_path: str | os.PathLike | None = None, variant: str = "medium", threshold: float = 0.5,
        num_threads: int | None = None, device: str | None = None,
    ) -> None:
        from multiflow.features.isnet import IsNetSegmenter, isnet_model_path

        self.model_path = Path(model_path) if model_path is not None else isnet_model_path(variant)
        self.threshold = float(threshold)
        self.segmenter = IsNetSegmenter(self.model_path, num_threads=num_threads, device=device)
        st = self.model_path.stat()
        self._model_id = f"{self.model_path.name}:{st.st_size}:{st.st_mtime_ns}"

    def key(self) -> dict[str, Any]:
        return {"provider": self.name, "model": self._model_id, "threshold": self.threshold}

    def __call__(self, image: np.ndarray, path: str | None = None) -> np.ndarray:
        return self.segmenter(np.asarray(image)) > self.threshold


#: The registry of foreground-mask providers (config validation and commands read it from here).
MASK_PROVIDERS: dict[str, type] = {"none": NoMasks, "threshold": ThresholdMasks, "file": FileMasks, "isnet": IsNetMasks}


def make_provider(name: str, **kwargs: Any) -> MaskProvider:
    """``"isnet"``, ``"threshold"``, ``"file"`` or ``"none"`` with the provider's keyword arguments."""
    if name not in MASK_PROVIDERS:
        raise ConfigError(f"unknown mask provider {name!r}; choose one of {sorted(MASK_PROVIDERS)}")
    return MASK_PROVIDERS[name](**kwargs)


def reduce_to_grid(mask: np.ndarray, grid: tuple[int, int], mode: str = "area") -> np.ndarray:
    """``(H, W)`` bool -> ``(h, w)`` bool.

    ``"area"``: cell ``(i, j)`` covers rows ``[floor(i H / h), floor((i + 1) H / h))`` (same for
    columns); it is foreground iff the foreground fraction of its pixels is > 0.5.
    ``"nearest"``: the pixel at ``floor((i + 0.5) H / h)`` of every cell.
    """
    m = np.asarray(mask, dtype=bool)
    h, w = grid
    H, W = m.shape
    if mode == "nearest":
        ys = np.minimum(((np.arange(h) + 0.5) * H / h).astype(int), H - 1)
        xs = np.minimum(((np.arange(w) + 0.5) * W / w).astype(int), W - 1)
        return m[np.ix_(ys, xs)]
    if mode != "area":
        raise ConfigError(f"grid reduction must be 'area' or 'nearest', got {mode!r}")
    if H < h or W < w:
        raise ConfigError(f"mask {H}x{W} is smaller than the feature grid {h}x{w}")
    ys = (np.arange(h + 1) * H) // h
    xs = (np.arange(w + 1) * W) // w
    csum = np.pad(m.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    counts = csum[ys[1:]][:, xs[1:]] - csum[ys[:-1]][:, xs[1:]] - csum[ys[1:]][:, xs[:-1]] + csum[ys[:-1]][:, xs[:-1]]
    areas = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    return counts * 2 > areas


def postprocess_mask(
    mask: np.ndarray, grid: tuple[int, int] | None = None, *, dilation: int = DILATION, fill_holes: bool = True,
    mode: str = "area", margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The paper's post-processing (Sec. 3.2): fill holes, one ``dilation x dilation`` square
    dilation, reduce to ``grid``. Returns ``(full (H, W) bool, grid mask (h, w) bool or None)``.

    An even-sized square has no centre pixel; the 8 x 8 element covers offsets ``-4..3`` in
    both axes (scipy's origin convention), so a single pixel grows to exactly an 8 x 8 block.

    ``margin`` > 0 (not in the paper): after the dilation, every pixel within Euclidean distance
    ``margin * d`` of the foreground joins it, ``d`` = the diagonal of the foreground's bounding
    box in pixels, so that defects sticking out of a tight silhouette stay inside the mask at any
    object size. An empty mask stays empty.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {m.shape}")
    if fill_holes:
        m = ndimage.binary_fill_holes(m)
    if dilation > 1:
        m = ndimage.binary_dilation(m, structure=np.ones((dilation, dilation), dtype=bool))
    if margin < 0:
        raise ConfigError(f"mask margin must be >= 0, got {margin}")
    if margin > 0 and m.any():
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        diag = float(np.hypot(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
        m = ndimage.distance_transform_edt(~m) <= margin * diag
    return m, (reduce_to_grid(m, grid, mode) if grid is not None else None)


def _apply_flip(mask: np.ndarray, mode: str) -> np.ndarray:
    """The data set's load-time flip (``"lr"``, ``"ud"``, ``"lrud"``; ``""`` = none) of a mask."""
    if "lr" in mode:
        mask = mask[:, ::-1]
    if "ud" in mode:
        mask = mask[::-1, :]
    return np.ascontiguousarray(mask)


def view_mask(
    provider: MaskProvider, image: np.ndarray, path: str | None, grid: tuple[int, int], *, flip: str | None = "",
    dilation: int = DILATION, mode: str = "area", margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The foreground mask of one view, exactly as the cache computes it (one path for the cache,
    test, predict, serve and export): ``provider(image (H, W, 3), path)``, the data set's load-time
    ``flip`` for providers that read files (their masks are in the files' orientation), then
    :func:`postprocess_mask` (``dilation``, ``margin``). Returns ``(full (H, W) bool, grid mask (h, w) bool)``.
    A provider with a batched path (``threshold``) goes through :func:`batch_view_masks`.
    """
    if getattr(provider, "batched", False):
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))[None, None]
        full, g = batch_view_masks(provider, x, grid, dilation=dilation, mode=mode, margin=margin)
        return full[0, 0].numpy(), g[0, 0].numpy()
    raw = provider(image, path)
    if getattr(provider, "reads_files", False):
        raw = _apply_flip(raw, flip or "")
    full, g = postprocess_mask(raw, grid, dilation=dilation, mode=mode, margin=margin)
    return full, g


def batch_view_masks(
    provider: MaskProvider, images: torch.Tensor, grid: tuple[int, int], *,
    image_paths: Sequence[Sequence[str | None]] | None = None, flips: Sequence[str] | None = None,
    dilation: int = DILATION, mode: str = "area", margin: float = 0.0, steps: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground masks of all views of several objects at once, as :func:`view_mask` computes them.

    ``images (B, V, 3, H, W)`` (uint8, or float in ``[0, 1]``) -> ``(full (B, V, H, W) bool,
    grid masks (B, V, h, w) bool)`` on the images' device. A provider with a batched path
    (``ThresholdMasks(backend="torch")``) computes all ``B * V`` masks and their post-processing
    (:func:`multiflow.features.masks_torch.postprocess_masks`) as tensor operations there; any
    other provider is called view by view (``image_paths[b][v]``, the view's load-time ``flips[v]``
    for providers that read files) and post-processed by :func:`postprocess_mask`.
    ``steps``: see :meth:`ThresholdMasks.batch`.
    """
    from multiflow.features.masks_torch import postprocess_masks

    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"expected (B, V, 3, H, W) images, got shape {tuple(images.shape)}")
    b, v, _, height, width = images.shape
    h, w = int(grid[0]), int(grid[1])
    if getattr(provider, "batched", False):
        raw = provider.batch(images.reshape(b * v, 3, height, width), steps=steps)
        full, g = postprocess_masks(raw, (h, w), dilation=dilation, mode=mode, margin=margin, steps=steps)
        return full.reshape(b, v, height, width), g.reshape(b, v, h, w)
    if flips is not None and len(flips) != v:
        raise ValueError(f"{len(flips)} flips for {v} views")
    arr = images.permute(0, 1, 3, 4, 2).cpu().numpy()
    fulls = np.zeros((b, v, height, width), dtype=bool)
    grids = np.zeros((b, v, h, w), dtype=bool)
    for i in range(b):
        for k in range(v):
            path = image_paths[i][k] if image_paths is not None else None
            raw = provider(arr[i, k], path)
            if getattr(provider, "reads_files", False):
                raw = _apply_flip(raw, (flips[k] if flips is not None else "") or "")
            fulls[i, k], grids[i, k] = postprocess_mask(raw, (h, w), dilation=dilation, mode=mode, margin=margin)
    return torch.from_numpy(fulls).to(images.device), torch.from_numpy(grids).to(images.device)


@dataclass
class CachedMasks:
    """Cached masks: ``grid`` ``(N, V, h, w)`` bool memmap; ``full`` ``(N, V, H, W)`` or ``None``."""

    grid: np.ndarray
    full: np.ndarray | None
    sample_ids: list[str]
    view_names: list[str]
    key: dict[str, Any]
    path: Path

    def __len__(self) -> int:
        return int(self.grid.shape[0])


def compute_masks(
    dataset: Any,
    provider: MaskProvider,
    cache_root: str | os.PathLike,
    *,
    grid: tuple[int, int],
    keep_full: bool = False,
    dilation: int = DILATION,
    margin: float = 0.0,
    mode: str = "area",
    batch_size: int = 4,
    num_workers: int = 0,
    verify: bool = True,
    on_corrupt: str = "error",
    progress: bool = True,
    ctx: DistContext | None = None,
    device: torch.device | str | None = None,
) -> CachedMasks:
    """Post-processed foreground masks of every sample of ``dataset``, computed once and cached.

    ``grid`` is the feature grid ``(h, w)`` (``extractor.feature_size()``); ``margin``: see
    :func:`postprocess_mask`. The cache key holds
    the provider's ``key()``, the post-processing parameters and the data set fingerprint (see
    :func:`multiflow.features.cache.dataset_fingerprint`). ``ctx`` shares the samples among the
    ranks of a ``torch.distributed`` job (see :func:`multiflow.features.cache.build_entry`).
    ``device``: where a batched provider computes the masks of a batch (:func:`batch_view_masks`;
    default: the CPU); the cached masks do not depend on it.
    """
    from multiflow.features.cache import ArraySpec, BatchSource, build_entry, dataset_fingerprint

    fp = dataset_fingerprint(dataset)
    h, w = int(grid[0]), int(grid[1])
    v = len(fp["view_names"]) or len(dataset.samples[0].image_paths)
    arrays = {"grid": ArraySpec((v, h, w), "bool")}
    if keep_full:
        size = fp["transform"]["image_size"]
        if size is None:  # the files' own size: read the first image's header, else load it
            try:
                from PIL import Image

                with Image.open(dataset.samples[0].image_paths[0]) as im:
                    size = [im.height, im.width]
            except (OSError, ValueError):
                first = dataset[0].images
                size = [int(first.shape[-2]), int(first.shape[-1])]
        arrays["full"] = ArraySpec((v, int(size[0]), int(size[1])), "bool")
    post: dict[str, Any] = {"fill_holes": True, "dilation": dilation, "grid": [h, w], "mode": mode, "keep_full": keep_full}
    if margin:  # only when set, so caches made before the margin existed stay valid
        post["margin"] = float(margin)
    key = {"provider": provider.key(), "post": post, "data": fp}

    flips = dict(fp["transform"]["flips"])
    source = BatchSource(dataset, fp["sample_ids"], num_workers)

    def compute(indices: Sequence[int]) -> dict[str, np.ndarray]:
        batch = source.get(indices)
        images = batch.images if device is None else batch.images.to(device)  # (B, V, 3, H, W)
        full, g = batch_view_masks(
            provider, images, (h, w), image_paths=batch.image_paths,
            flips=[flips.get(name, "") for name in batch.view_names], dilation=dilation, mode=mode, margin=margin,
        )
        out = {"grid": g.cpu().numpy()}
        if keep_full:
            out["full"] = full.cpu().numpy()
        return out

    entry = build_entry(
        cache_root=cache_root, kind="masks", key=key, sample_ids=fp["sample_ids"], view_names=fp["view_names"],
        arrays=arrays, compute=compute, batch_size=batch_size, verify=verify, on_corrupt=on_corrupt,
        progress=progress, desc=f"masks {provider.name}", plan=source.plan, ctx=ctx,
    )
    return CachedMasks(
        entry.arrays["grid"], entry.arrays.get("full"), entry.sample_ids, entry.view_names, entry.key, entry.path
    )

