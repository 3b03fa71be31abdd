"""Folder format: <root>/<split>/<good|defect>/<sample_id>/<view>.<ext> with a parallel mask tree."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multiflow.data.folder import FolderDataset
from multiflow.data.sample import collate_samples
from multiflow.errors import ConfigError, DataError

VIEWS = ["top", "left", "right"]
SAMPLES = [
    ("train", "good", "0001", 1, {}),
    ("train", "good", "0002", 2, {}),
    ("test", "good", "0001", 3, {}),
    ("test", "scratch", "0001", 4, {"left": "defect", "right": "empty"}),
    ("test", "dent", "0007", 5, {}),
]


def camera_of(images: torch.Tensor) -> list[int]:
    right = images[:, 0, :, images.shape[-1] // 2 :]
    return [round(float(r.mean()) * 255 / 40) for r in right]


def test_reads_samples_in_configured_view_order(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path, VIEWS, SAMPLES)
    ds = FolderDataset(tmp_path, views=VIEWS, split="test")
    assert [r.sample_id for r in ds.samples] == ["dent/0007", "good/0001", "scratch/0001"]
    assert ds.view_names == VIEWS and ds.category == tmp_path.name
    s = ds[2]
    assert s.images.shape == (3, 3, 16, 16) and camera_of(s.images) == [1, 2, 3]
    assert s.view_names == VIEWS and s.defect == "scratch" and s.sample_id == "scratch/0001"
    # reversed configuration order reverses the view axis
    rev = FolderDataset(tmp_path, views=VIEWS[::-1], split="test")
    assert camera_of(rev[2].images) == [3, 2, 1]
    batch = collate_samples([ds[i] for i in range(len(ds))])
    assert batch.images.shape == (3, 3, 3, 16, 16) and batch.masks.shape == (3, 3, 16, 16)


def test_labels_from_masks_and_defects_without_masks(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path, VIEWS, SAMPLES)
    ds = FolderDataset(tmp_path, views=VIEWS, split="test")
    dent, good, scratch = ds[0], ds[1], ds[2]
    assert scratch.image_labels.tolist() == [0, 1, 0] and scratch.label == 1  # right: empty mask
    assert scratch.masks[1].any() and not scratch.masks[[0, 2]].any()
    assert scratch.mask_paths[0] is None and scratch.mask_paths[1].endswith(os.path.join("scratch", "0001", "left.png"))
    assert dent.image_labels.tolist() == [1, 1, 1] and dent.label == 1  # no mask at all: every view
    assert good.label == 0 and good.defect == "good"
    assert ds.labels().tolist() == [1, 0, 1]
    train = FolderDataset(tmp_path, views=VIEWS, split="train", image_size=(8, 4), load_masks=False)
    assert len(train) == 2 and train[0].images.shape == (3, 3, 8, 4) and train[0].masks is None


def test_missing_view_is_reported_by_sample_and_view(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path, VIEWS, SAMPLES)
    (tmp_path / "test" / "dent" / "0007" / "left.png").unlink()
    with pytest.raises(DataError, match=r"sample 'dent/0007' has missing view\(s\) \['left'\]") as err:
        FolderDataset(tmp_path, views=VIEWS, split="test")
    assert err.value.path.endswith(os.path.join("dent", "0007"))
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = FolderDataset(tmp_path, views=VIEWS, split="test", skip_incomplete=True)
    assert [(s.sample_id, s.reason) for s in ds.skipped] == [("dent/0007", "missing view(s) ['left']")]
    assert len(ds) == 2


def test_duplicate_and_unknown_views(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path, VIEWS, SAMPLES[:1])
    sample = tmp_path / "train" / "good" / "0001"
    (sample / "top.jpg").write_bytes((sample / "top.png").read_bytes())
    with pytest.raises(DataError, match="duplicated view"):
        FolderDataset(tmp_path, views=VIEWS, split="train")
    (sample / "top.jpg").unlink()
    (sample / "Top.png").write_bytes((sample / "top.png").read_bytes())
    with pytest.raises(DataError, match="unknown view 'Top'") as err:
        FolderDataset(tmp_path, views=VIEWS, split="train")
    assert err.value.path == str(sample / "Top.png")
    assert len(FolderDataset(tmp_path, views=VIEWS, split="train", ignore_unknown_views=True)) == 1
    (sample / "notes.txt").write_text("ignored: not an image extension")
    (sample / ".DS_Store").write_text("hidden")
    assert len(FolderDataset(tmp_path, views=VIEWS, split="train", ignore_unknown_views=True)) == 1


def test_symlink_out_of_root_and_bad_config(tmp_path: Path, make_folder) -> None:
    root = tmp_path / "line"
    make_folder(root, VIEWS, SAMPLES[:1])
    outside = tmp_path / "outside.png"
    target = root / "train" / "good" / "0001" / "top.png"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(DataError, match="outside the data root"):
        FolderDataset(root, views=VIEWS, split="train")
    with pytest.raises(DataError, match="split folder 'val' not found"):
        FolderDataset(root, views=VIEWS, split="val")
    with pytest.raises(DataError, match="not a directory"):
        FolderDataset(tmp_path / "nothing", views=VIEWS)
    with pytest.raises(ConfigError):
        FolderDataset(root, views="top", split="train")
    with pytest.raises(ConfigError):
        FolderDataset(root, views=["top", "top"], split="train")
    with pytest.raises(ConfigError):
        FolderDataset(root, views=["../x"], split="train")


def test_flips_and_corrupt_image_at_load_time(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path, VIEWS, SAMPLES[3:4])
    plain = FolderDataset(tmp_path, views=VIEWS, split="test")[0]
    flipped = FolderDataset(tmp_path, views=VIEWS, split="test", flips={"left": "lr"})[0]
    assert torch.equal(flipped.images[1], plain.images[1].flip(-1))
    assert torch.equal(flipped.masks[1], plain.masks[1].flip(-1))
    assert torch.equal(flipped.images[0], plain.images[0])
    bad = tmp_path / "test" / "scratch" / "0001" / "right.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = FolderDataset(tmp_path, views=VIEWS, split="test")
    with pytest.raises(DataError) as err:
        ds[0]
    assert err.value.path == str(bad)


def test_views_of_different_sizes_need_image_size(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path, VIEWS, SAMPLES[:1])
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "train" / "good" / "0001" / "right.png")
    ds = FolderDataset(tmp_path, views=VIEWS, split="train")
    with pytest.raises(DataError, match="different image sizes"):
        ds[0]
    assert FolderDataset(tmp_path, views=VIEWS, split="train", image_size=16)[0].images.shape == (3, 3, 16, 16)
