"""generate_dataset: Real-IAD schema, file names, masks, silhouettes, determinism and resume."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multiflow.errors import ConfigError
from multiflow.synth import generate_dataset

KEY_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_C[0-9]_")
NAME_RE = re.compile(r"^([a-z_]+)_(\d{4})_(OK|NG_([A-Z]{2}))_C(\d)_(\d{14})\.jpg$")
KW = dict(classes=["toy_brick", "plug"], n_train=2, n_test_good=1, n_test_defect=3, size=48, n_views=5,
          defects=["HS", "QS", "YW"], progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate_dataset(out, seed=5, workers=1, **KW)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_json_schema_and_file_names(dataset):
    for cls in ("toy_brick", "plastic_plug"):
        doc = json.loads((dataset / "realiad_jsons" / f"{cls}.json").read_text())
        assert set(doc) == {"meta", "train", "test"}
        assert doc["meta"] == {"prefix": cls, "normal_class": "OK"}
        assert len(doc["train"]) == 2 * 5 and len(doc["test"]) == (1 + 3) * 5
        root = dataset / "realiad_48" / cls
        for split in ("train", "test"):
            for e in doc[split]:
                assert set(e) == {"category", "anomaly_class", "image_path", "mask_path"}
                assert e["category"] == cls
                name = Path(e["image_path"]).name
                m = NAME_RE.match(name)
                assert m and m.group(1) == cls, name
                assert KEY_RE.search(name)
                code = m.group(4) or "OK"
                assert e["anomaly_class"] == code
                sid = m.group(2)
                expect_dir = f"OK/S{sid}" if code == "OK" else f"NG/{code}/S{sid}"
                assert str(Path(e["image_path"]).parent) == expect_dir
                assert (root / e["image_path"]).is_file()
                with Image.open(root / e["image_path"]) as im:
                    assert im.format == "JPEG" and im.size == (48, 48) and im.mode == "RGB"
                if code == "OK" or split == "train":
                    assert code == "OK" and e["mask_path"] is None
                if e["mask_path"] is not None:
                    assert e["mask_path"] == e["image_path"][:-4] + "_mask.png"


def test_masks_exactly_where_the_defect_is_visible(dataset):
    meta = json.loads((dataset / "synth_meta" / "toy_brick.json").read_text())
    root = dataset / "realiad_48" / "toy_brick"
    assert meta["seed"] == 5 and len(meta["cameras"]) == 5 and {"K", "R", "t"} <= set(meta["cameras"][0])
    n_defective = 0
    for rec in meta["samples"]:
        if rec["anomaly_class"] == "OK":
            assert rec["defect"] is None and all(e["mask_path"] is None for e in rec["entries"])
            continue
        n_defective += 1
        d = rec["defect"]
        assert d["code"] == rec["anomaly_class"] and d["views"]
        for e in rec["entries"]:
            view = re.search(r"_(C\d)_", e["image_path"]).group(1)
            if view in d["views"]:
                mask = np.asarray(Image.open(root / e["mask_path"]))
                assert set(np.unique(mask)) <= {0, 255}
                assert int((mask == 255).sum()) == d["pixel_area"][view] > 0
            else:
                assert e["mask_path"] is None and d["pixel_area"][view] == 0
    assert n_defective == 3
    # no stray mask files
    masks_on_disk = {str(p.relative_to(root)) for p in root.rglob("*_mask.png")}
    in_meta = {e["mask_path"] for r in meta["samples"] for e in r["entries"] if e["mask_path"]}
    assert masks_on_disk == in_meta


def test_silhouettes_parallel_tree(dataset):
    doc = json.loads((dataset / "realiad_jsons" / "plastic_plug.json").read_text())
    for e in doc["train"] + doc["test"]:
        sil_path = dataset / "silhouettes_48" / "plastic_plug" / (e["image_path"][:-4] + ".png")
        sil = np.asarray(Image.open(sil_path))
        assert set(np.unique(sil)) == {0, 255}
        assert 0.02 < (sil == 255).mean() < 0.6
        if e["mask_path"]:
            mask = np.asarray(Image.open(dataset / "realiad_48" / "plastic_plug" / e["mask_path"])) == 255
            if "_NG_YW_" in e["image_path"]:
                assert not (mask & (sil == 0)).any()


def test_sample_key_recovers_all_views(dataset):
    doc = json.loads((dataset / "realiad_jsons" / "toy_brick.json").read_text())
    groups: dict[str, list[str]] = defaultdict(list)
    for e in doc["train"] + doc["test"]:
        key = KEY_RE.search(Path(e["image_path"]).name).group(1)
        groups[key].append(re.search(r"_(C\d)_", e["image_path"]).group(1))
    assert len(groups) == 2 + 1 + 3
    assert all(sorted(v) == ["C1", "C2", "C3", "C4", "C5"] for v in groups.values())
    assert "toy_brick_0003_OK" in groups and "toy_brick_0001_NG_QS" in groups


def test_same_seed_same_bytes_regardless_of_workers_and_resume(dataset, tmp_path):
    out = tmp_path / "again"
    generate_dataset(out, seed=5, workers=2, **KW)
    reference = _files(dataset)
    assert _files(out) == reference
    # simulate a kill: one sample half-written (record missing, one image gone), final JSON missing
    rec = next((out / "synth_meta" / ".parts" / "toy_brick").glob("toy_brick_0001_NG_HS.json"))
    rec.unlink()
    next((out / "realiad_48" / "toy_brick" / "NG" / "HS").rglob("*_C2_*.jpg")).unlink()
    (out / "realiad_jsons" / "toy_brick.json").unlink()
    generate_dataset(out, seed=5, workers=1, **KW)
    assert _files(out) == reference
    other = tmp_path / "other"
    generate_dataset(other, seed=6, workers=1, **(KW | {"classes": ["toy_brick"]}))
    a = (dataset / "realiad_jsons" / "toy_brick.json").read_bytes()
    assert (other / "realiad_jsons" / "toy_brick.json").read_bytes() != a


def test_config_mismatch_and_bad_arguments(dataset, tmp_path):
    with pytest.raises(ConfigError, match="another configuration"):
        generate_dataset(dataset, seed=6, workers=1, **KW)
    with pytest.raises(ConfigError, match="unknown synthetic class"):
        generate_dataset(tmp_path / "x", classes=["teapot"], progress=False)
    with pytest.raises(ConfigError, match="unknown defect codes"):
        generate_dataset(tmp_path / "x", classes=["cap"], defects=["XX"], progress=False)
    with pytest.raises(ConfigError, match="views"):
        generate_dataset(tmp_path / "x", classes=["cap"], n_views=12, progress=False)
    assert not (tmp_path / "x").exists()


def test_readable_by_the_realiad_loader(dataset):
    realiad = pytest.importorskip("multiflow.data.realiad")
    meta = json.loads((dataset / "synth_meta" / "toy_brick.json").read_text())
    by_key = {r["key"]: r for r in meta["samples"]}
    train = realiad.RealIADDataset(dataset, "toy_brick", split="train")
    test = realiad.RealIADDataset(dataset, "toy_brick", split="test")
    assert len(train) == 2 and len(test) == 4
    assert list(train.view_names) == ["C1", "C2", "C3", "C4", "C5"]
    for ds in (train, test):
        for i in range(len(ds)):
            s = ds[i]
            rec = by_key[s.sample_id]
            assert s.images.shape == (5, 3, 48, 48)
            views = [] if rec["defect"] is None else rec["defect"]["views"]
            assert s.image_labels.tolist() == [int(v in views) for v in s.view_names]
            assert s.label == int(bool(views))
            if s.masks is not None and views:
                areas = rec["defect"]["pixel_area"]
                assert s.masks.sum(dim=(1, 2)).tolist() == [areas[v] for v in s.view_names]
