"""Ground-truth defect masks of a data set's samples at the images' native resolution."""

from __future__ import annotations

import numpy as np
from PIL import Image

from multiflow.data.images import flips_for, load_mask
from multiflow.errors import DataError


def native_size(path: str) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except OSError as exc:
        raise DataError(f"cannot read image header: {exc}", path) from None


def ground_truth_masks(dataset, index: int) -> np.ndarray:
    """``(V, H, W)`` bool ground-truth masks of sample ``index`` at the native resolution
    (views without a mask file are all-False), with the data set's load-time flips applied."""
    rec = dataset.samples[index]
    flips = flips_for(dataset.flips, rec.view_names)
    out = []
    for v, (img, mpath) in enumerate(zip(rec.image_paths, rec.mask_paths)):
        size = native_size(img)
        if mpath is None:
            out.append(np.zeros(size, dtype=bool))
        else:
            m, _ = load_mask(mpath, expected_size=size, flip=flips[v])
            out.append(m.numpy().astype(bool))
    shapes = {m.shape for m in out}
    if len(shapes) > 1:
        raise DataError(f"sample {rec.sample_id}: views have different sizes {sorted(shapes)}", rec.image_paths[0])
    return np.stack(out)
