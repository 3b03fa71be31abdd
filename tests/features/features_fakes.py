"""Tiny in-memory stand-ins for a multi-view data set and a feature extractor (no real data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from multiflow.data.sample import MultiViewSample


@dataclass(frozen=True)
class FakeRecord:
    sample_id: str
    image_paths: tuple[str, ...]


class FakeDataset:
    """``n`` samples x ``views`` views; each view is a ``.npy`` image (H, W, 3) in [0, 1] on disk."""

    def __init__(self, root: Path, images: np.ndarray, *, flips: dict | None = None) -> None:
        # images: (N, V, H, W, 3)
        self.view_names = [f"C{k + 1}" for k in range(images.shape[1])]
        self.flips = dict(flips or {})
        self.image_size = None
        self.samples = []
        self.loads = 0
        root.mkdir(parents=True, exist_ok=True)
        for i in range(images.shape[0]):
            paths = []
            for v in range(images.shape[1]):
                p = root / f"s{i:03d}_C{v + 1}.npy"
                np.save(p, images[i, v].astype(np.float32))
                paths.append(str(p))
            self.samples.append(FakeRecord(f"obj_{i:04d}_OK", tuple(paths)))

    @classmethod
    def reopen(cls, root: Path) -> "FakeDataset":
        """The data set written to ``root`` earlier (files untouched: same cache key)."""
        self = cls.__new__(cls)
        files = sorted(Path(root).glob("s*_C*.npy"))
        n = len({f.name.split("_")[0] for f in files})
        v = len(files) // n
        self.view_names = [f"C{k + 1}" for k in range(v)]
        self.flips, self.image_size, self.loads = {}, None, 0
        self.samples = [
            FakeRecord(f"obj_{i:04d}_OK", tuple(str(Path(root) / f"s{i:03d}_C{k + 1}.npy") for k in range(v)))
            for i in range(n)
        ]
        return self

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> MultiViewSample:
        self.loads += 1
        rec = self.samples[i]
        imgs = torch.stack([torch.from_numpy(np.load(p)).permute(2, 0, 1) for p in rec.image_paths])
        v = imgs.shape[0]
        return MultiViewSample(
            images=imgs, image_labels=torch.zeros(v, dtype=torch.int64), label=0, defect="OK",
            sample_id=rec.sample_id, view_names=list(self.view_names), image_paths=list(rec.image_paths),
        )


class FakeExtractor:
    """Features = 4 x 4 average pooling of the image plus its square: (N, 6, H/4, W/4)."""

    name = "fake"

    def __init__(self, input_size: int = 16, digest: str = "d0") -> None:
        self.input_size = input_size
        self.channels = 6
        self.stride = 4
        self.digest = digest
        self.images_seen = 0

    def feature_size(self, input_size: int | None = None) -> tuple[int, int]:
        s = (input_size or self.input_size) // 4
        return s, s

    def describe(self) -> dict:
        return {"backbone": self.name, "input_size": self.input_size, "weights_digest": self.digest}

    def forward_views(self, images: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        x = images.flatten(0, 1).float()
        if x.shape[-1] != self.input_size:
            x = torch.nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="nearest")
        self.images_seen += x.shape[0]
        feats = torch.cat([x, x * x], 1)
        feats = torch.nn.functional.avg_pool2d(feats, 4)
        return feats.view(b, v, *feats.shape[1:])

    @staticmethod
    def reference(images: np.ndarray) -> np.ndarray:
        """The same features computed directly from (N, V, H, W, 3) numpy images."""
        x = torch.from_numpy(images).permute(0, 1, 4, 2, 3).float()
        n, v = x.shape[:2]
        f = torch.nn.functional.avg_pool2d(torch.cat([x, x * x], 2).flatten(0, 1), 4)
        return f.reshape(n, v, *f.shape[1:]).numpy()
