"""Foreground masks as batched tensor operations: the ``torch`` path of :mod:`multiflow.features.masks`.

Every function takes a batch of ``N`` images or masks (all views of several objects, flattened)
and runs on the device of its input, so the masks of an object are computed where its features
are. The NumPy/SciPy/scikit-image code in :mod:`multiflow.features.masks` is the reference
(``ThresholdMasks(backend="numpy")``, :func:`~multiflow.features.masks.postprocess_mask`); the
tests compare every step with it. Exactness per step:

* background plane (least squares on the border frame), k-means++ of the border colours
  (scipy's ``kmeans2(..., minit="++")`` with the same random draws), the Gaussian blur and
  Otsu's threshold (scikit-image's 256-bin histogram, including its float32 class weights) follow
  the reference in float64; they differ from it only by floating-point rounding order
  (last-bit differences, which can move a pixel lying exactly on a threshold).
  ``precision="float32"`` (the default of :class:`~multiflow.features.masks.ThresholdMasks`)
  runs the per-pixel part (distances, blur, threshold) in float32 and the distances to the
  k-means centres as ``|I|^2 - 2 I.c + |c|^2`` (one batched matrix product): pixels within about
  1e-4 (relative) of the threshold can flip, and Otsu's bin edges move with the float32 minimum
  and maximum. Stated tolerance (asserted by the tests on every synthetic family): IoU >= 0.99 per
  mask, at most 1 % of the grid cells different. Measured on 100 views at 128 px (5 families x
  normal + 3 defect types x 5 views): float32 1 pixel different in all (raw IoU >= 0.9995, no
  grid cell), float64 identical.
* connected components (``"torch"``: label propagation), hole filling, the square dilation, the
  Euclidean ``margin`` and the reduction to the feature grid are exact (integer/boolean
  arithmetic; the margin's radius ``margin * hypot(h, w)`` of the bounding box is the one float).

Connected components on the tensor (:func:`label_components`): every foreground pixel starts
with its own index + 1; a round takes the maximum over horizontal runs, vertical runs and the
3 x 3 (8-connectivity) or cross (4-connectivity) neighbourhood within the foreground, then jumps
``label <- label[label]`` (the pixel a label names carries a label at least as large, in the same
component). Labels only grow and stay inside their component, so the fixed point is the largest
index of each component; rounds stop when nothing changes (a compact object needs a handful, a
spiral at most its geodesic length; never more than ``H * W``).

``steps``: the small sequential steps SciPy does well on the CPU (the k-means of the border
colours, which is then SciPy's own ``kmeans2``; connected components; hole filling) run there with
SciPy under ``"auto"`` when the images are on the CPU, as tensor operations on any other device;
``"torch"`` and ``"scipy"`` force one or the other. The masks do not depend on it (tested).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from multiflow.errors import ConfigError

#: the default dilation of the paper's post-processing (8 x 8 square)
DILATION = 8
#: at most this many border pixels feed the k-means (every ``len // 4000``-th of the frame)
BORDER_SAMPLE = 4000
KMEANS_ITERATIONS = 10  # scipy.cluster.vq.kmeans2's default
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
STEP_BACKENDS = ("auto", "torch", "scipy")


def _use_scipy(steps: str, device: torch.device) -> bool:
    if steps not in STEP_BACKENDS:
        raise ConfigError(f"steps must be one of {STEP_BACKENDS}, got {steps!r}")
    return steps == "scipy" or (steps == "auto" and device.type == "cpu")


def as_float_images(images: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 or float in ``[0, 1]`` -> ``dtype``, the values the NumPy path reads
    (uint8 ``/ 255`` in float64, then rounded to ``dtype``); a tensor already in ``dtype`` is returned
    as it is."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return (images.to(torch.float64) / 255.0).to(dtype)
    if not images.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")
    return images.to(dtype)


# ----------------------------------------------------------------------------- background models


def frame_mask(h: int, w: int, border: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W)`` bool: the border frame ``max(1, round(border * min(H, W)))`` pixels wide."""
    b = max(1, int(round(border * min(h, w))))
    frame = torch.zeros(h, w, dtype=torch.bool, device=device)
    frame[:b], frame[-b:], frame[:, :b], frame[:, -b:] = True, True, True, True
    return frame


def _plane_terms(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    yy = (torch.arange(h, device=device, dtype=torch.float64) / h).to(dtype)
    xx = (torch.arange(w, device=device, dtype=torch.float64) / w).to(dtype)
    return yy, xx


def background_plane(border: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """Per image and channel the least-squares plane ``a_c + p_c y / H + q_c x / W`` through the
    frame pixels. ``border (N, 3, P)`` float64, the ``P`` pixels of ``frame (H, W)`` in row-major
    order -> coefficients ``(N, 3 terms, 3 channels)`` float64 (as ``ThresholdMasks.background``'s
    ``lstsq``: the minimum-norm least-squares solution)."""
    h, w = frame.shape
    idx = frame.reshape(-1).nonzero().squeeze(1)
    yy, xx = idx // w, idx % w
    design = torch.stack([torch.ones_like(yy, dtype=torch.float64), yy.double() / h, xx.double() / w], 1)
    return torch.linalg.pinv(design) @ border.transpose(1, 2)


def border_sample(border: torch.Tensor) -> torch.Tensor:
    """``border (N, 3, P)`` -> ``(N, M, 3)``: every ``max(1, P // 4000)``-th frame pixel (the colours
    the k-means sees)."""
    p = border.shape[2]
    return border[:, :, :: max(1, p // BORDER_SAMPLE)].transpose(1, 2).contiguous()


@lru_cache(maxsize=64)
def _kpp_draws(m: int, k: int, seed: int) -> tuple[int, tuple[float, ...]]:
    """The random numbers scipy's k-means++ draws from ``default_rng(seed)`` for ``m`` points:
    the first centre's index, then one uniform per further centre."""
    rng = np.random.default_rng(seed)
    first = int(rng.integers(m))
    return first, tuple(float(rng.uniform()) for _ in range(k - 1))


def _sqdist(columns: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``columns (N, D, M)`` (the points, one contiguous row per coordinate), ``centres (N, K, D)``
    -> ``(N, M, K)`` squared distances, summed over ``D`` in order (as scipy's ``cdist(...,
    "sqeuclidean")`` and ``vq``)."""
    out = torch.square(columns[:, 0, :, None] - centres[:, None, :, 0])
    for d in range(1, columns.shape[1]):
        out += torch.square(columns[:, d, :, None] - centres[:, None, :, d])
    return out


def kmeans_pp(data: torch.Tensor, k: int, seed: int, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Batched ``scipy.cluster.vq.kmeans2(data[n], k, minit="++", seed=default_rng(seed))``.

    ``data (N, M, D)`` float64 -> centres ``(N, k, D)``. k-means++ seeding with scipy's draws
    (:func:`_kpp_draws`: the same for every image of a size), then ``iterations`` Lloyd steps
    (nearest centre, first on ties; an empty cluster keeps its centre; stopped early once no point
    changes its cluster, which is a fixed point of scipy's loop too). Distances are summed in
    scipy's order: border colours are quantised, exact ties between centres occur, and the
    shortcut ``|c|^2 - 2 x.c`` breaks them differently (measured: a different mask).
    """
    n, m, d = data.shape
    columns = data.transpose(1, 2).contiguous()
    first, uniforms = _kpp_draws(m, k, seed)
    ar = torch.arange(n, device=data.device)
    centres = torch.empty(n, k, d, dtype=data.dtype, device=data.device)
    centres[:, 0] = data[:, first]
    d2 = None
    for i in range(1, k):
        new = _sqdist(columns, centres[:, i - 1 : i])[:, :, 0]
        d2 = new if d2 is None else torch.minimum(d2, new)
        cum = (d2 / d2.sum(1, keepdim=True)).cumsum(1)
        r = torch.full((n, 1), uniforms[i - 1], dtype=data.dtype, device=data.device)
        pick = torch.searchsorted(cum, r).squeeze(1).clamp(0, m - 1)
        centres[:, i] = data[ar, pick]
    previous = None
    for _ in range(iterations):
        label = _sqdist(columns, centres).argmin(2)  # (N, M): the nearest centre, the first on ties
        if previous is not None and torch.equal(label, previous):
            break  # same clusters, same means: the remaining iterations would change nothing
        previous = label
        sums = torch.zeros(n, k, d, dtype=data.dtype, device=data.device)
        sums.scatter_add_(1, label[..., None].expand(n, m, d), data)
        counts = torch.zeros(n, k, dtype=data.dtype, device=data.device)
        counts.scatter_add_(1, label, torch.ones_like(label, dtype=data.dtype))
        has = counts > 0
        centres = torch.where(has[..., None], sums / counts.clamp_min(1)[..., None], centres)
    return centres


def border_centres(sample: torch.Tensor, clusters: int, seed: int, *, steps: str = "auto") -> torch.Tensor:
    """The background colours of ``ThresholdMasks``: ``sample (N, M, 3)`` -> ``(N, clusters, 3)``.

    An image with more than ``clusters`` distinct border colours gets the k-means centres, one
    with fewer its distinct colours (repeated to fill ``clusters`` rows: a repeated centre does not
    change the minimum distance). ``steps``: SciPy's ``kmeans2`` image by image, or
    :func:`kmeans_pp` on the batch (see the module docstring).
    """
    n, m, _ = sample.shape
    # lexicographic sort of the rows (three stable sorts), then count the changes
    rows = sample
    for c in (2, 1, 0):
        order = torch.sort(rows[..., c], dim=1, stable=True).indices
        rows = torch.gather(rows, 1, order[..., None].expand_as(rows))
    new = torch.ones(n, m, dtype=torch.bool, device=sample.device)
    new[:, 1:] = (rows[:, 1:] != rows[:, :-1]).any(2)
    distinct = new.sum(1)
    few = (distinct <= clusters).tolist()
    if all(few):
        centres = torch.empty(n, clusters, 3, dtype=sample.dtype, device=sample.device)
    elif _use_scipy(steps, sample.device):
        from multiflow.features.masks import kmeans_colours_np

        data = sample.cpu().numpy()
        centres = torch.from_numpy(np.stack([
            kmeans_colours_np(x, clusters, seed) if not f else np.zeros((clusters, 3)) for x, f in zip(data, few)
        ])).to(sample.device)
    else:
        centres = kmeans_pp(sample, clusters, seed)
    for i in [i for i, f in enumerate(few) if f]:
        uniq = rows[i][new[i]]
        centres[i] = uniq[torch.arange(clusters, device=sample.device) % len(uniq)]
    return centres


# ----------------------------------------------------------------------------- blur and threshold


def _reflect_index(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a symmetric ("reflect" in SciPy: ``d c b a | a b c d | d c b a``) padding."""
    p = torch.arange(-pad, size + pad, device=device) % (2 * size)
    return torch.where(p >= size, 2 * size - 1 - p, p)


@lru_cache(maxsize=16)
def _gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    radius = int(truncate * float(sigma) + 0.5)  # scipy.ndimage.gaussian_filter's radius
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(x[n], sigma)`` (truncate 4, mode "reflect") of ``x (N, H, W)``:
    rows first, then columns, each a weighted sum of shifted slices of the padded image (on the CPU
    faster than a one-channel convolution)."""
    if sigma <= 0:
        return x
    wts = [float(v) for v in _gaussian_weights(float(sigma))]
    r = (len(wts) - 1) // 2
    n, h, w = x.shape
    for dim, size in ((1, h), (2, w)):
        y = x.index_select(dim, _reflect_index(size, r, x.device))
        out = y.narrow(dim, 0, size) * wts[0]
        for t in range(1, len(wts)):
            out.add_(y.narrow(dim, t, size), alpha=wts[t])
        x = out
    return x


def histogram(x: torch.Tensor, nbins: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image ``np.histogram(x[n], bins=nbins)``: ``x (N, ...)`` -> ``(counts (N, nbins) int64,
    edges (N, nbins + 1) float64)``.

    Edges ``linspace(min, max, nbins + 1)`` (computed as NumPy does); a value on an edge goes to the
    bin above, the maximum to the last bin. As in NumPy the bin comes from the scaled value and is
    then moved one step down or up until ``edges[i] <= v < edges[i + 1]`` holds exactly.
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)
    lo, hi = flat.amin(1).double(), flat.amax(1).double()
    step = (hi - lo) / nbins
    edges = torch.arange(nbins + 1, dtype=torch.float64, device=x.device)[None] * step[:, None] + lo[:, None]
    edges[:, -1] = hi
    scale = torch.where(hi > lo, nbins / (hi - lo), torch.zeros_like(hi))
    bins = ((flat - lo[:, None]) * scale[:, None]).long().clamp_(0, nbins - 1)
    bins -= (flat < edges.gather(1, bins)).long()
    bins += ((flat >= edges.gather(1, bins + 1)) & (bins != nbins - 1)).long()
    offset = torch.arange(n, device=x.device)[:, None] * nbins
    counts = torch.bincount((bins + offset).reshape(-1), minlength=n * nbins).reshape(n, nbins)
    return counts, edges


def otsu_threshold(x: torch.Tensor, nbins: int = 256) -> torch.Tensor:
    """Per image ``skimage.filters.threshold_otsu(x[n], nbins)``: ``x (N, ...)`` -> ``(N,)`` float64.

    :func:`histogram`, class weights in float32 as scikit-image casts the counts, the
    between-class variance ``w1 w2 (m1 - m2)^2`` maximised (first maximum); a constant image
    returns its value.
    """
    counts, edges = histogram(x, nbins)
    counts = counts.to(torch.float32)
    lo, hi = edges[:, 0], edges[:, -1]
    centres = (edges[:, :-1] + edges[:, 1:]) / 2.0
    w1 = counts.cumsum(1)
    w2 = counts.flip(1).cumsum(1).flip(1)
    cm = counts.double() * centres
    m1 = cm.cumsum(1) / w1
    m2 = (cm.flip(1).cumsum(1) / w2.flip(1)).flip(1)
    var = (w1[:, :-1] * w2[:, 1:]).double() * (m1[:, :-1] - m2[:, 1:]) ** 2
    thr = centres.gather(1, var.argmax(1, keepdim=True)).squeeze(1)
    return torch.where(hi == lo, lo, thr)


# ----------------------------------------------------------------------------- connected components


def _label_dtype(h: int, w: int) -> torch.dtype:
    return torch.float32 if h * w + 1 < 2**24 else torch.float64  # labels are exact integers


def _runs(mask: torch.Tensor) -> torch.Tensor:
    """``mask (R, L)`` bool -> run ids ``(R * L,)``: 1.. per horizontal run of ``True``, 0 elsewhere."""
    start = mask.clone()
    start[:, 1:] &= ~mask[:, :-1]
    ids = start.reshape(-1).cumsum(0)
    return torch.where(mask.reshape(-1), ids, torch.zeros_like(ids))


def _run_max(lab: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(lab.numel() + 1, dtype=lab.dtype, device=lab.device)
    out.scatter_reduce_(0, ids, lab.reshape(-1), "amax", include_self=True)
    return out[ids].reshape(lab.shape)


def label_components(mask: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Connected components of ``mask (N, H, W)`` bool (8- or 4-connectivity) by label propagation.

    Returns ``(N, H, W)`` int64: 0 on the background; on a component, 1 + the largest row-major
    index ``y * W + x`` of its pixels (unique within an image). See the module docstring.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if mask.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {tuple(mask.shape)}")
    n, h, w = mask.shape
    mask = mask.bool()
    dtype = _label_dtype(h, w)
    fg = mask.to(dtype)
    own = torch.arange(1, h * w + 1, device=mask.device, dtype=dtype).reshape(1, h, w)
    lab = own * fg
    row_ids = _runs(mask.reshape(n * h, w))
    col_ids = _runs(mask.transpose(1, 2).reshape(n * w, h))

    def local(x: torch.Tensor) -> torch.Tensor:
        x4 = x[:, None]
        if connectivity == 8:
            y = F.max_pool2d(x4, 3, stride=1, padding=1)
        else:
            y = torch.maximum(F.max_pool2d(x4, (3, 1), stride=1, padding=(1, 0)),
                              F.max_pool2d(x4, (1, 3), stride=1, padding=(0, 1)))
        return y[:, 0] * fg

    for _ in range(h * w + 1):
        prev = lab
        lab = _run_max(lab, row_ids)
        lab = _run_max(lab.transpose(1, 2).contiguous(), col_ids).reshape(n, w, h).transpose(1, 2)
        lab = local(lab)
        for _ in range(2):  # pointer jumps: label <- label of the pixel it names
            flat = lab.reshape(n, h * w)
            target = (flat.long() - 1).clamp_min(0)
            lab = (torch.gather(flat, 1, target) * fg.reshape(n, h * w)).reshape(n, h, w)
        if torch.equal(lab, prev):
            break
    else:  # unreachable: labels grow monotonically and are bounded
        raise RuntimeError("connected-component labelling did not converge")
    return lab.long()


def _keep_large_np(m: np.ndarray, keep_fraction: float) -> np.ndarray:
    """``keep_large_components_np`` of :mod:`multiflow.features.masks` with a lookup table instead
    of ``np.isin``."""
    from scipy import ndimage

    labels, n = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return m
    areas = np.bincount(labels.ravel())
    keep = areas >= keep_fraction * areas[1:].max()
    keep[0] = False
    return keep[labels]


def keep_large_components(mask: torch.Tensor, keep_fraction: float, *, steps: str = "auto") -> torch.Tensor:
    """Per image, the 8-connected components of ``mask (N, H, W)`` with at least ``keep_fraction``
    of the largest one's area (step 4 of ``ThresholdMasks``)."""
    if _use_scipy(steps, mask.device):
        m = mask.cpu().numpy()
        out = np.stack([_keep_large_np(x, keep_fraction) for x in m]) if len(m) else m
        return torch.from_numpy(out).to(mask.device)
    n, h, w = mask.shape
    lab = label_components(mask, 8)
    key = torch.where(mask, lab + (torch.arange(n, device=mask.device) * (h * w + 1))[:, None, None], 0)
    areas = torch.bincount(key.reshape(-1), minlength=n * (h * w + 1))
    areas[0] = 0
    largest = areas.reshape(n, h * w + 1).amax(1).double()
    return mask & (areas[key].double() >= keep_fraction * largest[:, None, None])


def _fill_holes_np(m: np.ndarray) -> np.ndarray:
    """``binary_fill_holes(m)`` by one labelling of the background (4-connectivity): components
    that touch the image border are outside, the others are holes."""
    from scipy import ndimage

    labels, n = ndimage.label(~m)
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outside[edge] = True
    outside[0] = False  # the foreground
    return ~outside[labels]


def fill_holes(mask: torch.Tensor, *, steps: str = "auto") -> torch.Tensor:
    """``scipy.ndimage.binary_fill_holes`` of every ``mask (N, H, W)``: background not 4-connected
    to the outside of the image becomes foreground."""
    if _use_scipy(steps, mask.device):
        m = mask.cpu().numpy()
        return torch.from_numpy(np.stack([_fill_holes_np(x) for x in m]) if len(m) else m).to(mask.device)
    bg = F.pad(~mask, (1, 1, 1, 1), value=True)  # the outside: a background ring around the image
    lab = label_components(bg, 4)
    outside = lab[:, :1, :1]
    return ~(lab == outside)[:, 1:-1, 1:-1]


# ----------------------------------------------------------------------------- post-processing


def _or_run(x: torch.Tensor, length: int, dim: int, forward: bool) -> torch.Tensor:
    """``out[i] = any(x[i .. i + length - 1])`` (``forward``) or ``any(x[i - length + 1 .. i])``
    along ``dim``, outside the tensor False: runs of 1, 2, 4, ... by OR-ing shifted copies, then one
    overlapping shift to reach ``length``."""
    n = x.shape[dim]

    def shifted_or(t: torch.Tensor, s: int) -> torch.Tensor:  # t[i] | t[i + s] (forward) or t[i - s]
        if s >= n:
            return t
        out = t.clone()
        if forward:
            out.narrow(dim, 0, n - s).logical_or_(t.narrow(dim, s, n - s))
        else:
            out.narrow(dim, s, n - s).logical_or_(t.narrow(dim, 0, n - s))
        return out

    cur, covered = x, 1
    while covered * 2 <= length:
        cur, covered = shifted_or(cur, covered), covered * 2
    if covered < length:  # [0, covered) | [length - covered, length) = [0, length)
        cur = shifted_or(cur, length - covered)
    return cur


def dilate_square(mask: torch.Tensor, size: int) -> torch.Tensor:
    """``scipy.ndimage.binary_dilation(mask[n], np.ones((size, size)))`` of ``mask (N, H, W)``: a pixel
    grows to the offsets ``-(size // 2) .. size - 1 - size // 2`` in both axes (SciPy's origin for
    even sizes). A square is a column window then a row window, each by shifted ORs."""
    if size <= 1:
        return mask
    before, after = size - 1 - size // 2, size // 2  # output o covers input o - before .. o + after
    m = mask.bool()
    for dim in (1, 2):
        m = _or_run(_or_run(m, after + 1, dim, True), before + 1, dim, False)
    return m


def _nearest_along(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Distance (float64, ``inf`` if none) from every pixel to the nearest ``True`` along ``dim``."""
    size = mask.shape[dim]
    shape = [1] * mask.ndim
    shape[dim] = size
    pos = torch.arange(size, device=mask.device, dtype=torch.float64).reshape(shape)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=mask.device)
    before = torch.where(mask, pos, -inf).cummax(dim).values
    after = torch.where(mask, pos, inf).flip(dim).cummin(dim).values.flip(dim)
    return torch.minimum(pos - before, after - pos)


def add_margin(mask: torch.Tensor, margin: float) -> torch.Tensor:
    """Every pixel within Euclidean distance ``margin * d`` of the foreground joins it, ``d`` =
    ``hypot`` of the foreground's bounding box (as :func:`~multiflow.features.masks.postprocess_mask`,
    ``distance_transform_edt(~m) <= margin * d``). Exact squared distances: the nearest foreground
    pixel per column, then the minimum of ``dx^2 + dy^2`` over the columns within reach."""
    n, h, w = mask.shape
    anyr, anyc = mask.any(2), mask.any(1)
    ar_h = torch.arange(h, device=mask.device)
    ar_w = torch.arange(w, device=mask.device)
    r0 = torch.where(anyr, ar_h, h).amin(1)
    r1 = torch.where(anyr, ar_h, -1).amax(1)
    c0 = torch.where(anyc, ar_w, w).amin(1)
    c1 = torch.where(anyc, ar_w, -1).amax(1)
    present = anyr.any(1)
    diag = torch.hypot((r1 - r0 + 1).double(), (c1 - c0 + 1).double())
    radius = torch.where(present, margin * diag, torch.zeros_like(diag))
    reach = int(min(torch.floor(radius.max()).item(), w - 1)) if n else 0
    g2 = _nearest_along(mask, 1) ** 2  # (N, H, W): squared vertical distance within the column
    best = g2.clone()
    inf_col = torch.full((n, h, 1), float("inf"), dtype=torch.float64, device=mask.device)
    for dx in range(1, reach + 1):
        pad = inf_col.expand(n, h, dx)
        left = torch.cat([pad, g2[:, :, :-dx]], 2)  # column x - dx
        right = torch.cat([g2[:, :, dx:], pad], 2)  # column x + dx
        best = torch.minimum(best, torch.minimum(left, right) + dx * dx)
    out = torch.sqrt(best) <= radius[:, None, None]
    return torch.where(present[:, None, None], out | mask, mask)


def reduce_to_grid(mask: torch.Tensor, grid: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """``(N, H, W)`` bool -> ``(N, h, w)`` bool, the rules of
    :func:`multiflow.features.masks.reduce_to_grid` (area > 0.5 of the floor-bounded cells, or the
    nearest pixel to the cell centre)."""
    h, w = int(grid[0]), int(grid[1])
    n, H, W = mask.shape
    dev = mask.device
    if mode == "nearest":
        ys = torch.clamp(((torch.arange(h, device=dev, dtype=torch.float64) + 0.5) * H / h).long(), max=H - 1)
        xs = torch.clamp(((torch.arange(w, device=dev, dtype=torch.float64) + 0.5) * W / w).long(), max=W - 1)
        return mask[:, ys][:, :, xs]
    if mode != "area":
        raise ConfigError(f"grid reduction must be 'area' or 'nearest', got {mode!r}")
    if H < h or W < w:
        raise ConfigError(f"mask {H}x{W} is smaller than the feature grid {h}x{w}")
    ys = (torch.arange(h + 1, device=dev) * H) // h
    xs = (torch.arange(w + 1, device=dev) * W) // w
    csum = F.pad(mask.to(torch.int64).cumsum(1).cumsum(2), (1, 0, 1, 0))
    rows_hi, rows_lo = csum[:, ys[1:]], csum[:, ys[:-1]]
    counts = rows_hi[:, :, xs[1:]] - rows_lo[:, :, xs[1:]] - rows_hi[:, :, xs[:-1]] + rows_lo[:, :, xs[:-1]]
    areas = (ys[1:] - ys[:-1])[:, None] * (xs[1:] - xs[:-1])[None, :]
    return counts * 2 > areas


def postprocess_masks(
    masks: torch.Tensor, grid: tuple[int, int] | None = None, *, dilation: int = DILATION, fill: bool = True,
    mode: str = "area", margin: float = 0.0, steps: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batched :func:`multiflow.features.masks.postprocess_mask`: ``masks (N, H, W)`` bool ->
    ``(full (N, H, W) bool, grid masks (N, h, w) bool or None)`` on the masks' device. Exact."""
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {tuple(masks.shape)}")
    if margin < 0:
        raise ConfigError(f"mask margin must be >= 0, got {margin}")
    m = masks.bool()
    if fill:
        m = fill_holes(m, steps=steps)
    m = dilate_square(m, int(dilation))
    if margin > 0 and len(m):
        m = add_margin(m, float(margin))
    return m, (reduce_to_grid(m, grid, mode) if grid is not None else None)


def _centre_d2(flat: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``min_k |I - c_k|^2`` of ``flat (N, 3, P)`` and ``centres (N, K, 3)`` -> ``(N, P)``.

    float64: ``(r - c_r)^2 + (g - c_g)^2 + (b - c_b)^2`` per centre, the reference's order.
    float32: ``|I|^2 - 2 I.c + |c|^2``, a batched product per chunk of pixels.
    """
    n, _, p = flat.shape
    k = centres.shape[1]
    if flat.dtype == torch.float64:
        out = None
        for j in range(k):
            c = centres[:, j, :, None]  # (N, 3, 1)
            dk = (flat[:, 0] - c[:, 0]) ** 2 + (flat[:, 1] - c[:, 1]) ** 2 + (flat[:, 2] - c[:, 2]) ** 2
            out = dk if out is None else torch.minimum(out, dk)
        return out
    cd = centres.to(flat.dtype)
    cc = (cd * cd).sum(2, keepdim=True)  # (N, K, 1)
    out = (flat * flat).sum(1)  # |I|^2, (N, P)
    # pixels in chunks whose (N, K, chunk) distances stay in the CPU's cache (one chunk elsewhere)
    budget = 2**19 if flat.device.type == "cpu" else 2**26
    chunk = max(1024, budget // max(1, n * k))
    for i in range(0, p, chunk):
        part = out[:, i : i + chunk]
        part += torch.baddbmm(cc, cd, flat[:, :, i : i + chunk], alpha=-2.0).amin(1)
    return out.clamp_min_(0)


def threshold_masks(
    images: torch.Tensor, *, border: float, sigma: float, otsu_scale: float, clusters: int, min_contrast: float,
    keep_fraction: float, seed: int, precision: str = "float32", steps: str = "auto",
) -> torch.Tensor:
    """The ``threshold`` provider (:class:`multiflow.features.masks.ThresholdMasks`, steps 1-4) on a
    batch: ``images (N, 3, H, W)`` (uint8, or float in ``[0, 1]``) -> raw masks ``(N, H, W)`` bool,
    on the images' device.

    ``d = sqrt(min(|I - b|^2, min_k |I - c_k|^2))`` (``b`` the border plane, ``c_k`` the border
    colours), blurred; foreground ``d > max(otsu_scale * otsu(d), min_contrast)`` unless
    ``max d < min_contrast``; then the components of at least ``keep_fraction`` of the largest.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    img = as_float_images(images, dtype)
    n, _, h, w = img.shape
    if n == 0:
        return torch.zeros(0, h, w, dtype=torch.bool, device=images.device)
    frame = frame_mask(h, w, border, img.device)
    border64 = as_float_images(images[:, :, frame][..., None])[..., 0]  # (N, 3, P) frame pixels, float64
    coef = background_plane(border64, frame).to(dtype)  # (N, 3 terms, 3 channels)
    yy, xx = _plane_terms(h, w, dtype, img.device)
    a, p, q = (coef[:, t, :, None, None] for t in range(3))
    diff = (a + p * yy[:, None]) + q * xx  # (N, 3, H, W): the background plane
    torch.sub(img, diff, out=diff)
    diff.square_()
    d2 = diff[:, 0] + diff[:, 1]
    d2 += diff[:, 2]
    del diff
    if clusters > 0:
        centres = border_centres(border_sample(border64), clusters, seed, steps=steps)  # (N, K, 3) float64
        d2 = torch.minimum(d2, _centre_d2(img.reshape(n, 3, h * w), centres).reshape(n, h, w))
    dist = gaussian_blur(d2.sqrt(), sigma)
    peak = dist.reshape(n, -1).amax(1).double()
    thr = torch.clamp(otsu_scale * otsu_threshold(dist), min=min_contrast)
    mask = (dist > thr[:, None, None]) & (peak >= min_contrast)[:, None, None]  # compared in float64
    return keep_large_components(mask, keep_fraction, steps=steps)
