"""Real-IAD reader: JSON layouts and schema, grouping by sample key, view order, labels, flips."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from multiflow.data.realiad import (
    SAMPLE_KEY_PATTERN,
    RealIADDataset,
    RealIADEntry,
    find_realiad_json,
    group_realiad_entries,
    list_categories,
    parse_realiad_json,
)
from multiflow.data.sample import collate_samples
from multiflow.errors import ConfigError, DataError

CAT = "toyobj"


def red_of(images: torch.Tensor) -> list[int]:
    """Camera number per view, decoded from the right half of the red channel (40 * camera)."""
    right = images[:, 0, :, images.shape[-1] // 2 :]
    return [round(float(r.mean()) * 255 / 40) for r in right]


@pytest.mark.parametrize("layout", ["flat", "nested", "beside"])
def test_three_json_layouts_load_the_same_samples(tmp_path: Path, make_realiad, layout: str) -> None:
    jpath = make_realiad(tmp_path, layout=layout)
    assert find_realiad_json(tmp_path, CAT) == jpath
    assert list_categories(tmp_path) == [CAT]
    ds = RealIADDataset(tmp_path, CAT, split="test")
    assert [r.sample_id for r in ds.samples] == [f"{CAT}_0001_NG_BX", f"{CAT}_0001_OK", f"{CAT}_0002_NG_AK"]
    assert ds.view_names == ["C1", "C2", "C3", "C4", "C5"]
    # the resolution folder itself also works as root for the "beside" layout and with resolution=
    assert len(RealIADDataset(tmp_path, CAT, split="train", resolution=16)) == 2
    if layout == "beside":
        assert len(RealIADDataset(tmp_path / "realiad_16", CAT, split="train")) == 2


def test_variant_folders_are_kept_apart(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path, variant="realiad_jsons")
    sv = make_realiad(tmp_path, variant="realiad_jsons_sv", layout="nested", cameras=("C1",))
    ds = RealIADDataset(tmp_path, CAT, split="test", json_variant="realiad_jsons_sv")
    assert ds.json_path == str(sv) and ds.view_names == ["C1"]
    with pytest.raises(DataError, match="realiad_jsons_fuiad_0.1"):
        RealIADDataset(tmp_path, CAT, json_variant="realiad_jsons_fuiad_0.1")
    assert list_categories(tmp_path, json_variant="realiad_jsons_fuiad_0.1") == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_json_groups_views_by_key_and_orders_by_camera(tmp_path: Path, make_realiad, seed: int) -> None:
    make_realiad(tmp_path, shuffle_seed=seed)
    ds = RealIADDataset(tmp_path, CAT, split="test", load_masks=False)
    for i, rec in enumerate(ds.samples):
        s = ds[i]
        assert s.images.shape == (5, 3, 16, 16)
        assert red_of(s.images) == [1, 2, 3, 4, 5]
        # every view comes from the same physical sample (green = 10 * number + 5, blue = NG)
        number = int(rec.sample_id.split("_")[1])
        green = s.images[:, 1].mean(dim=(-2, -1)) * 255
        assert torch.allclose(green, torch.full((5,), 10.0 * number + 5), atol=3)
        blue = s.images[:, 2].mean(dim=(-2, -1)) * 255
        assert torch.allclose(blue, torch.full((5,), 128.0 if "_NG_" in rec.sample_id else 0.0), atol=3)
        assert [os.path.basename(p).split("_")[-2] for p in rec.image_paths] == ds.view_names


def test_reused_ids_across_ok_and_defect_folders_are_distinct_samples(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path)
    ds = RealIADDataset(tmp_path, CAT, split="test")
    defects = {r.sample_id: r.defect for r in ds.samples}
    assert defects == {f"{CAT}_0001_NG_BX": "BX", f"{CAT}_0001_OK": "OK", f"{CAT}_0002_NG_AK": "AK"}
    all_files = [p for r in ds.samples for p in r.files]
    assert len(set(all_files)) == 15


def test_official_label_rule(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path)
    ds = RealIADDataset(tmp_path, CAT, split="test")
    by_id = {r.sample_id: i for i, r in enumerate(ds.samples)}
    bx = ds[by_id[f"{CAT}_0001_NG_BX"]]
    # C2 has a non-empty mask; C3 has a mask path but an empty mask -> normal; others no mask
    assert bx.image_labels.tolist() == [0, 1, 0, 0, 0] and bx.label == 1 and bx.defect == "BX"
    assert bx.masks is not None and bx.masks.dtype == torch.bool and bx.masks.shape == (5, 16, 16)
    assert bx.masks[1].sum() == 9 and not bx.masks[[0, 2, 3, 4]].any()
    assert bx.mask_paths[0] is None and bx.mask_paths[2] is not None
    ak = ds[by_id[f"{CAT}_0002_NG_AK"]]  # defective class but only an empty mask: sample is normal
    assert ak.image_labels.tolist() == [0] * 5 and ak.label == 0 and ak.defect == "AK"
    ok = ds[by_id[f"{CAT}_0001_OK"]]
    assert ok.label == 0 and ok.defect == "OK"
    # labels without decoding images agree with __getitem__
    fresh = RealIADDataset(tmp_path, CAT, split="test")
    assert fresh.labels().tolist() == [1, 0, 0]
    assert fresh.image_labels(by_id[f"{CAT}_0001_NG_BX"]) == (0, 1, 0, 0, 0)


def test_mask_path_on_normal_class_does_not_make_it_anomalous(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path, samples=[(1, "OK", "test", {"C1": "defect"})])
    ds = RealIADDataset(tmp_path, CAT, split="test")
    assert ds[0].label == 0


def test_resize_and_collate(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path)
    ds = RealIADDataset(tmp_path, CAT, split="test", image_size=8)
    batch = collate_samples([ds[0], ds[1]])
    assert batch.images.shape == (2, 5, 3, 8, 8) and batch.masks.shape == (2, 5, 8, 8)
    assert batch.image_labels.shape == (2, 5) and batch.labels.tolist() == [1, 0]
    assert batch.masks[0, 1].any()  # nearest keeps the defect at 8x8
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_samples, num_workers=0)
    (only,) = list(loader)
    assert only.images.shape == (3, 5, 3, 8, 8)


def test_views_subset_in_given_order(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path)
    ds = RealIADDataset(tmp_path, CAT, split="test", views=["C3", "C1"], load_masks=False)
    assert ds.view_names == ["C3", "C1"]
    assert red_of(ds[0].images) == [3, 1]
    with pytest.raises(DataError, match="unknown view"):
        RealIADDataset(tmp_path, CAT, split="test", views=["C1", "C9"])
    with pytest.raises(ConfigError, match="more than once"):
        RealIADDataset(tmp_path, CAT, split="test", views=["C1", "C1"])
    with pytest.raises(ConfigError, match="list of camera names"):
        RealIADDataset(tmp_path, CAT, split="test", views="C1")


def test_flips_are_a_load_time_transform(tmp_path: Path, make_realiad) -> None:
    jpath = make_realiad(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*.jpg")}
    plain = RealIADDataset(tmp_path, CAT, split="test")
    flipped = RealIADDataset(tmp_path, CAT, split="test", flips={"C2": "lr", "C3": "ud"})
    per_class = RealIADDataset(tmp_path, CAT, split="test", flips={CAT: {"C2": "lr"}, "other": {"C1": "lr"}})
    a, b, c = plain[0], flipped[0], per_class[0]
    assert torch.equal(b.images[1], a.images[1].flip(-1)) and torch.equal(b.images[2], a.images[2].flip(-2))
    assert torch.equal(b.masks[1], a.masks[1].flip(-1)) and not torch.equal(b.masks[1], a.masks[1])
    assert torch.equal(b.images[0], a.images[0]) and torch.equal(c.images[0], a.images[0])
    assert torch.equal(c.images[1], b.images[1])
    # the left half is darker: after "lr" the dark half is on the right
    assert b.images[1, 0, :, :8].mean() > b.images[1, 0, :, 8:].mean()
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*.jpg")} == before
    assert json.loads(jpath.read_text())
    with pytest.raises(ConfigError, match="flip mode"):
        RealIADDataset(tmp_path, CAT, split="test", flips={"C2": "diagonal"})
    with pytest.raises(ConfigError, match="not among the loaded views"):
        RealIADDataset(tmp_path, CAT, split="test", views=["C1"], flips={"C2": "lr"})


def _drop_view(doc: dict) -> None:
    doc["test"] = [e for e in doc["test"] if "0002_NG_AK_C4" not in e["image_path"]]


def _dup_view(doc: dict) -> None:
    extra = next(e for e in doc["test"] if "0001_OK_C2" in e["image_path"])
    doc["test"].append(dict(extra))


@pytest.mark.parametrize(
    ("mutate", "sample", "problem"),
    [(_drop_view, f"{CAT}_0002_NG_AK", "missing view"), (_dup_view, f"{CAT}_0001_OK", "duplicated view")],
)
def test_incomplete_or_duplicated_samples(tmp_path: Path, make_realiad, mutate, sample: str, problem: str) -> None:
    make_realiad(tmp_path, mutate=mutate)
    with pytest.raises(DataError, match=f"{sample}.*{problem}") as err:
        RealIADDataset(tmp_path, CAT, split="test")
    assert err.value.path is not None and err.value.path.endswith(f"{CAT}.json")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = RealIADDataset(tmp_path, CAT, split="test", skip_incomplete=True)
    assert [s.sample_id for s in ds.skipped] == [sample] and problem in ds.skipped[0].reason
    assert len(ds) == 2 and sample not in [r.sample_id for r in ds.samples]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(RealIADDataset(tmp_path, CAT, split="train", skip_incomplete=True)) == 2


def test_train_split_and_fuiad_variant_with_anomalies(tmp_path: Path, make_realiad) -> None:
    make_realiad(
        tmp_path,
        variant="realiad_jsons_fuiad_0.1",
        samples=[(1, "OK", "train", {}), (3, "PS", "train", {"C1": "defect"}), (1, "OK", "test", {})],
    )
    ds = RealIADDataset(tmp_path, CAT, split="train", json_variant="realiad_jsons_fuiad_0.1")
    assert ds.labels().tolist() == [0, 1]


def _bad_doc(mutation: str):
    def mutate(doc: dict) -> None:
        e = doc["test"][0]
        if mutation == "extra_key":
            e["extra"] = 1
        elif mutation == "missing_key":
            del e["mask_path"]
        elif mutation == "bad_type":
            e["image_path"] = 7
        elif mutation == "no_meta":
            del doc["meta"]
        elif mutation == "bad_prefix":
            doc["meta"]["prefix"] = ""
        elif mutation == "no_key_in_name":
            e["image_path"] = "OK/S0001/picture.jpg"
        elif mutation == "wrong_category":
            e["category"] = "zipper"
        elif mutation == "escape":
            e["image_path"] = "../../" + e["image_path"]
        elif mutation == "missing_file":
            e["image_path"] = e["image_path"].replace(".jpg", "_gone.jpg")
        elif mutation == "class_mismatch":
            for x in doc["test"]:
                if "0001_OK_C3" in x["image_path"]:
                    x["anomaly_class"] = "BX"

    return mutate


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ("extra_key", "exactly the keys"),
        ("missing_key", "missing \\['mask_path'\\]"),
        ("bad_type", "image_path must be a non-empty string"),
        ("no_meta", "missing top-level key"),
        ("bad_prefix", "meta.prefix"),
        ("no_key_in_name", "no Real-IAD sample key"),
        ("wrong_category", "expected 'toyobj'"),
        ("escape", "outside the data root"),
        ("missing_file", "not found"),
        ("class_mismatch", "disagree on anomaly_class"),
    ],
)
def test_bad_json_content_is_a_data_error_naming_the_file(tmp_path: Path, make_realiad, mutation, message) -> None:
    jpath = make_realiad(tmp_path, mutate=_bad_doc(mutation), shuffle_seed=None)
    with pytest.raises(DataError, match=message) as err:
        RealIADDataset(tmp_path, CAT, split="test")
    assert str(jpath) in str(err.value)


def test_malformed_and_duplicate_key_json(tmp_path: Path, make_realiad) -> None:
    jpath = make_realiad(tmp_path)
    jpath.write_text('{"meta": {"prefix": "toyobj", "normal_class": "OK"}, "train": [], "train": [], "test": []}')
    with pytest.raises(DataError, match="duplicate key 'train'"):
        RealIADDataset(tmp_path, CAT)
    jpath.write_text('{"meta": ')
    with pytest.raises(DataError, match="malformed JSON") as err:
        RealIADDataset(tmp_path, CAT)
    assert err.value.path == str(jpath)
    jpath.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="malformed JSON"):
        RealIADDataset(tmp_path, CAT)


def test_symlink_escaping_the_root_is_rejected(tmp_path: Path, make_realiad) -> None:
    data = tmp_path / "data"
    make_realiad(data, samples=[(1, "OK", "test", {})])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victim = next((data / "realiad_16" / CAT / "OK" / "S0001").glob("*_C3_*.jpg"))
    (outside / victim.name).write_bytes(victim.read_bytes())
    victim.unlink()
    victim.symlink_to(outside / victim.name)
    with pytest.raises(DataError, match="outside the data root"):
        RealIADDataset(data, CAT, split="test")


def test_missing_json_and_bad_options(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path)
    with pytest.raises(DataError, match="no JSON for class 'zipper'"):
        RealIADDataset(tmp_path, "zipper")
    with pytest.raises(ConfigError):
        RealIADDataset(tmp_path, CAT, split="val")
    with pytest.raises(ConfigError):
        RealIADDataset(tmp_path, CAT, resolution="big")
    with pytest.raises(DataError, match="realiad_512"):
        RealIADDataset(tmp_path, CAT, resolution=512)


def test_mask_of_wrong_size_names_both_sizes(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path, samples=[(1, "BX", "test", {"C1": "defect"})])
    mask = next(tmp_path.rglob("*_mask.png"))
    Image.fromarray(np.full((12, 20), 255, dtype=np.uint8)).save(mask)
    ds = RealIADDataset(tmp_path, CAT, split="test")
    with pytest.raises(DataError, match="mask size 12x20 .* image size 16x16") as err:
        ds[0]
    assert err.value.path == str(mask)


def test_sample_key_regex_matches_official_names() -> None:
    m = SAMPLE_KEY_PATTERN.search("audiojack_0001_NG_BX_C2_20231023111538.jpg")
    assert m and m.group(1) == "audiojack_0001_NG_BX" and m.group(2) == "C2"
    m = SAMPLE_KEY_PATTERN.search("transistor1_0042_OK_C5_20231023111538.jpg")
    assert m and m.group(1) == "transistor1_0042_OK"
    m = SAMPLE_KEY_PATTERN.search("rolled_strip_base_0003_NG_HS_C1_2023.jpg")
    assert m and m.group(1) == "rolled_strip_base_0003_NG_HS"
    assert SAMPLE_KEY_PATTERN.search("audiojack_001_OK_C1_2023.jpg") is None


def test_grouping_is_independent_of_entry_order() -> None:
    entries = [
        RealIADEntry("x", "OK", f"OK/S{n:04d}/x_{n:04d}_OK_C{c}_1.jpg", None, 0) for n in (1, 2) for c in (3, 1, 2)
    ]
    g1, views, _ = group_realiad_entries(entries, normal_class="OK", path="x.json")
    g2, _, _ = group_realiad_entries(entries[::-1], normal_class="OK", path="x.json")
    assert views == ["C1", "C2", "C3"]
    assert [(k, {v: e.image_path for v, e in c.items()}) for k, _, c in g1] == [
        (k, {v: e.image_path for v, e in c.items()}) for k, _, c in g2
    ]
    assert all(c[v].image_path.split("_")[-2] == v for _, _, c in g1 for v in views)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
entry_like = st.fixed_dictionaries(
    {
        "category": st.sampled_from(["toyobj", "", 3]),
        "anomaly_class": st.sampled_from(["OK", "BX", None]),
        "image_path": st.sampled_from(
            ["OK/S0001/toyobj_0001_OK_C1_1.jpg", "NG/BX/S0001/toyobj_0001_NG_BX_C2_1.jpg", "x.jpg", "", 5]
        ),
        "mask_path": st.sampled_from([None, "m.png", "", 0]),
    },
    optional={"extra": json_values},
)
doc_like = (
    st.fixed_dictionaries(
        {
            "meta": st.fixed_dictionaries(
                {"prefix": st.sampled_from(["toyobj", "", None]), "normal_class": st.just("OK")}
            )
            | json_values,
            "train": st.lists(entry_like | json_values, max_size=6),
            "test": st.lists(entry_like, max_size=6),
        }
    )
    | json_values
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=doc_like)
def test_fuzz_json_structure_only_raises_data_error(doc) -> None:
    try:
        index = parse_realiad_json(json.dumps(doc), path="fuzz.json")
        for split in (index.train, index.test):
            group_realiad_entries(split, normal_class=index.normal_class, path="fuzz.json", category="toyobj")
    except DataError:
        pass


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_fuzz_json_bytes_only_raises_data_error(data: bytes) -> None:
    try:
        parse_realiad_json(data, path="fuzz.json")
    except DataError:
        pass


def test_deeply_nested_json_is_a_data_error() -> None:
    with pytest.raises(DataError):
        parse_realiad_json("[" * 100000 + "]" * 100000, path="deep.json")


def test_dataloader_workers_give_the_same_batches(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path)
    ds = RealIADDataset(tmp_path, CAT, split="test", image_size=8)
    one = list(DataLoader(ds, batch_size=2, collate_fn=collate_samples, num_workers=0))
    two = list(DataLoader(ds, batch_size=2, collate_fn=collate_samples, num_workers=2))
    assert [b.sample_ids for b in one] == [b.sample_ids for b in two]
    assert all(torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) for a, b in zip(one, two, strict=True))


def test_list_categories_over_layouts_and_variants(tmp_path: Path, make_realiad) -> None:
    one = [(1, "OK", "test", {})]
    make_realiad(tmp_path, category="alpha", layout="flat", samples=one)
    make_realiad(tmp_path, category="beta", layout="nested", samples=one)
    make_realiad(tmp_path, category="gamma", layout="beside", samples=one)
    make_realiad(tmp_path, category="delta", layout="flat", variant="realiad_jsons_sv", samples=one, cameras=("C1",))
    (tmp_path / "realiad_16" / "stray.json").write_text("{}")  # no class folder next to it: not a class
    assert list_categories(tmp_path) == ["alpha", "beta", "gamma"]
    assert list_categories(tmp_path, json_variant="realiad_jsons_sv") == ["delta"]
    for cat in ("alpha", "beta", "gamma"):
        assert len(RealIADDataset(tmp_path, cat, split="test")) == 1
    with pytest.raises(DataError, match="not a directory"):
        list_categories(tmp_path / "missing")
