"""Noise conditioning (paper Sec. 3.4, Tab. 4).

Definition used by multiflow (the reference implementation's, made explicit):

* In training, one noise map ``eps`` of shape ``(B, 1, 1, H, W)`` is drawn per batch element and
  shared by all views and channels. The flow sees the noisy features ``y + eps`` (broadcast over
  ``V`` and ``C``) and, as ONE extra condition channel of every st-network input, the map
  ``cond_scale * eps`` (reference: ``cond_scale = 20``), broadcast to ``(B, V, 1, H, W)``.
* In eval mode ``eps = 0``: the features are unchanged and the condition channel is all zeros.

Schemes (``eps`` per pixel, ``n ~ N(0, 1)`` i.i.d.):

* ``"none"``: no noise and no condition channel (``condition_channels == 0``).
* ``"simplenet"``: ``eps = std * n`` (``std`` explicit, default 0.15 as in the reference code;
  the paper writes ``c^2 = 0.15``, i.e. ``std = sqrt(0.15) ~ 0.387``; pass that for the paper's value).
* ``"uniform"``: ``eps ~ U(0, 1)``.
* ``"softflow"``: per sample ``c ~ U(0, 1)``, ``eps = c * n``.

Randomness comes only from the ``generator`` passed in (CPU or on the features' device).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from multiflow.errors import ConfigError

NOISE_SCHEMES = ("none", "simplenet", "uniform", "softflow")


class NoiseConditioner(nn.Module):
    """Draws the training noise and builds the condition tensor (see module docstring).

    Args:
        scheme: one of :data:`NOISE_SCHEMES`.
        std: standard deviation of the ``simplenet`` noise.
        cond_scale: factor from ``eps`` to the condition channel.
    """

    def __init__(self, scheme: str = "simplenet", *, std: float = 0.15, cond_scale: float = 20.0) -> None:
        super().__init__()
        if scheme not in NOISE_SCHEMES:
            raise ConfigError(f"unknown noise scheme {scheme!r}; choose one of {list(NOISE_SCHEMES)}")
        if not std >= 0:
            raise ConfigError(f"noise std must be >= 0, got {std}")
        self.scheme = scheme
        self.std = float(std)
        self.cond_scale = float(cond_scale)

    @property
    def condition_channels(self) -> int:
        return 0 if self.scheme == "none" else 1

    def sample(
        self,
        batch: int,
        height: int,
        width: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Draw ``eps`` of shape ``(B, 1, 1, H, W)`` for the training scheme (zeros for ``none``).

        The draw happens on the generator's device and is moved to ``device``.
        """
        gen_device = generator.device if generator is not None else torch.device("cpu")
        shape = (batch, 1, 1, height, width)
        kw = dict(generator=generator, dtype=dtype, device=gen_device)
        if self.scheme == "none":
            eps = torch.zeros(shape, dtype=dtype, device=gen_device)
        elif self.scheme == "simplenet":
            eps = self.std * torch.randn(shape, **kw)
        elif self.scheme == "uniform":
            eps = torch.rand(shape, **kw)
        else:  # softflow
            c = torch.rand((batch, 1, 1, 1, 1), **kw)
            eps = c * torch.randn(shape, **kw)
        return eps.to(device)

    def forward(
        self, features: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``features (B, V, C, H, W) -> (features + eps, cond (B, V, 1, H, W) or None)``.

        ``eps`` is drawn only in training mode; in eval mode ``eps = 0``.
        """
        if self.scheme == "none":
            return features, None
        b, v, _, hh, ww = features.shape
        if self.training:
            eps = self.sample(b, hh, ww, dtype=features.dtype, device=features.device, generator=generator)
            return features + eps, (self.cond_scale * eps).expand(b, v, 1, hh, ww)
        return features, features.new_zeros(b, v, 1, hh, ww)
