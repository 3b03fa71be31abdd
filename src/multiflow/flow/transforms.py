"""Invertible blocks on multi-view feature tensors (paper Eq. 2-3).

Contract (:class:`InvertibleTransform`): every block maps ``x`` of shape ``(B, V, C, H, W)`` to
``(y, logdet)`` where ``y`` has the same shape and ``logdet`` is the *per-pixel* log-determinant map
``(B, V, H, W)``: ``log|det dy/dx|`` of the sample equals ``logdet.sum((1, 2, 3))``. The inverse maps
``y`` back to ``(x, -logdet)``, i.e. it returns the log-determinant of the inverse map, which is the
negative of the forward one at the same point. An optional condition ``cond`` of shape
``(B, V, C_cond, H, W)`` is passed through to the st-networks; it is not transformed. An optional
``present`` mask ``(B, V)`` (bool; ``None`` = all views present) is passed through to the
st-networks too, which then run on the subgraph of the present views
(:class:`multiflow.flow.subnet.MultiViewSubnet`); blocks without cross-view links ignore it. So is an
optional keyword ``fg``, the foreground ``(B, V, H, W)`` of the features (``None`` = every position),
for fusion operators that pool or attend over a view's foreground; like ``cond`` it only feeds the
st-networks, so it never affects invertibility (forward and inverse must get the same ``fg``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from multiflow.errors import ConfigError

#: ``subnet_factory(in_channels, out_channels) -> module`` mapping ``(B, V, in, H, W)`` to
#: ``(B, V, out, H, W)`` (FrEIA-style injection of the st-network).
SubnetFactory = Callable[[int, int], nn.Module]


class InvertibleTransform(nn.Module):
    """Base class: ``forward(x, cond) -> (y, logdet_map)``, ``inverse(y, cond) -> (x, -logdet_map)``.

    Shapes: ``x, y: (B, V, C, H, W)``; ``logdet_map: (B, V, H, W)``; ``cond: (B, V, C_c, H, W)`` or
    ``None``. Subclasses implement both directions exactly (no clamping of outputs).
    """

    def forward(self, x: Tensor, cond: Tensor | None = None, present: Tensor | None = None,
                *, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def inverse(self, y: Tensor, cond: Tensor | None = None, present: Tensor | None = None,
                *, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} does not implement inverse")


def soft_clamp(s: Tensor, alpha: float) -> Tensor:
    """Paper Eq. 3: ``s_clamp = (2 alpha / pi) * atan(s / alpha)``, a smooth map onto ``(-alpha, alpha)``."""
    return (2.0 * alpha / math.pi) * torch.atan(s / alpha)


class ViewPermutation(InvertibleTransform):
    """Fixed channel permutation per view: ``y[:, v, c] = x[:, v, perm[v, c]]``; ``logdet = 0``.

    Permutations are buffers (part of the ``state_dict``) drawn from ``generator``. Views with the
    same entry in ``view_classes`` get the same permutation (needed for symmetry-tied flows).

    Args:
        channels: ``C``.
        n_views: ``V``.
        generator: the source of randomness (a seeded :class:`torch.Generator`).
        view_classes: optional class id per view (length ``V``); default: all views distinct.
    """

    perm: Tensor
    inv_perm: Tensor

    def __init__(
        self,
        channels: int,
        n_views: int,
        *,
        generator: torch.Generator,
        view_classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        classes = list(range(n_views)) if view_classes is None else [int(c) for c in view_classes]
        if len(classes) != n_views:
            raise ConfigError(f"view_classes has {len(classes)} entries for {n_views} views")
        drawn: dict[int, Tensor] = {}
        for c in classes:
            if c not in drawn:
                drawn[c] = torch.randperm(channels, generator=generator)
        perm = torch.stack([drawn[c] for c in classes])
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm, dim=1))

    @staticmethod
    def _gather(x: Tensor, index: Tensor) -> Tensor:
        views = torch.arange(index.shape[0], device=x.device)[:, None]
        return x[:, views, index]

    def forward(self, x: Tensor, cond: Tensor | None = None, present: Tensor | None = None,
                *, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y = self._gather(x, self.perm)
        return y, x.new_zeros(x.shape[0], x.shape[1], x.shape[3], x.shape[4])

    def inverse(self, y: Tensor, cond: Tensor | None = None, present: Tensor | None = None,
                *, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._gather(y, self.inv_perm)
        return x, y.new_zeros(y.shape[0], y.shape[1], y.shape[3], y.shape[4])


class AffineCoupling(InvertibleTransform):
    """Affine coupling in two half-steps (paper Eq. 2) with the soft clamp of Eq. 3.

    Channels split as ``x = [x1 | x2]`` (``C1 = C // 2``, ``C2 = C - C1``), condition ``c``:

    * half-step 1: ``[s1, t1] = st1([x1 ; c])``, ``y2 = x2 * exp(clamp(s1)) + t1``
    * half-step 2: ``[s2, t2] = st2([y2 ; c])``, ``y1 = x1 * exp(clamp(s2)) + t2``

    ``logdet[b, v, h, w] = sum_c clamp(s1) + sum_c clamp(s2)``. The st-network outputs the log-scale
    ``s`` in its first half of channels and the shift ``t`` in its second half. Its output is cast
    to the input's dtype before the clamp, so under bf16 autocast only the st-network runs in bf16.

    Args:
        channels: ``C`` (at least 2).
        subnet_factory: ``factory(in_channels, out_channels)``; called as
            ``factory(C1 + C_c, 2 * C2)`` for ``st1`` and ``factory(C2 + C_c, 2 * C1)`` for ``st2``.
        cond_channels: ``C_c``, channels of the condition (0 for none).
        clamp: ``alpha`` of Eq. 3.
    """

    def __init__(
        self,
        channels: int,
        subnet_factory: SubnetFactory,
        *,
        cond_channels: int = 0,
        clamp: float = 1.9,
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ConfigError(f"affine coupling needs at least 2 channels, got {channels}")
        if not clamp > 0:
            raise ConfigError(f"soft-clamp alpha must be > 0, got {clamp}")
        self.channels = channels
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        self.cond_channels = cond_channels
        self.clamp = float(clamp)
        self.st1 = subnet_factory(self.c1 + cond_channels, 2 * self.c2)
        self.st2 = subnet_factory(self.c2 + cond_channels, 2 * self.c1)

    def _st(
        self, net: nn.Module, u: Tensor, cond: Tensor | None, present: Tensor | None = None,
        fg: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        if self.cond_channels:
            if cond is None or cond.shape[2] != self.cond_channels:
                got = None if cond is None else tuple(cond.shape)
                raise ConfigError(
                    f"coupling expects a condition with {self.cond_channels} channels, got {got}"
                )
            u = torch.cat([u, cond.to(u.dtype)], dim=2)
        # under bf16 autocast the st-network computes in bf16; scale/shift, log-det and NLL stay in
        # the dtype of the coupling's input (fp32), so forward and inverse use the same exact math
        kw = {} if fg is None else {"fg": fg}
        out = (net(u, **kw) if present is None else net(u, present, **kw)).to(u.dtype)
        half = out.shape[2] // 2
        return soft_clamp(out[:, :, :half], self.clamp), out[:, :, half:]

    def half_step_1(
        self, x1: Tensor, x2: Tensor, cond: Tensor | None, present: Tensor | None = None,
        fg: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``y2 = x2 * exp(s1(x1)) + t1(x1)``; returns ``(y2, sum_c s1)``."""
        s1, t1 = self._st(self.st1, x1, cond, present, fg)
        return x2 * torch.exp(s1) + t1, s1.sum(dim=2)

    def half_step_2(
        self, x1: Tensor, y2: Tensor, cond: Tensor | None, present: Tensor | None = None,
        fg: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``y1 = x1 * exp(s2(y2)) + t2(y2)``; returns ``(y1, sum_c s2)``."""
        s2, t2 = self._st(self.st2, y2, cond, present, fg)
        return x1 * torch.exp(s2) + t2, s2.sum(dim=2)

    def forward(self, x: Tensor, cond: Tensor | None = None, present: Tensor | None = None,
                *, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, :, : self.c1], x[:, :, self.c1 :]
        y2, ld1 = self.half_step_1(x1, x2, cond, present, fg)
        y1, ld2 = self.half_step_2(x1, y2, cond, present, fg)
        return torch.cat([y1, y2], dim=2), ld1 + ld2

    def inverse(self, y: Tensor, cond: Tensor | None = None, present: Tensor | None = None,
                *, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y1, y2 = y[:, :, : self.c1], y[:, :, self.c1 :]
        s2, t2 = self._st(self.st2, y2, cond, present, fg)
        x1 = (y1 - t2) * torch.exp(-s2)
        s1, t1 = self._st(self.st1, x1, cond, present, fg)
        x2 = (y2 - t1) * torch.exp(-s1)
        return torch.cat([x1, x2], dim=2), -(s1.sum(dim=2) + s2.sum(dim=2))


class FlowSequence(InvertibleTransform):
    """Composition ``T_K o ... o T_1``: log-det maps add up; the inverse runs in reverse order."""

    def __init__(self, transforms: Sequence[InvertibleTransform]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def forward(self, x: Tensor, cond: Tensor | None = None, present: Tensor | None = None,
                *, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0], x.shape[1], x.shape[3], x.shape[4])
        for t in self.transforms:
            x, ld = t(x, cond, present, fg=fg)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None, present: Tensor | None = None,
                *, fg: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = y.new_zeros(y.shape[0], y.shape[1], y.shape[3], y.shape[4])
        for t in reversed(self.transforms):
            y, ld = t.inverse(y, cond, present, fg=fg)
            logdet = logdet + ld
        return y, logdet
