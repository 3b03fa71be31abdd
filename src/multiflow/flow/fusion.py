"""Cross-view fusion operators ``f_ji`` of paper Eq. 4 (and Tab. 3), injected into the st-network.

An *edge operator* for the directed edge ``j -> i`` maps the hidden features of the target view
``h_i`` and of the source view ``h_j``, both ``(B, hidden, H, W)``, to a contribution
``(B, out_channels, H, W)`` for target ``i``; the contract is :class:`EdgeOperator`. Factories
have the signature ``factory(hidden, out_channels, kernel_size, heads) -> nn.Module``; an
operator class with that constructor is its own factory, and registering it in :data:`FUSIONS`
is all it takes to make it a ``model.fusion`` choice.

* ``"conv"`` (default, paper): ``f_ji(h_j) = Conv_kxk(h_j)`` with replicate padding.
* ``"self_attention"`` (Tab. 3): ``Conv_kxk(ReLU(LayerNorm(MHSA(h_j, h_j, h_j))))``: multi-head
  self-attention over the ``H*W`` positions of the *neighbour* view (tokens of width ``hidden``),
  LayerNorm over the token width and ReLU; the final ``k x k`` conv maps to ``out_channels`` so that
  the result can be summed in Eq. 4 exactly like the conv operator.
* ``"cross_attention"`` (Tab. 3): as above but ``MHSA(query=h_i, key=h_i, value=h_j)``: query and key
  from the target view, value from the neighbour view.

The self path ``f_ii`` is always a ``k x k`` conv (see :mod:`multiflow.flow.subnet`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
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

    :attr:`source_conv`: an operator that is exactly ``Conv_kxk(h_source)`` (linear in the source,
    independent of the target) returns that conv; the st-network then runs all messages of a
    target as one fused conv (same function, faster). Any other operator returns None.
    """

    @property
    def source_conv(self) -> nn.Conv2d | None:
        return None

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


FUSIONS: dict[str, EdgeFactory] = {
    "conv": ConvEdge,
    "self_attention": SelfAttentionEdge,
    "cross_attention": CrossAttentionEdge,
}


def get_fusion(name: str) -> EdgeFactory:
    """The edge-operator factory registered under ``name`` (one of :data:`FUSIONS`)."""
    try:
        return FUSIONS[name]
    except KeyError:
        raise ConfigError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}") from None
