"""Throughput of the synthetic data generator (images/s written to disk, JPEG + masks + silhouettes).

Usage: ``python benchmarks/bench_synth.py [--size 256] [--samples 40] [--workers 2] [--quick]``.
Writes the ``synth`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import CpuShare, machine_line, peak_rss_mb, update_section  # noqa: E402

from multiflow.synth import DEFAULT_CLASSES, generate_dataset, render_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=40, help="samples per class (half normal, half defective)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 samples per class (a smoke run)")
    args = parser.parse_args()
    n = 8 if args.quick else args.samples
    n_views = 5
    # single-process render cost per view, per class (no disk I/O)
    per_class = {}
    for cls in DEFAULT_CLASSES:
        render_sample(cls, size=args.size, seed=0)  # warm-up
        t = time.process_time()
        for k in range(3):
            render_sample(cls, defect=("HS", "YW", "QS")[k], size=args.size, seed=k + 1)
        per_class[cls] = (time.process_time() - t) / (3 * n_views)
    t_children = os.times()
    with tempfile.TemporaryDirectory() as tmp, CpuShare() as share:
        generate_dataset(Path(tmp) / "ds", classes=DEFAULT_CLASSES, n_train=n // 2, n_test_good=0,
                         n_test_defect=n - n // 2, size=args.size, n_views=n_views, seed=0,
                         workers=args.workers, progress=False)
    after = os.times()
    child_cpu = (after.children_user - t_children.children_user) + (after.children_system - t_children.children_system)
    total_share = (share.cpu + child_cpu) / max(share.wall * share.cores, 1e-9)
    n_images = n * len(DEFAULT_CLASSES) * n_views
    rate = n_images / share.wall
    cmd = "python benchmarks/bench_synth.py " + " ".join(sys.argv[1:])
    lines = [
        "## synth: synthetic data generator throughput",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {machine_line()}  ",
        f"CPU share: {total_share:.2f} (CPU seconds of this process and its worker processes / "
        f"(wall seconds x {share.cores} cores))  ",
        "",
        f"`generate_dataset` with {args.workers} worker process(es): {n_images} images "
        f"({len(DEFAULT_CLASSES)} classes x {n} samples x {n_views} views) at {args.size}x{args.size} "
        f"in {share.wall:.1f} s = **{rate:.1f} images/s** (goal >= 20 images/s on 2 cores), including "
        f"JPEG/PNG encoding of images, masks and silhouettes and process start-up. CPU cost: "
        f"{n_images / max(share.cpu + child_cpu, 1e-9):.1f} images per CPU-second, i.e. about "
        f"{2 * n_images / max(share.cpu + child_cpu, 1e-9):.0f} images/s if the run had 2 whole cores.",
        "",
        "| class | render CPU ms / view (1 process, no I/O) |",
        "|---|---|",
        *[f"| {c} | {1000 * v:.1f} |" for c, v in per_class.items()],
        "",
        f"Peak RSS (main process): {peak_rss_mb():.0f} MiB." + (" Quick mode (smoke run)." if args.quick else ""),
    ]
    update_section("synth", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
