"""Benchmark the multi-view flow: fused vs per-edge st-networks (same weights, same function), and
bf16 vs fp32 (``train.precision``).

Paper configuration: B = 8 samples, V = 5 views (Real-IAD graph), C = 304, 24 x 24, conv fusion,
noise condition. For each variant (fused fp32, per-edge fp32, fused bf16), a separate worker process
builds the same seeded model (gamma set away from 0 so the st-networks matter), times the eval
forward, a training step (forward + masked loss + backward) and, for the fused variants, the full
training step with AdamW, and reports its own peak RSS, so memory peaks do not mix. The parent
process first asserts that both formulations give equal outputs (1e-4) and measures the NLL parity
of bf16 vs fp32 on the same weights (max and mean relative difference per pixel).

    .venv/bin/python benchmarks/bench_flow.py            # full run, writes the "flow" section
    .venv/bin/python benchmarks/bench_flow.py --quick    # B = 2, one repeat (smoke test)
    .venv/bin/python benchmarks/bench_flow.py --device cuda --section flow-cuda   # on a GPU
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

VARIANTS = ("fused", "per_edge", "fused_bf16")


def build(channels: int, fused: bool):
    from multiflow.flow import MultiFlow, ViewGraph

    return open_gates(MultiFlow(channels, ViewGraph.real_iad(), fused=fused, seed=0))


def open_gates(model, seed: int = 1):
    """``model`` with every fusion gate ``gamma`` drawn from U(0.02, 0.10) (seeded), so the
    st-networks' messages count as in a trained flow; returns the model."""
    import torch

    gen = torch.Generator().manual_seed(seed)
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


def worker(variant: str, batch: int, channels: int, size: int, repeats: int, device: str = "cpu") -> dict:
    import torch

    from multiflow.device import autocast, resolve_device

    dev = resolve_device(device)
    precision = "bf16" if variant.endswith("bf16") else "fp32"
    model = build(channels, variant != "per_edge").to(dev)
    x, mask = inputs(batch, channels, size)
    x, mask = x.to(dev), mask.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=1e-5)
    rss_built = peak_rss_mb()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def fwd() -> None:
        model.eval()
        with torch.no_grad(), autocast(dev, precision):
            model(x)
        sync()

    def step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast(dev, precision):
            out = model(x, generator=torch.Generator().manual_seed(0))
        model.masked_loss(out.nll, mask).backward()
        sync()

    def step_adamw() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast(dev, precision):
            out = model(x, generator=torch.Generator().manual_seed(0))
        model.masked_loss(out.nll, mask).backward()
        opt.step()
        sync()

    result: dict = {"variant": variant, "precision": precision}
    steps = [("forward", fwd), ("train_step", step)]
    if variant != "per_edge":
        steps.append(("train_step_adamw", step_adamw))
    for name, fn in steps:
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


def bf16_parity(batch: int, channels: int, size: int, device: str = "cpu") -> dict[str, float]:
    """Per-pixel NLL of the same model and inputs in bf16 vs fp32 (eval mode): relative differences."""
    import torch

    from multiflow.device import autocast, resolve_device

    dev = resolve_device(device)
    model = build(channels, True).to(dev).eval()
    x, _ = inputs(batch, channels, size)
    x = x.to(dev)
    with torch.no_grad():
        ref = model(x).nll
        with autocast(dev, "bf16"):
            low = model(x).nll
    rel = (low.float() - ref).abs() / ref.abs().clamp_min(1e-3)
    return {"max_rel": float(rel.max()), "mean_rel": float(rel.mean()),
            "max_abs": float((low.float() - ref).abs().max()), "mean_abs_nll": float(ref.abs().mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B=2, one timed repeat")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--channels", type=int, default=304)
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--section", default="flow", help="BENCHMARKS.md section to write (flow-cuda on a GPU)")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batch = args.batch or (2 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.worker:
        print(json.dumps(worker(args.worker, batch, args.channels, args.size, repeats, args.device)))
        return 0

    worst = check_equal(min(batch, 2), args.channels, args.size)
    print(f"fused == per-edge: max abs diff {worst:.2e}", flush=True)
    parity = bf16_parity(min(batch, 2), args.channels, args.size, args.device)
    print(f"bf16 vs fp32 NLL: {parity}", flush=True)
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", variant, "--batch", str(batch), "--device", args.device,
               "--channels", str(args.channels), "--size", str(args.size), "--repeats", str(repeats)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{variant}: {results[variant]} ({time.perf_counter() - t0:.0f} s)", flush=True)

    f, p, h = results["fused"], results["per_edge"], results["fused_bf16"]
    extra = (" --quick" if args.quick else "") + (f" --device {args.device} --section {args.section}"
                                                   if args.device != "cpu" else "")
    rerun = f"`.venv/bin/python benchmarks/bench_flow.py{extra}`"
    bf_rows = []
    labels = (("forward", "eval forward"), ("train_step_adamw", "training step (fwd + masked loss + bwd + AdamW)"))
    for name, label in labels:
        bf_rows.append(
            f"| {label} | {f[name]['wall_s']:.2f} | {h[name]['wall_s']:.2f} | "
            f"{f[name]['wall_s'] / h[name]['wall_s']:.2f}x | {f[name]['cpu_s']:.2f} | {h[name]['cpu_s']:.2f} | "
            f"{f[name]['cpu_s'] / h[name]['cpu_s']:.2f}x | {f[name]['share']:.0%} / {h[name]['share']:.0%} |"
        )
    ratio = f["train_step_adamw"]["wall_s"] / h["train_step_adamw"]["wall_s"]
    rows = []
    for name in ("forward", "train_step"):
        rows.append(
            f"| {name} | {f[name]['wall_s']:.2f} | {p[name]['wall_s']:.2f} | "
            f"{p[name]['wall_s'] / f[name]['wall_s']:.2f}x | {f[name]['cpu_s']:.2f} | {p[name]['cpu_s']:.2f} | "
            f"{p[name]['cpu_s'] / f[name]['cpu_s']:.2f}x | {f[name]['share']:.0%} / {p[name]['share']:.0%} |"
        )
    md = "\n".join([
        "## Flow: fused vs per-edge multi-view st-networks" + (f" ({args.device})" if args.device != "cpu" else ""),
        "",
        f"Rerun: {rerun}",
        "",
        f"Machine: {machine_line()}",
        "",
        f"Setting: B={batch}, V=5 (Real-IAD graph), C={args.channels}, {args.size}x{args.size}, {args.device}, fp32, "
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
        "",
        "### bf16 vs fp32 (`train.precision`, fused st-networks, same run)",
        "",
        "bf16 autocast runs the st-network convolutions in bf16; the coupling's scale/shift, the log-det",
        "and the NLL stay in fp32. Ratio = fp32 time / bf16 time (goal for the training step: >= 1.5x).",
        "",
        "| step | fp32 wall s | bf16 wall s | ratio (wall) | fp32 CPU s | bf16 CPU s | ratio (CPU) "
        "| CPU share fp32 / bf16 |",
        "|---|---|---|---|---|---|---|---|",
        *bf_rows,
        "",
        f"Training-step ratio {ratio:.2f}x: " + ("meets" if ratio >= 1.5 else "does NOT meet") + " the 1.5x goal.",
        f"NLL parity on the same weights (B={min(batch, 2)}, eval mode, per pixel): max relative difference "
        f"{parity['max_rel']:.2e}, mean {parity['mean_rel']:.2e} (max abs {parity['max_abs']:.2e}; "
        f"mean |NLL| {parity['mean_abs_nll']:.3f}).",
        f"Peak RSS fused bf16: {h['peak_rss_mb']:.0f} MiB (fp32: {f['peak_rss_mb']:.0f} MiB).",
    ])
    if not args.no_write:
        update_section(args.section, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
