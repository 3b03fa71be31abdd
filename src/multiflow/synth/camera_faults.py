"""Synthetic camera faults applied to the images of one object (benchmarks and tests).

``apply_camera_fault(images, view, kind, ...)`` returns a copy of ``images (V, 3, H, W)`` (RGB in
``[0, 1]``) where camera ``view`` suffers the fault ``kind``:

* ``blur``:          Gaussian blur, ``sigma = blur_sigma * H / 256`` pixels (default 3 at 256 px);
* ``overexposure``:  ``clip(2.2 * x + 0.15)``;
* ``underexposure``: ``0.25 * x``;
* ``occlusion``:     a soft dark-brown blob (dirt on the lens) with radius 14 % of the image side at
  a random position inside the central 70 %, opacity 0.85 at its centre;
* ``frozen``:        the view shows ``previous[view]``, the same camera's image of the previous object;
* ``swapped``:       the views ``view`` and ``other`` exchange their images (both are faulty).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from multiflow.errors import ConfigError

SYNTH_FAULTS = ("blur", "overexposure", "underexposure", "occlusion", "frozen", "swapped")


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(3, H, W)`` blurred with a separable Gaussian of std ``sigma`` pixels (reflect padding)."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=image.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(image[None], (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1).contiguous(), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1).contiguous(), groups=3)
    return x[0]


def dirt_blob(image: torch.Tensor, rng: np.random.Generator, radius: float = 0.14) -> torch.Tensor:
    """``(3, H, W)`` with a soft dark blob (module docstring) at a random position."""
    _, h, w = image.shape
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    rad = radius * min(h, w)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=image.dtype), torch.arange(w, dtype=image.dtype), indexing="ij")
    d = torch.sqrt((yy - cy) ** 2 + ((xx - cx) / 1.3) ** 2) / rad
    alpha = 0.85 * torch.clamp(1.0 - d**4, min=0.0)
    colour = torch.tensor([0.18, 0.14, 0.10], dtype=image.dtype)[:, None, None]
    return image * (1 - alpha) + colour * alpha


def apply_camera_fault(
    images: torch.Tensor,
    view: int,
    kind: str,
    *,
    rng: np.random.Generator,
    previous: torch.Tensor | None = None,
    other: int | None = None,
    blur_sigma: float = 3.0,
) -> torch.Tensor:
    """A copy of ``images (V, 3, H, W)`` with camera ``view`` faulty (module docstring)."""
    if kind not in SYNTH_FAULTS:
        raise ConfigError(f"unknown camera fault {kind!r}; choose one of {SYNTH_FAULTS}")
    out = images.clone()
    x = images[view]
    if kind == "blur":
        out[view] = gaussian_blur(x, blur_sigma * x.shape[-2] / 256)
    elif kind == "overexposure":
        out[view] = (2.2 * x + 0.15).clamp(0, 1)
    elif kind == "underexposure":
        out[view] = 0.25 * x
    elif kind == "occlusion":
        out[view] = dirt_blob(x, rng)
    elif kind == "frozen":
        if previous is None:
            raise ConfigError("a frozen frame needs the previous object's images")
        out[view] = previous[view]
    else:
        if other is None or other == view:
            raise ConfigError("swapped cameras need another view index")
        out[view], out[other] = images[other].clone(), images[view].clone()
    return out
