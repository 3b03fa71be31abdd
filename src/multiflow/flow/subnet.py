"""The multi-view st-network of paper Eq. 4 (Fig. 4).

Input ``u`` of shape ``(B, V, C_in, H, W)`` (half of the channels plus the condition), output
``(B, V, C_out, H, W)`` (``C_out = 2 * C_other_half``: log-scales ``s`` then shifts ``t``):

1. ``h_v = ReLU(Conv_in_v(u_v))``, ``C_in -> hidden`` (``k x k``, replicate padding), per view.
2. ``out_i = gamma_i * ( f_ii(h_i) + (1 / |N(i)|) * sum_{j in N(i)} f_ji(h_i, h_j) )`` (Eq. 4), where
   ``f_ii`` is a ``k x k`` conv ``hidden -> C_out`` and ``f_ji`` the injected fusion operator of the
   directed edge ``j -> i`` (:mod:`multiflow.flow.fusion`). The mean term is absent when ``N(i)`` is
   empty. ``gamma_i`` is a learnable scalar initialised to 0, so a fresh flow is the identity.

Weights: one set per view and per directed edge (reference implementation), or, with
``share_weights=True``, one set per orbit of views / edges under the automorphism group of the
graph, which makes the network (and the flow) equivariant under those view permutations.

One forward, two execution strategies of the same function from the same parameters
(:meth:`MultiViewSubnet.forward` picks one; ``present`` is optional in both):

* per-edge (any fusion operator): ``V`` self convs plus one operator call per edge (21 for
  Real-IAD), weighted and summed;
* fused (``fused=True``, default, when every operator is a conv of the source alone,
  :attr:`multiflow.flow.fusion.EdgeOperator.source_conv`): the ``V`` input convs run as ONE grouped
  conv (``groups = V``), the hidden maps are padded once, and for each target ``i`` ONE conv runs
  over the channel concatenation ``[h_i, h_j1, h_j2, ...]`` with the concatenated weight
  ``gamma_i * [W_ii, w_j1 W_j1i, w_j2 W_j2i, ...]`` and bias ``gamma_i * (b_ii + sum_j w_j b_ji)``
  (``w_j`` the message weights below; per-sample weights scale the hidden maps instead of the
  weight). Same FLOPs, far fewer and larger GEMMs, no per-edge temporaries.

Missing views (``present``, a ``(B, V)`` bool mask; ``None`` = every view present, the special
case): the network runs on the subgraph induced by the present views of each sample. The mean of
Eq. 4 is taken over the *present* neighbours, ``out_i = gamma_i * ( f_ii(h_i) + (1 / |N_p(i)|) *
sum_{j in N_p(i)} f_ji(h_i, h_j) )`` with ``N_p(i) = {j in N(i) : present_j}``; a view without
present neighbours gets its self path only. The hidden maps of absent views are replaced by zeros
before any edge operator sees them and their messages get weight 0 (selected with
``torch.where``), so the outputs of present views do not depend on the inputs of absent views at
all. Outputs of absent views are computed (from their own inputs) but carry no meaning.

Foreground (``fg``, optional ``(B, V, H, W)`` or ``(B, V, 1, H, W)``, 1 = foreground, ``None`` = every
position): handed to the operators that declare ``"source_fg"`` in :attr:`EdgeOperator.needs`
(masked statistics, masked attention keys) as the source view's ``(B, 1, H, W)``. Operators that
declare ``"warp"`` get the edge's plane-induced resampling grid, computed from the homographies
given at construction (``plane_homographies``, :mod:`multiflow.flow.geometry`).

The message weights ``w_j = s * present_j / max(|N_p(i)|, 1)``, with the diagnostic
``cross_view_scale`` ``s`` (:func:`cross_view_scaled`), are defined once, in
:class:`NeighbourWeights`; both strategies only apply them. With every view present and ``s = 1``
the outputs are those of the paper's network bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multiflow.errors import ConfigError
from multiflow.flow.fusion import EdgeFactory, get_fusion, make_conv
from multiflow.flow.geometry import warp_grid
from multiflow.flow.graph import ViewGraph


class MultiViewSubnet(nn.Module):
    """Multi-view st-network (Eq. 4). See the module docstring for the math.

    Args:
        in_channels: ``C_in`` per view (half-channels + condition channels).
        out_channels: ``C_out`` per view.
        graph: the :class:`ViewGraph` (``V`` views, edges ``j -> i``).
        hidden: width of ``h_v`` (paper: 64).
        kernel_size: odd kernel size of all convs of this network (paper: 3, or 5 in the last block).
        fusion: name in :data:`multiflow.flow.fusion.FUSIONS` or an edge factory
            ``factory(hidden, out_channels, kernel_size, heads)``.
        heads: attention heads (attention fusions only).
        share_weights: tie weights across symmetric views / edges (graph automorphism orbits).
        fused: use the fused strategy when every operator allows it (same function, faster).
        plane_homographies: ``(H (V, V, 3, 3), d (V, 3))`` of :func:`multiflow.flow.geometry.plane_homographies`,
            needed by operators that declare ``"warp"`` (the ``geometry`` fusion); kept as
            non-persistent buffers (the flow rebuilds them from its stored camera rig).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        graph: ViewGraph,
        hidden: int = 64,
        kernel_size: int = 3,
        fusion: str | EdgeFactory = "conv",
        heads: int = 4,
        share_weights: bool = False,
        fused: bool = True,
        plane_homographies: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        if hidden < 1:
            raise ConfigError(f"hidden width must be >= 1, got {hidden}")
        factory: EdgeFactory = get_fusion(fusion) if isinstance(fusion, str) else fusion
        self.graph = graph
        self.n_views = graph.n_views
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden, self.kernel_size = hidden, kernel_size
        if share_weights:
            self.view_class = graph.view_orbits()
            edge_cls = graph.edge_orbits()
        else:
            self.view_class = list(range(graph.n_views))
            edge_cls = {e: k for k, e in enumerate(graph.edges)}
        self.edge_class = edge_cls
        n_vc = max(self.view_class) + 1
        n_ec = (max(edge_cls.values()) + 1) if edge_cls else 0
        self.in_convs = nn.ModuleList(make_conv(in_channels, hidden, kernel_size) for _ in range(n_vc))
        self.self_convs = nn.ModuleList(make_conv(hidden, out_channels, kernel_size) for _ in range(n_vc))
        self.edge_ops = nn.ModuleList(
            factory(hidden, out_channels, kernel_size, heads) for _ in range(n_ec)
        )
        self.gamma = nn.Parameter(torch.zeros(n_vc))
        #: weight of the neighbour mean in Eq. 4 (1 = the paper's network). Not part of the model's
        #: state: 0 switches the cross-view messages off at inference (diagnosis, :func:`cross_view_scaled`).
        self.cross_view_scale = 1.0
        self.fused = fused
        self._neigh = [graph.neighbours(i) for i in range(graph.n_views)]
        self._needs = frozenset().union(*(getattr(op, "needs", frozenset()) for op in self.edge_ops))
        if plane_homographies is not None:
            hom, depth = (torch.as_tensor(t, dtype=torch.float64) for t in plane_homographies)
            v = graph.n_views
            if tuple(hom.shape) != (v, v, 3, 3) or tuple(depth.shape) != (v, 3):
                raise ConfigError(f"plane_homographies must be ((V, V, 3, 3), (V, 3)) for V = {v}, got "
                                  f"{tuple(hom.shape)}, {tuple(depth.shape)}")
            self.register_buffer("plane_hom", hom.float(), persistent=False)
            self.register_buffer("plane_depth", depth.float(), persistent=False)
        elif "warp" in self._needs and graph.edges:
            raise ConfigError("this fusion resamples neighbours through the support plane and needs the camera "
                              "rig's plane homographies (plane_homographies=); none were given")
        else:
            self.plane_hom = self.plane_depth = None

    @property
    def can_fuse(self) -> bool:
        """True when every edge operator is a conv of the source alone (:attr:`EdgeOperator.source_conv`),
        so the fused strategy applies."""
        return all(getattr(op, "source_conv", None) is not None for op in self.edge_ops)

    def forward(self, u: Tensor, present: Tensor | None = None, fg: Tensor | None = None) -> Tensor:
        """``u: (B, V, C_in, H, W) -> (B, V, C_out, H, W)`` (Eq. 4 times ``gamma``).

        ``present``: optional ``(B, V)`` bool mask of the views present; ``None`` is the special case
        "every view present" (see the module docstring). ``fg``: optional foreground ``(B, V, H, W)``
        or ``(B, V, 1, H, W)`` on the feature grid, for operators that use it (``None``: every
        position). The fused strategy runs when :attr:`fused` is set and :attr:`can_fuse`, else the
        per-edge one: the same function.
        """
        if u.dim() != 5 or u.shape[1] != self.n_views or u.shape[2] != self.in_channels:
            raise ConfigError(
                f"st-network expects (B, {self.n_views}, {self.in_channels}, H, W), got {tuple(u.shape)}"
            )
        if present is not None:
            if tuple(present.shape) != (u.shape[0], self.n_views):
                raise ConfigError(
                    f"present must have shape (B, V) = {(u.shape[0], self.n_views)}, got {tuple(present.shape)}"
                )
            present = present.to(device=u.device, dtype=torch.bool)
        if fg is not None:
            b, v, _, hh, ww = u.shape
            if fg.dim() == 4:
                fg = fg[:, :, None]
            if tuple(fg.shape) != (b, v, 1, hh, ww):
                raise ConfigError(f"fg must have shape (B, V, H, W) = {(b, v, hh, ww)}, got {tuple(fg.shape)}")
            fg = fg.to(device=u.device)
        weights = self.message_weights(present, u.dtype)
        if self.fused and self.can_fuse:
            return self._forward_fused(u, present, weights)
        return self._forward_per_edge(u, present, weights, fg)

    def _edge_inputs(self, j: int, i: int, present: Tensor | None, fg: Tensor | None,
                     hh: int, ww: int) -> dict[str, object]:
        """Keyword arguments of the operator of edge ``j -> i`` (its :attr:`EdgeOperator.needs`)."""
        op = self.edge_ops[self.edge_class[(j, i)]]
        kw: dict[str, object] = {"source_present": None if present is None else present[:, j]}
        needs = getattr(op, "needs", frozenset())
        if "source_fg" in needs:
            kw["source_fg"] = None if fg is None else fg[:, j]
        if "warp" in needs:
            kw["warp"] = warp_grid(self.plane_hom[i, j], self.plane_depth[i], hh, ww)
        return kw

    def message_weights(self, present: Tensor | None, dtype: torch.dtype) -> list[NeighbourWeights]:
        """The weights of the neighbour messages of every target view (Eq. 4 with the
        present views and :attr:`cross_view_scale`), one :class:`NeighbourWeights` per view."""
        out = []
        for i in range(self.n_views):
            neigh = self._neigh[i]
            p = None if present is None or not neigh else present[:, list(neigh)]
            out.append(NeighbourWeights(len(neigh), self.cross_view_scale, p, dtype))
        return out

    def _forward_per_edge(self, u: Tensor, present: Tensor | None, weights: list[NeighbourWeights],
                          fg: Tensor | None = None) -> Tensor:
        """Per-edge strategy (any fusion operator): one module call per view and per edge."""
        vc = self.view_class
        h = [torch.relu(self.in_convs[vc[v]](u[:, v])) for v in range(self.n_views)]
        if present is not None:  # absent views send nothing: zero hidden maps, weight 0 below
            zero = u.new_zeros(())
            h = [torch.where(present[:, v, None, None, None], h[v], zero) for v in range(self.n_views)]
        outs = []
        for i in range(self.n_views):
            o = self.self_convs[vc[i]](h[i])
            neigh = self._neigh[i]
            if neigh:
                hh, ww = u.shape[-2:]
                msgs = [
                    self.edge_ops[self.edge_class[(j, i)]](h[i], h[j], **self._edge_inputs(j, i, present, fg, hh, ww))
                    for j in neigh
                ]
                o = o + weights[i].mean(msgs)
            outs.append(self.gamma[vc[i]] * o)
        return torch.stack(outs, dim=1)

    def _fused_hidden(self, u: Tensor) -> Tensor:
        """Every view's input conv + ReLU as one grouped conv, replicate-padded for the fused
        message convs: ``(B, V, C_in, H, W)`` -> ``(B, V, hidden, H + 2p, W + 2p)``, ``p = k // 2``."""
        b, v, c_in, hh, ww = u.shape
        p = self.kernel_size // 2
        vc = self.view_class
        w_in = torch.cat([self.in_convs[vc[k]].weight for k in range(v)], dim=0)
        b_in = torch.cat([self.in_convs[vc[k]].bias for k in range(v)], dim=0)
        x = u.reshape(b, v * c_in, hh, ww)
        if p:
            x = F.pad(x, (p, p, p, p), mode="replicate")
        h = torch.relu(F.conv2d(x, w_in, b_in, groups=v))  # (B, V*hidden, H, W)
        if p:
            h = F.pad(h, (p, p, p, p), mode="replicate")
        return h.view(b, v, self.hidden, hh + 2 * p, ww + 2 * p)

    def _forward_fused(self, u: Tensor, present: Tensor | None, weights: list[NeighbourWeights]) -> Tensor:
        """Fused strategy (source-conv operators only, see the module docstring). Conv is linear:
        uniform message weights are folded into the concatenated conv weight, per-sample weights
        scale the neighbours' hidden maps and their biases (added after the conv)."""
        b, v, _, hh, ww = u.shape
        p = self.kernel_size // 2
        vc = self.view_class
        h = self._fused_hidden(u)
        if present is not None:  # absent views send nothing: zero hidden maps, weight 0 below
            h = torch.where(present[:, :, None, None, None], h, u.new_zeros(()))
        outs = []
        for i in range(v):
            g = self.gamma[vc[i]]
            sc = self.self_convs[vc[i]]
            neigh = self._neigh[i]
            if not neigh:
                outs.append(F.conv2d(h[:, i], g * sc.weight, g * sc.bias))
                continue
            convs = [self.edge_ops[self.edge_class[(j, i)]].source_conv for j in neigh]
            idx = torch.tensor((i,) + tuple(neigh), device=u.device)
            hin = h.index_select(1, idx)  # (B, 1 + n, hidden, H', W')
            shape = (b, (1 + len(neigh)) * self.hidden, hh + 2 * p, ww + 2 * p)
            w = weights[i]
            if w.uniform:
                scale = w.scaled(g)
                weight = torch.cat([g * sc.weight] + [scale * c.weight for c in convs], dim=1)
                bias = g * sc.bias + scale * torch.stack([c.bias for c in convs]).sum(0)
                outs.append(F.conv2d(hin.reshape(shape), weight, bias))
                continue
            per = w.per_sample()  # (B, n)
            hn = w.weigh(hin[:, 1:])
            inp = torch.cat([hin[:, :1], hn], dim=1).reshape(shape)
            weight = torch.cat([g * sc.weight] + [g * c.weight for c in convs], dim=1)
            bias = g * (sc.bias[None] + per @ torch.stack([c.bias for c in convs]))  # (B, C_out)
            outs.append(F.conv2d(inp, weight) + bias[:, :, None, None])
        return torch.stack(outs, dim=1)


class NeighbourWeights:
    """The factor of each neighbour message ``j -> i`` of one target view ``i`` in Eq. 4, the one
    place where the missing views and :attr:`MultiViewSubnet.cross_view_scale` ``s`` enter:

        ``w_j = s * present_j / max(|N_p(i)|, 1)``,  ``N_p(i) = {j in N(i) : present_j}``.

    Args:
        n: ``|N(i)|``.
        scale: ``s`` (1 = the paper's network).
        present: ``(B, n)`` bool of the neighbours ``N(i)`` in order, or None: every view present,
            the weight is then the same ``s / n`` for every sample (:attr:`uniform`).
        dtype: float dtype of the per-sample weights.

    The uniform case is applied as ``(x * s) / n`` after summing (``= x / n`` exactly when
    ``s = 1``, the paper's network bit for bit); per-sample weights multiply each message and an
    absent neighbour's message is replaced by an exact zero (``torch.where``), so nothing of an
    absent view, not even a non-finite value, reaches view ``i``.
    """

    def __init__(self, n: int, scale: float, present: Tensor | None, dtype: torch.dtype) -> None:
        self.n, self.scale, self.present = int(n), float(scale), present
        self._per_sample: Tensor | None = None
        if present is not None:
            p = present.to(dtype)
            self._per_sample = p * self.scale / p.sum(dim=1, keepdim=True).clamp_min(1.0)

    @property
    def uniform(self) -> bool:
        return self.present is None

    def scaled(self, x: Tensor) -> Tensor:
        """``x * s / n``: ``x`` times the uniform weight (every view present)."""
        return x * self.scale / self.n

    def per_sample(self) -> Tensor:
        """``(B, n)`` weights ``s * present_j / max(|N_p(i)|, 1)`` (only when not :attr:`uniform`)."""
        if self._per_sample is None:
            raise ValueError("every view is present: the weight is uniform, use scaled()")
        return self._per_sample

    def weigh(self, x: Tensor, k: int | None = None) -> Tensor:
        """``w_j * x`` with an exact zero where neighbour ``j`` is absent: ``x (B, n, ...)`` holds
        something of every neighbour, or, given ``k``, ``x (B, ...)`` that of neighbour ``k`` only."""
        w, p = self.per_sample(), self.present
        if k is not None:
            w, p = w[:, k], p[:, k]
        extra = (None,) * (x.dim() - w.dim())
        w, p = w[(...,) + extra], p[(...,) + extra]
        return torch.where(p, w * x, torch.zeros((), dtype=x.dtype, device=x.device))

    def mean(self, messages: list[Tensor]) -> Tensor:
        """``sum_j w_j * messages[j]`` for messages ``(B, C, H, W)`` in the order of ``N(i)``."""
        if self.uniform:
            acc = messages[0]
            for m in messages[1:]:
                acc = acc + m
            return self.scaled(acc)
        acc = self.weigh(messages[0], 0)
        for k, m in enumerate(messages[1:], start=1):
            acc = acc + self.weigh(m, k)
        return acc


def multiview_subnet_factory(
    graph: ViewGraph,
    *,
    hidden: int = 64,
    kernel_size: int = 3,
    fusion: str | EdgeFactory = "conv",
    heads: int = 4,
    share_weights: bool = False,
    fused: bool = True,
    plane_homographies: tuple[Tensor, Tensor] | None = None,
) -> Callable[[int, int], MultiViewSubnet]:
    """FrEIA-style factory ``(in_channels, out_channels) -> MultiViewSubnet`` for a coupling block."""

    def factory(in_channels: int, out_channels: int) -> MultiViewSubnet:
        return MultiViewSubnet(
            in_channels,
            out_channels,
            graph=graph,
            hidden=hidden,
            kernel_size=kernel_size,
            fusion=fusion,
            heads=heads,
            share_weights=share_weights,
            fused=fused,
            plane_homographies=plane_homographies,
        )

    return factory


def view_gammas(model: nn.Module) -> list[list[float]]:
    """The learned ``gamma`` of every st-network in ``model``, in module order: one list per
    :class:`MultiViewSubnet` with one value per view class (per view unless weights are shared).

    ``gamma_i`` multiplies the whole output of view ``i``'s st-network (self path and cross-view
    messages, Eq. 4) and starts at 0, so ``|gamma|`` measures how far training moved the coupling
    away from the identity.
    """
    return [[float(g) for g in m.gamma.detach().cpu()] for m in model.modules() if isinstance(m, MultiViewSubnet)]


@contextlib.contextmanager
def cross_view_scaled(model: nn.Module, scale: float) -> Iterator[nn.Module]:
    """Within the block, every :class:`MultiViewSubnet` of ``model`` weights its neighbour messages by
    ``scale`` (0: each view's st-network sees only its own view; 1: unchanged). Restored on exit.

    For diagnosis at test time: how much of a trained model's detection comes from the cross-view term.
    """
    subnets = [m for m in model.modules() if isinstance(m, MultiViewSubnet)]
    before = [m.cross_view_scale for m in subnets]
    try:
        for m in subnets:
            m.cross_view_scale = float(scale)
        yield model
    finally:
        for m, b in zip(subnets, before):
            m.cross_view_scale = b
