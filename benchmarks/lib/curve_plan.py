"""The learning curve's grid: the presets, the methods (curves), the cells, their cost estimates, the
engine config and the data every cell shares (``benchmarks/learning_curve.py`` is the script)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.lib.data import CachedClass, load_cached_class
from multiflow.flow.fusion import FUSIONS
from multiflow.synth.defects import CROSS_VIEW_CODES


METRICS = (("s_auroc", "S-AUROC"), ("i_auroc", "I-AUROC"))
STANDARD_DEFECTS = ("AK", "BX", "CH", "HS", "PS", "QS", "YW", "ZW", "CI")
#: defects that only a comparison across views reveals (each view alone is a normal image)
CROSS_VIEW_DEFECTS = tuple(CROSS_VIEW_CODES)  # FM, ML, LB

#: The training schedule of every flow cell (``train.*``; multiflow.engine.schedule): part of a folder's
#: settings, so cells trained on different schedules are never mixed.
SCHEDULE_DEFAULTS: dict[str, Any] = {"lr_schedule": "constant", "warmup_epochs": 0.0, "lr_min": 0.0, "gamma_lr": 0.0,
                                     "min_delta": 0.0}

#: The default grid: converged flows (early stopping on the held-out loss, ``epochs`` only a cap), the
#: cross-view-only defects in the test set (5 objects of each of the 12 types). 2 classes x 4 sizes x 3 seeds x 5 methods = 120 cells
#: (:func:`estimate_seconds` assumes every flow runs to the cap: an upper bound).
FULL: dict[str, Any] = {
    "classes": ["toy_brick", "terminal_block"], "sizes": [25, 50, 100, 200], "seeds": [0, 1, 2],
    "n_test_good": 30, "n_test_defect": 60, "defects": [*STANDARD_DEFECTS, *CROSS_VIEW_DEFECTS], "size": 384,
    "input_size": 384, "epochs": 60, "patience": 8, "batch": 4, "lr": 1e-3, **SCHEDULE_DEFAULTS,
    "variation": "realistic",
    "methods": ["multiflow", "graph-none", "single-view", "single-view-eqsteps", "patchcore"],
    "model": [],  # the paper's flow: 6 blocks, hidden 64 (multiflow defaults)
}
QUICK: dict[str, Any] = {
    "classes": ["toy_brick"], "sizes": [4, 8], "seeds": [0], "n_test_good": 3, "n_test_defect": 4,
    "defects": ["HS", "QS", "CI", *CROSS_VIEW_DEFECTS], "size": 96, "input_size": 96, "epochs": 1, "patience": 0,
    "batch": 4, "lr": 1e-3, **SCHEDULE_DEFAULTS,
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
    single-view flow's steps); ``fusion``: the cross-view operator (``model.fusion``, one of
    :data:`multiflow.flow.fusion.FUSIONS`; "" = the configuration's, the paper's conv);
    ``cost``: training time relative to ``multiflow`` at equal epochs.
    """

    name: str
    label: str
    kind: str = "flow"  # "flow" | "patchcore"
    graph: str = "real_iad"
    single_view: bool = False
    batch_views: bool = False
    epoch_views: bool = False
    fusion: str = ""
    cost: float = 1.0


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("multiflow", "Multi-Flow (real_iad)"),
    Method("graph-none", "no links (graph none)", graph="none", cost=0.3),
    Method("single-view", "single-view flow (equal epochs)", single_view=True, cost=0.45),
    Method("single-view-eqsteps", "single-view flow (equal steps)", single_view=True, batch_views=True, cost=0.4),
    Method("multiflow-eqsteps", "Multi-Flow (single-view's steps)", epoch_views=True, cost=5.0),
    Method("patchcore", "PatchCore", kind="patchcore", cost=0.0),
    # Multi-Flow with every other registered fusion operator: ``fusion-<name>``
    *(Method(f"fusion-{name}", f"Multi-Flow ({name} fusion)", fusion=name) for name in FUSIONS if name != "conv"),
)}
#: the methods that are Multi-Flow with another fusion operator than the paper's conv
FUSION_METHODS = tuple(name for name, m in METHODS.items() if m.fusion)


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
        f"train.early_stopping_min_delta={grid.get('min_delta', 0.0)}",
        f"train.lr_schedule={grid.get('lr_schedule', 'constant')}",
        f"train.warmup_epochs={grid.get('warmup_epochs', 0.0)}", f"train.lr_min={grid.get('lr_min', 0.0)}",
        f"train.gamma_lr={grid.get('gamma_lr', 0.0)}",
        "eval.pictures=false", "eval.pixel_metrics=false",
        *grid.get("model", []),
    ])


#: Grid keys that select cells; every other key changes what a cell computes.
SELECTING = ("classes", "sizes", "seeds", "methods")
#: Settings of folders written before the key existed.
SETTING_DEFAULTS: dict[str, Any] = {"patience": 0, **SCHEDULE_DEFAULTS}


def prepare(grid: dict[str, Any], out: Path, cfg, *, progress: bool, workers: int) -> dict[str, CachedClass]:
    """Generate the data set (resumable) and extract/cache features and masks of every class."""
    from multiflow.engine.factories import build_extractor, run_device
    from multiflow.synth import generate_dataset

    generate_dataset(out / "data", classes=grid["classes"], n_train=max(grid["sizes"]),
                     n_test_good=grid["n_test_good"], n_test_defect=grid["n_test_defect"], size=grid["size"],
                     seed=DATA_SEED, workers=workers, defects=grid["defects"], variation=grid["variation"],
                     progress=progress)
    extractor = build_extractor(cfg.features)
    device, _ = run_device(cfg.train)
    return {cls: load_cached_class(cfg, cls, extractor, progress=progress, device=device) for cls in grid["classes"]}
