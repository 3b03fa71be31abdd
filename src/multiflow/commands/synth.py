"""``multiflow synth``: write a synthetic multi-view data set in Real-IAD's format."""

from __future__ import annotations

import argparse
import os

from multiflow.numbers import number_arg

NAME = "synth"
HELP = "Render a synthetic multi-view inspection data set (Real-IAD on-disk format)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; a rerun resumes)")
    parser.add_argument("--classes", default="bottle_cap,lock_nut,toy_brick,plastic_plug,terminal_block",
                        help="comma-separated classes (aliases: cap, nut, brick, plug, terminal)")
    parser.add_argument("--train", type=int, default=20, help="normal training samples per class")
    parser.add_argument("--test-good", type=int, default=10, help="normal test samples per class")
    parser.add_argument("--test-defect", type=int, default=18,
                        help="defective test samples per class (cycling through the defect codes)")
    parser.add_argument("--defects", default="AK,BX,CH,HS,PS,QS,YW,ZW,CI",
                        help="comma-separated defect codes to use (also: FM, the cross-view face colour "
                             "mismatch; not in the default set)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--views", type=int, default=5, help="number of cameras (C1 top + side cameras), 1..9")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variation", default="default", choices=["default", "realistic"],
                        help="instance variation: default (the original generator) or realistic "
                             "(4 production lots shifting colour/gloss, 2.5x pose jitter)")
    parser.add_argument("--lots", type=int, default=None, help="number of production lots (0: none; "
                        "overrides --variation)")
    parser.add_argument("--pose-jitter", type=number_arg(ge=0), default=None,
                        help="scale of yaw / tray-offset variation (1: default; overrides --variation)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")


def run(args: argparse.Namespace) -> int:
    from multiflow.synth import generate_dataset

    summary = generate_dataset(
        args.out,
        classes=[c.strip() for c in args.classes.split(",") if c.strip()],
        n_train=args.train, n_test_good=args.test_good, n_test_defect=args.test_defect,
        size=args.size, n_views=args.views, seed=args.seed, workers=args.workers,
        defects=[c.strip() for c in args.defects.split(",") if c.strip()],
        variation=args.variation, lots=args.lots, pose_jitter=args.pose_jitter,
    )
    for cls, info in summary["classes"].items():
        print(f"{cls}: {info['train']} train / {info['test']} test images -> {info['json']}")
    return 0
