"""When does the held-out loss level off at N = 200, and what makes convergence cheap? (issue 24 §2)

For every (class, fusion operator, learning-rate schedule, seed) one Multi-Flow (paper graph
``real_iad``) trains on the first ``N`` normal training objects of the class, up to ``--epochs``
epochs with early stopping on the held-out loss (``--patience``), and records per epoch: training
loss, held-out loss, learning rates, optimiser steps so far, wall seconds, the CPU share the epoch
got and the mean ``|gamma|`` of the fusion gates. The selected model is then scored on the class's
test set (S-/I-AUROC, per defect type).

Data: by default the existing synthetic set of the decision-trust runs (``results/trust/data``:
classes toy_brick and terminal_block, 200 normal training objects, 384 px, lite0 features cached in
``results/trust/cache``); ``--data``/``--cache`` point elsewhere. ``--quick`` generates a tiny set
under ``--out`` instead (a smoke test of the whole script, minutes).

Schedules (``--schedules``, presets of :data:`SCHEDULES`, ``train.*`` keys of
:mod:`multiflow.engine.schedule`): ``constant`` (lr 1e-3, the learning curve's so far), ``cosine``
(2 warm-up epochs, then a cosine from 1e-3 to 1e-5 over the planned ``--epochs``), ``cosine-gates``
(the same with the fusion gates at lr 1e-2), ``constant-gates``, ``cosine-30`` (a cosine planned
over 30 epochs) and ``cosine-15`` (1 warm-up epoch, a cosine over 15 epochs, gates at lr 1e-2: the
constant rate's held-out minimum came at epoch 10, so the decay has to end near it). With a cosine
the planned length defines the decay; early stopping may end a run before it.

Definitions (the report states them): the *level-off epoch* of a run is the first epoch whose
held-out loss is within ``--level-delta`` (default 0.01 nats per foreground pixel, about 1 % of
the loss here) of the run's lowest held-out loss; steps and wall seconds *to convergence* are those
up to the level-off epoch. A run whose lowest held-out loss is at its last epoch and that early
stopping did not end was still falling when it hit the cap: its level-off epoch is a lower bound
("not converged").

Resumable: each run lives in ``<out>/runs/<class>/<fusion>/<schedule>/seed<k>/`` with its
``train_state`` (the resume state is written after every epoch, so a kill loses at most the epoch in
progress) and, when finished, ``result.json`` (atomic); a rerun skips finished runs and continues
unfinished ones from their state (``train_flow``'s resume guard refuses changed settings, and the
run folder's ``settings.json`` does so for finished runs). ``--max-minutes`` ends a sitting after
the epoch that passes the limit. The training state of a finished run is deleted
(``--keep-states`` keeps it).

Epoch wall seconds include the validation pass and reading the resume state (each epoch is one
``train_flow`` call continuing the run), not writing it. Timings come from a shared 2-core machine:
the CPU share column says how much of it the run got.

    python benchmarks/convergence.py                                   # toy_brick, every fusion, 3 schedules
    python benchmarks/convergence.py --classes toy_brick terminal_block --fusions conv --schedules constant cosine
    python benchmarks/convergence.py --quick --no-benchmarks-md        # smoke test, a few minutes

Output: BENCHMARKS.md section ``convergence`` (summary per run, the per-epoch held-out loss table)
and ``docs/convergence.png`` (held-out loss vs epoch); ``--quick`` writes both under ``--out`` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_line, peak_rss_mb, update_section  # noqa: E402
from benchmarks.lib.results import check_settings  # noqa: E402
from multiflow._atomic import write_bytes, write_json, write_text  # noqa: E402

SECTION = "convergence"
PLOT = ROOT / "docs" / "convergence.png"

#: learning-rate schedules (``train.*`` settings; ``epochs``: a planned length shorter than the cap)
SCHEDULES: dict[str, dict[str, Any]] = {
    "constant": {"lr": 1e-3},
    "cosine": {"lr": 1e-3, "lr_schedule": "cosine", "warmup_epochs": 2.0, "lr_min": 1e-5},
    "cosine-gates": {"lr": 1e-3, "lr_schedule": "cosine", "warmup_epochs": 2.0, "lr_min": 1e-5, "gamma_lr": 1e-2},
    "constant-gates": {"lr": 1e-3, "gamma_lr": 1e-2},
    "cosine-30": {"lr": 1e-3, "lr_schedule": "cosine", "warmup_epochs": 2.0, "lr_min": 1e-5, "epochs": 30},
    "cosine-15": {"lr": 1e-3, "lr_schedule": "cosine", "warmup_epochs": 1.0, "lr_min": 1e-5, "epochs": 15,
                  "gamma_lr": 1e-2},
}
FULL: dict[str, Any] = {
    "classes": ["toy_brick"], "n": 200, "seeds": [0], "epochs": 60, "patience": 8, "min_delta": 0.0, "batch": 4,
    "input_size": 384, "size": 384, "schedules": ["constant", "cosine", "cosine-gates"], "model": [],
}
QUICK: dict[str, Any] = {
    "classes": ["toy_brick"], "n": 8, "seeds": [0], "epochs": 3, "patience": 1, "min_delta": 0.0, "batch": 4,
    "input_size": 96, "size": 96, "schedules": ["constant", "cosine-gates"],
    "model": ["model.n_blocks=2", "model.hidden=8", "model.kernel_sizes=[3,3]"],
    # the generated test set (quick only; the full run uses the existing data set)
    "n_test_good": 2, "n_test_defect": 3, "defects": ["HS", "FM", "ML"], "variation": "realistic",
}
#: training settings that cannot vary between the runs of one results folder
SHARED = ("n", "epochs", "patience", "min_delta", "batch", "input_size", "size", "model")


def default_fusions() -> list[str]:
    """The paper's conv first, then every other registered fusion operator."""
    from multiflow.flow.fusion import FUSIONS

    return ["conv", *sorted(f for f in FUSIONS if f != "conv")]


def estimate_epoch_seconds(grid: dict[str, Any]) -> float:
    """Wall seconds of one conv epoch on 2 quiet cores (the learning curve's measured rates, scaled by
    (input / 384)^2): training on 90 % of N, the held-out pass on 10 %."""
    from benchmarks.lib.curve_plan import SCORE_S_PER_SAMPLE_384, TRAIN_SAMPLES_PER_S_384

    px = (grid["input_size"] / 384.0) ** 2
    return grid["n"] * px * (0.9 / TRAIN_SAMPLES_PER_S_384 + 0.1 * SCORE_S_PER_SAMPLE_384)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="results folder (default results/convergence, --quick: results/convergence-quick)")
    p.add_argument("--quick", action="store_true", help="tiny generated data, small flow, 3 epochs (smoke test)")
    p.add_argument("--data", default=str(ROOT / "results" / "trust" / "data"),
                   help="Real-IAD-format synthetic data with silhouettes_<size> (default results/trust/data)")
    p.add_argument("--cache", default=str(ROOT / "results" / "trust" / "cache"), help="feature cache folder")
    p.add_argument("--classes", nargs="+", help="classes (default toy_brick)")
    p.add_argument("--fusions", nargs="+", help="model.fusion operators (default: conv and every other FUSIONS entry)")
    p.add_argument("--schedules", nargs="+", choices=sorted(SCHEDULES), help="learning-rate schedules "
                   "(default constant cosine cosine-gates)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0)")
    p.add_argument("--n", type=int, help="normal training objects (the first N; default 200)")
    p.add_argument("--epochs", type=int, help="epoch cap (default 60)")
    p.add_argument("--patience", type=int, help="early stopping patience (default 8)")
    p.add_argument("--level-delta", type=float, default=0.01,
                   help="level-off: within this of the run's lowest held-out loss (nats per pixel; default 0.01)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="train.precision")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="end this sitting after the epoch that passes "
                   "this many minutes (0: no limit); a rerun continues")
    p.add_argument("--keep-states", action="store_true", help="keep the training state of finished runs")
    p.add_argument("--no-benchmarks-md", action="store_true", help="report and plot under --out only")
    p.add_argument("--report", action="store_true", help="only rewrite the report from finished runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ the data
def make_config(grid: dict[str, Any], data: Path, cache: Path, fusion: str = "conv",
                schedule: dict[str, Any] | None = None, *, seed: int = 0, precision: str = "fp32", threads: int = 0):
    """The run configuration of one (fusion, schedule, seed): validated like ``multiflow fit``'s."""
    from multiflow.config import load_config

    sched = dict(schedule or {})
    epochs = min(int(sched.pop("epochs", grid["epochs"])), int(grid["epochs"]))  # a planned length within the cap
    return load_config(None, [
        f"data.root={data}", f"data.resolution='{grid['size']}'", "data.categories=[" + ",".join(grid["classes"]) + "]",
        "features.backbone=lite0", f"features.input_size={grid['input_size']}", f"features.cache_dir={cache}",
        "masks.provider=file", f"masks.mask_root={data / ('silhouettes_' + str(grid['size']))}",
        "model.graph=real_iad", f"model.fusion={fusion}", *grid.get("model", []),
        f"train.epochs={epochs}", f"train.batch_size={grid['batch']}", f"train.seed={seed}",
        f"train.early_stopping_patience={grid['patience']}", f"train.early_stopping_min_delta={grid['min_delta']}",
        "train.checkpoint_every=1", "train.checkpoint_minutes=0", f"train.precision={precision}",
        f"train.threads={threads}", *(f"train.{k}={v}" for k, v in sched.items()),
        "eval.pictures=false", "eval.pixel_metrics=false",
    ])


def load_data(grid: dict[str, Any], data: Path, cache: Path, *, quick: bool, progress: bool) -> dict:
    """Every class's cached features and masks (``--quick``: generated first, resumably)."""
    from benchmarks.lib.data import load_cached_class
    from multiflow.engine.factories import build_extractor, run_device
    from multiflow.errors import ConfigError

    cfg = make_config(grid, data, cache)
    if quick:
        from multiflow.synth import generate_dataset

        generate_dataset(data, classes=grid["classes"], n_train=grid["n"], n_test_good=grid["n_test_good"],
                         n_test_defect=grid["n_test_defect"], size=grid["size"], seed=0, workers=1,
                         defects=grid["defects"], variation=grid["variation"], progress=progress)
    for cls in grid["classes"]:
        if not (data / f"realiad_{grid['size']}" / cls).is_dir():
            raise ConfigError(f"{data}: no {grid['size']} px images of class {cls!r} (realiad_{grid['size']}/{cls}); "
                              "pass --data with a multiflow synth data set of this class")
    extractor = build_extractor(cfg.features)
    device, _ = run_device(cfg.train)
    out = {cls: load_cached_class(cfg, cls, extractor, progress=progress, device=device) for cls in grid["classes"]}
    for cls, d in out.items():
        if len(d.train_features) < grid["n"]:
            raise ConfigError(f"{data}: class {cls!r} has {len(d.train_features)} normal training objects, "
                              f"fewer than --n {grid['n']}")
    return out


# ------------------------------------------------------------------------------------ one run
def run_dir(out: Path, cls: str, fusion: str, schedule: str, seed: int) -> Path:
    return out / "runs" / cls / fusion / schedule / f"seed{seed}"


def level_off_epoch(val_losses: list[float], delta: float) -> int:
    """The first epoch (1-based) whose held-out loss is within ``delta`` of the lowest one."""
    best = min(val_losses)
    return next(i + 1 for i, v in enumerate(val_losses) if v <= best + delta)


def _gamma_abs(model) -> float:
    from multiflow.flow.subnet import view_gammas

    g = np.abs(np.asarray(view_gammas(model), dtype=float))
    return float(g.mean()) if g.size else 0.0


def train_run(cfg, d, n: int, folder: Path, *, deadline: float | None, progress: bool) -> dict[str, Any] | None:
    """Train (or continue) one run, one epoch per :func:`train_flow` call (each continuing the state);
    returns its result record, or None when the sitting's deadline came first."""
    from multiflow.engine.factories import build_flow, run_device
    from multiflow.engine.maps import compute_maps
    from multiflow.engine.train import split_train_val, train_flow

    from benchmarks.lib.curve_cells import evaluate_maps

    tcfg = cfg.train
    feats = d.train_features[:n]
    masks = None if d.train_masks is None else d.train_masks[:n]
    model = build_flow(cfg.model, d.channels, d.view_names, tcfg.seed)
    state = folder / "train_state"
    cores = os.cpu_count() or 1
    clock: dict[str, float] = {}

    def on_epoch(record: dict[str, Any]) -> None:  # keys added here are kept in the run's history
        wall, cpu = time.perf_counter() - clock["wall"], time.process_time() - clock["cpu"]
        record.update(seconds=wall, cpu_share=cpu / max(wall * cores, 1e-9), steps=record["epoch"] * steps_per_epoch,
                      gamma_abs=_gamma_abs(model))

    steps_per_epoch = math.ceil(len(split_train_val(n, tcfg.val_fraction, tcfg.seed)[0]) / tcfg.batch_size)
    while True:
        clock.update(wall=time.perf_counter(), cpu=time.process_time())
        result = train_flow(model, feats, masks, tcfg, state, resume=True, progress=False, on_epoch=on_epoch,
                            stop_after_epochs=1)
        done = bool(result.stop_reason) or len(result.history) >= tcfg.epochs
        if progress and result.history:
            r = result.history[-1]
            print(f"  {folder.relative_to(folder.parents[3])}: epoch {r['epoch']}/{tcfg.epochs} train "
                  f"{r['train_loss']:.4f} held-out {r.get('val_loss', float('nan')):.4f} lr {r['lr']:.3g} "
                  f"({r.get('seconds', 0):.0f} s)", flush=True)
        if done:
            break
        if deadline is not None and time.perf_counter() > deadline:
            return None
    device, precision = run_device(tcfg)
    t0 = time.perf_counter()
    maps = compute_maps(model, d.test_features, d.test_masks, batch_size=16, device=device, precision=precision)
    rec: dict[str, Any] = {"history": result.history, "best_epoch": result.best_epoch,
                           "best_val_loss": result.best_val_loss, "stop_reason": result.stop_reason,
                           "planned_epochs": tcfg.epochs, "steps_per_epoch": steps_per_epoch,
                           "train_samples": int(len(result.train_index)), "score_seconds": time.perf_counter() - t0,
                           **evaluate_maps(maps, d)}
    return rec


def summarise(rec: dict[str, Any], delta: float) -> dict[str, Any]:
    """Level-off epoch, steps and wall seconds to it, stop, CPU share of a finished run's record."""
    h = rec["history"]
    val = [r["val_loss"] for r in h]
    level = level_off_epoch(val, delta)
    secs = [r.get("seconds", 0.0) for r in h]
    falling = rec["best_epoch"] == len(h) and not rec["stop_reason"]
    return {
        "epochs": len(h), "best_epoch": rec["best_epoch"], "level_epoch": level, "converged": not falling,
        "stopped_early": bool(rec["stop_reason"]), "steps_to_level": h[level - 1]["steps"],
        "seconds_to_level": float(sum(secs[:level])), "seconds": float(sum(secs)),
        "s_per_step": float(sum(secs)) / max(h[-1]["steps"], 1),
        "cpu_share": float(sum(r.get("cpu_share", 0.0) * s for r, s in zip(h, secs)) / max(sum(secs), 1e-9)),
        "gamma_abs": h[rec["best_epoch"] - 1].get("gamma_abs"), "best_val_loss": rec["best_val_loss"],
    }


# ------------------------------------------------------------------------------------ the report
def _cross_view(rec: dict[str, Any]) -> float | None:
    from multiflow.synth.defects import CROSS_VIEW_CODES

    vals = [v["s_auroc"] for k, v in (rec.get("per_defect") or {}).items()
            if k in CROSS_VIEW_CODES and v.get("s_auroc") is not None]
    return float(np.mean(vals)) if vals else None


def plot(runs: list[tuple[tuple, dict]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted({k[0] for k, _ in runs})
    fig, axes = plt.subplots(1, len(classes), figsize=(6 * len(classes), 4), squeeze=False)
    for ax, cls in zip(axes[0], classes):
        for (c, fusion, sched, seed), rec in runs:
            if c != cls:
                continue
            h = rec["history"]
            ax.plot([r["epoch"] for r in h], [r["val_loss"] for r in h], label=f"{fusion} / {sched} / s{seed}")
            ax.axvline(rec["summary"]["level_epoch"], color=ax.lines[-1].get_color(), ls=":", lw=0.8)
        ax.set_title(cls)
        ax.set_xlabel("epoch")
        ax.set_ylabel("held-out loss (NLL per foreground pixel)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Held-out loss per epoch (dotted: level-off epoch)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _curve_epochs(last: int) -> list[int]:
    """The epochs the per-epoch table shows: every epoch up to 10, then every 5th, and the last."""
    return sorted({e for e in range(1, last + 1) if e <= 10 or e % 5 == 0} | {last})


def report(runs: list[tuple[tuple, dict]], grid: dict[str, Any], ctx: dict[str, Any]) -> str:
    lines = [f"### Convergence at N = {grid['n']}: when does the held-out loss level off?", ""]
    if ctx.get("quick"):
        lines += ["**Quick check (`--quick`): tiny data and flow, far too small for conclusions.**", ""]
    if ctx["missing"]:
        lines += [f"**Incomplete: {ctx['missing']} of {ctx['total']} runs not finished (rerun the command to "
                  "continue).**", ""]
    conv_cost: dict[tuple, float] = {}
    for (cls, fusion, sched, seed), rec in runs:
        if fusion == "conv":
            conv_cost[(cls, sched, seed)] = rec["summary"]["s_per_step"]
    lines += ["| class | fusion | schedule | epochs (stop) | best | level-off | steps to level-off | "
              "wall to level-off | s / step (vs conv) | CPU share | abs gamma | S-AUROC | I-AUROC | cross-view S-AUROC |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (cls, fusion, sched, seed), rec in runs:
        s = rec["summary"]
        stop = "early" if s["stopped_early"] else "cap, still falling" if not s["converged"] else "cap"
        ref = conv_cost.get((cls, sched, seed))
        ratio = f" ({s['s_per_step'] / ref:.2f}x)" if ref else ""
        cv = _cross_view(rec)
        m = rec["metrics"]
        lines.append(
            f"| {cls} | {fusion} | {sched} | {s['epochs']} ({stop}) | {s['best_epoch']} | "
            f"{s['level_epoch']}{'' if s['converged'] else ' (lower bound)'} | {s['steps_to_level']} | "
            f"{s['seconds_to_level'] / 60:.1f} min | {s['s_per_step']:.2f}{ratio} | {s['cpu_share']:.2f} | "
            f"{s['gamma_abs']:.3f} | {100 * (m['s_auroc'] or 0):.2f} | {100 * (m['i_auroc'] or 0):.2f} | "
            + (f"{100 * cv:.2f}" if cv is not None else "-") + " |")
    lines.append("")
    sched_txt = "; ".join(f"`{k}`: " + ", ".join(f"{a}={b}" for a, b in SCHEDULES[k].items()) for k in grid["schedules"])
    lines += [
        f"Definitions: *level-off* = the first epoch whose held-out loss is within {ctx['level_delta']:g} nats per "
        "foreground pixel of the run's lowest; steps and wall time to level-off count every epoch up to it "
        "(wall: training + held-out pass per epoch); *cap, still falling* = the lowest held-out loss is at the last "
        f"epoch of the cap ({grid['epochs']}) and early stopping (patience {grid['patience']}) never fired, so the "
        "level-off epoch is a lower bound. s / step: wall seconds per optimiser step over the whole run, and in "
        "brackets relative to the conv fusion of the same class, schedule and seed in this run. abs gamma: mean "
        "|gamma| of the fusion gates of the selected epoch. Cross-view S-AUROC: mean over the cross-view-only "
        "defect types in the test set (FM, ML, LB where present).", "",
        f"Schedules: {sched_txt}. A cosine decays over its planned epochs (the cap unless stated).", "",
    ]
    last = max((rec["summary"]["epochs"] for _, rec in runs), default=0)
    if last:
        lines += ["Held-out loss per epoch (NLL per foreground pixel; '-': the run had stopped):", ""]
        names = [f"{cls} {fusion} {sched} s{seed}" for (cls, fusion, sched, seed), _ in runs]
        lines += ["| epoch | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for e in _curve_epochs(last):
            cells = []
            for _, rec in runs:
                h = rec["history"]
                cells.append(f"{h[e - 1]['val_loss']:.4f}" if e <= len(h) else "-")
            lines.append(f"| {e} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"![convergence]({ctx['plot']})", "",
        f"Command: `{ctx['command']}`  ",
        f"Data: {ctx['data']}, classes {grid['classes']}, the first N = {grid['n']} normal training objects "
        f"(10 % held out for the held-out loss), lite0 at {grid['input_size']} px ({ctx['grid']} feature maps), "
        f"ground-truth silhouette masks; Multi-Flow real_iad graph, flow "
        f"{' '.join(grid.get('model') or []) or 'as in the paper (6 blocks, hidden 64)'}; batch {grid['batch']}, "
        f"precision {ctx['precision']}; seeds {grid['seeds']}.  ",
        f"Machine: {ctx['machine']}; shared with other work (see the CPU share).  ",
        f"Cost: {ctx['hours']:.2f} h of training over the finished runs; peak RSS {ctx['rss']:.0f} MiB.",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    from multiflow.errors import MultiflowError

    args = parse_args(argv)
    t_start = time.perf_counter()
    grid = dict(QUICK if args.quick else FULL)
    grid["fusions"] = args.fusions or default_fusions()
    for key in ("classes", "schedules", "seeds", "n", "epochs", "patience"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    out = Path(args.out) if args.out else ROOT / "results" / ("convergence-quick" if args.quick else "convergence")
    data, cache = (out / "data", out / "cache") if args.quick else (Path(args.data), Path(args.cache))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    plan = [(cls, f, s, seed) for cls in grid["classes"] for f in grid["fusions"] for s in grid["schedules"]
            for seed in grid["seeds"]]
    deadline = t_start + 60 * args.max_minutes if args.max_minutes else None
    print(f"== convergence: {len(plan)} runs ({len(grid['classes'])} classes x {len(grid['fusions'])} fusions x "
          f"{len(grid['schedules'])} schedules x {len(grid['seeds'])} seeds), N = {grid['n']}, up to {grid['epochs']} "
          f"epochs, patience {grid['patience']} -> {out}", flush=True)
    todo = sum(not (run_dir(out, *k) / "result.json").is_file() for k in plan)
    print(f"== {todo} runs to do; at most {todo * grid['epochs'] * estimate_epoch_seconds(grid) / 3600:.1f} h on 2 "
          f"quiet cores for the conv fusion (every run to the cap; early stopping ends most before it)", flush=True)
    try:
        from multiflow.flow.fusion import get_fusion

        for f in grid["fusions"]:
            get_fusion(f)  # an unknown name is an error before any work
        check_settings(out, {k: grid[k] for k in SHARED} | {"data": str(data), "precision": args.precision})
        loaded = load_data(grid, data, cache, quick=args.quick, progress=not args.quiet)
        for key in plan:
            cls, fusion, sched, seed = key
            folder = run_dir(out, *key)
            if (folder / "result.json").is_file() or args.report:
                continue
            cfg = make_config(grid, data, cache, fusion, SCHEDULES[sched], seed=seed, precision=args.precision,
                              threads=args.threads)
            check_settings(folder, {"train": dataclasses.asdict(cfg.train) | {"threads": 0},
                                    "model": dataclasses.asdict(cfg.model), "n": grid["n"], "data": str(data)})
            print(f"== {cls} {fusion} {sched} seed {seed}", flush=True)
            rec = train_run(cfg, loaded[cls], grid["n"], folder, deadline=deadline, progress=not args.quiet)
            if rec is None:
                print(f"== --max-minutes {args.max_minutes:g}: stopping inside {folder}; rerun to continue", flush=True)
                break
            rec |= {"class": cls, "fusion": fusion, "schedule": sched, "seed": seed}
            rec["summary"] = summarise(rec, args.level_delta)
            write_json(folder / "result.json", rec, default=float)
            if not args.keep_states:
                shutil.rmtree(folder / "train_state", ignore_errors=True)
            s = rec["summary"]
            print(f"done {cls} {fusion} {sched} seed {seed}: {s['epochs']} epochs, best {s['best_epoch']}, level-off "
                  f"{s['level_epoch']}, S-AUROC {100 * (rec['metrics']['s_auroc'] or 0):.2f}", flush=True)
    except MultiflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = []
    for key in plan:
        path = run_dir(out, *key) / "result.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            rec["summary"] = summarise(rec, args.level_delta)  # --level-delta may differ from the run's
            runs.append((key, rec))
    if not runs:
        print("== no finished runs yet", flush=True)
        return 0
    write_md = not args.no_benchmarks_md and not args.quick
    plot_path = PLOT if write_md else out / "convergence.png"
    plot(runs, plot_path)
    d0 = loaded[grid["classes"][0]]
    ctx = {"quick": args.quick, "missing": len(plan) - len(runs), "total": len(plan),
           "command": "python benchmarks/convergence.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
           "machine": machine_line(), "level_delta": args.level_delta, "precision": args.precision,
           "data": os.path.relpath(data, ROOT) if data.is_relative_to(ROOT) else str(data),
           "grid": "x".join(str(x) for x in d0.train_features.shape[-2:]),
           "hours": sum(r["summary"]["seconds"] for _, r in runs) / 3600, "rss": peak_rss_mb(),
           "plot": os.path.relpath(plot_path, ROOT) if write_md else plot_path.name}
    md = report(runs, grid, ctx)
    if write_md:
        update_section(SECTION, md)
    write_text(out / "report.md", md + "\n")
    print(md)
    print(f"== {len(runs)}/{len(plan)} runs finished; this invocation took {(time.perf_counter() - t_start) / 60:.1f} min",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
