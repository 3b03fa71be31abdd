"""Fixtures writing tiny Real-IAD-format, folder-format and manifest data sets to ``tmp_path``.

Image content encodes where a file belongs, so tests can check grouping and view order from the
pixels alone: red = 40 * camera number, green = 10 * sample number + 5, blue = 0 (OK) / 128 (NG).
The left half of every image is darker by 60 (red channel), so flips are visible.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = 16
CAMERAS = ("C1", "C2", "C3", "C4", "C5")


def view_color(camera: int, sample: int, defective: bool) -> tuple[int, int, int]:
    return (40 * camera, 10 * sample + 5, 128 if defective else 0)


def write_view_image(path: Path, rgb: tuple[int, int, int], size: int = SIZE) -> None:
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:] = rgb
    arr[:, : size // 2, 0] = max(rgb[0] - 60, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=98) if path.suffix == ".jpg" else Image.fromarray(arr).save(path)


def write_mask(path: Path, nonempty: bool, size: int | tuple[int, int] = SIZE) -> None:
    h, w = (size, size) if isinstance(size, int) else size
    arr = np.zeros((h, w), dtype=np.uint8)
    if nonempty:
        arr[2:5, 3:6] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def make_realiad() -> Callable[..., Path]:
    """Return ``build(root, ...)`` writing a Real-IAD tree; returns the JSON path.

    ``samples``: list of ``(number, anomaly_class, split, masks)``: ``masks`` maps camera ->
    ``"defect"`` (non-empty mask), ``"empty"`` (mask file without defect pixels) or ``None``
    (``mask_path: null``); cameras not in it get ``mask_path: null``.
    """

    def build(
        root: Path,
        *,
        category: str = "toyobj",
        layout: str = "flat",
        resolution: str = "16",
        variant: str = "realiad_jsons",
        samples: list | None = None,
        cameras: tuple[str, ...] = CAMERAS,
        shuffle_seed: int | None = 0,
        mutate: Callable[[dict], None] | None = None,
    ) -> Path:
        if samples is None:
            samples = [
                (1, "OK", "train", {}),
                (2, "OK", "train", {}),
                (1, "OK", "test", {}),
                (1, "BX", "test", {"C2": "defect", "C3": "empty"}),
                (2, "AK", "test", {"C4": "empty"}),
            ]
        img_root = root / f"realiad_{resolution}"
        cls_dir = img_root / category
        doc: dict = {"meta": {"prefix": category, "normal_class": "OK"}, "train": [], "test": []}
        for number, acls, split, masks in samples:
            defective = acls != "OK"
            folder = f"OK/S{number:04d}" if not defective else f"NG/{acls}/S{number:04d}"
            stemcls = "OK" if not defective else f"NG_{acls}"
            for cam in cameras:
                k = int(cam[1:])
                name = f"{category}_{number:04d}_{stemcls}_{cam}_2023102{k}1115{number:02d}"
                rel = f"{folder}/{name}.jpg"
                write_view_image(cls_dir / rel, view_color(k, number, defective))
                mrel = None
                if masks.get(cam) is not None:
                    mrel = f"{folder}/{name}_mask.png"
                    write_mask(cls_dir / mrel, masks[cam] == "defect")
                doc[split].append({"category": category, "anomaly_class": acls, "image_path": rel, "mask_path": mrel})
        if shuffle_seed is not None:
            rng = random.Random(shuffle_seed)
            rng.shuffle(doc["train"])
            rng.shuffle(doc["test"])
        if mutate is not None:
            mutate(doc)
        if layout == "flat":
            jpath = root / variant / f"{category}.json"
        elif layout == "nested":
            jpath = root / variant / variant / f"{category}.json"
        elif layout == "beside":
            jpath = img_root / f"{category}.json"
        else:
            raise ValueError(layout)
        jpath.parent.mkdir(parents=True, exist_ok=True)
        jpath.write_text(json.dumps(doc))
        return jpath

    return build


@pytest.fixture
def make_folder() -> Callable[..., Path]:
    """Return ``build(root, views, samples)`` writing the folder format.

    ``samples``: list of ``(split, defect, sample_id, number, masks)``; ``masks`` maps view ->
    ``"defect"`` / ``"empty"`` for mask files in the parallel ``masks/`` tree.
    """

    def build(root: Path, views: list[str], samples: list, ext: str = ".png") -> Path:
        for split, defect, sid, number, masks in samples:
            for k, view in enumerate(views, start=1):
                write_view_image(root / split / defect / sid / f"{view}{ext}", view_color(k, number, defect != "good"))
                if view in masks:
                    write_mask(root / "masks" / split / defect / sid / f"{view}.png", masks[view] == "defect")
        return root

    return build


@pytest.fixture
def fakes():
    """The helpers above, for tests that write their own files (``fakes.write_mask(...)``)."""
    from types import SimpleNamespace

    return SimpleNamespace(view_color=view_color, write_view_image=write_view_image, write_mask=write_mask, size=SIZE)
