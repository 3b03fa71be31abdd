"""Manifest CSV: parsing, grouping by sample, labels, path safety, and fuzzing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multiflow.data.manifest import ManifestDataset, group_manifest_rows, parse_manifest
from multiflow.errors import DataError

VIEWS = ["top", "side"]


def write_manifest(
    root: Path, rows: list[list[str]], header=("split", "sample_id", "view", "image_path", "mask_path", "defect")
) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path = root / "manifest.csv"
    path.write_text(buf.getvalue())
    return path


@pytest.fixture
def line(tmp_path: Path, fakes) -> Path:
    for n, defect in ((1, "good"), (2, "good"), (3, "crack"), (4, "crack")):
        for k, view in enumerate(VIEWS, start=1):
            fakes.write_view_image(tmp_path / "img" / f"{n}_{view}.png", fakes.view_color(k, n, defect != "good"))
    fakes.write_mask(tmp_path / "masks" / "3_side.png", True)
    fakes.write_mask(tmp_path / "masks" / "3_top.png", False)
    rows = [
        ["train", "a1", "side", "img/1_side.png", "", ""],
        ["train", "a1", "top", "img/1_top.png", "", "good"],
        ["test", "b2", "top", "img/2_top.png", "", ""],
        ["test", "b2", "side", "img/2_side.png", "", ""],
        ["test", "c3", "side", "img/3_side.png", "masks/3_side.png", "crack"],
        ["test", "c3", "top", "img/3_top.png", "masks/3_top.png", "crack"],
        ["test", "d4", "top", "img/4_top.png", "", "crack"],
        ["test", "d4", "side", "img/4_side.png", "", "crack"],
    ]
    return write_manifest(tmp_path, rows)


def test_manifest_dataset(line: Path) -> None:
    ds = ManifestDataset(line, views=VIEWS, split="test")
    assert [r.sample_id for r in ds.samples] == ["b2", "c3", "d4"] and ds.view_names == VIEWS
    b2, c3, d4 = ds[0], ds[1], ds[2]
    assert c3.images.shape == (2, 3, 16, 16)
    assert [round(float(v.mean()) * 255 / 40) for v in c3.images[:, 0, :, 8:]] == [1, 2]  # top, side
    assert c3.image_labels.tolist() == [0, 1] and c3.label == 1 and c3.defect == "crack"
    assert d4.image_labels.tolist() == [1, 1] and b2.label == 0 and b2.defect == "good"
    assert c3.category == "manifest" and c3.image_paths[0] == str(line.parent / "img" / "3_top.png")
    train = ManifestDataset(line, views=VIEWS, split="train", image_size=8)
    assert len(train) == 1 and train[0].images.shape == (2, 3, 8, 8) and train.labels().tolist() == [0]
    with pytest.raises(DataError, match="several splits"):
        ManifestDataset(line, views=VIEWS)
    with pytest.raises(DataError, match=r"no rows of split 'tset'; splits present: \['test', 'train'\]"):
        ManifestDataset(line, views=VIEWS, split="tset")


def test_missing_duplicate_and_unknown_views(line: Path) -> None:
    text = line.read_text().splitlines()
    line.write_text("\n".join(t for t in text if "4_side" not in t) + "\n")
    with pytest.raises(DataError, match=r"sample 'd4' has missing view\(s\) \['side'\]") as err:
        ManifestDataset(line, views=VIEWS, split="test")
    assert err.value.path == str(line)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = ManifestDataset(line, views=VIEWS, split="test", skip_incomplete=True)
    assert [s.sample_id for s in ds.skipped] == ["d4"] and len(ds) == 2
    line.write_text("\n".join(text + ["test,b2,top,img/2_top.png,,"]) + "\n")
    with pytest.raises(DataError, match=r"duplicated view\(s\) top \(lines \[4, 10\]\)"):
        ManifestDataset(line, views=VIEWS, split="test")
    line.write_text("\n".join(text + ["test,b2,back,img/2_top.png,,"]) + "\n")
    with pytest.raises(DataError, match="line 10: sample 'b2' has unknown view 'back'"):
        ManifestDataset(line, views=VIEWS, split="test")
    assert len(ManifestDataset(line, views=VIEWS, split="test", ignore_unknown_views=True)) == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["test", "b9", "top", "../outside.png", "", ""], "outside the data root"),
        (["test", "b9", "top", "img/none.png", "", ""], "image file .* not found"),
        (["test", "c3", "top", "img/3_top.png", "", "dent"], "disagree on defect"),
        (["test", "b9", "top", "img/2_top.png", "masks/gone.png", "x"], "mask file .* not found"),
    ],
)
def test_bad_rows(line: Path, row: list[str], message: str) -> None:
    rows = list(csv.reader(io.StringIO(line.read_text())))[1:]
    rows = [r for r in rows if r[1] != "c3" or row[1] != "c3" or r[2] != "top"]
    extra = [[row[0], row[1], "side", "img/2_side.png", "", row[5]]] if row[1] == "b9" else []
    write_manifest(line.parent, rows + [row] + extra)
    with pytest.raises(DataError, match=message) as err:
        ManifestDataset(line, views=VIEWS, split="test")
    assert str(line) in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("sample_id,view\n1,top\n", "lacks required column"),
        ("sample_id,view,image_path,view\n", "more than once"),
        ("sample_id,view,image_path\n1,top\n", "line 2: 2 fields"),
        ("sample_id,view,image_path\n1,,a.png\n", "line 2: empty 'view'"),
        ('sample_id,view,image_path\n1,top,"a.png\n', "malformed CSV|fields"),
    ],
)
def test_parse_errors_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as err:
        parse_manifest(text, path="m.csv")
    assert err.value.path == "m.csv"


def test_parse_bom_blank_lines_and_extra_columns() -> None:
    data = "\ufeffSample_ID, view ,image_path,notes\n\n1,top,a.png,hello\n".encode()
    (row,) = parse_manifest(data, path="m.csv")
    assert (row.sample_id, row.view, row.image_path, row.defect, row.split, row.line) == (
        "1",
        "top",
        "a.png",
        "good",
        "",
        3,
    )
    with pytest.raises(DataError, match="not UTF-8"):
        parse_manifest(b"sample_id,view,image_path\n\xff\xfe,top,a.png\n", path="m.csv")


cells = st.sampled_from(["", "top", "side", "back", "1", "2", "img/a.png", "../x", "good", "crack", "test"]) | st.text(
    max_size=6
)


@settings(max_examples=80, deadline=None)
@given(
    header=st.lists(
        st.sampled_from(["split", "sample_id", "view", "image_path", "mask_path", "defect", "x"]), max_size=7
    ),
    rows=st.lists(st.lists(cells, max_size=7), max_size=6),
    raw=st.text(max_size=40),
    split=st.sampled_from([None, "test"]),
)
def test_fuzz_manifest_only_raises_data_error(header, rows, raw, split) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    for text in (buf.getvalue(), buf.getvalue() + raw, raw):
        try:
            parsed = parse_manifest(text, path="fuzz.csv")
            group_manifest_rows(parsed, views=VIEWS, path="fuzz.csv", split=split)
        except DataError:
            pass
