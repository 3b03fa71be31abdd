"""One preprocessing path from images to what the flow scores: decode, resize, masks, features.

* Files are decoded and resized once, by :func:`multiflow.data.images.read_image_array` (Pillow
  bilinear to the backbone's input size, the data set's load-time flips): the data sets (and with
  them the feature cache, ``test`` and ``predict``) and the HTTP service
  (:func:`multiflow.data.images.read_image_bytes`, same conversion) all use it; images handed over
  as tensors at another size are resized the same way (:func:`multiflow.data.images.resize_images`).
* Foreground masks: :func:`multiflow.features.masks.batch_view_masks`, as the mask cache computes
  them (the bundle's dilation and ``masks.margin``): the ``threshold`` provider as batched tensor
  operations on the run's device, all views of all objects of a batch in one call
  (``masks.backend=numpy`` / ``masks_backend="numpy"``: the NumPy reference, for comparison).
* Features: the frozen backbone, then rounded to the stored feature dtype (``features.dtype``,
  float16 by default) exactly as the cache stores them, so inference sees what training and the
  threshold calibration saw.

:func:`prepare_split` is the cached path for whole splits (fit, test, baselines);
:class:`ViewPreprocessor` is the per-sample path (predict, serve, export's masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from multiflow.config import RunConfig
from multiflow.engine.factories import build_mask_provider, cache_dir, open_dataset
from multiflow.errors import ConfigError, DataError
from multiflow.ranks import current_context

FEATURE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def round_features(features: torch.Tensor, dtype: str) -> torch.Tensor:
    """``features`` rounded to the cache's storage ``dtype`` and back to float32."""
    if dtype not in FEATURE_DTYPES:
        raise ConfigError(f"features.dtype must be one of {sorted(FEATURE_DTYPES)}, got {dtype!r}")
    return features.to(FEATURE_DTYPES[dtype]).float()


@dataclass
class PreparedSplit:
    """A split with its cached features ``(N, V, C, h, w)`` and grid masks ``(N, V, h, w)`` (or None)."""

    dataset: Any
    features: np.ndarray
    masks: np.ndarray | None
    sample_ids: list[str]
    view_names: list[str]


def prepare_split(cfg: RunConfig, category: str, split: str, extractor, *, progress: bool = True,
                  on_corrupt: str = "error", device: torch.device | None = None) -> PreparedSplit:
    """Open a split, extract (or reuse) its features and foreground masks.

    ``on_corrupt``: ``"error"`` or ``"rebuild"`` a cache entry that fails its checks.
    ``device``: the backbone is moved there and runs there (one transfer per batch), and the
    batched masks (``masks.backend=torch``) are computed there; default: wherever the backbone is,
    masks on the CPU.

    Under ``torchrun`` the samples are shared among the ranks and every rank gets the whole
    result (:func:`multiflow.features.cache.build_entry`); every rank must call this.
    """
    from multiflow.features.cache import extract_features
    from multiflow.features.masks import compute_masks

    ds = open_dataset(cfg.data, category, split, cfg.features.input_size, load_masks=False)
    if len(ds) == 0:
        raise DataError(f"the {split} split of {category!r} has no samples", getattr(ds, "json_path", cfg.data.root))
    root = cache_dir(cfg.features)
    ctx = current_context()
    if device is not None:
        extractor.to(device)
    feats = extract_features(
        ds, extractor, root, batch_size=cfg.features.batch_size, dtype=cfg.features.dtype,
        num_workers=cfg.features.num_workers, progress=progress, ctx=ctx, on_corrupt=on_corrupt,
    )
    masks = None
    if cfg.masks.provider != "none":
        provider = build_mask_provider(cfg.masks, ds, device=device)
        cm = compute_masks(
            ds, provider, root, grid=extractor.feature_size(extractor.input_size),
            dilation=cfg.masks.dilation, margin=cfg.masks.margin, batch_size=cfg.features.batch_size,
            num_workers=cfg.features.num_workers, progress=progress, ctx=ctx, on_corrupt=on_corrupt,
            device=device,
        )
        masks = cm.grid
    return PreparedSplit(ds, feats.features, masks, list(feats.sample_ids), list(ds.view_names))


class ViewPreprocessor:
    """Images of objects -> the flow's input, as the cache computes it.

    Args:
        extractor: the frozen backbone (checked against the bundle by the caller).
        bundle: the :class:`multiflow.engine.bundle.ModelBundle` (features dtype, masks, flips).
        device: where masks and features are computed and returned (the backbone is moved there;
            default: where the backbone is). Images are decoded and resized on the CPU (in worker
            threads by :func:`multiflow.engine.predict.predict_dataset`), then moved once.
        masks_backend: how the ``threshold`` provider computes: ``"torch"`` (default: batched tensor
            operations on ``device``, all views of all objects of a batch at once) or ``"numpy"``
            (the NumPy/SciPy reference, view by view on the CPU); the masks agree within the
            tolerance stated in :mod:`multiflow.features.masks_torch` (IoU >= 0.99).
    """

    def __init__(self, *, extractor, bundle, device: torch.device | None = None, masks_backend: str = "torch") -> None:
        import dataclasses

        from multiflow.features.masks import BACKENDS

        if masks_backend not in BACKENDS:
            raise ConfigError(f"masks backend must be one of {list(BACKENDS)}, got {masks_backend!r}")
        if device is not None:
            extractor.to(device)
        self.extractor = extractor
        if device is None:  # where the backbone's weights are (the CPU for one without any)
            first = next(iter([*extractor.parameters(), *extractor.buffers()]), None)
            device = torch.device("cpu") if first is None else first.device
        self.device = device
        self.input_size = int(extractor.input_size)
        self.dtype = bundle.features.dtype
        self.masks_spec = bundle.masks
        self.masks_backend = masks_backend
        self.flips = dict(bundle.flips or {})
        self.view_names = list(bundle.view_names)
        self.grid = tuple(int(s) for s in self.extractor.feature_size(self.input_size))
        self._static_provider = None
        if self.masks_spec.provider not in ("none", "file"):
            cfg = dataclasses.replace(self.masks_spec.to_config(), backend=masks_backend)
            self._static_provider = build_mask_provider(cfg, device=device)

    @property
    def needs_paths(self) -> bool:
        """Whether masks come from files next to the images (``masks.provider=file``)."""
        return self.masks_spec.provider == "file"

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """``(V, 3, H, W)`` in ``[0, 1]`` -> ``(V, 3, S, S)``, as the data sets resize at load."""
        from multiflow.data.images import resize_images

        return resize_images(images, self.input_size)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x (V, 3, S, S)`` or ``(B, V, 3, S, S)`` (already resized) -> ``(B, V, C, h, w)`` float32
        rounded to the stored dtype, on :attr:`device` (``B = 1`` for a 4-d ``x``); one backbone
        call for all ``B * V`` images."""
        from multiflow.device import to_device

        x = x[None] if x.ndim == 4 else x
        return round_features(self.extractor.forward_views(to_device(x, self.device)).float(), self.dtype)

    @torch.no_grad()
    def view_masks(self, x: torch.Tensor, view_names: list[str], *, image_paths: list[str | None] | None = None,
                   image_root: str | None = None, sample_id: str = "") -> torch.Tensor | None:
        """Grid masks ``(N, h, w)`` float (1 = foreground) of ``N`` views ``x (N, 3, S, S)`` of any
        number of objects (``view_names[n]``: the camera of image ``n``, which selects its load-time
        flip), computed where ``x`` is (the ``torch`` backend: one batched call for all ``N``), or
        None without masks. ``image_paths`` (one per image) and ``image_root`` are needed for
        ``masks.provider=file``; without them a :class:`DataError` says so (the threshold assumes
        those masks)."""
        from multiflow.features.masks import batch_view_masks

        if self.masks_spec.provider == "none":
            return None
        if len(view_names) != x.shape[0]:
            raise DataError(f"sample {sample_id!r}: {x.shape[0]} images for the views {list(view_names)}")
        provider = self._static_provider
        if provider is None:  # file masks: the mask tree mirrors the images' root
            if not image_paths or not image_root or any(p is None for p in image_paths):
                raise DataError(
                    f"sample {sample_id!r}: this model was trained and calibrated with mask files "
                    f"(masks.provider=file, mask_root {self.masks_spec.mask_root!r}); score it from image files "
                    "inside a data set root (multiflow predict / api.predict) so their masks can be found"
                )
            provider = build_mask_provider(self.masks_spec.to_config(), image_root=image_root)
        paths = [list(image_paths)] if image_paths else None
        _, grid = batch_view_masks(
            provider, x[None], self.grid, image_paths=paths, flips=[self.flips.get(v, "") for v in view_names],
            dilation=int(self.masks_spec.dilation), margin=float(self.masks_spec.margin),
        )
        return grid[0].float()

    def masks(self, x: torch.Tensor, *, image_paths: list[str] | None = None, image_root: str | None = None,
              sample_id: str = "", view_names: list[str] | None = None) -> torch.Tensor | None:
        """Grid masks ``(1, V, h, w)`` float (1 = foreground) of one object's ``x (V, 3, S, S)``, or
        None without masks (:meth:`view_masks`; ``view_names``: the cameras of the ``V`` images,
        default: all of the bundle's, in order; a subset for an incomplete object)."""
        names = list(view_names) if view_names is not None else self.view_names
        m = self.view_masks(x, names, image_paths=image_paths, image_root=image_root, sample_id=sample_id)
        return None if m is None else m[None]

    def __call__(
        self, images: torch.Tensor, *, image_paths: list[str] | None = None, image_root: str | None = None,
        sample_id: str = "", view_names: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``images (V, 3, H, W)`` (data-set orientation, any size) -> ``(features (1, V, C, h, w)
        float32 rounded to the stored dtype, masks (1, V, h, w) float or None)``, both computed on
        :attr:`device`; ``view_names`` as in :meth:`masks`."""
        from multiflow.device import to_device

        x = to_device(self.resize(images.cpu()), self.device)
        mask = self.masks(x, image_paths=image_paths, image_root=image_root, sample_id=sample_id,
                          view_names=view_names)
        return self.features(x), mask
