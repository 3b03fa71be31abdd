"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022)
on multiflow's cached backbone features: an established *single-view* method as a baseline.

What is implemented (and what differs from the original / anomalib's ``Patchcore``):

- Features: the same frozen backbone features the flow sees, ``(N, V, C, h, w)`` (EfficientNet
  stage 6, stride 32), not WideResNet-50 layers 2+3: both methods get identical inputs.
- Locally aware patch features (PatchCore Sec. 3.1): ``3 x 3`` average pooling (stride 1,
  replicate-free ``count_include_pad=False``) of each feature map.
- Memory bank: every foreground patch (mask of the same provider as the flow) of every view of
  every training sample: ``M`` vectors of size ``C``.
- Coreset (Sec. 3.2): greedy k-center selection of ``ceil(ratio * M)`` vectors on a Gaussian random
  projection to ``projection_dim`` dimensions (Johnson-Lindenstrauss). With ``sampler="anomalib"``
  (or ``"auto"`` when anomalib is installed) anomalib's ``KCenterGreedy`` selects the coreset
  (its sparse random projection and its random start, run under seeded and afterwards restored
  torch and NumPy global RNGs, which anomalib reads).
- Score (Sec. 3.3): anomaly map = Euclidean distance of each test patch to its nearest coreset
  vector, ``s(p) = min_{m in M_C} ||p - m||_2``; background patches get the view's foreground
  minimum (as the flow's maps). The image score is the map maximum (the evaluation used for every
  method here), without PatchCore's neighbourhood re-weighting of the single max patch.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from multiflow.errors import ConfigError, DataError
from multiflow.scoring import fill_background


def anomalib_available() -> bool:
    """True when anomalib's k-center-greedy sampler can be imported."""
    if importlib.util.find_spec("anomalib") is None:
        return False
    try:
        from anomalib.models.components.sampling import KCenterGreedy  # noqa: F401
    except Exception:  # noqa: BLE001 - anomalib present but its import chain fails (e.g. missing extras)
        return False
    return True


def kcenter_greedy(embedding: Tensor, n_select: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Greedy k-center selection (Sener & Savarese 2018; PatchCore Alg. 1).

    Start from one random point; repeatedly add the point farthest from the selected set:
    ``i_{k+1} = argmax_i min_{j <= k} ||e_i - e_{i_j}||_2``.

    Args:
        embedding: ``(M, D)`` points.
        n_select: how many to select (``1 <= n_select <= M``).
        generator: seeds the first point.
    Returns:
        ``(n_select,)`` int64 indices, distinct, in selection order.
    """
    m = int(embedding.shape[0])
    if not 1 <= n_select <= m:
        raise ConfigError(f"k-center greedy: n_select must be in 1..{m}, got {n_select}")
    e = embedding.float()
    first = int(torch.randint(m, (1,), generator=generator).item())
    chosen = [first]
    dist = torch.linalg.vector_norm(e - e[first], dim=1)
    for _ in range(n_select - 1):
        nxt = int(torch.argmax(dist).item())
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.linalg.vector_norm(e - e[nxt], dim=1))
    return torch.tensor(chosen, dtype=torch.int64)


def _patches(features: Tensor) -> Tensor:
    """``(N, V, C, h, w) -> (N, V, C, h, w)`` locally aware features (3x3 mean, PatchCore Sec. 3.1)."""
    n, v, c, h, w = features.shape
    x = features.reshape(n * v, c, h, w).float()
    x = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    return x.reshape(n, v, c, h, w)


class PatchCore:
    """PatchCore on cached features ``(N, V, C, h, w)``; every view an independent image.

    Args:
        coreset_ratio: fraction of the memory bank kept (PatchCore: 0.01-0.1; anomalib default 0.1).
        projection_dim: dimension of the random projection used only for the coreset selection.
        sampler: ``"own"`` (this module's :func:`kcenter_greedy`), ``"anomalib"`` (anomalib's
            ``KCenterGreedy``; error if missing) or ``"auto"`` (anomalib when installed).
        seed: seeds the projection and the first coreset point.
        chunk: test patches scored per distance computation (bounds memory).
    """

    def __init__(self, *, coreset_ratio: float = 0.1, projection_dim: int = 128, sampler: str = "auto",
                 seed: int = 0, chunk: int = 4096) -> None:
        if not 0.0 < coreset_ratio <= 1.0:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if sampler not in ("own", "anomalib", "auto"):
            raise ConfigError(f"sampler must be 'own', 'anomalib' or 'auto', got {sampler!r}")
        if sampler == "anomalib" and not anomalib_available():
            raise ConfigError("sampler='anomalib' but anomalib is not installed (pip install anomalib==2.7.0)")
        self.coreset_ratio = float(coreset_ratio)
        self.projection_dim = int(projection_dim)
        self.sampler = "anomalib" if sampler == "anomalib" or (sampler == "auto" and anomalib_available()) else "own"
        self.seed = int(seed)
        self.chunk = int(chunk)
        self.memory: Tensor | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "method": "PatchCore (Roth et al. 2022) on cached multiflow features",
            "coreset_ratio": self.coreset_ratio, "projection_dim": self.projection_dim,
            "sampler": "anomalib.models.components.sampling.KCenterGreedy" if self.sampler == "anomalib"
            else "multiflow.baselines.patchcore.kcenter_greedy",
            "memory_bank": None if self.memory is None else int(self.memory.shape[0]), "seed": self.seed,
        }

    def fit(self, features: Any, masks: Any | None = None) -> PatchCore:
        """Build the coreset memory bank from normal samples ``(N, V, C, h, w)`` (+ masks ``(N, V, h, w)``)."""
        f = torch.from_numpy(np.array(features, dtype=np.float32))
        if f.ndim != 5:
            raise DataError(f"PatchCore.fit: features must be (N, V, C, h, w), got {tuple(f.shape)}")
        p = _patches(f).permute(0, 1, 3, 4, 2)  # (N, V, h, w, C)
        if masks is not None:
            m = torch.from_numpy(np.array(masks, dtype=bool))
            if tuple(m.shape) != tuple(p.shape[:4]):
                raise DataError(f"PatchCore.fit: masks must be {tuple(p.shape[:4])}, got {tuple(m.shape)}")
            bank = p[m]
        else:
            bank = p.reshape(-1, p.shape[-1])
        if bank.shape[0] == 0:
            raise DataError("PatchCore.fit: no foreground patch in the training samples")
        n_select = max(1, math.ceil(self.coreset_ratio * bank.shape[0]))
        if n_select >= bank.shape[0]:
            self.memory = bank.contiguous()
            return self
        gen = torch.Generator().manual_seed(self.seed)
        if self.sampler == "anomalib":
            from anomalib.models.components.sampling import KCenterGreedy

            # anomalib draws its start point from torch's global RNG and its sparse projection from
            # NumPy's (through scikit-learn): seed both and restore them afterwards
            np_state = np.random.get_state()
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed)
                    np.random.seed(self.seed)  # anomalib reads the legacy global RNG
                    sampler = KCenterGreedy(embedding=bank, sampling_ratio=n_select / bank.shape[0])
                    self.memory = sampler.sample_coreset().contiguous()
            finally:
                np.random.set_state(np_state)
        else:
            d = bank.shape[1]
            if self.projection_dim < d:
                proj = torch.randn(d, self.projection_dim, generator=gen) / math.sqrt(self.projection_dim)
                emb = bank @ proj
            else:
                emb = bank
            self.memory = bank[kcenter_greedy(emb, n_select, generator=gen)].contiguous()
        return self

    def anomaly_map(self, features: Any, masks: Any | None = None) -> np.ndarray:
        """Nearest-neighbour distance maps ``(N, V, h, w)`` float32 (PatchCore Sec. 3.3)."""
        if self.memory is None:
            raise ConfigError("PatchCore.anomaly_map called before fit")
        f = torch.from_numpy(np.array(features, dtype=np.float32))
        if f.ndim != 5 or f.shape[2] != self.memory.shape[1]:
            raise DataError(f"PatchCore: features must be (N, V, {self.memory.shape[1]}, h, w), got {tuple(f.shape)}")
        p = _patches(f).permute(0, 1, 3, 4, 2)
        flat = p.reshape(-1, p.shape[-1])
        out = torch.empty(flat.shape[0])
        for s in range(0, flat.shape[0], self.chunk):
            out[s : s + self.chunk] = torch.cdist(flat[s : s + self.chunk], self.memory, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1)
        maps = out.reshape(p.shape[:4])
        if masks is not None:
            fg = torch.from_numpy(np.array(masks, dtype=bool))
            if fg.shape != maps.shape:
                raise DataError(f"PatchCore: masks must be {tuple(maps.shape)}, got {tuple(fg.shape)}")
            maps = fill_background(maps, fg)
        return maps.numpy().astype(np.float32)
