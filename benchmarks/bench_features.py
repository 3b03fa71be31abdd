"""Feature extraction speed: images/s, FLOPs per image and the share of the machine's peak.

Backbones: EfficientNet-Lite0 (end of stage 6) at 384 and 768, the paper's EfficientNet-B5 (end
of stage 6 = block 36) at 768, random weights (speed does not depend on the values). FLOPs are
counted with ``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add = 2 FLOPs; depthwise
convolutions counted with their groups). The machine's fp32 peak is measured in the same run as
the best of several large matmuls, so "share of peak" compares like with like. Writes the
``features`` section of BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_features.py            # about 2-4 minutes on 2 quiet cores
    .venv/bin/python benchmarks/bench_features.py --quick    # one timed batch per backbone
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import CpuShare, machine_line, peak_rss_mb, update_section  # noqa: E402

CONFIGS = (("lite0", 384), ("lite0", 768), ("b5", 768))


def matmul_peak_gflops(n: int, repeats: int) -> float:
    """Best GFLOP/s of an ``n x n`` fp32 matmul (2 n^3 FLOPs)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def count_flops(extractor, size: int) -> float:
    """FLOPs of one image through the backbone body (preprocessing excluded)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        extractor.body(x)
    return float(counter.get_total_flops())


def time_backbone(name: str, size: int, batch: int, min_seconds: float, max_batches: int) -> dict:
    import torch

    from multiflow.features.backbones import build_backbone

    ext = build_backbone(name, input_size=size, pretrained=False)
    flops = count_flops(ext, size)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    ext(x[:1])  # warm-up (allocations, oneDNN kernels)
    images, batches = 0, 0
    with CpuShare() as share:
        start = time.perf_counter()
        while batches < max_batches and (batches == 0 or time.perf_counter() - start < min_seconds):
            ext(x)
            images += batch
            batches += 1
    ips = images / share.wall
    return {
        "name": name, "size": size, "channels": ext.channels, "grid": ext.feature_size(size),
        "flops": flops, "ips": ips, "gflops_s": ips * flops / 1e9, "cpu_share": share.share, "images": images,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed batch per backbone, smaller matmul")
    parser.add_argument("--batch", type=int, default=2, help="images per forward pass")
    parser.add_argument("--seconds", type=float, default=20.0, help="minimum timed seconds per backbone")
    args = parser.parse_args(argv)

    import torch

    n, reps = (1024, 3) if args.quick else (2048, 5)
    with CpuShare() as peak_share:
        peak = matmul_peak_gflops(n, reps)
    rows = []
    for name, size in CONFIGS:
        r = time_backbone(name, size, args.batch, 0.0 if args.quick else args.seconds, 1 if args.quick else 10**6)
        rows.append(r)
        print(f"{name}@{size}: {r['ips']:.2f} img/s, {r['flops'] / 1e9:.2f} GFLOP/img, "
              f"{r['gflops_s']:.1f} GFLOP/s ({r['gflops_s'] / peak:.0%} of peak), CPU share {r['cpu_share']:.0%}")
    cmd = " ".join(["python benchmarks/bench_features.py"] + (argv if argv is not None else sys.argv[1:]))
    lines = [
        "## Feature extraction (frozen backbone, CPU)",
        "",
        f"Command: `{cmd}`{' (quick mode: one timed batch each, numbers are rough)' if args.quick else ''}",
        f"Machine: {machine_line()}",
        f"Peak fp32 (best {n}x{n} matmul in this run): **{peak:.1f} GFLOP/s** "
        f"(CPU share during the matmuls {peak_share.share:.0%})",
        "",
        "| backbone | input | features (C x h x w) | GFLOP / image | images/s | GFLOP/s | share of peak | CPU share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['size']} | {r['channels']} x {r['grid'][0]} x {r['grid'][1]} | "
            f"{r['flops'] / 1e9:.2f} | {r['ips']:.2f} | {r['gflops_s']:.1f} | {r['gflops_s'] / peak:.0%} | "
            f"{r['cpu_share']:.0%} |"
        )
    lines += [
        "",
        f"Batch {args.batch} images per forward, random weights, `torch.no_grad`, {torch.get_num_threads()} torch "
        f"threads; FLOPs from `FlopCounterMode` (2 per multiply-add). Peak RSS {peak_rss_mb():.0f} MiB. "
        "CPU share = process CPU time / (wall x cores): below ~95% means other work shared the machine.",
        "EfficientNets are dominated by depthwise and 1x1 convolutions of low arithmetic intensity, so "
        "expect a far lower share of peak than the flow's large convolutions reach.",
    ]
    update_section("features", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
