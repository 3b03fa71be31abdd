"""Inference latency per 5-view sample and training throughput, split into backbone, masks and flow.

For every (backbone, input size) pair (default: Lite0 and B5 at 384 and 768 px; B5 with random
weights, which does not change its cost) a separate worker process measures, on one device:

- backbone: ``FeatureExtractor.forward_views`` of one sample ``(1, 5, 3, S, S)``;
- masks: the ``threshold`` provider + the paper's post-processing (hole filling, 8x8 dilation,
  reduction to the feature grid) of the 5 views, batched on the device
  (:func:`multiflow.features.masks.batch_view_masks`; ``--masks-backend numpy``: the NumPy/SciPy
  reference, view by view on the CPU);
- flow: ``MultiFlow.anomaly_map`` of the sample's features ``(1, 5, C, h, w)`` (the paper's flow:
  6 blocks, hidden 64, Real-IAD graph, conv fusion);
- training: one optimisation step of the flow (batch 8 samples x 5 views, forward + masked NLL +
  backward + AdamW) -> samples/s;
- peak memory: the worker's peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).

Each time is the median of ``--repeats`` runs after one warm-up.

    .venv/bin/python benchmarks/bench_latency.py                 # CPU, writes the "latency" section
    .venv/bin/python benchmarks/bench_latency.py --quick         # smoke check (Lite0, 128 px, 1 repeat)
    .venv/bin/python benchmarks/bench_latency.py --device cuda   # writes "latency-cuda" (benchmarks/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import CpuShare, machine_line, peak_rss_mb, update_section

VIEWS = 5


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _images(size: int, seed: int = 0):
    """``(V, S, S, 3)`` uint8: a lit object (ellipse with texture) on a smooth tray, per view."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for v in range(VIEWS):
        bg = 0.25 + 0.1 * yy + 0.05 * xx
        obj = ((xx - 0.5 - 0.05 * v) / 0.3) ** 2 + ((yy - 0.5) / 0.22) ** 2 < 1
        img = np.repeat(bg[..., None], 3, axis=2)
        img[obj] = 0.7 + 0.1 * rng.random((int(obj.sum()), 3))
        out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.stack(out)


def worker(backbone: str, size: int, device: str, repeats: int, train_batch: int, threads: int,
           masks_backend: str = "torch") -> dict:
    import torch

    from multiflow.features.backbones import build_backbone
    from multiflow.features.masks import batch_view_masks, make_provider
    from multiflow.flow import MultiFlow, ViewGraph

    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    ext = build_backbone(backbone, input_size=size, pretrained=backbone == "lite0").to(device)
    grid = ext.feature_size(size)
    imgs_np = _images(size)
    imgs = torch.from_numpy(imgs_np).permute(0, 3, 1, 2).float().div(255)[None].to(device)  # (1, V, 3, S, S)
    t_backbone = _timed(lambda: ext.forward_views(imgs), device, repeats)
    feats = ext.forward_views(imgs)

    provider = make_provider("threshold", backend=masks_backend)

    def masks():
        return batch_view_masks(provider, imgs, grid)[1]  # (1, V, h, w) on the device

    t_masks = _timed(masks, device, repeats)
    grid_masks = masks()

    flow = MultiFlow(ext.channels, ViewGraph.real_iad(VIEWS - 1), seed=0).to(device)
    with torch.no_grad():
        t_flow = _timed(lambda: flow.anomaly_map(feats, grid_masks), device, repeats)

    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(train_batch, VIEWS, ext.channels, *grid, generator=gen).to(device)
    bmask = grid_masks.expand(train_batch, -1, -1, -1).float()
    opt = torch.optim.AdamW(flow.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=1e-5)
    flow.train()

    def step():
        opt.zero_grad(set_to_none=True)
        nll = flow(batch).nll
        loss = (nll * bmask).sum() / bmask.sum().clamp_min(1)
        loss.backward()
        opt.step()

    t_step = _timed(step, device, max(1, repeats // 2))
    mem = (torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else peak_rss_mb()
    return {
        "backbone": backbone, "size": size, "device": device, "channels": ext.channels, "grid": list(grid),
        "backbone_s": t_backbone, "masks_s": t_masks, "flow_s": t_flow,
        "total_s": t_backbone + t_masks + t_flow, "train_step_s": t_step,
        "train_samples_per_s": train_batch / t_step, "train_batch": train_batch, "peak_mb": mem,
        "flow_params": sum(p.numel() for p in flow.parameters()), "masks_backend": masks_backend,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Lite0 at 128 px, 1 repeat, train batch 2 (smoke check)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backbones", nargs="*", default=["lite0", "b5"])
    p.add_argument("--sizes", type=int, nargs="*", default=[384, 768])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--masks-backend", default="torch", choices=["torch", "numpy"],
                   help="threshold masks: batched torch on the device, or the NumPy reference on the CPU")
    p.add_argument("--no-md", action="store_true", help="print only; do not write BENCHMARKS.md")
    p.add_argument("--worker", nargs=2, metavar=("BACKBONE", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        res = worker(args.worker[0], int(args.worker[1]), args.device, args.repeats, args.train_batch, args.threads,
                     args.masks_backend)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if args.quick:
        args.backbones, args.sizes, args.repeats, args.train_batch = ["lite0"], [128], 1, 2
    rows = []
    import os
    import resource

    def children_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    cpu0 = children_cpu()
    with CpuShare() as share:
        for bb in args.backbones:
            for size in args.sizes:
                cmd = [sys.executable, __file__, "--worker", bb, str(size), "--device", args.device,
                       "--repeats", str(args.repeats), "--train-batch", str(args.train_batch),
                       "--threads", str(args.threads), "--masks-backend", args.masks_backend]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    print(proc.stdout + proc.stderr, file=sys.stderr)
                    raise SystemExit(f"worker {bb} {size} failed (exit {proc.returncode})")
                rows.append(json.loads(line[len("RESULT "):]))
                r = rows[-1]
                print(f"{bb:>6} {size:>4} px: backbone {r['backbone_s'] * 1e3:8.1f} ms  masks {r['masks_s'] * 1e3:7.1f} ms"
                      f"  flow {r['flow_s'] * 1e3:8.1f} ms  train {r['train_samples_per_s']:6.2f} samples/s"
                      f"  peak {r['peak_mb']:.0f} MiB  ({time.perf_counter() - t0:.0f} s)", flush=True)
    # the work runs in the worker processes: their CPU time over (wall x cores)
    cpu_share = (children_cpu() - cpu0 + share.cpu) / max(share.wall * (os.cpu_count() or 1), 1e-9)
    command = "python benchmarks/bench_latency.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    mem_kind = "peak CUDA memory allocated" if args.device.startswith("cuda") else "peak RSS of the worker process"
    md = [f"### Latency per 5-view sample and training throughput ({args.device})", "",
          f"Command: `{command}`  ",
          f"Machine: {machine_line()}; worker torch threads {args.threads or 'default'}; CPU share {cpu_share:.2f} over {share.wall / 60:.1f} min.  ",
          (f"Median of {args.repeats} after a warm-up. Masks: threshold provider + post-processing "
           + ("batched on the device (torch). " if args.masks_backend == "torch" else "view by view on the CPU (NumPy). ")
           + f"Flow: 6 blocks, hidden 64, Real-IAD graph, conv fusion. Training: one AdamW step on "
           f"{args.train_batch} samples x 5 views. B5 with random weights (same cost). Memory: {mem_kind}."), "",
          "| backbone | input | features | backbone ms | masks ms | flow ms | total ms | train samples/s | peak MiB |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['backbone']} | {r['size']} | {r['channels']} x {r['grid'][0]} x {r['grid'][1]} | "
                  f"{r['backbone_s'] * 1e3:.1f} | {r['masks_s'] * 1e3:.1f} | {r['flow_s'] * 1e3:.1f} | "
                  f"{r['total_s'] * 1e3:.1f} | {r['train_samples_per_s']:.2f} | {r['peak_mb']:.0f} |")
    text = "\n".join(md)
    print(text)
    if not args.no_md:
        update_section("latency-cuda" if args.device.startswith("cuda") else "latency", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
