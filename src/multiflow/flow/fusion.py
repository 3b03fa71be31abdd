"""Cross-view fusion operators ``f_ji`` of paper Eq. 4 (and Tab. 3), injected into the st-network.

An *edge operator* for the directed edge ``j -> i`` maps the hidden features of the target view
``h_i`` and of the source view ``h_j``, both ``(B, hidden, H, W)``, to a contribution
``(B, out_channels, H, W)`` for target ``i``; the contract is :class:`EdgeOperator`. Factories
have the signature ``factory(hidden, out_channels, kernel_size, heads) -> nn.Module``; an
operator class with that constructor is its own factory, and registering it in :data:`FUSIONS`
is all it takes to make it a ``model.fusion`` choice.

The paper's operators (Eq. 4, Tab. 3) add something of the neighbour at the SAME grid position
``(y, x)``, although two cameras show different parts of the object there:

* ``"conv"`` (default, paper): ``f_ji(h_j) = Conv_kxk(h_j)`` with replicate padding.
* ``"self_attention"`` (Tab. 3): ``Conv_kxk(ReLU(LayerNorm(MHSA(h_j, h_j, h_j))))``: multi-head
  self-attention over the ``H*W`` positions of the *neighbour* view (tokens of width ``hidden``),
  LayerNorm over the token width and ReLU; the final ``k x k`` conv maps to ``out_channels`` so that
  the result can be summed in Eq. 4 exactly like the conv operator.
* ``"cross_attention"`` (Tab. 3): as above but ``MHSA(query=h_i, key=h_i, value=h_j)``: query and key
  from the target view, value from the neighbour view (the weights depend on the target alone).

Operators that do not assume aligned views (issue 24):

* ``"global_context"`` (:class:`GlobalContextEdge`): foreground-masked per-channel mean ``mu_j`` and
  standard deviation ``sigma_j`` of ``h_j`` pooled over the neighbour's view (mask ``fg_j``, the
  feature-grid foreground; none = every position), an MLP ``[mu_j, sigma_j] -> [a_j, b_j]`` (two 1x1
  convs with a SiLU, the last one zero-initialised) and ``f_ji = Conv_kxk(a_j * h_i + b_j)``: a FiLM of the target's
  hidden features by what the other view looks like as a whole (colour, material, lot). Starts as a
  constant message (the conv bias).
* ``"correspondence"`` (:class:`CorrespondenceEdge`): attention from every target position to the
  neighbour's positions, ``A = softmax((Q_i + P_q) (K_j + P_k)^T / sqrt(d) + m_j)``, ``Q_i = W_q h_i``,
  ``K_j = W_k h_j``, ``V_j = W_v h_j`` (1x1 convs, ``heads`` heads), ``P_q = U_q e``, ``P_k = U_k e``
  learned projections of a fixed 2D sinusoidal encoding ``e`` of the grid position, ``m_j`` = 0 on
  the neighbour's foreground and -1e4 on its background (no mask, or an empty one: every key);
  ``f_ji = Conv_kxk(ReLU(LayerNorm(W_o A V_j)))``. Query from the target, key AND value from the
  neighbour: position ``(y, x)`` of view ``i`` can find the matching part of view ``j``. Cost per
  edge and sample besides the message conv: ``4 N hidden^2 + 2 N^2 hidden`` multiply-adds
  (``N = H W``: the ``N x N`` attention dominates at 24x24); parameters ``4 hidden (hidden + 1)``
  (four 1x1 convs, as ``cross_attention``'s MHSA) ``+ 32 hidden`` (position projections) ``+ 2 hidden``
  (LayerNorm). Measured: ``benchmarks/bench_fusion.py``.
* ``"geometry"`` (:class:`GeometryEdge`): ``h_j`` resampled into view ``i`` through the support plane
  (plane-induced homography of the two cameras, :mod:`multiflow.flow.geometry`) with bilinear
  ``grid_sample``, then ``Conv_kxk``; positions whose plane point is behind a camera or outside the
  neighbour's image get an exact zero message. Needs the camera rig (``MultiFlow(camera_rig=...)``,
  from ``model.cameras`` / ``cameras.json``); without one the flow refuses to build.

The self path ``f_ii`` is always a ``k x k`` conv (see :mod:`multiflow.flow.subnet`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multiflow.errors import ConfigError

EdgeFactory = Callable[[int, int, int, int], nn.Module]


def make_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """``k x k`` conv with replicate padding keeping ``H, W`` (odd ``k`` only)."""
    if kernel_size % 2 != 1:
        raise ConfigError(f"kernel sizes must be odd to keep the feature size, got {kernel_size}")
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2, padding_mode="replicate"
    )


class EdgeOperator(nn.Module, ABC):
    """The contract of a fusion operator ``f_ji`` (one directed edge ``j -> i`` of the view graph).

    Construction: ``cls(hidden, out_channels, kernel_size, heads)`` (the factory signature;
    ``heads`` may be ignored). The st-network (:class:`multiflow.flow.subnet.MultiViewSubnet`) makes
    one instance per edge (or per orbit of edges with shared weights) and calls

        ``forward(h_target, h_source, *, source_present=None) -> (B, out_channels, H, W)``

    with ``h_target = h_i`` and ``h_source = h_j``, both ``(B, hidden, H, W)``, and
    ``source_present`` ``(B,)`` bool (is view ``j`` present in each sample; ``None`` = present
    in every sample). What the operator does NOT do, because the st-network does it once for
    every operator: the self path ``f_ii``, the mean over the present neighbours, ``gamma_i``,
    the diagnostic ``cross_view_scale`` and the handling of absent views (their ``h_j`` are
    zeros and their messages are replaced by exact zeros afterwards). So an operator only has to

    * be a function of ``(h_target, h_source)`` per sample (no mixing across the batch axis);
    * stay finite on an all-zero ``h_source`` (an absent view); an operator that pools or
      normalises over the source (global context over the neighbour's foreground, correspondence
      attention, geometry-aware resampling) uses ``source_present`` to skip absent sources rather
      than dividing by an empty sum. Inputs it needs beyond these (a foreground mask, camera
      geometry) become further keyword-only arguments with a ``None`` default, passed by the
      st-network once it has them.

    :attr:`needs`: the further keyword arguments an operator takes, passed by the st-network:

    * ``"source_fg"``: ``(B, 1, H, W)`` float foreground weight of view ``j`` on the feature grid
      (1 foreground, 0 background), or None when the flow got no mask (every position counts);
    * ``"warp"``: ``(grid (1, H, W, 2), valid (1, 1, H, W))``, where the cell centres of view ``i``
      land in view ``j`` through the support plane (:func:`multiflow.flow.geometry.warp_grid`).

    :meth:`reset_message_` runs after the flow's deterministic initialisation: an operator that must
    start in a particular state (e.g. a zero FiLM) sets it there.

    :attr:`source_conv`: an operator that is exactly ``Conv_kxk(h_source)`` (linear in the source,
    independent of the target) returns that conv; the st-network then runs all messages of a
    target as one fused conv (same function, faster). Any other operator returns None.
    """

    needs: frozenset[str] = frozenset()

    @property
    def source_conv(self) -> nn.Conv2d | None:
        return None

    def reset_message_(self) -> None:
        """Set the operator's initial state after the flow's initialisation (default: nothing)."""

    @abstractmethod
    def forward(self, h_target: Tensor, h_source: Tensor, *, source_present: Tensor | None = None) -> Tensor:
        """``(B, hidden, H, W), (B, hidden, H, W) -> (B, out_channels, H, W)``: the message ``j -> i``."""


class ConvEdge(EdgeOperator):
    """``f_ji(h_i, h_j) = Conv_kxk(h_j)``: ``(B, hidden, H, W) -> (B, out, H, W)``."""

    def __init__(self, hidden: int, out_channels: int, kernel_size: int, heads: int = 1) -> None:
        super().__init__()
        self.conv = make_conv(hidden, out_channels, kernel_size)

    @property
    def source_conv(self) -> nn.Conv2d:
        return self.conv

    def forward(self, h_target: Tensor, h_source: Tensor, *, source_present: Tensor | None = None) -> Tensor:
        return self.conv(h_source)


class _AttentionEdge(EdgeOperator):
    """Shared body of the attention operators; subclasses choose query/key/value."""

    def __init__(self, hidden: int, out_channels: int, kernel_size: int, heads: int = 4) -> None:
        super().__init__()
        if heads < 1 or hidden % heads != 0:
            raise ConfigError(f"attention heads ({heads}) must divide the hidden width ({hidden})")
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.conv = make_conv(hidden, out_channels, kernel_size)

    @staticmethod
    def _tokens(h: Tensor) -> Tensor:
        return h.flatten(2).transpose(1, 2)  # (B, H*W, hidden)

    def _qkv(self, h_target: Tensor, h_source: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, h_target: Tensor, h_source: Tensor, *, source_present: Tensor | None = None) -> Tensor:
        b, c, hh, ww = h_source.shape
        q, k, v = self._qkv(h_target, h_source)
        a, _ = self.attn(q, k, v, need_weights=False)
        a = torch.relu(self.norm(a))
        return self.conv(a.transpose(1, 2).reshape(b, c, hh, ww))


class SelfAttentionEdge(_AttentionEdge):
    """``Conv(ReLU(LN(MHSA(h_j, h_j, h_j))))``: self-attention over the neighbour's positions."""

    def _qkv(self, h_target: Tensor, h_source: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = self._tokens(h_source)
        return t, t, t


class CrossAttentionEdge(_AttentionEdge):
    """``Conv(ReLU(LN(MHSA(q=h_i, k=h_i, v=h_j))))``: query/key from the target, value from ``j``."""

    def _qkv(self, h_target: Tensor, h_source: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = self._tokens(h_target)
        return t, t, self._tokens(h_source)


#: weight of the keys outside the neighbour's foreground in :class:`CorrespondenceEdge` (finite, so a
#: view without any foreground key still gets a finite, uniform softmax)
BACKGROUND_LOGIT = -1e4
#: channels of the fixed 2D sinusoidal position encoding (sin/cos of 4 frequencies, rows and columns)
POSITION_CHANNELS = 16


def _wide(t: Tensor) -> torch.dtype:
    """The dtype pooled statistics and softmaxes are computed in: fp32, or fp64 for fp64 inputs."""
    return torch.promote_types(t.dtype, torch.float32)


def foreground_weight(h: Tensor, fg: Tensor | None) -> Tensor:
    """``(B, 1, H, W)`` weights (fp32, fp64 for fp64 ``h``) of the positions of ``h (B, C, H, W)``:
    ``fg`` clipped to ``[0, 1]``, or all ones where ``fg`` is None or empty (a view without
    foreground pools over all its positions)."""
    b, _, hh, ww = h.shape
    if fg is None:
        return torch.ones(b, 1, hh, ww, dtype=_wide(h), device=h.device)
    w = fg.to(_wide(h)).clamp(0.0, 1.0)
    empty = w.sum(dim=(1, 2, 3), keepdim=True) <= 0
    return torch.where(empty, torch.ones_like(w), w)


def masked_moments(h: Tensor, weight: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-channel weighted mean and standard deviation over the positions, in fp32 (fp64 for fp64):
    ``h (B, C, H, W)``, ``weight (B, 1, H, W)`` (positive sum) -> ``mu, sigma (B, C)`` with
    ``mu = sum w h / sum w``, ``sigma = sqrt(sum w (h - mu)^2 / sum w + eps)``."""
    x = h.to(_wide(h))
    n = weight.to(x.dtype).sum(dim=(2, 3))  # (B, 1)
    weight = weight.to(x.dtype)
    mu = (weight * x).sum(dim=(2, 3)) / n
    var = (weight * (x - mu[:, :, None, None]) ** 2).sum(dim=(2, 3)) / n
    return mu, torch.sqrt(var + eps)


class GlobalContextEdge(EdgeOperator):
    """FiLM of the target by the neighbour's masked statistics (module docstring):
    ``[a, b] = MLP([mu_j, sigma_j])``, ``f_ji = Conv_kxk(a * h_i + b)``; ``(B, hidden, H, W) x 2 ->
    (B, out, H, W)``. The MLP is two 1x1 convs on ``(B, 2 hidden, 1, 1)`` with a SiLU between (no dead units); its last
    layer starts at zero (:meth:`reset_message_`), so the message starts as the conv's bias."""

    needs = frozenset({"source_fg"})

    def __init__(self, hidden: int, out_channels: int, kernel_size: int, heads: int = 1) -> None:
        super().__init__()
        self.hidden = hidden
        self.mlp_in = nn.Conv2d(2 * hidden, hidden, 1)
        self.mlp_out = nn.Conv2d(hidden, 2 * hidden, 1)
        self.conv = make_conv(hidden, out_channels, kernel_size)
        self.reset_message_()

    def reset_message_(self) -> None:
        nn.init.zeros_(self.mlp_out.weight)
        nn.init.zeros_(self.mlp_out.bias)

    def film(self, h_source: Tensor, source_fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(a, b)``, each ``(B, hidden, 1, 1)``, from the masked moments of ``h_source``."""
        mu, sigma = masked_moments(h_source, foreground_weight(h_source, source_fg))
        stats = torch.cat([mu, sigma], dim=1)[:, :, None, None].to(h_source.dtype)
        ab = self.mlp_out(F.silu(self.mlp_in(stats)))
        return ab[:, : self.hidden], ab[:, self.hidden :]

    def forward(self, h_target: Tensor, h_source: Tensor, *, source_present: Tensor | None = None,
                source_fg: Tensor | None = None) -> Tensor:
        a, b = self.film(h_source, source_fg)
        if source_present is not None:  # an absent view's statistics are those of zeros: drop them
            keep = source_present[:, None, None, None]
            a, b = torch.where(keep, a, torch.zeros_like(a)), torch.where(keep, b, torch.zeros_like(b))
        return self.conv(a.to(h_target.dtype) * h_target + b.to(h_target.dtype))


def position_encoding(hh: int, ww: int, *, device: torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed 2D sinusoidal encoding ``(1, 16, H, W)``: ``sin, cos(pi 2^k c)`` for ``k = 0..3`` of the
    normalised row and column centres ``c`` in ``(-1, 1)`` (the same for any grid size)."""
    ys = (torch.arange(hh, device=device, dtype=dtype) * 2 + 1) / hh - 1
    xs = (torch.arange(ww, device=device, dtype=dtype) * 2 + 1) / ww - 1
    freq = math.pi * 2.0 ** torch.arange(POSITION_CHANNELS // 4, device=device, dtype=dtype)
    fy, fx = ys[None, :] * freq[:, None], xs[None, :] * freq[:, None]  # (4, H), (4, W)
    ey = torch.cat([torch.sin(fy), torch.cos(fy)])[:, :, None].expand(-1, hh, ww)
    ex = torch.cat([torch.sin(fx), torch.cos(fx)])[:, None, :].expand(-1, hh, ww)
    return torch.cat([ey, ex])[None]


class CorrespondenceEdge(EdgeOperator):
    """Correspondence attention (module docstring): query from the target, key and value from the
    neighbour, learned projections of a fixed 2D position encoding added to query and key, background
    keys masked. ``(B, hidden, H, W) x 2 -> (B, out, H, W)``."""

    needs = frozenset({"source_fg"})

    def __init__(self, hidden: int, out_channels: int, kernel_size: int, heads: int = 4) -> None:
        super().__init__()
        if heads < 1 or hidden % heads != 0:
            raise ConfigError(f"attention heads ({heads}) must divide the hidden width ({hidden})")
        self.heads = heads
        self.query = nn.Conv2d(hidden, hidden, 1)
        self.key = nn.Conv2d(hidden, hidden, 1)
        self.value = nn.Conv2d(hidden, hidden, 1)
        self.pos_query = nn.Conv2d(POSITION_CHANNELS, hidden, 1, bias=False)
        self.pos_key = nn.Conv2d(POSITION_CHANNELS, hidden, 1, bias=False)
        self.proj = nn.Conv2d(hidden, hidden, 1)
        self.norm = nn.LayerNorm(hidden)
        self.conv = make_conv(hidden, out_channels, kernel_size)

    def _heads(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape  # -> (B, heads, H*W, c / heads)
        return x.reshape(b, self.heads, c // self.heads, hh * ww).transpose(2, 3)

    def attend(self, h_target: Tensor, h_source: Tensor, source_fg: Tensor | None = None) -> Tensor:
        """``W_o A V_j`` as a map ``(B, hidden, H, W)`` (before LayerNorm, ReLU and the message conv)."""
        b, c, hh, ww = h_target.shape
        pe = position_encoding(hh, ww, device=h_target.device, dtype=_wide(h_target)).to(h_target.dtype)
        q = self._heads(self.query(h_target) + self.pos_query(pe))
        k = self._heads(self.key(h_source) + self.pos_key(pe))
        v = self._heads(self.value(h_source))
        bias = None
        if source_fg is not None:  # additive, finite: a view without foreground keys stays finite
            keep = foreground_weight(h_source, source_fg).reshape(b, 1, 1, hh * ww) > 0
            bias = torch.where(keep, 0.0, BACKGROUND_LOGIT).to(q.dtype)
        # softmax(q k^T / sqrt(d) + bias) v without storing the N x N weights for backward
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, heads, N, c / heads)
        return self.proj(a.transpose(2, 3).reshape(b, c, hh, ww))

    def forward(self, h_target: Tensor, h_source: Tensor, *, source_present: Tensor | None = None,
                source_fg: Tensor | None = None) -> Tensor:
        a = self.attend(h_target, h_source, source_fg)
        a = torch.relu(self.norm(a.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.conv(a)


class GeometryEdge(EdgeOperator):
    """``f_ji = valid * Conv_kxk(grid_sample(h_j, grid_ji))``: the neighbour's hidden map resampled
    into the target view through the support plane (module docstring), ``(B, hidden, H, W) x 2 ->
    (B, out, H, W)``; ``valid`` zeroes the message where the plane point is behind a camera or outside
    the neighbour's image. The st-network passes ``warp = (grid, valid)`` of the edge."""

    needs = frozenset({"warp"})

    def __init__(self, hidden: int, out_channels: int, kernel_size: int, heads: int = 1) -> None:
        super().__init__()
        self.conv = make_conv(hidden, out_channels, kernel_size)

    @staticmethod
    def resample(h_source: Tensor, grid: Tensor) -> Tensor:
        """Bilinear ``grid_sample`` of ``h_source (B, C, H, W)`` at ``grid (1, H, W, 2)`` (fp32, fp64
        for fp64; zero padding, ``align_corners=False``), back in the dtype of ``h_source``."""
        dt = _wide(h_source)
        g = grid.to(dt).expand(h_source.shape[0], -1, -1, -1)
        out = F.grid_sample(h_source.to(dt), g, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.to(h_source.dtype)

    def forward(self, h_target: Tensor, h_source: Tensor, *, source_present: Tensor | None = None,
                warp: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if warp is None:
            raise ConfigError("the geometry fusion needs the resampling grid of each edge (warp=); "
                              "build the flow with its camera rig")
        grid, valid = warp
        out = self.conv(self.resample(h_source, grid))
        return out * valid.to(out.dtype)


FUSIONS: dict[str, EdgeFactory] = {
    "conv": ConvEdge,
    "self_attention": SelfAttentionEdge,
    "cross_attention": CrossAttentionEdge,
    "global_context": GlobalContextEdge,
    "correspondence": CorrespondenceEdge,
    "geometry": GeometryEdge,
}


def get_fusion(name: str) -> EdgeFactory:
    """The edge-operator factory registered under ``name`` (one of :data:`FUSIONS`)."""
    try:
        return FUSIONS[name]
    except KeyError:
        raise ConfigError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}") from None
