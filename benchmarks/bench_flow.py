"""Benchmark the multi-view flow: fused vs per-edge st-networks (same weights, same function).

Paper configuration: B = 8 samples, V = 5 views (Real-IAD graph), C = 304, 24 x 24, fp32, conv
fusion, noise condition. For each formulation, a separate worker process builds the same seeded model
(gamma set away from 0 so the st-networks matter), times the eval forward and a training step
(forward + masked loss + backward), and reports its own peak RSS, so memory peaks do not mix.
The parent process first asserts that both formulations give equal outputs (1e-4).

    .venv/bin/python benchmarks/bench_flow.py            # full run, writes the "flow" section
    .venv/bin/python benchmarks/bench_flow.py --quick    # B = 2, one repeat (smoke test)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import CpuShare, machine_line, peak_rss_mb, update_section  # noqa: E402

VARIANTS = ("fused", "per_edge")


def build(channels: int, fused: bool):
    import torch

    from multiflow.flow import MultiFlow, ViewGraph

    model = MultiFlow(channels, ViewGraph.real_iad(), fused=fused, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.02 + 0.08 * torch.rand(p.shape, generator=gen))
    return model


def inputs(batch: int, channels: int, size: int):
    import torch

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 5, channels, size, size, generator=gen)
    mask = torch.rand(batch, 5, size, size, generator=gen) > 0.3
    return x, mask


def worker(variant: str, batch: int, channels: int, size: int, repeats: int) -> dict:
    import torch

    model = build(channels, variant == "fused")
    x, mask = inputs(batch, channels, size)
    rss_built = peak_rss_mb()

    def fwd() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    def step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(x, generator=torch.Generator().manual_seed(0))
        model.masked_loss(out.nll, mask).backward()

    result: dict = {"variant": variant}
    for name, fn in (("forward", fwd), ("train_step", step)):
        fn()  # warm-up
        walls, cpus, shares = [], [], []
        for _ in range(repeats):
            with CpuShare() as cs:
                fn()
            walls.append(cs.wall)
            cpus.append(cs.cpu)
            shares.append(cs.share)
        result[name] = {"wall_s": min(walls), "cpu_s": min(cpus), "share": sum(shares) / len(shares)}
    result["rss_after_build_mb"] = rss_built
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def check_equal(batch: int, channels: int, size: int) -> float:
    """Max abs difference of z / logdet / nll between the two formulations (asserted <= 1e-4 rel.)."""
    import torch

    model = build(channels, True).eval()
    x, _ = inputs(batch, channels, size)
    with torch.no_grad():
        a = model(x)
        model.set_fused(False)
        b = model(x)
    worst = 0.0
    for name in ("z", "logdet", "nll"):
        ta, tb = getattr(a, name), getattr(b, name)
        torch.testing.assert_close(ta, tb, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")
        worst = max(worst, float((ta - tb).abs().max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B=2, one timed repeat")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--channels", type=int, default=304)
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batch = args.batch or (2 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.worker:
        print(json.dumps(worker(args.worker, batch, args.channels, args.size, repeats)))
        return 0

    worst = check_equal(min(batch, 2), args.channels, args.size)
    print(f"fused == per-edge: max abs diff {worst:.2e}", flush=True)
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", variant, "--batch", str(batch),
               "--channels", str(args.channels), "--size", str(args.size), "--repeats", str(repeats)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{variant}: {results[variant]} ({time.perf_counter() - t0:.0f} s)", flush=True)

    f, p = results["fused"], results["per_edge"]
    rerun = "`.venv/bin/python benchmarks/bench_flow.py" + (" --quick`" if args.quick else "`")
    rows = []
    for name in ("forward", "train_step"):
        rows.append(
            f"| {name} | {f[name]['wall_s']:.2f} | {p[name]['wall_s']:.2f} | "
            f"{p[name]['wall_s'] / f[name]['wall_s']:.2f}x | {f[name]['cpu_s']:.2f} | {p[name]['cpu_s']:.2f} | "
            f"{p[name]['cpu_s'] / f[name]['cpu_s']:.2f}x | {f[name]['share']:.0%} / {p[name]['share']:.0%} |"
        )
    md = "\n".join([
        "## Flow: fused vs per-edge multi-view st-networks",
        "",
        f"Rerun: {rerun}",
        "",
        f"Machine: {machine_line()}",
        "",
        f"Setting: B={batch}, V=5 (Real-IAD graph), C={args.channels}, {args.size}x{args.size}, fp32, "
        f"conv fusion, simplenet noise condition, 1 warm-up then best of {repeats}."
        + (" QUICK MODE (smoke test, not a result)." if args.quick else ""),
        f"Outputs of both formulations agree: max abs difference {worst:.1e} (asserted within 1e-4).",
        "",
        "| step | fused wall s | per-edge wall s | speed-up (wall) | fused CPU s | per-edge CPU s "
        "| speed-up (CPU) | CPU share fused / per-edge |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| variant | RSS after build MiB | peak RSS MiB (each in its own process) |",
        "|---|---|---|",
        f"| fused | {f['rss_after_build_mb']:.0f} | {f['peak_rss_mb']:.0f} |",
        f"| per-edge | {p['rss_after_build_mb']:.0f} | {p['peak_rss_mb']:.0f} |",
        "",
        "Both formulations do the same FLOPs (73.8 GFLOP per sample forward); the fused one runs",
        "1 grouped input conv + 5 output convs per st-network instead of 5 + 21 convs and pads once",
        "per view instead of once per edge. A single 64->304 3x3 conv already runs near the CPU's fp32",
        "peak, so on CPU the gain can only come from per-op overheads and threading of the smaller",
        "GEMMs; single-threaded the two take the same CPU time (measured while writing this script).",
        "Compare the CPU-time columns when the CPU share is far below 100%.",
    ])
    update_section("flow", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
