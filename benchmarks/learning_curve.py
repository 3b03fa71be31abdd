"""Learning curve of the cross-view benefit: from how many normal training objects per class does
Multi-Flow beat the single-view flow, and by how much?

One synthetic data set per class with realistic variation (``multiflow.synth``, ``variation=
"realistic"``: production lots, pose jitter) and the cross-view defect ``FM`` next to the nine
standard codes is generated ONCE with the largest training size; every training size ``N`` uses the
first ``N`` training objects (nested subsets) and every ``N`` is tested on the SAME held-out test set.
Features (Lite0 at 384 px: 192 x 12 x 12) and foreground masks (ground-truth silhouettes) are
extracted once per image set and shared by every method and seed; only the models are retrained.

Methods (``--methods``):

* ``multiflow``: Multi-Flow, paper graph ``real_iad`` (top + ring);
* ``graph-none``: the same flow without cross-view links (``model.graph=none``);
* ``single-view``: the single-view flow (``model.single_view=true``: every image its own sample), same
  batch size and epochs, hence ``V`` times the optimiser steps of Multi-Flow (*equal epochs*);
* ``single-view-eqsteps``: the single-view flow with ``V`` times the batch size (batch of images =
  the images of Multi-Flow's batch): the same epochs, pixels per step AND optimiser steps as
  Multi-Flow (*equal steps*);
* ``multiflow-eqsteps`` (opt-in, ~5x the cost of ``multiflow``): Multi-Flow trained ``V`` times as many
  epochs, i.e. the single-view flow's step count;
* ``patchcore``: PatchCore (:mod:`multiflow.baselines`) on the same features and masks.

Each (class, N, method, seed) cell is stored as ``<out>/cells/<class>/n<N>/<method>/seed<k>.json``
(atomically) as soon as it finishes; a rerun skips finished cells, so killing the run loses at most
the cell in progress. Every flow cell records the learned per-view ``gamma`` of its st-networks
(:func:`multiflow.flow.subnet.view_gammas`); Multi-Flow cells are also scored with the cross-view
messages switched off at test time (:func:`multiflow.flow.subnet.cross_view_scaled`), and every cell
keeps its per-defect-type results: the diagnosis when Multi-Flow does not win.

    python benchmarks/learning_curve.py                     # default grid (~2.5 h on 2 quiet cores)
    python benchmarks/learning_curve.py --max-minutes 60    # stop cleanly after ~1 h; rerun continues
    python benchmarks/learning_curve.py --sizes 25 50 100 200 400 --seeds 0 1 2 3 4
    python benchmarks/learning_curve.py --quick             # tiny grid, a few minutes (smoke test)

Output: BENCHMARKS.md section ``learning_curve`` (table mean ± std over seeds + the diagnosis) and
the plot ``docs/learning_curve.png`` (S-AUROC and I-AUROC vs N, one line per method);
``--quick`` writes both under ``--out`` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import paper_experiments as pe  # noqa: E402
from benchmarks._report import CpuShare, machine_line, peak_rss_mb, update_section  # noqa: E402
from multiflow._atomic import write_bytes, write_json  # noqa: E402

SECTION = "learning_curve"
PLOT = ROOT / "docs" / "learning_curve.png"
METRICS = (("s_auroc", "S-AUROC"), ("i_auroc", "I-AUROC"))
STANDARD_DEFECTS = ("AK", "BX", "CH", "HS", "PS", "QS", "YW", "ZW", "CI")

#: The default grid. Sized for ~2.5 h on 2 quiet cores (see :func:`estimate_seconds`):
#: 2 classes x 4 sizes x 3 seeds x 5 methods = 120 cells.
FULL: dict[str, Any] = {
    "classes": ["toy_brick", "terminal_block"], "sizes": [25, 50, 100, 200], "seeds": [0, 1, 2],
    "n_test_good": 30, "n_test_defect": 40, "defects": [*STANDARD_DEFECTS, "FM"], "size": 384,
    "input_size": 384, "epochs": 8, "patience": 0, "batch": 4, "lr": 1e-3, "variation": "realistic",
    "methods": ["multiflow", "graph-none", "single-view", "single-view-eqsteps", "patchcore"],
    "model": [],  # the paper's flow: 6 blocks, hidden 64 (multiflow defaults)
}
QUICK: dict[str, Any] = {
    "classes": ["toy_brick"], "sizes": [4, 8], "seeds": [0], "n_test_good": 3, "n_test_defect": 4,
    "defects": ["HS", "QS", "CI", "FM"], "size": 96, "input_size": 96, "epochs": 1, "patience": 0, "batch": 4,
    "lr": 1e-3,
    "variation": "realistic",
    "methods": ["multiflow", "graph-none", "single-view", "single-view-eqsteps", "patchcore"],
    # a small flow: at 3x3 feature maps the paper's 40 M-parameter flow costs seconds per step in weights alone
    "model": ["model.n_blocks=2", "model.hidden=8", "model.kernel_sizes=[3,3]"],
}
DATA_SEED = 0

# Measured costs on this machine type (BENCHMARKS.md, sections latency / paper-main / synth):
TRAIN_SAMPLES_PER_S_384 = 4.35  # Multi-Flow (real_iad), lite0 384 px, 5-view samples per second, one AdamW step
SCORE_S_PER_SAMPLE_384 = 0.11  # flow forward of one 5-view sample (eval)
FEATURES_S_PER_SAMPLE_384 = 0.30  # lite0 backbone + silhouette masks, one 5-view sample
SYNTH_S_PER_SAMPLE_384 = 1.1  # rendering + encoding one 5-view sample at 384 px: CPU seconds (measured: 4.5 images per CPU-s)


@dataclass(frozen=True)
class Method:
    """One curve: a flow configuration (relative to Multi-Flow) or the PatchCore baseline.

    ``batch_views``: multiply the batch size by the number of views (single-view flow at equal
    steps); ``epoch_views``: multiply the epochs by the number of views (Multi-Flow at the
    single-view flow's steps); ``cost``: training time relative to ``multiflow`` at equal epochs.
    """

    name: str
    label: str
    kind: str = "flow"  # "flow" | "patchcore"
    graph: str = "real_iad"
    single_view: bool = False
    batch_views: bool = False
    epoch_views: bool = False
    cost: float = 1.0


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("multiflow", "Multi-Flow (real_iad)"),
    Method("graph-none", "no links (graph none)", graph="none", cost=0.3),
    Method("single-view", "single-view flow (equal epochs)", single_view=True, cost=0.45),
    Method("single-view-eqsteps", "single-view flow (equal steps)", single_view=True, batch_views=True, cost=0.4),
    Method("multiflow-eqsteps", "Multi-Flow (single-view's steps)", epoch_views=True, cost=5.0),
    Method("patchcore", "PatchCore", kind="patchcore", cost=0.0),
)}


# ------------------------------------------------------------------------------------ planning
def state_root(out: Path) -> Path:
    """Where a cell's training state goes while it trains (deleted after the cell): tmpfs when the
    machine has one, since train_flow writes the resume state (~0.5 GB for the paper's flow) at its end
    and the best weights (~0.16 GB) whenever the held-out loss improves, and a cell never resumes from
    them (the cell is the unit of resumption; no interval checkpoints: ``train.checkpoint_minutes=0``)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return out / "tmp"
    import shutil

    for stale in shm.glob("multiflow-learning-curve-*"):  # left behind by a killed run: free the memory
        try:
            os.kill(int(stale.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, PermissionError):
            pass
    return shm / f"multiflow-learning-curve-{os.getpid()}"


def cell_path(out: Path, cls: str, n: int, method: str, seed: int) -> Path:
    return out / "cells" / cls / f"n{n}" / method / f"seed{seed}.json"


def estimate_seconds(grid: dict[str, Any], n: int, method: str, n_views: int = 5) -> float:
    """Estimated wall seconds of one cell on 2 quiet cores (the paper's flow; scaled by (input / 384)^2)."""
    px = (grid["input_size"] / 384.0) ** 2
    n_test = grid["n_test_good"] + grid["n_test_defect"]
    m = METHODS[method]
    if m.kind == "patchcore":
        patches = n * n_views * 144 * px  # greedy coreset: 10 % of the patches, each a pass over all of them
        return 2.0 + 0.1 * patches**2 * 2 * 128 / 2e10 + n_test * 0.05
    epochs = grid["epochs"] * (n_views if m.epoch_views else 1)
    train = n * epochs / TRAIN_SAMPLES_PER_S_384 * m.cost * px
    score = n_test * SCORE_S_PER_SAMPLE_384 * px * (2 if m.graph != "none" and not m.single_view else 1)
    return 6.0 + train + score  # + building the flow and writing its final training state


def estimate_prep_seconds(grid: dict[str, Any]) -> float:
    """Data generation (2 worker processes) + feature extraction of every class's images."""
    px = (grid["size"] / 384.0) ** 2
    per_class = max(grid["sizes"]) + grid["n_test_good"] + grid["n_test_defect"]
    synth = SYNTH_S_PER_SAMPLE_384 * px / 2
    feats = FEATURES_S_PER_SAMPLE_384 * (grid["input_size"] / 384.0) ** 2
    return per_class * len(grid["classes"]) * (synth + feats)


def plan(grid: dict[str, Any]) -> list[tuple[str, int, str, int]]:
    """Every (class, N, method, seed) cell, smallest N first (the curve fills in from the left)."""
    return [(c, n, m, s) for n in sorted(grid["sizes"]) for c in grid["classes"] for s in grid["seeds"]
            for m in grid["methods"]]


# ------------------------------------------------------------------------------------ data
@dataclass
class ClassData:
    """One class's cached features and masks: train ``(N_max, V, C, h, w)``, test ``(T, V, C, h, w)``."""

    train_features: np.ndarray
    train_masks: np.ndarray | None
    test_features: np.ndarray
    test_masks: np.ndarray | None
    labels: np.ndarray  # (T, V) image labels
    defects: list[str]
    sample_ids: list[str]
    view_names: list[str]
    channels: int


def make_config(grid: dict[str, Any], out: Path):
    from multiflow.config import load_config

    data = out / "data"
    silhouettes = data / f"silhouettes_{grid['size']}"
    return load_config(None, [
        f"data.root={data}", f"data.resolution='{grid['size']}'",
        "data.categories=[" + ",".join(grid["classes"]) + "]",
        "features.backbone=lite0", f"features.input_size={grid['input_size']}", f"features.cache_dir={out / 'cache'}",
        "masks.provider=file", f"masks.mask_root={silhouettes}",
        f"train.epochs={grid['epochs']}", f"train.batch_size={grid['batch']}", f"train.lr={grid['lr']}",
        f"train.checkpoint_every={grid['epochs']}", "train.checkpoint_minutes=0",
        f"train.early_stopping_patience={grid.get('patience', 0)}",
        "eval.pictures=false", "eval.pixel_metrics=false",
        *grid.get("model", []),
    ])


#: Grid keys that select cells; every other key changes what a cell computes.
SELECTING = ("classes", "sizes", "seeds", "methods")


def check_settings(out: Path, grid: dict[str, Any]) -> None:
    """Finished cells are reused by path, so a results folder holds one set of training and data
    settings: the first run writes them to ``<out>/settings.json``; a later run with other settings
    (epochs, patience, lr, image size, ...) is an error instead of a silent mix."""
    from multiflow.errors import ConfigError

    path = out / "settings.json"
    mine = {k: v for k, v in grid.items() if k not in SELECTING}
    if not path.is_file():
        write_json(path, mine)
        return
    try:
        theirs = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable settings of earlier cells ({exc})") from exc
    theirs.setdefault("patience", 0)  # folders from before the setting existed
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        raise ConfigError(f"{path}: the finished cells here were computed with other settings ("
                          + ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} now" for k in diff)
                          + "); use another --out")


def prepare(grid: dict[str, Any], out: Path, cfg, *, progress: bool, workers: int) -> dict[str, ClassData]:
    """Generate the data set (resumable) and extract/cache features and masks of every class."""
    from multiflow.engine.factories import build_extractor, run_device
    from multiflow.synth import generate_dataset

    generate_dataset(out / "data", classes=grid["classes"], n_train=max(grid["sizes"]),
                     n_test_good=grid["n_test_good"], n_test_defect=grid["n_test_defect"], size=grid["size"],
                     seed=DATA_SEED, workers=workers, defects=grid["defects"], variation=grid["variation"],
                     progress=progress)
    extractor = build_extractor(cfg.features)
    device, _ = run_device(cfg.train)
    return {cls: load_class_data(cfg, cls, extractor, progress=progress, device=device) for cls in grid["classes"]}


def load_class_data(cfg, cls: str, extractor, *, progress: bool, device=None) -> ClassData:
    """One class's train and test features and masks (cached by ``prepare_split``), test labels,
    defect types and sample ids: what every benchmark that trains flows on cached features needs."""
    from multiflow.engine.preprocess import prepare_split

    tr = prepare_split(cfg, cls, "train", extractor, progress=progress, device=device)
    te = prepare_split(cfg, cls, "test", extractor, progress=progress, device=device)
    ds = te.dataset
    return ClassData(
        train_features=np.asarray(tr.features), train_masks=None if tr.masks is None else np.asarray(tr.masks),
        test_features=np.asarray(te.features), test_masks=None if te.masks is None else np.asarray(te.masks),
        labels=np.array([ds.image_labels(i) for i in range(len(ds))]), defects=[r.defect for r in ds.samples],
        sample_ids=list(te.sample_ids), view_names=list(tr.view_names), channels=extractor.channels,
    )


# ------------------------------------------------------------------------------------ one cell
def _evaluate(maps: np.ndarray, d: ClassData) -> dict[str, Any]:
    from multiflow.scoring import image_scores_from_maps
    from multiflow.metrics import evaluate_exact

    r = evaluate_exact(maps, None, labels=d.labels, image_scores=image_scores_from_maps(maps).numpy(),
                       sample_ids=d.sample_ids,
                       defects=d.defects, how="max").as_dict()
    return {"metrics": {k: r.get(k) for k, _ in METRICS},
            "per_defect": {k: {"s_auroc": v.get("s_auroc"), "i_auroc": v.get("i_auroc"),
                               "num_samples": v.get("num_samples")} for k, v in (r.get("per_defect") or {}).items()}}


def _score_variants(maps: np.ndarray, val_maps, val_masks, d: ClassData, grid: dict[str, Any]) -> dict[str, Any]:
    """Issue 12's post-hoc scoring switches on this cell's maps: every image score x per-view
    calibration (fitted on the cell's held-out normal objects; flows trained on whole objects only)."""
    from benchmarks.scoring_ablation import score_combos

    return score_combos(maps, d.test_masks, val_maps, val_masks, labels=d.labels, defects=d.defects,
                        sample_ids=d.sample_ids, image_size=grid["input_size"])


def _save_maps(path: Path | None, maps: np.ndarray, val_maps) -> None:
    """The cell's test (and held-out normal) anomaly maps, float32, for later rescoring (``--rescore``)."""
    if path is None:
        return
    import io

    buf = io.BytesIO()
    arrays = {"test": np.asarray(maps, dtype=np.float32)}
    if val_maps is not None:
        arrays["val"] = np.asarray(val_maps, dtype=np.float32)
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def run_cell(cfg, grid: dict[str, Any], d: ClassData, cls: str, n: int, method: str, seed: int,
             tmp_root: Path, maps_path: Path | None = None) -> dict[str, Any]:
    """Train (or fit) one method on the first ``n`` training objects and score the shared test set;
    ``maps_path``: where the cell's anomaly maps go (``.npz``)."""
    from multiflow.flow.single_view import from_single_view, to_single_view
    from multiflow.engine.factories import build_flow, run_device
    from multiflow.engine.maps import compute_maps
    from multiflow.engine.train import train_flow
    from multiflow.flow.subnet import cross_view_scaled, view_gammas

    m = METHODS[method]
    v = len(d.view_names)
    feats = d.train_features[:n]
    masks = None if d.train_masks is None else d.train_masks[:n]
    rec: dict[str, Any] = {"class": cls, "n": n, "method": method, "seed": seed}
    t0 = time.perf_counter()
    with CpuShare() as share:
        if m.kind == "patchcore":
            from multiflow.baselines.patchcore import PatchCore

            model = PatchCore(seed=seed).fit(feats, masks)
            maps = np.asarray(model.anomaly_map(d.test_features, d.test_masks))
            rec |= _evaluate(maps, d)
            rec["scoring"] = _score_variants(maps, None, None, d, grid)
            _save_maps(maps_path, maps, None)
        else:
            tcfg = dataclasses.replace(
                cfg.train, seed=seed, epochs=cfg.train.epochs * (v if m.epoch_views else 1),
                batch_size=cfg.train.batch_size * (v if m.batch_views else 1))
            tcfg = dataclasses.replace(tcfg, checkpoint_every=tcfg.epochs, checkpoint_minutes=0.0)
            device, precision = run_device(tcfg)
            on = dict(device=device, precision=precision)
            mcfg = dataclasses.replace(cfg.model, graph="none" if m.single_view else m.graph, single_view=False)
            tf, tm = (to_single_view(feats, masks) if m.single_view else (feats, masks))
            model = build_flow(mcfg, d.channels, ["view"] if m.single_view else d.view_names, seed)
            tmp_root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=tmp_root) as td:
                result = train_flow(model, tf, tm, tcfg, Path(td) / "state", progress=False, device=device)
            if m.single_view:
                sf, sm = to_single_view(d.test_features, d.test_masks)
                maps = from_single_view(compute_maps(model, sf, sm, batch_size=64, **on), v)
            else:
                maps = compute_maps(model, d.test_features, d.test_masks, batch_size=16, **on)
            rec |= _evaluate(maps, d)
            val_maps = val_masks = None
            if not m.single_view and result.val_index is not None and len(result.val_index):
                vi = np.asarray(result.val_index)
                val_masks = None if masks is None else masks[vi]
                val_maps = compute_maps(model, feats[vi], val_masks, batch_size=16, **on)
            rec["scoring"] = _score_variants(maps, val_maps, val_masks, d, grid)
            _save_maps(maps_path, maps, val_maps)
            gammas = np.abs(np.asarray(view_gammas(model)))  # (st-networks, views)
            rec["gamma_abs"] = {"per_view_mean": gammas.mean(axis=0).round(5).tolist(),
                                "min": float(gammas.min()), "max": float(gammas.max())}
            per_epoch = math.ceil(len(result.train_index) / tcfg.batch_size)
            rec["steps"] = per_epoch * len(result.history)
            rec["steps_selected"] = per_epoch * max(result.best_epoch, 0)  # steps taken by the scored weights
            rec["epochs"] = len(result.history)
            rec["best_epoch"] = result.best_epoch
            rec["lr"] = tcfg.lr
            if m.graph != "none" and not m.single_view:
                with cross_view_scaled(model, 0.0):
                    off = compute_maps(model, d.test_features, d.test_masks, batch_size=16, **on)
                rec["cross_view_off"] = _evaluate(off, d)
    rec["seconds"] = time.perf_counter() - t0
    rec["cpu_share"] = share.share
    return rec


def rescore(out: Path, cells, grid: dict[str, Any], data: dict[str, ClassData], val_fraction: float) -> None:
    """Recompute the ``scoring`` of every finished cell from its ``.maps.npz`` (atomic rewrite)."""
    n = 0
    for c in cells:
        path = cell_path(out, *c)
        maps_path = path.with_suffix(".maps.npz")
        if not (path.is_file() and maps_path.is_file()):
            continue
        rec = json.loads(path.read_text())
        d = data[c[0]]
        with np.load(maps_path) as z:
            maps = z["test"].astype(np.float32)
            val = z["val"].astype(np.float32) if "val" in z.files else None
        val_masks = None
        if val is not None and d.train_masks is not None:
            from multiflow.engine.train import split_train_val

            _, vi = split_train_val(c[1], val_fraction, c[3])  # train_flow's held-out split of the first N objects
            if len(vi) != len(val):
                raise SystemExit(f"{maps_path}: {len(val)} held-out maps, but the split has {len(vi)} objects")
            val_masks = d.train_masks[: c[1]][vi]
        rec["scoring"] = _score_variants(maps, val, val_masks, d, grid)
        write_json(path, rec, default=float)
        n += 1
    print(f"== rescored {n} cells from their maps", flush=True)


# ------------------------------------------------------------------------------------ reporting
def load_cells(out: Path, cells) -> list[dict[str, Any]]:
    recs = []
    for c in cells:
        p = cell_path(out, *c)
        if p.is_file():
            recs.append(json.loads(p.read_text()))
    return recs


def complete_seeds(recs: list[dict[str, Any]], classes: list[str]) -> tuple[list[dict[str, Any]], int]:
    """The records of every (method, N, seed) that has all ``classes``, and how many were left out.

    Numbers are class averages per seed: a seed that has run one class of a (method, N) only
    (an interrupted run) would enter the mean as that class alone, so it waits until complete."""
    have: dict[tuple, set] = {}
    for r in recs:
        have.setdefault((r["method"], r["n"], r["seed"]), set()).add(r["class"])
    full = {k for k, v in have.items() if set(classes) <= v}
    kept = [r for r in recs if (r["method"], r["n"], r["seed"]) in full]
    return kept, len(recs) - len(kept)


def _as_pe_records(recs: list[dict[str, Any]], key: str | None = None) -> dict:
    """``{"<method>@<N>": {seed: {class: record}}}`` in the layout of paper_experiments.collect."""
    rows = []
    for r in recs:
        src = r if key is None else r.get(key)
        if src is None:
            continue
        rows.append({"variant": f"{r['method']}@{r['n']}", "seed": r["seed"], "category": r["class"],
                     "metrics": src["metrics"]})
    return pe.collect(rows)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return None if not vals or len(vals) != len(values) else sum(vals) / len(vals)


def plot(recs: list[dict[str, Any]], methods: list[str], path: Path) -> None:
    """S-AUROC and I-AUROC vs N (log x axis), mean ± std over seeds, one line per method."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _as_pe_records(recs)
    sizes = sorted({r["n"] for r in recs})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (metric, label) in zip(axes, METRICS):
        for m in methods:
            xs, ys, es = [], [], []
            for n in sizes:
                key = f"{m}@{n}"
                if key not in data:
                    continue
                vals = [100 * v for v in pe.seed_means(data[key], metric) if v is not None]
                if vals:
                    mu, sd = pe.mean_std(vals)
                    xs.append(n)
                    ys.append(mu)
                    es.append(sd)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=METHODS[m].label)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()  # the log axis' minor labels (2x10^1, ...) would overprint the sizes
        ax.set_xlabel("normal training objects per class (N)")
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Learning curve: class-averaged AUROC, mean ± std over seeds")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def scoring_section(recs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """Issue 12's post-hoc scoring switches on the learning-curve models: every image score x
    calibration against the paper's ``max+none`` of the same models, at the largest N and averaged
    over all N (rows: switches; columns: methods)."""
    from benchmarks.scoring_ablation import CALIBRATIONS, IMAGE_SCORES, combo_name

    have = [r for r in recs if r.get("scoring")]
    if not have:
        return []
    ref = combo_name("max", "none")
    combos = [combo_name(lbl, c) for lbl, _, _ in IMAGE_SCORES for c in CALIBRATIONS]
    methods = [m for m in methods if any(r["method"] == m for r in have)]
    n_max = max(r["n"] for r in have)

    def cell(rs: list[dict[str, Any]], combo: str, with_value: bool) -> str:
        rs = [r for r in rs if combo in r["scoring"]]
        if not rs:
            return "-"
        parts = []
        for k in ("s_auroc", "i_auroc"):
            a = float(np.mean([r["scoring"][combo]["metrics"][k] for r in rs]))
            b = float(np.mean([r["scoring"][ref]["metrics"][k] for r in rs]))
            parts.append((f"{100 * a:.1f} " if with_value else "") + f"({100 * (a - b):+.1f})")
        return " / ".join(parts)

    head = ["| image score + calibration | " + " | ".join(METHODS[m].label for m in methods) + " |",
            "|---|" + "---:|" * len(methods)]
    lines = ["#### Scoring switches on these models (issue 12)", "",
             "Image score x per-view calibration, post hoc on each cell's stored maps (`--rescore` recomputes them); "
             "calibrations are fitted on the cell's held-out normal objects, so only flows trained on whole objects "
             "have them. S-AUROC / I-AUROC (%), class average, in brackets the difference to `max+none` of the same "
             f"models (pp). At N = {n_max}:", "", *head]
    for c in combos:
        lines.append(f"| {c} | " + " | ".join(cell([r for r in have if r["method"] == m and r["n"] == n_max], c, True)
                                             for m in methods) + " |")
    sizes = sorted({r["n"] for r in have})
    lines += ["", f"Difference to `max+none` (pp, S / I), averaged over N = {sizes}:", "", *head]
    for c in combos:
        lines.append(f"| {c} | " + " | ".join(cell([r for r in have if r["method"] == m], c, False) for m in methods)
                     + " |")
    return lines + [""]


def _n_seeds(data: dict, a: str, b: str, metric: str) -> int:
    """How many seeds both rows have: with one, a difference has no noise estimate."""
    return min(len(pe.seed_means(data[a], metric)), len(pe.seed_means(data[b], metric)))


def report(recs: list[dict[str, Any]], grid: dict[str, Any], ctx: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: table, verdicts, diagnosis, command, cost."""
    data = _as_pe_records(recs)
    off = _as_pe_records(recs, "cross_view_off")
    sizes = sorted({r["n"] for r in recs})
    methods = [m for m in grid["methods"] if any(r["method"] == m for r in recs)]
    lines = ["### Learning curve: when do the cross-view links pay off?", ""]
    if ctx.get("quick"):
        lines += ["**Quick check (`--quick`): far too small for conclusions; rerun without it.**", ""]
    if ctx["missing"]:
        lines += [f"**Incomplete: {ctx['missing']} of {ctx['total']} cells not run yet (rerun the command to "
                  "continue).**", ""]
    if ctx.get("partial"):
        lines += [f"{ctx['partial']} finished cells of seeds that have not run every class yet are left out.", ""]
    lines += ["| method | N | optimiser steps | " + " | ".join(lbl for _, lbl in METRICS) + " | mean abs gamma | s / cell |",
              "|---|---:|---:|" + "---:|" * (len(METRICS) + 2)]
    for m in methods:
        for n in sizes:
            key = f"{m}@{n}"
            if key not in data:
                continue
            cell = [r for r in recs if r["method"] == m and r["n"] == n]
            steps = sorted({r["steps"] for r in cell if r.get("steps")})
            steps_txt = f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else (str(steps[0]) if steps else "-")
            gam = [float(np.mean(r["gamma_abs"]["per_view_mean"])) for r in cell if r.get("gamma_abs")]
            gam_txt = f"{np.mean(gam):.3f}" if gam else "-"
            secs = sum(r["seconds"] for r in cell) / len(cell)
            lines.append(f"| {METHODS[m].label} | {n} | {steps_txt} | "
                         + " | ".join(pe.fmt_ms(pe.seed_means(data[key], k)) for k, _ in METRICS)
                         + f" | {gam_txt} | {secs:.0f} |")
    lines.append("")
    # verdicts: Multi-Flow minus each single-view flow / no links, per N
    verdicts = []
    for other in ("single-view", "single-view-eqsteps", "graph-none"):
        for n in sizes:
            a, b = f"multiflow@{n}", f"{other}@{n}"
            if a not in data or b not in data:
                continue
            parts = []
            for k, lbl in METRICS:
                d = pe.seed_delta(data, b, a, k)
                if d is None:
                    continue
                delta, spread = d
                word = ("one seed: no noise estimate" if _n_seeds(data, a, b, k) < 2 else "within one seed std" if abs(delta) <= spread
                        else "Multi-Flow better" if delta > 0 else "Multi-Flow worse")
                parts.append(f"{lbl} {delta:+.2f} pp ({word})")
            if parts:
                verdicts.append(f"- N = {n}, Multi-Flow minus {METHODS[other].label}: " + ", ".join(parts))
    if verdicts:
        lines += ["Multi-Flow minus the other flows (mean over seeds of the class average; 'within one seed "
                  "std' when the difference is not larger than the larger of the two seed stds):", "", *verdicts, ""]
    # diagnosis at the largest N
    n_max = sizes[-1] if sizes else None
    if n_max is not None and f"multiflow@{n_max}" in data:
        lines += [f"#### Diagnosis at N = {n_max}", ""]
        sv = f"single-view@{n_max}"
        win = None
        if sv in data:
            d = pe.seed_delta(data, sv, f"multiflow@{n_max}", "s_auroc")
            win = d is not None and _n_seeds(data, sv, f"multiflow@{n_max}", "s_auroc") > 1 and d[0] > d[1]
        lines.append("Multi-Flow " + ("beats" if win else "does not clearly beat") + " the single-view flow here "
                     "(S-AUROC, beyond the seed spread). Measurements:")
        lines.append("")
        mf = [r for r in recs if r["method"] == "multiflow" and r["n"] == n_max and r.get("gamma_abs")]
        if mf:
            per_view = np.mean([r["gamma_abs"]["per_view_mean"] for r in mf], axis=0)
            lo = min(r["gamma_abs"]["min"] for r in mf)
            hi = max(r["gamma_abs"]["max"] for r in mf)
            steps = sorted({r.get("steps_selected", r["steps"]) for r in mf})
            lr = mf[0].get("lr")
            lines.append(f"- learned |gamma| of Multi-Flow's st-networks (selected weights; mean over blocks and runs) "
                         f"per view {', '.join(f'{v}: {g:.3f}' for v, g in zip(ctx['views'], per_view))}; range "
                         f"{lo:.3f}-{hi:.3f} after {steps[0]}-{steps[-1]} optimiser steps at lr {lr} "
                         f"(steps x lr = {steps[-1] * lr:.2f}: Adam moves gamma by about lr per step).")
        last = []
        for m in methods:
            runs = [r for r in recs if r["method"] == m and r.get("best_epoch") and r.get("epochs")]
            if runs:
                last.append(f"{METHODS[m].label} {sum(r['best_epoch'] >= r['epochs'] for r in runs)} of {len(runs)}")
        if last:
            lines.append("- training length: runs (all N) whose best held-out epoch is their last one, i.e. whose "
                         "held-out loss was still falling when the schedule ended: " + "; ".join(last) + ".")
        key = f"multiflow@{n_max}"
        if key in off:
            parts = []
            for k, lbl in METRICS:
                d = pe.seed_delta({"on": data[key], "off": off[key]}, "off", "on", k)
                if d is not None:
                    parts.append(f"{lbl} {pe.fmt_ms(pe.seed_means(off[key], k))} with the messages off vs "
                                 f"{pe.fmt_ms(pe.seed_means(data[key], k))} on ({d[0]:+.2f} pp from the links)")
            lines.append("- cross-view messages switched off at test time (same trained Multi-Flow): " + "; ".join(parts) + ".")
        lines += ["", "Per defect type at N = " + f"{n_max} (S-AUROC, mean over seeds of the class average, %; "
                  "FM = cross-view face colour mismatch, CI = colour inconsistency):", ""]
        defects = sorted({dd for r in recs if r["n"] == n_max for dd in r.get("per_defect", {})})
        lines += ["| method | " + " | ".join(defects) + " |", "|---|" + "---:|" * len(defects)]
        for m in methods:
            cells = []
            for dd in defects:
                per_seed = []
                for s in sorted({r["seed"] for r in recs}):
                    vals = [r["per_defect"][dd]["s_auroc"] for r in recs if r["method"] == m and r["n"] == n_max
                            and r["seed"] == s and dd in r.get("per_defect", {})
                            and r["per_defect"][dd]["s_auroc"] is not None]
                    if vals:
                        per_seed.append(sum(vals) / len(vals))
                cells.append(pe.fmt_ms(per_seed) if per_seed else "-")
            lines.append(f"| {METHODS[m].label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += scoring_section(recs, methods)
    lines += [
        f"![learning curve]({ctx['plot']})", "",
        f"Command: `{ctx['command']}`  ",
        f"Data: synthetic (multiflow.synth, seed {DATA_SEED}, variation {grid['variation']}: production lots + "
        f"pose jitter), classes {grid['classes']}; train sets N = {sorted(grid['sizes'])} are nested subsets of "
        f"one set of {max(grid['sizes'])} normal objects; one shared test set of {grid['n_test_good']} normal + "
        f"{grid['n_test_defect']} defective objects per class (defects {', '.join(grid['defects'])}); 5 views at "
        f"{grid['size']} px; lite0 at {grid['input_size']} px ({ctx['grid']} feature maps); ground-truth "
        f"silhouette masks; flow {' '.join(grid.get('model') or []) or 'as in the paper (6 blocks, hidden 64)'}; "
        + (f"up to {grid['epochs']} epochs (early stopping, patience {grid['patience']}), " if grid.get("patience")
           else f"{grid['epochs']} epochs, ") + f"batch {grid['batch']} (single-view: images; equal steps: "
        f"batch x 5), lr {grid['lr']}, best epoch on 10 % held-out normal objects. Numbers: mean ± sample "
        f"std over seeds {grid['seeds']} of the class average (%).  ",
        f"Machine: {ctx['machine']}.  ",
        f"Cost: {ctx['cells']} cells, {ctx['cell_hours']:.2f} h of cell time (CPU share {ctx['cpu_share']:.2f}) "
        f"+ {ctx['prep_min']:.1f} min data generation and feature extraction (measured in the run that "
        f"did them); peak RSS {ctx['rss']:.0f} MiB.",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="results folder (default results/learning_curve, --quick: "
                   "results/learning_curve-quick)")
    p.add_argument("--quick", action="store_true", help="tiny grid (1 class, N = 4 and 8, 1 epoch, 96 px)")
    p.add_argument("--classes", nargs="+", help="synthetic classes")
    p.add_argument("--sizes", type=int, nargs="+", help="training sizes N (default 25 50 100 200)")
    p.add_argument("--seeds", type=int, nargs="+", help="train seeds (default 0 1 2)")
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), help="curves to run")
    p.add_argument("--epochs", type=int, help="training epochs of Multi-Flow (default 8; the cap with --patience)")
    p.add_argument("--patience", type=int, help="early stopping on the held-out loss after this many epochs "
                   "without improvement (default 0: the fixed schedule); needs its own --out")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop cleanly before a cell that would end after this many minutes (0: no limit)")
    p.add_argument("--workers", type=int, default=2, help="data generation processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-benchmarks-md", action="store_true", help="do not write BENCHMARKS.md / docs/ (report "
                   "and plot go to --out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars for data and features")
    p.add_argument("--report", action="store_true", help="only rewrite the report and plot from the finished "
                   "cells; trains nothing")
    p.add_argument("--rescore", action="store_true", help="recompute every finished cell's post-hoc scoring "
                   "switches from its stored maps (after the set of switches changed); trains nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from multiflow.errors import MultiflowError

    args = parse_args(argv)
    t_start = time.perf_counter()
    grid = dict(QUICK if args.quick else FULL)
    for key in ("classes", "sizes", "seeds", "methods", "epochs"):
        if getattr(args, key):
            grid[key] = getattr(args, key)
    if args.patience is not None:
        grid["patience"] = args.patience
    out = Path(args.out) if args.out else ROOT / "results" / ("learning_curve-quick" if args.quick else "learning_curve")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cells = plan(grid)
    todo = [c for c in cells if not cell_path(out, *c).is_file()]
    prep_json = out / "prep.json"
    est_cells = sum(estimate_seconds(grid, n, m) for _, n, m, _ in todo)
    est_prep = 0.0 if prep_json.is_file() else estimate_prep_seconds(grid)
    print(f"== learning curve: {len(cells)} cells ({len(grid['classes'])} classes x N {sorted(grid['sizes'])} x "
          f"{len(grid['methods'])} methods x {len(grid['seeds'])} seeds), {len(cells) - len(todo)} already done -> {out}",
          flush=True)
    print(f"== estimated time on 2 quiet cores: {est_prep / 60:.0f} min data + features, {est_cells / 3600:.2f} h "
          f"for the {len(todo)} remaining cells" + (f" (stopping after {args.max_minutes:.0f} min)" if args.max_minutes else ""),
          flush=True)
    try:
        check_settings(out, grid)
        cfg = make_config(grid, out)
        t_prep = time.perf_counter()
        with CpuShare() as prep_share:
            data = prepare(grid, out, cfg, progress=not args.quiet, workers=args.workers)
        if not prep_json.is_file():
            write_json(prep_json, {"seconds": time.perf_counter() - t_prep, "cpu_share": prep_share.share})
        if args.rescore:
            rescore(out, cells, grid, data, cfg.train.val_fraction)
        if args.rescore or args.report:
            todo = []
        tmp_root = state_root(out)
        bar = tqdm(total=round(est_cells), unit="est-s", desc="cells", dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} est-s [{elapsed}<{remaining}]")
        stopped = 0
        for i, (cls, n, method, seed) in enumerate(todo):
            est = estimate_seconds(grid, n, method)
            elapsed_min = (time.perf_counter() - t_start) / 60
            if args.max_minutes and elapsed_min + est / 60 > args.max_minutes:
                stopped = len(todo) - i
                tqdm.write(f"== --max-minutes {args.max_minutes:g}: stopping with {stopped} cells left; rerun to continue")
                break
            bar.set_postfix_str(f"{cls} N={n} {method} seed {seed}")
            path = cell_path(out, cls, n, method, seed)
            rec = run_cell(cfg, grid, data[cls], cls, n, method, seed, tmp_root, path.with_suffix(".maps.npz"))
            write_json(cell_path(out, cls, n, method, seed), rec, default=float)
            bar.update(round(est))
            tqdm.write(f"done {cls:>14} N={n:<4} {method:>20} seed {seed}: S-AUROC "
                       f"{100 * (rec['metrics']['s_auroc'] or 0):6.2f}  I-AUROC {100 * (rec['metrics']['i_auroc'] or 0):6.2f}"
                       f"  ({rec['seconds']:.0f} s, estimated {est:.0f} s)")
        bar.close()
        if tmp_root.is_dir() and not any(tmp_root.iterdir()):
            tmp_root.rmdir()
    except MultiflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    recs, partial = complete_seeds(load_cells(out, cells), grid["classes"])
    if not recs:
        print("== no finished cells yet", flush=True)
        return 0
    prep = json.loads(prep_json.read_text())
    cell_s = sum(r["seconds"] for r in recs)
    write_md = not args.no_benchmarks_md and not args.quick
    plot_path = PLOT if write_md else out / "learning_curve.png"
    plot(recs, grid["methods"], plot_path)
    d0 = data[grid["classes"][0]]
    ctx = {
        "quick": args.quick, "missing": len(cells) - len(recs) - partial, "total": len(cells), "partial": partial,
        "command": "python benchmarks/learning_curve.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "machine": machine_line(), "cells": len(recs), "cell_hours": cell_s / 3600,
        "cpu_share": sum(r["cpu_share"] * r["seconds"] for r in recs) / max(cell_s, 1e-9),
        "prep_min": prep["seconds"] / 60, "rss": peak_rss_mb(), "views": d0.view_names,
        "grid": "x".join(str(x) for x in d0.train_features.shape[-2:]),
        "plot": os.path.relpath(plot_path, ROOT) if write_md else plot_path.name,
    }
    md = report(recs, grid, ctx)
    if write_md:
        update_section(SECTION, md)
    from multiflow._atomic import write_text

    write_text(out / "report.md", md + "\n")
    print(md)
    print(f"== {len(recs)}/{len(cells)} cells finished; this invocation took {(time.perf_counter() - t_start) / 60:.1f} min",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
