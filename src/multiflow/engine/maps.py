"""Anomaly maps of whole arrays of cached features: the trained flow run in batches.

``compute_maps`` gives the per-pixel NLL maps ``(N, V, h, w)`` (background-filled where masks are
given) in eval mode; everything after the maps (image scores, sample scores, threshold) is
:mod:`multiflow.scoring`'s. The data-parallel variant is
:func:`multiflow.engine.distributed.compute_maps_sharded`.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from multiflow.device import autocast, to_device
from multiflow.errors import ConfigError


@torch.no_grad()
def compute_maps(
    model, features, masks=None, *, batch_size: int = 16, progress: bool = False, desc: str = "scoring",
    device: torch.device | None = None, precision: str = "fp32", present=None,
) -> np.ndarray:
    """Anomaly maps ``(N, V, h, w)`` float32 for features ``(N, V, C, h, w)`` (array-like).

    The model runs on ``device`` (default: where its parameters are; it is moved there and left
    there), one batch transfer each way; ``precision="bf16"``: bf16 autocast st-networks, NLL in fp32.
    ``present`` ``(N, V)`` bool (or None: all views): score each object from its present views only
    (the flow's ``present`` argument; absent views' maps are NaN), for models trained with view dropout.
    """
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    model.to(device)
    n = int(features.shape[0])
    out = None
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        x = to_device(torch.from_numpy(np.array(features[start : start + batch_size])).float(), device)
        m = None
        if masks is not None:
            m = to_device(torch.from_numpy(np.array(masks[start : start + batch_size])).float(), device)
        p = None
        if present is not None:
            p = to_device(torch.as_tensor(np.asarray(present[start : start + batch_size]), dtype=torch.bool), device)
        with autocast(device, precision):
            maps = (model.anomaly_map(x, m) if p is None else model.anomaly_map(x, m, present=p)).float().cpu().numpy()
        if out is None:
            out = np.empty((n, *maps.shape[1:]), dtype=np.float32)
        out[start : start + len(maps)] = maps
    if out is None:
        raise ConfigError("no samples to score")
    return out
