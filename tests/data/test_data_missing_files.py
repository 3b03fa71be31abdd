"""``skip_incomplete`` also covers view files missing or unreadable on disk (all three readers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from multiflow.data.folder import FolderDataset
from multiflow.data.manifest import ManifestDataset
from multiflow.data.realiad import RealIADDataset
from multiflow.data.records import image_file_problem
from multiflow.errors import DataError

CAT = "toyobj"


def _realiad_file(root: Path, number: int, cls: str, cam: str) -> Path:
    hits = sorted((root / "realiad_16" / CAT).rglob(f"{CAT}_{number:04d}_{cls}_{cam}_*.jpg"))
    assert len(hits) == 1
    return hits[0]


def _views_not_shifted(ds) -> None:
    for r in ds.samples:
        for view, path in zip(r.view_names, r.image_paths):
            name = Path(path).name
            assert name.startswith(r.sample_id + "_") and f"_{view}_" in name, (r.sample_id, view, name)


def test_realiad_deleted_camera_file(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path)
    gone = _realiad_file(tmp_path, 2, "NG_AK", "C3")
    gone.unlink()
    with pytest.raises(DataError, match=re.escape(str(gone)) + ".*not found.*toyobj_0002_NG_AK.*'C3'"):
        RealIADDataset(tmp_path, CAT, split="test")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = RealIADDataset(tmp_path, CAT, split="test", skip_incomplete=True)
    assert [s.sample_id for s in ds.skipped] == [f"{CAT}_0002_NG_AK"]
    assert "view C3" in ds.skipped[0].reason and str(gone) in ds.skipped[0].reason
    assert "not found" in ds.skipped[0].reason
    assert [r.sample_id for r in ds.samples] == [f"{CAT}_0001_NG_BX", f"{CAT}_0001_OK"]
    _views_not_shifted(ds)
    assert ds[0].images.shape[0] == 5


def test_realiad_unreadable_camera_file(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path)
    bad = _realiad_file(tmp_path, 1, "OK", "C5")
    bad.write_bytes(b"not a jpeg at all")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = RealIADDataset(tmp_path, CAT, split="test", skip_incomplete=True)
    assert [s.sample_id for s in ds.skipped] == [f"{CAT}_0001_OK"]
    assert "view C5" in ds.skipped[0].reason and "unreadable" in ds.skipped[0].reason
    _views_not_shifted(ds)


def test_folder_unreadable_view_file(tmp_path: Path, make_folder) -> None:
    views = ["top", "left", "right"]
    make_folder(tmp_path, views, [("test", "good", "0001", 1, {}), ("test", "dent", "0002", 2, {})])
    (tmp_path / "test" / "dent" / "0002" / "left.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = FolderDataset(tmp_path, views=views, split="test", skip_incomplete=True)
    assert [s.sample_id for s in ds.skipped] == ["dent/0002"]
    assert "view left" in ds.skipped[0].reason and "unreadable" in ds.skipped[0].reason
    assert [r.sample_id for r in ds.samples] == ["good/0001"]


def test_manifest_deleted_and_unreadable_files(tmp_path: Path, fakes) -> None:
    rows = ["split,sample_id,view,image_path,mask_path,defect"]
    for n in (1, 2, 3):
        for k, view in enumerate(("top", "side"), start=1):
            fakes.write_view_image(tmp_path / "img" / f"{n}_{view}.png", fakes.view_color(k, n, False))
            rows.append(f"test,s{n},{view},img/{n}_{view}.png,,good")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    (tmp_path / "img" / "2_side.png").unlink()
    (tmp_path / "img" / "3_top.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"2_side.png not found \(sample 's2', view 'side'\)"):
        ManifestDataset(csv_path, views=["top", "side"], split="test")
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = ManifestDataset(csv_path, views=["top", "side"], split="test", skip_incomplete=True)
    reasons = {s.sample_id: s.reason for s in ds.skipped}
    assert set(reasons) == {"s2", "s3"}
    assert "view side" in reasons["s2"] and "not found" in reasons["s2"]
    assert "view top" in reasons["s3"] and "unreadable" in reasons["s3"]
    assert [r.sample_id for r in ds.samples] == ["s1"]


def test_image_file_problem(tmp_path: Path, fakes) -> None:
    good = tmp_path / "a.png"
    fakes.write_view_image(good, (10, 20, 30))
    assert image_file_problem(good) is None
    assert "not found" in image_file_problem(tmp_path / "nope.png")
    assert "not a regular file" in image_file_problem(tmp_path)
    (tmp_path / "b.png").write_bytes(b"garbage")
    assert "unreadable" in image_file_problem(tmp_path / "b.png")


# ``SkippedSample.usable``: the views of an incomplete sample that can still be read (what
# ``multiflow predict`` scores with a model trained for missing views), in view order


def test_realiad_skipped_sample_keeps_its_readable_views(tmp_path: Path, make_realiad) -> None:
    make_realiad(tmp_path)
    gone = _realiad_file(tmp_path, 2, "NG_AK", "C3")
    gone.unlink()
    bad = _realiad_file(tmp_path, 2, "NG_AK", "C5")
    bad.write_bytes(b"not a jpeg at all")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = RealIADDataset(tmp_path, CAT, split="test", skip_incomplete=True)
    (skipped,) = ds.skipped
    assert [v for v, _ in skipped.usable] == ["C1", "C2", "C4"]
    for view, path in skipped.usable:
        assert Path(path).resolve() == _realiad_file(tmp_path, 2, "NG_AK", view).resolve()
        assert image_file_problem(path) is None


def test_folder_skipped_samples_keep_their_readable_views(tmp_path: Path, make_folder) -> None:
    views = ["top", "left", "right"]
    make_folder(tmp_path, views, [("test", "good", "0001", 1, {}), ("test", "dent", "0002", 2, {}),
                                  ("test", "dent", "0003", 3, {})])
    (tmp_path / "test" / "dent" / "0002" / "left.png").unlink()
    (tmp_path / "test" / "dent" / "0003" / "right.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = FolderDataset(tmp_path, views=views, split="test", skip_incomplete=True)
    usable = {s.sample_id: s.usable for s in ds.skipped}
    assert [v for v, _ in usable["dent/0002"]] == ["top", "right"]
    assert [v for v, _ in usable["dent/0003"]] == ["top", "left"]
    assert all(Path(p).name == f"{v}.png" and Path(p).is_absolute() for v, p in usable["dent/0003"])


def test_folder_duplicated_view_leaves_nothing_usable(tmp_path: Path, make_folder) -> None:
    views = ["top", "left"]
    make_folder(tmp_path, views, [("test", "good", "0001", 1, {}), ("test", "good", "0002", 2, {})])
    sample = tmp_path / "test" / "good" / "0002"
    (sample / "left.jpg").write_bytes((sample / "left.png").read_bytes())
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = FolderDataset(tmp_path, views=views, split="test", skip_incomplete=True, extensions=(".png", ".jpg"))
    assert [(s.sample_id, s.usable) for s in ds.skipped] == [("good/0002", ())]


def test_manifest_skipped_samples_keep_their_readable_views(tmp_path: Path, fakes) -> None:
    rows = ["split,sample_id,view,image_path,mask_path,defect"]
    for n in (1, 2, 3):
        for k, view in enumerate(("top", "side", "back"), start=1):
            fakes.write_view_image(tmp_path / "img" / f"{n}_{view}.png", fakes.view_color(k, n, False))
            if (n, view) != (2, "back"):  # s2 has no row for its back camera
                rows.append(f"test,s{n},{view},img/{n}_{view}.png,,good")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    (tmp_path / "img" / "3_top.png").unlink()
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = ManifestDataset(csv_path, views=["top", "side", "back"], split="test", skip_incomplete=True)
    usable = {s.sample_id: s.usable for s in ds.skipped}
    assert usable["s2"] == (("top", str((tmp_path / "img" / "2_top.png").resolve())),
                            ("side", str((tmp_path / "img" / "2_side.png").resolve())))
    assert [v for v, _ in usable["s3"]] == ["side", "back"]
