"""``MultiFlow``: the multi-view normalizing flow (paper Sec. 3, Eq. 2-4 and 7).

``features (B, V, C, H, W) --[noise]--> K x (per-view channel permutation, affine coupling with
multi-view st-networks)--> z (B, V, C, H, W)`` plus the per-pixel log-det map ``(B, V, H, W)``.
Per-pixel negative log-likelihood (Eq. 7 as a log-likelihood, up to the constant
``0.5 * log(2 pi)``):

    nll[b, v, h, w] = (0.5 * sum_c z[b, v, c, h, w]^2 - logdet[b, v, h, w]) / C

Receptive field across views: one coupling block is two half-steps, each applying Eq. 4 once,
so output view ``i`` of a ``K``-block flow depends exactly on the views that reach ``i`` within
``2K`` hops of the graph (:meth:`ViewGraph.reachable_from`); with the Real-IAD graph that is
every view after one block.

The training loss averages ``nll`` over foreground pixels only (:func:`masked_loss`); the anomaly
map is the same ``nll`` in eval mode (:meth:`MultiFlow.anomaly_map`).

Missing views: ``forward``, ``inverse`` and ``anomaly_map`` take an optional ``present`` mask
``(B, V)`` (bool, ``None`` = all present). The flow then runs on the subgraph induced by the
present views (Eq. 4 averages over the present neighbours, see :mod:`multiflow.flow.subnet`); the
features of absent views are replaced by zeros at the input, so nothing about them reaches a present
view, and their outputs carry no meaning: ``anomaly_map`` sets them to NaN and the training loss
leaves them out (:func:`multiflow.scoring.present_mask`).

Foreground: ``forward``, ``nll_of_noised``, ``inverse`` and ``anomaly_map`` take an optional
foreground ``fg`` ``(B, V, H, W)`` on the feature grid (the masks of the loss; ``anomaly_map`` uses its
``mask``); it only feeds the st-networks' fusion operators that pool or attend over a view's
foreground (``global_context``, ``correspondence``), ``None`` meaning every position. The inverse must
get the same ``fg`` as the forward.

Camera rig: the ``geometry`` fusion needs ``camera_rig`` (:func:`multiflow.flow.geometry.camera_rig_config`:
one camera per view, in view order, and the plane height); it is part of :attr:`MultiFlow.config`, so
a saved flow carries its rig.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from multiflow.errors import ConfigError, DataError
from multiflow.flow.fusion import FUSIONS, EdgeOperator
from multiflow.flow.geometry import plane_homographies
from multiflow.flow.graph import ViewGraph
from multiflow.flow.noise import NoiseConditioner
from multiflow.flow.subnet import MultiViewSubnet, multiview_subnet_factory
from multiflow.flow.transforms import AffineCoupling, FlowSequence, ViewPermutation
from multiflow.scoring import blank_absent, fill_background, masked_loss, pixel_nll, present_mask

__all__ = ["FlowOutput", "MultiFlow", "masked_loss", "present_mask"]


@dataclass(frozen=True)
class FlowOutput:
    """Result of :meth:`MultiFlow.forward`.

    Attributes:
        z: latent ``(B, V, C, H, W)``.
        logdet: per-pixel log-det map ``(B, V, H, W)``; ``logdet.sum((1, 2, 3))`` is the total.
        nll: per-pixel NLL ``(0.5 * sum_c z^2 - logdet) / C``, ``(B, V, H, W)``.
    """

    z: Tensor
    logdet: Tensor
    nll: Tensor


class MultiFlow(nn.Module):
    """Multi-view normalizing flow (Multi-Flow).

    Args:
        channels: feature channels ``C`` (read from the backbone by the caller).
        graph: :class:`ViewGraph` (or its ``to_dict()``) with ``V`` views.
        n_blocks: number of coupling blocks ``K`` (paper: 6).
        hidden: st-network hidden width (paper: 64).
        kernel_sizes: one odd kernel size per block (paper: 3, 3, 3, 3, 3, 5).
        clamp: soft-clamp ``alpha`` (Eq. 3; paper 1.9).
        fusion: ``"conv"`` (paper), ``"self_attention"`` or ``"cross_attention"`` (Tab. 3).
        noise: ``"none"``, ``"simplenet"``, ``"uniform"`` or ``"softflow"`` (Sec. 3.4).
        noise_std: std of the ``simplenet`` noise (reference code: 0.15).
        noise_cond_scale: factor from noise to the condition channel (reference: 20).
        share_side_weights: tie weights (and permutations) across symmetric views/edges, i.e. per
            orbit of the graph's automorphism group; the flow is then equivariant under it.
        heads: attention heads (attention fusions).
        fused: fused conv formulation of the st-networks (same function, faster).
        seed: seeds the permutations, the initial weights and the default noise generator.
        camera_rig: ``{"views": [camera per view], "plane_height": z0}``
            (:func:`multiflow.flow.geometry.camera_rig_config`); required by ``fusion="geometry"``
            on a graph with edges, ignored (not stored) otherwise.
    """

    def __init__(
        self,
        channels: int,
        graph: ViewGraph | dict,
        *,
        n_blocks: int = 6,
        hidden: int = 64,
        kernel_sizes: Sequence[int] = (3, 3, 3, 3, 3, 5),
        clamp: float = 1.9,
        fusion: str = "conv",
        noise: str = "simplenet",
        noise_std: float = 0.15,
        noise_cond_scale: float = 20.0,
        share_side_weights: bool = False,
        heads: int = 4,
        fused: bool = True,
        seed: int = 0,
        camera_rig: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(graph, dict):
            graph = ViewGraph.from_dict(graph)
        if not isinstance(graph, ViewGraph):
            raise ConfigError(f"graph must be a ViewGraph or its dict form, got {type(graph).__name__}")
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if n_blocks < 1 or len(kernel_sizes) != n_blocks:
            raise ConfigError(
                f"need n_blocks >= 1 and one kernel size per block: n_blocks={n_blocks}, "
                f"kernel_sizes={list(kernel_sizes)}"
            )
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion {fusion!r}; choose one of {sorted(FUSIONS)}")
        self.channels = int(channels)
        self.graph = graph
        needs_rig = "warp" in getattr(FUSIONS[fusion], "needs", frozenset()) and bool(graph.edges)
        homographies = None
        if needs_rig:
            if camera_rig is None:
                raise ConfigError(
                    f"model.fusion={fusion} resamples neighbours through the support plane and needs the camera rig "
                    "(each camera's intrinsics and extrinsics): give model.cameras (a cameras.json, "
                    "docs/data-format.md) or put cameras.json in the class folder of the data"
                )
            hom, depth = plane_homographies(camera_rig, graph.n_views, graph.names)
            homographies = (torch.from_numpy(hom), torch.from_numpy(depth))
        else:
            camera_rig = None
        self._cfg: dict[str, Any] = dict(
            channels=self.channels,
            graph=graph.to_dict(),
            n_blocks=int(n_blocks),
            hidden=int(hidden),
            kernel_sizes=list(kernel_sizes),
            clamp=float(clamp),
            fusion=fusion,
            noise=noise,
            noise_std=float(noise_std),
            noise_cond_scale=float(noise_cond_scale),
            share_side_weights=bool(share_side_weights),
            heads=int(heads),
            fused=bool(fused),
            seed=int(seed),
        )
        if camera_rig is not None:
            self._cfg["camera_rig"] = camera_rig
        self.noise = NoiseConditioner(noise, std=noise_std, cond_scale=noise_cond_scale)
        gen = torch.Generator().manual_seed(int(seed))
        view_classes = graph.view_orbits() if share_side_weights else None
        blocks: list[nn.Module] = []
        # Module constructors draw default inits from the global RNG; fork it so the global state
        # is left untouched, then overwrite every parameter from our own generator below.
        with torch.random.fork_rng(devices=[]):
            for k in kernel_sizes:
                blocks.append(ViewPermutation(self.channels, graph.n_views, generator=gen, view_classes=view_classes))
                factory = multiview_subnet_factory(
                    graph, hidden=hidden, kernel_size=k, fusion=fusion, heads=heads,
                    share_weights=share_side_weights, fused=fused, plane_homographies=homographies,
                )
                blocks.append(AffineCoupling(self.channels, factory, clamp=clamp,
                                             cond_channels=self.noise.condition_channels + self._extra_cond_channels()))
        self.flow = FlowSequence(blocks)
        _init_parameters(self, gen)
        self._noise_gen = torch.Generator().manual_seed(int(seed) + 1)

    def _extra_cond_channels(self) -> int:
        """Condition channels the couplings take besides the noise's (0 here; the unified flow's
        class embedding, :class:`multiflow.flow.unified.UnifiedFlow`)."""
        return 0

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; ``MultiFlow.from_config(m.config)`` rebuilds it."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._cfg.items()} | {
            "graph": self.graph.to_dict()
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "MultiFlow":
        if not isinstance(cfg, dict) or "channels" not in cfg or "graph" not in cfg:
            raise ConfigError(f"a MultiFlow config needs at least 'channels' and 'graph', got {cfg!r}")
        kwargs = dict(cfg)
        try:
            return cls(kwargs.pop("channels"), kwargs.pop("graph"), **kwargs)
        except TypeError as exc:
            raise ConfigError(f"invalid MultiFlow config: {exc}") from exc

    def set_fused(self, fused: bool) -> None:
        """Switch every st-network between the fused and the per-edge formulation."""
        self._cfg["fused"] = bool(fused)
        for m in self.modules():
            if isinstance(m, MultiViewSubnet):
                m.fused = bool(fused)

    # ------------------------------------------------------------------ flow
    def _check(self, x: Tensor, what: str) -> None:
        v = self.graph.n_views
        if x.dim() != 5 or x.shape[1] != v or x.shape[2] != self.channels:
            raise DataError(f"{what} must have shape (B, {v}, {self.channels}, H, W), got {tuple(x.shape)}")

    def _check_present(self, present: Tensor | None, batch: int, n_views: int | None = None) -> Tensor | None:
        if present is None:
            return None
        v = self.graph.n_views if n_views is None else n_views
        if tuple(present.shape) != (batch, v) or present.dtype != torch.bool:
            raise DataError(f"present must be a bool tensor of shape ({batch}, {v}), got "
                            f"{present.dtype} {tuple(present.shape)}")
        if not bool(present.any(dim=1).all()):
            raise DataError("every sample needs at least one present view (a row of present is all False)")
        return present

    def forward(
        self, features: Tensor, generator: torch.Generator | None = None, present: Tensor | None = None,
        fg: Tensor | None = None,
    ) -> FlowOutput:
        """Map features to latents.

        Args:
            features: ``(B, V, C, H, W)``.
            generator: source of the training noise (default: the model's own generator seeded
                with ``seed + 1``). Unused in eval mode (``eps = 0``).
            present: optional ``(B, V)`` bool mask of the views present (module docstring);
                outputs of absent views carry no meaning.
            fg: optional foreground ``(B, V, H, W)`` for the fusion operators (module docstring).
        """
        self._check(features, "features")
        present = self._check_present(present, features.shape[0])
        if present is not None:
            p = present.to(features.device)[:, :, None, None, None]
            features = torch.where(p, features, torch.zeros((), dtype=features.dtype, device=features.device))
        gen = generator if generator is not None else self._noise_gen
        x, cond = self.noise(features, gen)
        z, logdet = self.flow(x, cond, None if present is None else present.to(x.device), fg=fg)
        return FlowOutput(z=z, logdet=logdet, nll=pixel_nll(z, logdet))

    def nll_of_noised(self, x: Tensor, cond: Tensor | None, present: Tensor | None = None,
                      fg: Tensor | None = None) -> Tensor:
        """Per-pixel NLL ``(B, V, H, W)`` of already-noised features ``x (B, V, C, H, W)`` with the
        noise conditioning ``cond`` (what :attr:`noise` returned); :meth:`forward` without the noise.

        ``present`` (``(B, V)`` bool) runs the flow on the induced subgraph; the caller must have
        zeroed the absent views' features before the noise, as :meth:`forward` does. ``fg`` as there."""
        z, logdet = self.flow(x, cond, None if present is None else present.to(x.device), fg=fg)
        return pixel_nll(z, logdet)

    def inverse(self, z: Tensor, present: Tensor | None = None, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Eval-mode inverse (``eps = 0``): ``z (B, V, C, H, W) -> (features, logdet of the inverse)``.

        With ``present`` (``(B, V)`` bool) it inverts the flow on the induced subgraph; the
        outputs of absent views carry no meaning. ``fg``: the foreground the forward got.
        """
        self._check(z, "latents")
        present = self._check_present(present, z.shape[0])
        cond = None
        if self.noise.condition_channels:
            b, v, _, hh, ww = z.shape
            cond = z.new_zeros(b, v, 1, hh, ww)
        return self.flow.inverse(z, cond, None if present is None else present.to(z.device), fg=fg)

    masked_loss = staticmethod(masked_loss)

    # ------------------------------------------------------------------ samples
    def to_flow_samples(self, features: Any, masks: Any | None = None) -> tuple[Any, Any | None]:
        """The objects ``features (N, V, C, h, w)`` and ``masks (N, V, h, w)`` (array-likes, e.g. a
        memory-mapped cache) laid out as the independent samples this flow is trained on and
        scored with in batches (:func:`multiflow.engine.train.train_flow`, ``compute_maps``).
        Here an object is one sample: returned as given. (The single-view flow makes every image
        its own sample, :class:`multiflow.flow.single_view.SingleViewFlow`.)"""
        return features, masks

    def from_flow_samples(self, maps: np.ndarray, n_views: int) -> np.ndarray:
        """Inverse of :meth:`to_flow_samples` for anomaly maps: ``(N, V, h, w)`` of ``n_views`` views."""
        return maps

    def objects_of_flow_samples(self, index: Any, n_views: int) -> np.ndarray:
        """Sorted indices of the objects owning the samples ``index`` of :meth:`to_flow_samples`
        (e.g. the held-out split of ``train_flow``); here the indices themselves, sorted."""
        return np.unique(np.asarray(index, dtype=np.int64))

    @torch.no_grad()
    def anomaly_map(self, features: Tensor, mask: Tensor | None = None, present: Tensor | None = None,
                    **forward_kwargs: Any) -> Tensor:
        """Per-pixel NLL in eval mode, ``(B, V, H, W)``; higher = more anomalous.

        With a foreground ``mask (B, V, H, W)``, background pixels are set to the minimum of the
        foreground values of the same sample and view (no ties with a constant, no false highs;
        :func:`multiflow.scoring.fill_background`); a view without foreground pixels keeps its raw
        map. The mask is also the flow's ``fg`` (the fusion operators' foreground). With ``present``
        (``(B, V)`` bool) the flow runs on the present views only and the maps of absent views are NaN
        (:func:`multiflow.scoring.blank_absent`). The module's train/eval mode is restored afterwards.
        ``forward_kwargs`` go to :meth:`forward` (a subclass's own inputs, e.g. a unified flow's classes).
        """
        was_training = self.training
        self.eval()
        try:
            nll = self.forward(features, present=present, fg=mask, **forward_kwargs).nll
        finally:
            self.train(was_training)
        return blank_absent(fill_background(nll, mask), present)


def _init_parameters(model: nn.Module, gen: torch.Generator) -> None:
    """Deterministic init from ``gen`` (PyTorch's default schemes, no global RNG).

    Convs: kaiming-uniform weights (``a = sqrt(5)``) and ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` biases;
    attention projections: xavier-uniform, zero biases; LayerNorm: ones/zeros; ``gamma = 0``.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
            elif isinstance(m, nn.MultiheadAttention):
                nn.init.xavier_uniform_(m.in_proj_weight, generator=gen)
                nn.init.zeros_(m.in_proj_bias)
                nn.init.xavier_uniform_(m.out_proj.weight, generator=gen)
                nn.init.zeros_(m.out_proj.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, MultiViewSubnet):
                nn.init.zeros_(m.gamma)
        for m in model.modules():  # operators that start in a set state (e.g. a zero FiLM)
            if isinstance(m, EdgeOperator):
                m.reset_message_()
