"""Early stopping on the held-out normal loss vs the paper's fixed schedule (issue 11, part 2).

The default ``multiflow fit`` schedule (112 epochs, lr 2e-4, batch 8: the paper's) on the benchmark
suite's synthetic classes, once with early stopping (``train.early_stopping_patience``) and once
without. Training is deterministic and a resumed run equals the uninterrupted one, so the fixed
schedule is obtained by *continuing* the early-stopped run from its resume state with early stopping
off (tested: ``tests/engine/test_engine_train.py``): one training per (class, seed) instead of two,
and the epochs both runs share are counted once. The wall time of the fixed schedule is the stopped
run's time plus the continuation's.

Per (class, seed) the record (``<out>/cells/<class>/seed<k>.json``, written atomically; a rerun skips
finished ones) holds: the epoch early stopping ended at, the selected epoch of each run, the training
seconds of each, and S-/I-AUROC (and per-defect S-AUROC) of the model each run selects. The stop
epochs other patience values would give come from the full run's held-out loss history (the same
rule as :func:`multiflow.engine.train.train_flow`).

    .venv/bin/python benchmarks/early_stopping.py                  # 2 classes x 2 seeds (~25 min on 2 quiet cores)
    .venv/bin/python benchmarks/early_stopping.py --quick          # a minute, for checking

Result: BENCHMARKS.md section ``early_stopping``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import paper_experiments as pe  # noqa: E402
from benchmarks._report import CpuShare, machine_line, update_section  # noqa: E402
from benchmarks.lib.data import CachedClass, load_cached_class  # noqa: E402
from multiflow._atomic import write_json, write_text  # noqa: E402

SECTION = "early_stopping"
FULL = dict(pe.FULL, epochs=112, lr=2e-4, batch=8, seeds=[0, 1], patience=10)
QUICK = dict(pe.QUICK, n_train=10, epochs=6, lr=2e-4, batch=4, seeds=[0], patience=1)
OTHER_PATIENCE = (5, 10, 20)


def stop_epoch(val_losses: list[float], patience: int, min_delta: float = 0.0) -> int:
    """The epoch (1-based) early stopping ends a run with these held-out losses, or len() if it never
    does: the rule of ``train_flow`` (a new best must beat the best by more than ``min_delta``)."""
    best, wait = math.inf, 0
    for i, v in enumerate(val_losses):
        if v < best - min_delta:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience and i + 1 < len(val_losses):
                return i + 1
    return len(val_losses)


def _metrics(model, data, on) -> dict[str, Any]:
    from multiflow.engine.maps import compute_maps
    from multiflow.scoring import image_scores_from_maps
    from multiflow.metrics import evaluate_exact

    maps = compute_maps(model, data.test_features, data.test_masks, batch_size=16, **on)
    r = evaluate_exact(maps, None, labels=data.labels, image_scores=image_scores_from_maps(maps).numpy(),
                       sample_ids=data.sample_ids, defects=data.defects, how="max").as_dict()
    return {"s_auroc": r.get("s_auroc"), "i_auroc": r.get("i_auroc"),
            "per_defect": {k: v.get("s_auroc") for k, v in (r.get("per_defect") or {}).items()}}


def run_cell(cfg, sizes: dict[str, Any], cls: str, seed: int, data, out: Path) -> dict[str, Any]:
    import dataclasses

    from multiflow.engine.factories import build_flow, run_device
    from multiflow.engine.train import train_flow

    path = out / "cells" / cls / f"seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    state = out / "state" / cls / f"seed{seed}"
    shutil.rmtree(state, ignore_errors=True)  # a cell is the unit of resumption
    es_cfg = dataclasses.replace(cfg.train, seed=seed, early_stopping_patience=sizes["patience"],
                                 early_stopping_min_delta=0.0, checkpoint_minutes=0.0, checkpoint_every=0)
    device, precision = run_device(es_cfg)
    on = dict(device=device, precision=precision)
    rec: dict[str, Any] = {"class": cls, "seed": seed, "patience": sizes["patience"], "epochs": es_cfg.epochs}
    with CpuShare() as share:
        model = build_flow(cfg.model, data.channels, data.view_names, seed)
        t0 = time.perf_counter()
        es = train_flow(model, data.train_features, data.train_masks, es_cfg, state, progress=False, device=device)
        rec["es_seconds"] = time.perf_counter() - t0
        rec["es_epochs"], rec["es_best_epoch"], rec["stop_reason"] = len(es.history), es.best_epoch, es.stop_reason
        rec["es_metrics"] = _metrics(model, data, on)
        full_cfg = dataclasses.replace(es_cfg, early_stopping_patience=0)
        model = build_flow(cfg.model, data.channels, data.view_names, seed)
        t0 = time.perf_counter()
        full = train_flow(model, data.train_features, data.train_masks, full_cfg, state, resume=True,
                          progress=False, device=device)
        rec["full_seconds"] = rec["es_seconds"] + time.perf_counter() - t0
        rec["full_epochs"], rec["full_best_epoch"] = len(full.history), full.best_epoch
        rec["full_metrics"] = _metrics(model, data, on)
        losses = [r.get("val_loss", r.get("train_loss")) for r in full.history]
        rec["val_loss"] = losses
        rec["stop_epoch_for_patience"] = {str(p): stop_epoch(losses, p) for p in OTHER_PATIENCE}
    rec["cpu_share"] = share.share
    shutil.rmtree(state, ignore_errors=True)
    write_json(path, rec, default=float)
    return rec


def load_class(cfg, cls: str, extractor, progress: bool) -> CachedClass:
    """The class's cached features, masks and test labels; ``extractor``: the feature extractor,
    built once for all classes."""
    from multiflow.engine.factories import run_device

    return load_cached_class(cfg, cls, extractor, progress=progress, device=run_device(cfg.train)[0])


def report(recs: list[dict[str, Any]], sizes: dict[str, Any], cmd: str) -> str:
    lines = [
        "## Early stopping vs the fixed schedule",
        "",
        f"Default `multiflow fit` schedule ({sizes['epochs']} epochs, lr {sizes['lr']}, batch {sizes['batch']}) on the "
        f"suite's synthetic classes ({sizes['n_train']} normal training objects, 10 % held out, {sizes['size']} px, lite0), "
        f"early stopping with patience {sizes['patience']} (min delta 0) on the held-out normal loss vs the whole "
        "schedule. The fixed schedule continues the early-stopped run (resume is exact), so both share their first epochs.",
        "",
        "| class | seed | stopped at epoch | selected epoch (ES / full) | training s (ES / full) | time saved | "
        "S-AUROC ES / full | I-AUROC ES / full | stop epoch for patience " + " / ".join(map(str, OTHER_PATIENCE)) + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in recs:
        e, f = r["es_metrics"], r["full_metrics"]
        lines.append(
            f"| {r['class']} | {r['seed']} | {r['es_epochs']} of {r['full_epochs']} | {r['es_best_epoch']} / "
            f"{r['full_best_epoch']} | {r['es_seconds']:.0f} / {r['full_seconds']:.0f} | "
            f"{100 * (1 - r['es_seconds'] / r['full_seconds']):.0f} % | {100 * e['s_auroc']:.2f} / {100 * f['s_auroc']:.2f} | "
            f"{100 * e['i_auroc']:.2f} / {100 * f['i_auroc']:.2f} | "
            + " / ".join(str(r["stop_epoch_for_patience"][str(p)]) for p in OTHER_PATIENCE) + " |")
    if recs:
        saved = 1 - sum(r["es_seconds"] for r in recs) / sum(r["full_seconds"] for r in recs)
        ds = [100 * (r["es_metrics"]["s_auroc"] - r["full_metrics"]["s_auroc"]) for r in recs]
        di = [100 * (r["es_metrics"]["i_auroc"] - r["full_metrics"]["i_auroc"]) for r in recs]
        share = sum(r["cpu_share"] * r["full_seconds"] for r in recs) / sum(r["full_seconds"] for r in recs)
        lines += ["", f"Over {len(recs)} runs: early stopping saves {100 * saved:.0f} % of the training time; "
                  f"S-AUROC changes by {np.mean(ds):+.2f} pp (range {min(ds):+.2f} to {max(ds):+.2f}), I-AUROC by "
                  f"{np.mean(di):+.2f} pp (range {min(di):+.2f} to {max(di):+.2f}) (early stopping minus full schedule). "
                  f"CPU share {share:.2f}."]
    lines += ["", f"Command: `{cmd}`  ", f"Machine: {machine_line()}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from multiflow.errors import MultiflowError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="", help="results folder (default results/early-stopping[-quick])")
    p.add_argument("--quick", action="store_true", help="tiny check (1 class, 6 epochs)")
    p.add_argument("--classes", nargs="+")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--patience", type=int)
    p.add_argument("--no-benchmarks-md", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in ("classes", "seeds", "patience"):
        if getattr(args, key):
            sizes[key] = getattr(args, key)
    out = Path(args.out) if args.out else ROOT / "results" / ("early-stopping-quick" if args.quick else "early-stopping")
    recs = []
    try:
        pe.ensure_synthetic(out / "data", sizes, progress=not args.quiet)
        cfg = pe.make_config(argparse.Namespace(base_masks="", config=None, epochs=0, set=[]), out / "data",
                             out / "cache", sizes["classes"], sizes)
        from multiflow.engine.factories import build_extractor

        extractor = build_extractor(cfg.features)
        data = {cls: load_class(cfg, cls, extractor, progress=not args.quiet) for cls in sizes["classes"]}
        for seed in sizes["seeds"]:  # seed-major: an interrupted run has every class on the first seeds
            for cls in sizes["classes"]:
                r = run_cell(cfg, sizes, cls, seed, data[cls], out)
                print(f"{cls} seed {seed}: stopped at {r['es_epochs']}/{r['full_epochs']}, "
                      f"{r['es_seconds']:.0f} s vs {r['full_seconds']:.0f} s; S-AUROC {100 * r['es_metrics']['s_auroc']:.2f} "
                      f"vs {100 * r['full_metrics']['s_auroc']:.2f}", flush=True)
                recs.append(r)
    except MultiflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cmd = "python benchmarks/early_stopping.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    md = report(recs, sizes, cmd)
    print(md)
    write_text(out / "report.md", md + "\n")
    if not args.no_benchmarks_md and not args.quick:
        update_section(SECTION, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
