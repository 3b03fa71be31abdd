"""``multiflow test``: evaluate a trained run on the test split (metrics, pictures, report)."""

from __future__ import annotations

import argparse

from multiflow.scoring import VIEW_AGGREGATIONS

NAME = "test"
HELP = "evaluate a run's class models on their test split: S/I/P-AUROC, AUPRO, AP, F1, pictures, HTML report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `multiflow fit` (results/<run>)")
    p.add_argument("--streaming", action="store_true", help="bounded-memory pixel metrics (histogram binning)")
    p.add_argument("--aggregation", choices=list(VIEW_AGGREGATIONS),
                   help="override the models' view aggregation of the sample score (recorded in metrics.json)")
    p.add_argument("--no-pictures", action="store_true", help="skip the figures")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--labels", metavar="CSV_OR_DB",
                   help="re-evaluate the stored scores with operator labels from `multiflow review` (its "
                        "labels.sqlite or CSV export) instead of recomputing: writes <class>/metrics_relabelled.json")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from multiflow.config import load_config
    from multiflow.engine.pipeline import evaluate_run
    from multiflow.errors import CheckpointError

    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError("config.yaml not found: not a run folder written by `multiflow fit`", run_dir)
    if args.labels:
        from multiflow.review.reevaluate import reevaluate_run, relabelled_table

        print(relabelled_table(reevaluate_run(run_dir, args.labels)))
        return 0
    ov = list(args.overrides)
    if args.streaming:
        ov.append("eval.streaming=true")
    cfg = load_config(run_dir / "config.yaml", ov)
    test_overrides = {"aggregation": args.aggregation} if args.aggregation else None
    res = evaluate_run(run_dir, cfg, progress=not args.quiet, pictures=False if args.no_pictures else None,
                       overrides=test_overrides)
    print(res["table"])
    print()
    print(res["per_defect"])
    print(f"\nreport: {run_dir / 'report.html'}")
    return 0
