"""Sample records, the label rule, flip tables and the shared dataset base class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from multiflow.data.records import (
    RecordDataset,
    SampleRecord,
    check_image_size,
    resolve_flips,
    user_known_labels,
)
from multiflow.errors import ConfigError, DataError


def test_resolve_flips_per_view_and_per_category() -> None:
    views = ["C1", "C2", "C3"]
    assert resolve_flips(None, category="a", view_names=views) == {}
    assert resolve_flips({"C2": "lr"}, category="a", view_names=views) == {"C2": "lr"}
    table = {"a": {"C3": "ud"}, "b": {"C1": "lrud"}}
    assert resolve_flips(table, category="a", view_names=views) == {"C3": "ud"}
    assert resolve_flips(table, category="zzz", view_names=views) == {}
    with pytest.raises(ConfigError, match="not a mix"):
        resolve_flips({"a": {"C3": "ud"}, "C2": "lr"}, category="a", view_names=views)
    with pytest.raises(ConfigError, match="unknown flip mode"):
        resolve_flips({"C2": "rot90"}, category="a", view_names=views)
    with pytest.raises(ConfigError, match="not among the loaded views"):
        resolve_flips({"C9": "lr"}, category="a", view_names=views)
    with pytest.raises(ConfigError):
        resolve_flips({"a": {"C1": 1}}, category="a", view_names=views)


def test_check_image_size() -> None:
    assert check_image_size(None) is None
    assert check_image_size(5) == (5, 5) and check_image_size((3, 4)) == (3, 4)
    for bad in (0, -2, (3,), (0, 4), "big", True):
        with pytest.raises(ConfigError):
            check_image_size(bad)


def test_user_label_rule() -> None:
    assert user_known_labels("good", "good", ["m", None]) == (0, 0)
    assert user_known_labels("crack", "good", [None, None]) == (1, 1)
    assert user_known_labels("crack", "good", ["m", None]) == (None, 0)


def test_record_dataset_indexing_and_labels(tmp_path: Path, fakes) -> None:
    paths = []
    for k in (1, 2):
        p = tmp_path / f"v{k}.png"
        fakes.write_view_image(p, fakes.view_color(k, 0, True))
        paths.append(str(p))
    mask = tmp_path / "m.png"
    fakes.write_mask(mask, True)
    rec = SampleRecord("s", "cat", "test", "crack", ("a", "b"), tuple(paths), (None, str(mask)), (0, None))
    assert rec.files == tuple(paths) and rec.num_views == 2 and any(k != 0 for k in rec.known_labels)
    ds = RecordDataset(samples=[rec], view_names=["a", "b"], load_masks=False)
    assert ds.image_labels(0) == (0, 1) and ds.labels().tolist() == [1]
    s = ds[-1]
    assert s.masks is None and s.image_labels.tolist() == [0, 1] and s.label == 1 and s.category == "cat"
    with pytest.raises(IndexError):
        ds[1]
    fakes.write_mask(mask, True, size=(4, 4))
    with pytest.raises(DataError, match="differs from its image size"):
        RecordDataset(samples=[rec], view_names=["a", "b"])[0]
    normal = SampleRecord("n", "cat", "test", "good", ("a",), (paths[0],), (None,), (0,))
    assert not any(k != 0 for k in normal.known_labels)
    assert torch.equal(
        RecordDataset(samples=[normal], view_names=["a"])[0].masks, torch.zeros(1, 16, 16, dtype=torch.bool)
    )
