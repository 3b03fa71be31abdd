"""Factories: configuration sections -> data sets, backbones, mask providers, view graphs, flows.

Every command and library entry point (``fit``, ``test``, ``features``, ``predict``, the
baselines, the benchmarks) builds these objects here, from the same typed configuration, so a
cache built by one of them is the cache the others read. Below the orchestrator
(:mod:`multiflow.engine.pipeline`), above the layers it assembles (data, features, flow).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multiflow.config import DataConfig, FeatureConfig, MaskConfig, ModelConfig, TrainConfig
from multiflow.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch


def cache_dir(cfg: FeatureConfig) -> Path:
    """Feature/mask cache root: ``features.cache_dir``, else ``$MULTIFLOW_CACHE``, else ~/.cache/multiflow."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("MULTIFLOW_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "multiflow"


def list_categories(data: DataConfig) -> list[str]:
    """The classes a run covers: ``data.categories`` or every class found under ``data.root``."""
    if data.categories:
        return list(data.categories)
    if data.format == "folder":
        return [Path(data.root).resolve().name]
    if data.format == "manifest":
        return [Path(data.manifest).stem]
    from multiflow.data.realiad import list_categories as realiad_categories

    cats = realiad_categories(data.root, json_variant=data.json_variant, resolution=data.resolution or None)
    if not cats:
        raise DataError(f"no Real-IAD class JSON found under {data.root} ({data.json_variant})", data.root)
    return list(cats)


def resolve_input_size(features: FeatureConfig, data: DataConfig, category: str) -> FeatureConfig:
    """``features.input_size: 0`` = follow the data: the larger side of the first training image of
    ``category`` (the bundle then stores the resolved size). Other values are returned as is."""
    from multiflow.data.ground_truth import native_size

    if features.input_size > 0:
        return features
    ds = open_dataset(data, category, "train", None, load_masks=False)
    if len(ds) == 0:
        raise DataError(f"the train split of {category!r} has no samples", getattr(ds, "json_path", data.root))
    h, w = native_size(ds.samples[0].image_paths[0])
    return dataclasses.replace(features, input_size=max(h, w))


def open_dataset(data: DataConfig, category: str, split: str, image_size: int | None, *, load_masks: bool = True):
    """A dataset of ``split`` for ``category`` from whichever source ``data.format`` names.

    Images are decoded and resized to ``image_size`` (Pillow bilinear) at load time by
    :func:`multiflow.data.images.read_image_array`, the one decoding path of the project.
    """
    if not data.root and data.format != "manifest":
        raise ConfigError("data.root is not set (give --data or data.root in the configuration)")
    views = list(data.views) or None
    if data.format == "realiad":
        from multiflow.data.realiad import RealIADDataset

        return RealIADDataset(
            data.root,
            category,
            split=split,
            json_variant=data.json_variant,
            resolution=data.resolution or None,
            image_size=image_size,
            views=views,
            flips=data.flips or None,
            skip_incomplete=data.skip_incomplete,
            load_masks=load_masks,
        )
    if data.format == "folder":
        from multiflow.data.folder import FolderDataset

        if not views:
            raise ConfigError("data.views must list the camera names (in view order) for the folder format")
        return FolderDataset(
            data.root, split=split, views=views, category=category, image_size=image_size, flips=data.flips or None,
            skip_incomplete=data.skip_incomplete, load_masks=load_masks,
        )
    from multiflow.data.manifest import ManifestDataset

    if not views:
        raise ConfigError("data.views must list the camera names (in view order) for the manifest format")
    return ManifestDataset(
        data.manifest, split=split, views=views, category=category, image_size=image_size, flips=data.flips or None,
        skip_incomplete=data.skip_incomplete, load_masks=load_masks,
    )


def build_graph(model: ModelConfig, view_names: list[str]):
    """The view graph of ``model.graph`` (``edges``, ``top_view``, ``ring_order``) for these views."""
    from multiflow.flow.graph import build_view_graph

    return build_view_graph(
        model.graph, view_names, edges=model.edges, top=model.top_view or None,
        ring_order=list(model.ring_order) or None,
    )


def camera_rig_path(model: ModelConfig, data: DataConfig, category: str) -> Path:
    """The ``cameras.json`` of ``category``: ``model.cameras``, else the first that exists of
    ``<data.root>/<category>/cameras.json`` and ``<data.root>/realiad_<resolution>/<category>/cameras.json``.

    Raises:
        ConfigError: none of them exists (naming the paths looked at and ``model.cameras``).
    """
    if model.cameras:
        path = Path(model.cameras).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.cameras: camera rig file {path} not found")
        return path
    root = Path(data.root).expanduser() if data.root else None
    tried = []
    if root is not None:
        tried = [root / category / "cameras.json"]
        if data.resolution:
            tried.append(root / f"realiad_{data.resolution}" / category / "cameras.json")
    for path in tried:
        if path.is_file():
            return path
    raise ConfigError(
        f"model.fusion={model.fusion} needs the camera rig of class {category!r} (each camera's intrinsics and "
        f"extrinsics, docs/data-format.md) but no cameras.json was found (looked at: "
        f"{', '.join(str(p) for p in tried) or 'nothing, data.root is not set'}); give model.cameras"
    )


def resolve_camera_rig(model: ModelConfig, data: DataConfig, category: str, view_names: list[str]) -> dict | None:
    """The flow's ``camera_rig`` (:func:`multiflow.flow.geometry.camera_rig_config`) when
    ``model.fusion`` needs one (``geometry``, multi-view flow), else None. Cameras are matched to
    ``view_names`` (the data's view names) by name.

    Raises:
        ConfigError: no rig file (:func:`camera_rig_path`), a view without a camera, or load-time
            flips (the rig describes the unflipped images). DataError: a malformed rig file.
    """
    from multiflow.flow.fusion import get_fusion

    if model.single_view or "warp" not in getattr(get_fusion(model.fusion), "needs", frozenset()):
        return None
    if data.flips:
        raise ConfigError(f"model.fusion={model.fusion} maps views through the camera rig, which describes the "
                          "images as taken; it cannot be combined with data.flips")
    from multiflow.data.cameras import load_camera_rig
    from multiflow.flow.geometry import camera_rig_config

    path = camera_rig_path(model, data, category)
    rig = load_camera_rig(path)
    return camera_rig_config(rig.views, view_names, model.plane_height, source=str(path))


def build_flow(model: ModelConfig, channels: int, view_names: list[str], seed: int, *,
               camera_rig: dict | None = None, classes: list[str] | None = None):
    """A freshly initialised flow for ``channels`` features of these views: a
    :class:`multiflow.flow.MultiFlow` on the configured view graph, or, with ``model.single_view``,
    the :class:`multiflow.flow.SingleViewFlow` (one shared one-view flow, every image its own
    sample; the graph settings do not apply). The only place that tells the two apart besides the
    bundle, which records the class (:func:`multiflow.engine.bundle.load_bundle`). ``camera_rig``:
    :func:`resolve_camera_rig` (the ``geometry`` fusion)."""
    from multiflow.flow import MultiFlow, SingleViewFlow

    kwargs = dict(
        n_blocks=model.n_blocks,
        hidden=model.hidden,
        kernel_sizes=model.kernel_sizes,
        clamp=model.clamp,
        fusion=model.fusion,
        noise=model.noise,
        noise_std=model.noise_std,
        share_side_weights=model.share_side_weights,
        heads=model.heads,
        seed=seed,
    )
    if model.single_view:
        return SingleViewFlow(channels, **kwargs)
    if model.unified:  # one flow for every class of the run (``classes``, in index order)
        from multiflow.flow.unified import UnifiedFlow

        if not classes:
            raise ConfigError("model.unified: the unified flow needs the list of classes")
        return UnifiedFlow(channels, build_graph(model, view_names), classes=list(classes),
                           class_conditioning=model.class_conditioning, class_embed_dim=model.class_embed_dim,
                           latent_scale=model.latent_scale, latent_init_std=model.latent_init_std,
                           camera_rig=camera_rig, **kwargs)
    return MultiFlow(channels, build_graph(model, view_names), camera_rig=camera_rig, **kwargs)


def build_extractor(cfg: FeatureConfig):
    """The frozen backbone of ``features`` (name, input size, weights file, layer)."""
    from multiflow.features.backbones import build_backbone

    return build_backbone(
        cfg.backbone, input_size=cfg.input_size, weights=cfg.weights or None, layers=cfg.layer or None
    )


def build_mask_provider(cfg: MaskConfig, dataset: Any = None, *, image_root: str | os.PathLike | None = None,
                        device: Any = None):
    """The foreground-mask provider of ``masks``.

    ``masks.backend`` selects how the ``threshold`` provider computes (torch or NumPy); ``device``
    (the run's) puts IS-Net on the GPU where onnxruntime has the CUDA execution provider.
    ``masks.provider=file`` reads ``<mask_root>/<rel>.png`` for an image ``<image_root>/<rel>``:
    the image root is ``image_root`` if given, else the data set's (``image_root`` or ``root``).
    """
    from multiflow.features.masks import make_provider

    if cfg.provider == "file":
        if not cfg.mask_root:
            raise ConfigError("masks.provider=file needs masks.mask_root (a tree of masks parallel to the images)")
        root = image_root or getattr(dataset, "image_root", None) or getattr(dataset, "root", "")
        if not root:
            raise ConfigError("masks.provider=file needs the image root the mask tree mirrors")
        return make_provider("file", mask_root=cfg.mask_root, image_root=root)
    if cfg.provider == "threshold":  # torch (batched, on the images' device) or the NumPy reference
        return make_provider("threshold", backend=cfg.backend)
    if cfg.provider == "isnet":
        return make_provider("isnet", device=None if device is None else str(device))
    return make_provider(cfg.provider)


def run_device(cfg: TrainConfig, device: torch.device | None = None) -> tuple[torch.device, str]:
    """``(device, precision)`` of this process, resolved once per run.

    The device: the given ``device``, else this rank's device under ``torchrun``
    (:attr:`multiflow.ranks.DistContext.device`), else ``train.device`` resolved by
    :func:`multiflow.device.resolve_device`. The precision: ``train.precision`` where the device
    supports it, else fp32 (with a one-line notice, :func:`multiflow.device.resolve_precision`).
    """
    from multiflow.device import resolve_device, resolve_precision
    from multiflow.ranks import current_context

    ctx = current_context()
    if device is None:
        device = ctx.device if ctx.enabled else resolve_device(cfg.device)
    return device, resolve_precision(cfg.precision, device, notice=ctx.is_main)
