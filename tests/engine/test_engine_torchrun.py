"""``torchrun --nproc_per_node 2 -m multiflow fit --test`` = one process, through the real CLI.

A small synthetic class with the real Lite0 backbone and threshold masks: the two ranks share
feature and mask extraction, train with DDP (the flow and the cross-fit folds of its threshold),
score the held-out and test samples in shards, and rank 0 writes the run. The single-process run then trains on the cache the two ranks wrote (so
both see the same inputs) and must give the same model, threshold and metrics; the sharded cache
itself is compared with a single-process extraction (equal up to float16 rounding of features
computed with another thread count and batch size; masks exactly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from multiflow import api

CLASS = "plastic_plug"


def _overrides(data: Path, root: Path, tag: str) -> list[str]:
    return [
        f"data.root={data}", f"data.categories=[{CLASS}]", "data.resolution=96", "features.input_size=96",
        "features.batch_size=2", f"features.cache_dir={root / ('cache-' + tag)}", "model.hidden=8",
        "model.n_blocks=2", "model.kernel_sizes=[3,3]", "train.epochs=2", "train.batch_size=3",
        "train.lr=0.002", f"out={root / 'results'}", "eval.pictures=false",
        # the threshold cross-fitted: the ranks train every fold together and only rank 0 writes a fold
        "threshold.cross_fit=2",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from multiflow.synth import generate_dataset

    root = tmp_path_factory.mktemp("torchrun")
    data = root / "data"
    generate_dataset(data, classes=[CLASS], n_train=7, n_test_good=3, n_test_defect=3, size=96, seed=5,
                     progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "multiflow", "fit", "--quiet", "--test", "--name", "two"]
    for ov in _overrides(data, root, "two"):
        cmd += ["--set", ov]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = api.fit(overrides=_overrides(data, root, "two") + ["name=one"], progress=False)
    api.evaluate(one, progress=False)
    return root, one, root / "results" / "two", proc.stdout


def test_two_ranks_train_the_same_model(runs):
    _, one, two, _ = runs
    a = load_file(str(one / CLASS / "model.safetensors"))
    b = load_file(str(two / CLASS / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    from multiflow.engine.bundle import read_bundle

    m1, m2 = read_bundle(one / CLASS), read_bundle(two / CLASS)
    assert m2.training.best_epoch == m1.training.best_epoch
    assert m2.threshold.value == pytest.approx(m1.threshold.value, rel=1e-4)
    assert m1.training.cross_fit == m2.training.cross_fit == 2 and m2.training.calibration_samples == 7
    assert not (two / CLASS / "crossfit").exists()
    assert [h["train_loss"] for h in m2.training.history] == pytest.approx(
        [h["train_loss"] for h in m1.training.history], rel=1e-5)


def test_two_ranks_give_the_same_metrics_and_only_rank_0_writes(runs):
    _, one, two, stdout = runs
    s1 = json.loads((one / CLASS / "metrics.json").read_text())
    s2 = json.loads((two / CLASS / "metrics.json").read_text())
    for k in ("s_auroc", "i_auroc", "p_auroc", "aupro"):
        assert s2[k] == pytest.approx(s1[k], abs=1e-6), k
    assert stdout.count("| mean |") == 1  # the table printed once, by rank 0
    assert not list(two.rglob("*.tmp"))


def test_sharded_extraction_wrote_the_single_process_caches(runs):
    from multiflow.config import load_config
    from multiflow.engine.factories import build_extractor
    from multiflow.engine.preprocess import prepare_split

    root, _, two, _ = runs
    cfg = load_config(two / "config.yaml", [f"features.cache_dir={root / 'cache-one'}"])
    extractor = build_extractor(cfg.features)
    for split in ("train", "test"):
        prepare_split(cfg, CLASS, split, extractor, progress=False)
    entries = sorted((root / "cache-one").glob("*-*/manifest.json"))
    assert len(entries) == 4  # features and masks of both splits
    for manifest in entries:
        twin = root / "cache-two" / manifest.parent.name
        assert (twin / "manifest.json").is_file(), twin  # the same key: the same entry name
        assert np.load(twin / "done.npy").all()
        if manifest.parent.name.startswith("features"):
            a, b = np.load(manifest.parent / "features.npy"), np.load(twin / "features.npy")
            assert a.dtype == np.float16
            np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), rtol=2e-3, atol=1e-4)
        else:
            np.testing.assert_array_equal(np.load(twin / "grid.npy"), np.load(manifest.parent / "grid.npy"))
