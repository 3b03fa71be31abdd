"""Feature cache: correct values, reuse, keys that change, resume after a kill, corruption."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from multiflow.errors import CheckpointError
from multiflow.features.cache import build_entry, ArraySpec, extract_features

from features_fakes import FakeDataset, FakeExtractor


def _images(n=5, v=3, size=16, seed=0):
    return np.random.default_rng(seed).random((n, v, size, size, 3), dtype=np.float32)


def test_extract_values_order_and_reuse(tmp_path):
    imgs = _images()
    ds = FakeDataset(tmp_path / "data", imgs)
    ext = FakeExtractor()
    cached = extract_features(ds, ext, tmp_path / "cache", batch_size=2, dtype="float32", progress=False)
    assert cached.features.shape == (5, 3, 6, 4, 4)
    assert cached.sample_ids == [r.sample_id for r in ds.samples]
    np.testing.assert_allclose(cached.features, FakeExtractor.reference(imgs), rtol=1e-6)
    assert ext.images_seen == 15
    assert isinstance(cached.features, np.memmap) and not cached.features.flags.writeable
    again = extract_features(ds, ext, tmp_path / "cache", batch_size=2, dtype="float32", progress=False)
    assert again.path == cached.path and ext.images_seen == 15  # nothing recomputed
    assert cached.tensor([0, 2]).shape == (2, 3, 6, 4, 4)


def test_float16_storage(tmp_path):
    imgs = _images()
    ds = FakeDataset(tmp_path / "data", imgs)
    c16 = extract_features(ds, FakeExtractor(), tmp_path / "cache", dtype="float16", progress=False)
    assert c16.features.dtype == np.float16
    np.testing.assert_allclose(c16.features.astype(np.float32), FakeExtractor.reference(imgs), rtol=2e-3, atol=1e-3)
    c32 = extract_features(ds, FakeExtractor(), tmp_path / "cache", dtype="float32", progress=False)
    assert c32.path != c16.path


def test_key_changes_give_new_entries(tmp_path):
    imgs = _images()
    ds = FakeDataset(tmp_path / "data", imgs)
    base = extract_features(ds, FakeExtractor(), tmp_path / "cache", progress=False).path
    assert extract_features(ds, FakeExtractor(digest="other"), tmp_path / "cache", progress=False).path != base
    assert extract_features(ds, FakeExtractor(input_size=32), tmp_path / "cache", progress=False).path != base
    ds.flips = {"C2": "lr"}
    assert extract_features(ds, FakeExtractor(), tmp_path / "cache", progress=False).path != base
    ds.flips = {}
    # rewrite one image with the same size: the modification time alone must change the key
    p = ds.samples[1].image_paths[0]
    np.save(p, np.zeros((16, 16, 3), np.float32))
    os.utime(p, ns=(1, 1))
    ext = FakeExtractor()
    fresh = extract_features(ds, ext, tmp_path / "cache", progress=False)
    assert fresh.path != base
    assert np.all(fresh.features[1, 0] == 0)


def test_resume_after_interruption_redoes_nothing(tmp_path):
    n = 7
    seen: list[int] = []

    def make_compute(fail_after):
        def compute(idx):
            if fail_after is not None and len(seen) >= fail_after:
                raise KeyboardInterrupt  # the process is "killed" before this batch is written
            seen.extend(idx)
            return {"x": np.asarray(idx, np.float32)[:, None] * np.ones((1, 3), np.float32)}
        return compute

    kwargs = dict(cache_root=tmp_path, kind="t", key={"a": 1}, sample_ids=[str(i) for i in range(n)],
                  view_names=[], arrays={"x": ArraySpec((3,), "float32")}, batch_size=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build_entry(compute=make_compute(4), **kwargs)
    entry_dirs = list(tmp_path.iterdir())
    assert len(entry_dirs) == 1 and not (entry_dirs[0] / "manifest.json").exists()
    assert np.load(entry_dirs[0] / "done.npy").tolist() == [True] * 4 + [False] * 3
    assert seen == [0, 1, 2, 3]
    entry = build_entry(compute=make_compute(None), **kwargs)
    assert seen == [0, 1, 2, 3, 4, 5, 6]  # only the unfinished samples were computed
    np.testing.assert_array_equal(entry.arrays["x"][:, 0], np.arange(n))
    manifest = json.loads((entry.path / "manifest.json").read_text())
    assert manifest["sample_ids"] == [str(i) for i in range(n)]


def test_corrupted_entry_is_never_used_silently(tmp_path):
    imgs = _images()
    ds = FakeDataset(tmp_path / "data", imgs)
    cached = extract_features(ds, FakeExtractor(), tmp_path / "cache", dtype="float32", progress=False)
    fpath = cached.path / "features.npy"
    del cached
    raw = bytearray(fpath.read_bytes())
    raw[-5] ^= 0xFF
    fpath.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="features.npy"):
        extract_features(ds, FakeExtractor(), tmp_path / "cache", dtype="float32", progress=False)
    rebuilt = extract_features(ds, FakeExtractor(), tmp_path / "cache", dtype="float32", progress=False,
                               on_corrupt="rebuild")
    np.testing.assert_allclose(rebuilt.features, FakeExtractor.reference(imgs), rtol=1e-6)
    # a truncated file is caught even without hashing
    with open(fpath, "r+b") as fh:
        fh.truncate(fpath.stat().st_size - 16)
    with pytest.raises(CheckpointError, match="features.npy"):
        extract_features(ds, FakeExtractor(), tmp_path / "cache", dtype="float32", progress=False, verify=False)


def test_missing_image_file_is_named(tmp_path):
    ds = FakeDataset(tmp_path / "data", _images(n=2))
    gone = ds.samples[1].image_paths[2]
    os.unlink(gone)
    with pytest.raises(Exception, match=os.path.basename(gone)):
        extract_features(ds, FakeExtractor(), tmp_path / "cache", progress=False)


_KILL_SCRIPT = r"""
import sys, time
import numpy as np
from multiflow.features.cache import ArraySpec, build_entry

def compute(idx):
    rows = np.asarray(idx, np.float32)[:, None] * np.ones((1, 1000), np.float32)
    time.sleep(0.05)
    print("batch", idx[0], flush=True)
    return {"x": rows}

build_entry(cache_root=sys.argv[1], kind="k", key={"a": 1}, sample_ids=[str(i) for i in range(40)],
            view_names=[], arrays={"x": ArraySpec((1000,), "float32")}, compute=compute, batch_size=1,
            progress=False)
"""


def test_resume_after_sigkill(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "job.py"
    script.write_text(_KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "c")], stdout=subprocess.PIPE, text=True)
    for _ in range(8):  # let it finish a few batches, then kill it without warning
        assert proc.stdout.readline().startswith("batch")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (entry,) = (tmp_path / "c").iterdir()
    assert not (entry / "manifest.json").exists()
    done = np.load(entry / "done.npy")
    assert 7 <= done.sum() < 40  # the 8th batch may still have been in flight
    computed: list[int] = []

    def compute(idx):
        computed.extend(idx)
        return {"x": np.asarray(idx, np.float32)[:, None] * np.ones((1, 1000), np.float32)}

    result = build_entry(cache_root=tmp_path / "c", kind="k", key={"a": 1}, sample_ids=[str(i) for i in range(40)],
                         view_names=[], arrays={"x": ArraySpec((1000,), "float32")}, compute=compute,
                         batch_size=5, progress=False)
    assert sorted(computed) == sorted(np.flatnonzero(~done).tolist())
    np.testing.assert_array_equal(result.arrays["x"], np.arange(40, dtype=np.float32)[:, None] * np.ones((1, 1000)))


def test_worker_processes_give_the_same_features(tmp_path):
    imgs = _images(n=5)
    ds = FakeDataset(tmp_path / "data", imgs)
    cached = extract_features(ds, FakeExtractor(), tmp_path / "cache", batch_size=2, dtype="float32",
                              num_workers=2, progress=False)
    np.testing.assert_allclose(cached.features, FakeExtractor.reference(imgs), rtol=1e-6)
    assert cached.sample_ids == [r.sample_id for r in ds.samples]


def test_malformed_manifest_is_an_error(tmp_path):
    kwargs = dict(cache_root=tmp_path, kind="t", key={"shape": (2, 3)}, sample_ids=["a", "b"], view_names=[],
                  arrays={"x": ArraySpec((2,), "float32")}, compute=lambda i: {"x": np.ones((len(i), 2))},
                  batch_size=2, progress=False)
    entry = build_entry(**kwargs)
    assert build_entry(**kwargs).path == entry.path  # a key with tuples still matches its manifest
    manifest = json.loads((entry.path / "manifest.json").read_text())
    del manifest["arrays"]
    (entry.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="manifest"):
        build_entry(**kwargs)
