"""Benchmark the cross-view fusion operators (``model.fusion``): training-step time relative to the
paper's conv fusion in the same run, parameters and forward FLOPs, at two feature grids.

Setting (issue 24 §1): B = 4 objects, V = 5 views (Real-IAD graph), hidden 64, 6 blocks (kernel
sizes 3, 3, 3, 3, 3, 5), simplenet noise condition, ``C`` feature channels (default 192: the offline
default backbone Lite0 at 384 px gives 192 x 12 x 12; the paper's B5 at 768 px gives 304 x 24 x 24),
grids 12 x 12 and 24 x 24. One training step = forward in train mode (noise) + masked NLL loss +
backward (no optimiser update; the same for every fusion). Every fusion runs in this process on the
same inputs; the steps are interleaved (one step of each fusion per round, after one warm-up round)
so that a change of load on the machine hits every fusion alike; the median over the rounds is
reported, as wall time and as process CPU time, with the CPU share the run got. The geometry fusion
uses the synthetic generator's 5-camera rig. Forward FLOPs per object are counted by
``torch.utils.flop_counter`` (convolutions and matmuls, including attention; ``grid_sample`` and
elementwise ops are not counted).

    .venv/bin/python benchmarks/bench_fusion.py                     # full run, writes the "fusion" section
    .venv/bin/python benchmarks/bench_fusion.py --quick             # B = 2, hidden 16, 2 blocks (smoke test)
    .venv/bin/python benchmarks/bench_fusion.py --device cuda --section fusion-cuda

Results (JSON) go to ``results/bench_fusion/<date-time>/fusion.json``; ``--no-benchmarks-md`` skips
BENCHMARKS.md; ``--render results/.../fusion.json`` writes the section from a finished run's JSON
without timing anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import ROOT, CpuShare, machine_line, update_section  # noqa: E402
from bench_flow import open_gates  # noqa: E402

FUSIONS = ("conv", "cross_attention", "global_context", "correspondence", "geometry")


def build(fusion: str, channels: int, hidden: int, n_blocks: int, heads: int, seed: int = 0):
    """A seeded flow of ``fusion`` on the Real-IAD graph, gamma set away from 0 (the st-networks matter)."""
    from multiflow.flow import MultiFlow, ViewGraph
    from multiflow.flow.geometry import camera_rig_config
    from multiflow.synth.generator import camera_rig_record
    from multiflow.synth.geometry import camera_rig

    names = [f"C{k}" for k in range(1, 6)]
    rig = camera_rig_config(camera_rig_record("bench", camera_rig(n_views=5, size=256), [])["views"], names)
    kernels = [3] * (n_blocks - 1) + [5]
    return open_gates(MultiFlow(channels, ViewGraph.real_iad(), n_blocks=n_blocks, hidden=hidden,
                                kernel_sizes=kernels, fusion=fusion, heads=heads, seed=seed,
                                camera_rig=rig if fusion == "geometry" else None))


def forward_flops(model, x, fg) -> float:
    """Forward FLOPs per object (eval mode), counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:1], fg=fg[:1])
    return float(counter.get_total_flops())


def run(args) -> dict:
    import torch

    from multiflow.device import autocast, resolve_device
    from multiflow.scoring import masked_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out: dict = {"setting": {k: v for k, v in vars(args).items() if k != "func"}, "grids": {}}
    for size in args.sizes:
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(args.batch, 5, args.channels, size, size, generator=gen).to(device)
        fg = (torch.rand(args.batch, 5, size, size, generator=gen) > 0.3).float().to(device)
        models = {f: build(f, args.channels, args.hidden, args.blocks, args.heads).to(device) for f in args.fusions}
        info = {f: {"params": sum(p.numel() for p in m.parameters()),
                    "flops_per_object": forward_flops(m, x, fg)} for f, m in models.items()}
        times: dict[str, list[tuple[float, float]]] = {f: [] for f in args.fusions}
        noise = torch.Generator().manual_seed(3)

        def step(m):
            m.train()
            m.zero_grad(set_to_none=True)
            with autocast(device, args.precision):
                nll = m(x, generator=noise, fg=fg).nll.float()
            masked_loss(nll, fg > 0).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        with CpuShare() as share:
            for r in range(args.repeats + 1):  # round 0: warm-up
                for f, m in models.items():
                    w0, c0 = time.perf_counter(), time.process_time()
                    step(m)
                    if r:
                        times[f].append((time.perf_counter() - w0, time.process_time() - c0))
                print(f"{size}x{size} round {r}/{args.repeats}", flush=True)
        grid = {}
        for f in args.fusions:
            wall = statistics.median(t[0] for t in times[f])
            cpu = statistics.median(t[1] for t in times[f])
            grid[f] = dict(info[f], step_wall_s=wall, step_cpu_s=cpu)
        base = grid.get("conv")
        for f in args.fusions:
            if base:
                grid[f]["ratio_wall"] = grid[f]["step_wall_s"] / base["step_wall_s"]
                grid[f]["ratio_cpu"] = grid[f]["step_cpu_s"] / base["step_cpu_s"]
                grid[f]["ratio_params"] = grid[f]["params"] / base["params"]
                grid[f]["ratio_flops"] = grid[f]["flops_per_object"] / base["flops_per_object"]
        grid["cpu_share"] = share.share
        grid["cores"] = share.cores
        out["grids"][str(size)] = grid
        del models
    return out


def markdown(res: dict, rerun: str, quick: bool) -> str:
    s = res["setting"]
    lines = [
        "## Fusion operators: cost relative to the conv fusion" + (f" ({s['device']})" if s["device"] != "cpu" else ""),
        "",
        f"Rerun: {rerun}",
        "",
        f"Machine: {machine_line()}",
        "",
        f"Setting: B={s['batch']}, V=5 (Real-IAD graph), C={s['channels']}, hidden {s['hidden']}, "
        f"{s['blocks']} blocks, heads {s['heads']}, {s['precision']}, {s['device']}; training step = forward (train mode) + masked loss + "
        f"backward; fusions interleaved per round, 1 warm-up round, median of {s['repeats']} rounds."
        + (" QUICK MODE (smoke test, not a result)." if quick else ""),
        "Timings on a shared machine are indicative only (see the CPU share); the ratios come from one run.",
        "",
        "| grid | fusion | params | ratio params | forward GFLOP / object | ratio FLOPs | step wall s "
        "| ratio wall | step CPU s | ratio CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, grid in res["grids"].items():
        for f in s["fusions"]:
            g = grid[f]
            lines.append(
                f"| {size}x{size} | {f} | {g['params']:,} | {g.get('ratio_params', float('nan')):.2f} | "
                f"{g['flops_per_object'] / 1e9:.2f} | {g.get('ratio_flops', float('nan')):.2f} | "
                f"{g['step_wall_s']:.3f} | {g.get('ratio_wall', float('nan')):.2f} | {g['step_cpu_s']:.3f} | "
                f"{g.get('ratio_cpu', float('nan')):.2f} |")
    shares = ", ".join(f"{k}x{k}: {g['cpu_share']:.0%} of {g['cores']} cores" for k, g in res["grids"].items())
    lines += [
        "",
        f"CPU share during the timed rounds: {shares}. With a low share the wall times mostly measure the "
        "other load; compare the CPU-time ratios. `conv` runs the fused st-network formulation, every other "
        "fusion the per-edge one (one operator call per edge), which accounts for part of their extra time.",
        "FLOPs: `torch.utils.flop_counter` (convs and matmuls incl. attention; `grid_sample` not counted). "
        "The correspondence attention adds `2 N^2 hidden` multiply-adds per edge and object (`N = H W`), "
        "16x more going from 12x12 to 24x24 where the convs grow 4x.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[12, 24])
    ap.add_argument("--fusions", nargs="+", default=list(FUSIONS), choices=FUSIONS)
    ap.add_argument("--channels", type=int, default=192)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--quick", action="store_true", help="B = 2, hidden 16, 2 blocks, 2 rounds (smoke test)")
    ap.add_argument("--out", default="", help="results folder (default results/bench_fusion/<date-time>)")
    ap.add_argument("--section", default="fusion")
    ap.add_argument("--no-benchmarks-md", action="store_true", help="do not write the BENCHMARKS.md section")
    ap.add_argument("--render", default="", help="write the section from this fusion.json instead of running")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        s = res["setting"]
        if s["threads"]:
            import torch

            torch.set_num_threads(s["threads"])  # machine_line reports the run's threads
        flags = ("--quick" if s["quick"] else f"--repeats {s['repeats']}") + (
            f" --threads {s['threads']}" if s["threads"] else "")
        md = markdown(res, f"`.venv/bin/python benchmarks/bench_fusion.py {flags}`", bool(s["quick"]))
        if not args.no_benchmarks_md:
            update_section(args.section, md)
        print(md)
        return 0
    if "conv" not in args.fusions:
        args.fusions = ["conv", *args.fusions]  # the baseline of every ratio
    if args.quick:
        args.batch, args.hidden, args.blocks, args.repeats = 2, 16, 2, 2
    res = run(args)
    out = Path(args.out) if args.out else ROOT / "results" / "bench_fusion" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "fusion.json").write_text(json.dumps(res, indent=1))
    flags = " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    md = markdown(res, f"`.venv/bin/python benchmarks/bench_fusion.py{(' ' + flags) if flags else ''}`", args.quick)
    if not args.no_benchmarks_md:
        update_section(args.section, md)
    print(md)
    print(f"results: {out / 'fusion.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
