"""Atomic writes: a failing writer leaves neither the target nor a temporary file behind, and an
existing target keeps its old content."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from multiflow._atomic import atomic_path, write_bytes


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path(tmp_path):
    out = tmp_path / "a" / "x.npz"
    with atomic_path(out) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == out.parent and tmp != out
        tmp.write_bytes(b"1")
    assert out.read_bytes() == b"1"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"2")
            raise RuntimeError("x")
    assert out.read_bytes() == b"1" and _names(out.parent) == ["x.npz"]


def test_concurrent_writers_get_distinct_temporary_names(tmp_path):
    with atomic_path(tmp_path / "m.onnx") as a, atomic_path(tmp_path / "m.onnx") as b:
        assert a != b
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert (tmp_path / "m.onnx").read_bytes() == b"a" and _names(tmp_path) == ["m.onnx"]


def test_write_bytes_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_bytes(tmp_path / "f.bin", b"x" * 100)
    assert _names(tmp_path) == []


def _flow():
    from multiflow.flow import MultiFlow
    from multiflow.flow.graph import build_view_graph

    return MultiFlow(4, build_view_graph("real_iad", ["C1", "C2", "C3"]), n_blocks=1, hidden=4, kernel_sizes=(3,),
                     seed=0)


def test_failing_flow_save_keeps_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    import safetensors.torch

    from multiflow.flow.io import load_flow, save_flow

    target = tmp_path / "model.safetensors"
    save_flow(_flow(), target)
    before = target.read_bytes()

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        save_flow(_flow(), target)
    assert _names(tmp_path) == ["model.safetensors"] and target.read_bytes() == before
    assert load_flow(target).graph.names == ("C1", "C2", "C3")
    with pytest.raises(RuntimeError):
        save_flow(_flow(), tmp_path / "new" / "m.safetensors")
    assert _names(tmp_path / "new") == []


def test_failing_streaming_state_save_leaves_nothing(tmp_path, monkeypatch):
    from multiflow.metrics import streaming

    ev = streaming.StreamingEvaluator()

    def half_written(f, **state):
        f.write(b"PK\x03\x04partial")
        raise MemoryError("out of memory")

    monkeypatch.setattr(streaming.np, "savez", half_written)
    with pytest.raises(MemoryError):
        ev.save(tmp_path / "state.npz")
    assert _names(tmp_path) == []


def test_failing_figure_leaves_nothing_and_closes_the_figure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from multiflow import report

    def half_written(self, fname, **kw):
        Path(fname).write_bytes(b"\x89PNG partial")
        raise ValueError("bad figure")

    monkeypatch.setattr(plt.Figure, "savefig", half_written)
    n_open = len(plt.get_fignums())
    with pytest.raises(ValueError, match="bad figure"):
        report.plot_histogram(np.array([0.1, 0.2]), np.array([0.9]), tmp_path / "hist.png", threshold=0.5)
    assert _names(tmp_path) == [] and len(plt.get_fignums()) == n_open


def test_adeval_pickle_and_config_writes_are_complete_files(tmp_path):
    from multiflow.config import RunConfig, dump_config, load_config
    from multiflow.metrics.adeval_io import read_adeval_pkl, write_adeval_pkl

    out = write_adeval_pkl(tmp_path / "p.pkl", ["a.png"], np.zeros((1, 2, 2), np.float32), [0.5], [None])
    assert set(read_adeval_pkl(out)) == {"a.png"}
    dump_config(RunConfig(), tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").model.graph == "real_iad"
    assert _names(tmp_path) == ["config.yaml", "p.pkl"]
