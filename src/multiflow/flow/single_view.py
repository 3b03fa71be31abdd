"""The single-view flow (the paper's baseline, ``model.single_view``): one flow for all images,
each image an independent sample.

Multi-Flow scores a sample of ``V`` views jointly (paper Eq. 4: every st-network sees the
neighbour views). The single-view baseline removes every cross-view link *and* the per-view
weights: the ``V`` images of a sample become ``V`` samples of one flow with a single view, i.e.
features ``(N, V, C, h, w) -> (N * V, 1, C, h, w)``. The anomaly maps are mapped back to
``(N, V, h, w)`` so that the evaluation (S-AUROC = max over views, I-AUROC, P-AUROC, AUPRO) is
exactly the one of the multi-view model.

:class:`SingleViewFlow` is that flow with :class:`~multiflow.flow.model.MultiFlow`'s interface
(``forward``, ``nll_of_noised``, ``inverse``, ``anomaly_map``, ``present``, the sample layout
``to_flow_samples`` / ``from_flow_samples`` / ``objects_of_flow_samples``), so the engine
(training, evaluation, predict, bundle, ONNX export) talks to it as to any flow. Its weights and
config are those of a one-view ``MultiFlow`` (graph ``none`` over the one view ``"view"``), so its
flow file is the one the single-view option always wrote; the model bundle records which class
rebuilds it (``single_view``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from multiflow.errors import ConfigError, DataError
from multiflow.flow.graph import ViewGraph
from multiflow.flow.model import FlowOutput, MultiFlow
from multiflow.flow.noise import NoiseConditioner

#: the name of the one view of the shared flow (its graph, the bundle's ``graph.view_names``)
VIEW = "view"


def to_single_view(features: Any, masks: Any | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, V, C, h, w) -> (N*V, 1, C, h, w)`` and masks ``(N, V, h, w) -> (N*V, 1, h, w)``.

    Image ``k`` of the result is view ``k % V`` of sample ``k // V``. For a C-contiguous array
    (or memmap) the result is a view of the same memory, nothing is copied.
    """
    f = np.asarray(features) if not isinstance(features, np.ndarray) else features
    if f.ndim != 5:
        raise DataError(f"features must have shape (N, V, C, h, w), got {tuple(f.shape)}")
    n, v, c, h, w = f.shape
    out = f.reshape(n * v, 1, c, h, w)
    m_out = None
    if masks is not None:
        m = np.asarray(masks) if not isinstance(masks, np.ndarray) else masks
        if tuple(m.shape) != (n, v, h, w):
            raise DataError(f"masks must have shape {(n, v, h, w)}, got {tuple(m.shape)}")
        m_out = m.reshape(n * v, 1, h, w)
    return out, m_out


def from_single_view(maps: np.ndarray, n_views: int) -> np.ndarray:
    """Inverse of :func:`to_single_view` for anomaly maps: ``(N*V, 1, h, w) -> (N, V, h, w)``."""
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[1] != 1 or maps.shape[0] % n_views:
        raise DataError(f"single-view maps must have shape (N*{n_views}, 1, h, w), got {tuple(maps.shape)}")
    return maps.reshape(maps.shape[0] // n_views, n_views, *maps.shape[2:])


def single_view_indices(image_index: np.ndarray, n_views: int) -> np.ndarray:
    """Sorted sample indices that own the given single-view image indices (``k // V``)."""
    return np.unique(np.asarray(image_index, dtype=np.int64) // n_views)


class _ImageNoise(NoiseConditioner):
    """:class:`NoiseConditioner` with every image of ``(B, V, C, H, W)`` its own sample: the
    noise of ``(B, V)`` features is the noise of ``(B * V, 1)`` features (same draws), not one
    draw shared by the views of an object."""

    def forward(self, features: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        b, v = features.shape[:2]
        x, cond = super().forward(features.reshape(b * v, 1, *features.shape[2:]), generator)
        return x.reshape(features.shape), None if cond is None else cond.reshape(b, v, *cond.shape[2:])


class SingleViewFlow(MultiFlow):
    """The single-view flow: one flow of one view for every image (module docstring).

    Takes the features of objects ``(B, V, C, H, W)`` with any ``V`` and treats every image as its
    own sample (``(B * V, 1, C, H, W)`` through a one-view :class:`MultiFlow`); every output has
    the object layout, ``(B, V, ...)``. Absent views (``present``) are scored as any other image
    and their outputs carry no meaning, as in :class:`MultiFlow`.

    Args:
        channels: feature channels ``C``.
        graph: the one-view graph without edges (default: ``ViewGraph.none(1, ["view"])``; given
            when rebuilt from a stored config).
        **kwargs: :class:`MultiFlow`'s keyword arguments (``n_blocks``, ``hidden``, ..., ``seed``).
    """

    def __init__(self, channels: int, graph: ViewGraph | dict | None = None, **kwargs: Any) -> None:
        graph = ViewGraph.none(1, [VIEW]) if graph is None else graph
        if isinstance(graph, dict):
            graph = ViewGraph.from_dict(graph)
        if not isinstance(graph, ViewGraph) or graph.n_views != 1 or graph.edges:
            raise ConfigError(f"the single-view flow runs on one view without links, got the graph {graph!r}")
        super().__init__(channels, graph, **kwargs)
        self.noise = _ImageNoise(self.noise.scheme, std=self.noise.std, cond_scale=self.noise.cond_scale)

    def _images(self, x: Tensor, what: str) -> Tensor:
        """``(B, V, C, H, W) -> (B * V, 1, C, H, W)`` (a view of the same memory)."""
        if x.dim() != 5 or x.shape[2] != self.channels:
            raise DataError(f"{what} must have shape (B, V, {self.channels}, H, W), got {tuple(x.shape)}")
        return x.reshape(-1, 1, *x.shape[2:])

    @staticmethod
    def _image_fg(fg: Tensor | None) -> Tensor | None:
        """Foreground ``(B, V, H, W)`` -> ``(B * V, 1, H, W)`` (None stays None)."""
        return None if fg is None else fg.reshape(-1, 1, *fg.shape[-2:])

    def forward(
        self, features: Tensor, generator: torch.Generator | None = None, present: Tensor | None = None,
        fg: Tensor | None = None,
    ) -> FlowOutput:
        """:meth:`MultiFlow.forward` with every image its own sample: ``features (B, V, C, H, W)``,
        optional ``present (B, V)`` bool and foreground ``fg (B, V, H, W)``; outputs ``(B, V, ...)``."""
        x = self._images(features, "features")
        b, v, _, hh, ww = features.shape
        present = self._check_present(present, b, v)
        if present is not None:
            p = present.to(features.device).reshape(-1)[:, None, None, None, None]
            x = torch.where(p, x, torch.zeros((), dtype=x.dtype, device=x.device))
        out = super().forward(x, generator, fg=self._image_fg(fg))
        return FlowOutput(z=out.z.reshape(features.shape), logdet=out.logdet.reshape(b, v, hh, ww),
                          nll=out.nll.reshape(b, v, hh, ww))

    def nll_of_noised(self, x: Tensor, cond: Tensor | None, present: Tensor | None = None,
                      fg: Tensor | None = None) -> Tensor:
        """:meth:`MultiFlow.nll_of_noised` per image, ``(B, V, H, W)`` (``cond`` from :attr:`noise`;
        ``present`` is not needed: no image sees another)."""
        b, v, _, hh, ww = x.shape
        c = None if cond is None else cond.reshape(-1, 1, *cond.shape[2:])
        return super().nll_of_noised(self._images(x, "features"), c, fg=self._image_fg(fg)).reshape(b, v, hh, ww)

    def inverse(self, z: Tensor, present: Tensor | None = None, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`MultiFlow.inverse` per image: ``z (B, V, C, H, W) -> (features, logdet (B, V, H, W))``."""
        b, v, _, hh, ww = z.shape
        self._check_present(present, b, v)
        x, logdet = super().inverse(self._images(z, "latents"), fg=self._image_fg(fg))
        return x.reshape(z.shape), logdet.reshape(b, v, hh, ww)

    def to_flow_samples(self, features: Any, masks: Any | None = None) -> tuple[Any, Any | None]:
        """Every image its own sample: :func:`to_single_view` (a view of the cache, no copy)."""
        return to_single_view(features, masks)

    def from_flow_samples(self, maps: np.ndarray, n_views: int) -> np.ndarray:
        """:func:`from_single_view`: ``(N * V, 1, h, w) -> (N, V, h, w)``."""
        return from_single_view(maps, n_views)

    def objects_of_flow_samples(self, index: Any, n_views: int) -> np.ndarray:
        """:func:`single_view_indices`: the objects owning at least one of the images ``index``."""
        return single_view_indices(index, n_views)
