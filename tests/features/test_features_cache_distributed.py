"""Cache entries built by 2 gloo processes: the same bytes as one process, shared work, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from multiflow.errors import CheckpointError, DataError
from multiflow.features.cache import ArraySpec, build_entry, extract_features
from support.ddp import spawn_local

from features_fakes import FakeDataset, FakeExtractor

N = 11  # global batches of 2 x 2 samples: [0-3], [4-7], [8-10]; the last one splits 2 + 1
IDS = [f"s{i:02d}" for i in range(N)]
ARRAYS = {"a": ArraySpec((3, 2), "float32"), "b": ArraySpec((2,), "bool")}
KEY = {"what": "test", "n": N}


def _rows(indices):
    idx = np.asarray(indices, dtype=np.float32)
    a = idx[:, None, None] * 10 + np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    b = np.stack([idx % 2 == 0, idx % 3 == 0], axis=1)
    return {"a": a, "b": b}


def _build(root, log=None, fail_at=None, ctx=None):
    rank = 0 if ctx is None else ctx.rank

    def compute(indices):
        if fail_at is not None and fail_at[0] == rank and fail_at[1] in indices:
            raise DataError("cannot decode image", f"/data/{IDS[fail_at[1]]}.png")
        if log is not None:
            with open(log, "a") as f:
                f.write(" ".join(map(str, indices)) + "\n")
        return _rows(indices)

    return build_entry(cache_root=root, kind="t", key=KEY, sample_ids=IDS, view_names=["C1"], arrays=ARRAYS,
                       compute=compute, batch_size=2, progress=False, ctx=ctx)


def _job(ctx, root: str, logdir: str, fail_at) -> None:
    entry = _build(root, f"{logdir}/rank{ctx.rank}.log", fail_at, ctx)
    # every rank gets the whole, complete entry
    np.save(f"{logdir}/a{ctx.rank}.npy", np.array(entry.arrays["a"]))


def _logged(path: Path) -> list[list[int]]:
    if not path.exists():
        return []
    return [[int(t) for t in line.split()] for line in path.read_text().splitlines()]


def test_two_ranks_write_the_same_entry_as_one_process(tmp_path):
    single = _build(tmp_path / "one")
    spawn_local(_job, 2, str(tmp_path / "two"), str(tmp_path), None)
    two = Path(single.path.parent.parent / "two" / single.path.name)
    m1 = json.loads((single.path / "manifest.json").read_text())
    m2 = json.loads((two / "manifest.json").read_text())
    assert m2 == m1  # same key, ids and SHA-256 of every array file: byte-identical arrays
    for r in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"a{r}.npy"), single.arrays["a"])
    # the work was shared: contiguous shares of each global batch, disjoint, covering all samples
    r0, r1 = _logged(tmp_path / "rank0.log"), _logged(tmp_path / "rank1.log")
    assert r0 == [[0, 1], [4, 5], [8, 9]] and r1 == [[2, 3], [6, 7], [10]]


def test_an_error_on_one_rank_stops_both_and_a_rerun_resumes(tmp_path):
    root = tmp_path / "cache"
    with pytest.raises(mp.ProcessRaisedException, match=r"s06\.png: cannot decode image"):
        spawn_local(_job, 2, str(root), str(tmp_path), (1, 6))  # rank 1 fails in the 2nd global batch
    entry_dir = next(root.iterdir())
    assert not (entry_dir / "manifest.json").exists()  # never marked complete
    done = np.load(entry_dir / "done.npy")
    np.testing.assert_array_equal(np.flatnonzero(done), [0, 1, 2, 3])  # only the finished global batch
    # a single process resumes it (any number of ranks may): only the pending samples are computed
    log = tmp_path / "resume.log"
    resumed = _build(root, log)
    assert sorted(i for b in _logged(log) for i in b) == list(range(4, N))
    reference = _build(tmp_path / "ref")
    np.testing.assert_array_equal(resumed.arrays["a"], reference.arrays["a"])
    np.testing.assert_array_equal(resumed.arrays["b"], reference.arrays["b"])


def _extract_job(ctx, data: str, cache: str, out: str) -> None:
    ds = FakeDataset.reopen(Path(data))
    feats = extract_features(ds, FakeExtractor(), cache, batch_size=1, dtype="float32", progress=False, ctx=ctx)
    np.save(f"{out}.{ctx.rank}.npy", np.array(feats.features))


def test_sharded_feature_extraction_gives_every_rank_the_single_process_features(tmp_path):
    imgs = np.random.default_rng(4).random((5, 3, 16, 16, 3), dtype=np.float32)
    ds = FakeDataset(tmp_path / "data", imgs)
    one = extract_features(ds, FakeExtractor(), tmp_path / "c1", batch_size=1, dtype="float32", progress=False)
    spawn_local(_extract_job, 2, str(tmp_path / "data"), str(tmp_path / "c2"), str(tmp_path / "f"))
    for r in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"f.{r}.npy"), one.features)
    np.testing.assert_allclose(one.features, FakeExtractor.reference(imgs), rtol=1e-6)


def test_a_stale_entry_refused_by_rank_0_is_an_error_on_every_rank(tmp_path):
    root = tmp_path / "cache"
    entry = _build(root)
    manifest = entry.path / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format": 1', '"format": 99'))
    with pytest.raises(mp.ProcessRaisedException, match="does not match the requested key"):
        spawn_local(_job, 2, str(root), str(tmp_path), None)
    with pytest.raises(CheckpointError, match="does not match"):
        _build(root)
