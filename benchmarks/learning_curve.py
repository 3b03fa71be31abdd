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
* ``patchcore``: PatchCore (:mod:`multiflow.baselines`) on the same features and masks;
* ``fusion-<name>``: Multi-Flow with the fusion operator ``<name>`` instead of the paper's conv, one
  method for every other entry of :data:`multiflow.flow.fusion.FUSIONS` (opt-in).

Converged flows: every flow trains until its held-out loss has not improved for ``--patience``
epochs (default 8; ``--epochs`` is the cap, default 60), with the learning-rate schedule of
``--lr-schedule``/``--warmup-epochs``/``--lr-min``/``--gamma-lr`` (``train.*``,
:mod:`multiflow.engine.schedule`). These settings are part of the results folder's settings: a
folder holds cells of one schedule, another schedule is refused (use another ``--out``). The test
set holds the nine standard defect types and the three that only a comparison across views reveals
(FM, ML, LB; :data:`multiflow.synth.defects.CROSS_VIEW_CODES`), reported per defect type.

Each (class, N, method, seed) cell is stored as ``<out>/cells/<class>/n<N>/<method>/seed<k>.json``
(atomically) as soon as it finishes; a rerun skips finished cells, so killing the run loses at most
the cell in progress. Every flow cell records the learned per-view ``gamma`` of its st-networks
(:func:`multiflow.flow.subnet.view_gammas`); Multi-Flow cells are also scored with the cross-view
messages switched off at test time (:func:`multiflow.flow.subnet.cross_view_scaled`), and every cell
keeps its per-defect-type results: the diagnosis when Multi-Flow does not win.

    python benchmarks/learning_curve.py                     # default grid (hours: up to 60 epochs a flow)
    python benchmarks/learning_curve.py --lr-schedule cosine --warmup-epochs 2 --lr-min 1e-5 --out results/lc-cosine
    python benchmarks/learning_curve.py --max-minutes 60    # stop cleanly after ~1 h; rerun continues
    python benchmarks/learning_curve.py --sizes 25 50 100 200 400 --seeds 0 1 2 3 4
    python benchmarks/learning_curve.py --quick             # tiny grid, a few minutes (smoke test)

Output: BENCHMARKS.md section ``learning_curve`` (table mean ± std over seeds + the diagnosis) and
the plot ``docs/learning_curve.png`` (S-AUROC and I-AUROC vs N, one line per method);
``--quick`` writes both under ``--out`` only.

The grid, the cells and the report are library modules (:mod:`benchmarks.lib.curve_plan`,
:mod:`benchmarks.lib.curve_cells`, :mod:`benchmarks.lib.curve_report`); this script runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import CpuShare, machine_line, peak_rss_mb, update_section  # noqa: E402
from benchmarks.lib.curve_cells import load_cells, rescore, run_cell  # noqa: E402
from benchmarks.lib.curve_plan import (  # noqa: E402
    FULL,
    METHODS,
    QUICK,
    SELECTING,
    SETTING_DEFAULTS,
    cell_path,
    estimate_prep_seconds,
    estimate_seconds,
    make_config,
    plan,
    prepare,
)
from benchmarks.lib.curve_report import complete_seeds, plot, report  # noqa: E402
from benchmarks.lib.results import check_settings, state_root  # noqa: E402
from multiflow._atomic import write_json  # noqa: E402

SECTION = "learning_curve"
PLOT = ROOT / "docs" / "learning_curve.png"
#: Training states of running cells: ``/dev/shm/<STATE_NAME>-<pid>`` (:func:`benchmarks.lib.results.state_root`).
STATE_NAME = "multiflow-learning-curve"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="results folder (default results/learning_curve-converged, --quick: "
                   "results/learning_curve-quick)")
    p.add_argument("--quick", action="store_true", help="tiny grid (1 class, N = 4 and 8, 1 epoch, 96 px)")
    p.add_argument("--classes", nargs="+", help="synthetic classes")
    p.add_argument("--sizes", type=int, nargs="+", help="training sizes N (default 25 50 100 200)")
    p.add_argument("--seeds", type=int, nargs="+", help="train seeds (default 0 1 2)")
    p.add_argument("--methods", nargs="+", choices=sorted(METHODS), help="curves to run")
    p.add_argument("--epochs", type=int, help="training epochs of Multi-Flow (default 60; the cap with --patience)")
    p.add_argument("--patience", type=int, help="early stopping on the held-out loss after this many epochs "
                   "without improvement (default 8; 0: the fixed schedule); needs its own --out")
    p.add_argument("--defects", nargs="+", help="defect codes of the test set (default: the nine standard ones and "
                   "FM ML LB); the folder's data set is generated with them")
    p.add_argument("--min-delta", type=float, help="early stopping: an improvement must exceed this (default 0)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], help="train.lr_schedule (default constant)")
    p.add_argument("--warmup-epochs", type=float, help="train.warmup_epochs: linear warm-up (default 0)")
    p.add_argument("--lr-min", type=float, help="train.lr_min: the cosine's end rate (default 0)")
    p.add_argument("--gamma-lr", type=float, help="train.gamma_lr: the fusion gates' own rate (default 0 = lr)")
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
    for key in ("classes", "sizes", "seeds", "methods", "epochs", "defects"):
        if getattr(args, key):
            grid[key] = getattr(args, key)
    for key in ("patience", "min_delta", "lr", "lr_schedule", "warmup_epochs", "lr_min", "gamma_lr"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    out = Path(args.out) if args.out else ROOT / "results" / (
        "learning_curve-quick" if args.quick else "learning_curve-converged")
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
        check_settings(out, {k: v for k, v in grid.items() if k not in SELECTING}, defaults=SETTING_DEFAULTS)
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
        tmp_root = state_root(out, STATE_NAME)
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
