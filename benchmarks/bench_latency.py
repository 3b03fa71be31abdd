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


# ------------------------------------------------------------------------------------ end to end
CLASS = "toy_brick"


def _pipeline_model(folder: Path, size: int, view_names: list[str], objects) -> Path:
    """A class folder with the paper's flow on Lite0 features at ``size`` px (weights randomised away
    from the identity: the timing and the identity check do not need a trained flow), threshold
    masks, float16 features, and camera-fault statistics fitted on ``objects`` (``(V, 3, H, W)``, normal)."""
    import warnings

    import torch

    from multiflow.config import FeatureConfig
    from multiflow.engine.bundle import (
        FeaturesSpec, GraphSpec, MasksSpec, ModelBundle, ThresholdSpec, save_bundle,
    )
    from multiflow.engine.factories import build_extractor
    from multiflow.faults.fit import fit_camera_faults
    from multiflow.flow import MultiFlow, ViewGraph

    extractor = build_extractor(FeatureConfig(backbone="lite0", input_size=size))
    flow = MultiFlow(extractor.channels, ViewGraph.real_iad(len(view_names) - 1, names=view_names), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    flow.eval()
    with warnings.catch_warnings():  # few objects for the fault model's target: timing only
        warnings.simplefilter("ignore")
        faults = fit_camera_faults(objects, view_names, false_alarm=0.05)
    folder.mkdir(parents=True, exist_ok=True)
    faults.save(folder / "camera_faults.json")
    bundle = ModelBundle(
        category=CLASS, view_names=list(view_names),
        graph=GraphSpec(view_names=list(view_names), edges=flow.graph.to_dict()["edges"]),
        features=FeaturesSpec(backbone="lite0", input_size=size, layer="", dtype="float16",
                              weights_digest=extractor.digest, channels=extractor.channels,
                              grid=list(extractor.feature_size()), extractor=extractor.describe()),
        masks=MasksSpec(provider="threshold", dilation=8),
        threshold=ThresholdSpec(value=1.0),
        camera_faults="camera_faults.json",
    )
    save_bundle(folder, flow, bundle)
    return folder


def pipeline(args: argparse.Namespace) -> int:
    import math

    import numpy as np
    import torch

    from multiflow.config import DataConfig
    from multiflow.engine.factories import open_dataset
    from multiflow.engine.predict import ObjectImages, Predictor, predict_dataset
    from multiflow.engine.timing import STAGES
    from multiflow.synth import generate_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.out)
    size = args.size
    n_good, n_defect = (4, 4) if args.quick else (args.objects // 2, args.objects - args.objects // 2)
    data_root = run / f"data_{size}_{n_good}_{n_defect}"
    t0 = time.perf_counter()
    generate_dataset(data_root, classes=[CLASS], n_train=10, n_test_good=n_good, n_test_defect=n_defect, size=size,
                     n_views=VIEWS, workers=1, progress=False)
    data = DataConfig(root=str(data_root), format="realiad", resolution=str(size), skip_incomplete=True)
    ds = open_dataset(data, CLASS, "test", size, load_masks=False)
    view_names = list(ds.view_names)
    objects = [ds[i].images for i in range(len(ds))]
    train = open_dataset(data, CLASS, "train", size, load_masks=False)  # normal objects for the fault statistics
    model = _pipeline_model(run / "model" / CLASS, size, view_names, [train[i].images for i in range(len(train))])
    print(f"data and model: {len(ds)} objects x {VIEWS} views at {size} px ({time.perf_counter() - t0:.0f} s)", flush=True)

    configs = [("old", 1, 0, "numpy")] + [("new", b, args.workers, "torch") for b in args.batches]
    rows, scores, grids = [], {}, {}
    for kind, batch, workers, backend in configs:
        pred = Predictor(model, device=args.device, masks_backend=backend)
        # warm-up (one-time backbone and kernel set-up), not timed; the frame memory starts afresh
        pred.predict_batch([ObjectImages(objects[0], list(view_names), "warm-up")] * min(batch, len(objects)))
        if pred.frame_memory is not None:
            from multiflow.faults import FrameMemory

            pred.frame_memory = FrameMemory()
        with CpuShare() as share:
            res = predict_dataset(pred, ds, run / "predictions" / f"{kind}_b{batch}", progress=False,
                                  batch_size=batch, workers=workers)
        t = res.timing
        key = f"{kind}_b{batch}"
        scores[key] = {r["sample_id"]: r["sample_score"] for r in res}
        # the grid masks this path computes for every object (for the identity check)
        grids[key] = {}
        for i in range(len(ds)):
            x = pred.preprocessor.resize(objects[i]).to(pred.device)
            grids[key][ds.samples[i].sample_id] = pred.preprocessor.view_masks(x, view_names).cpu()
        rows.append({"path": kind, "batch": batch, "workers": workers, "masks": backend, "cpu_share": share.share,
                     **t})
        per = t["ms_per_object"]
        print(f"{key:>7}: {t['objects_per_s']:.2f} objects/s; ms/object " +
              ", ".join(f"{k} {per[k]:.1f}" for k in STAGES) + f" (decode wait {per['decode_wait']:.1f});"
              f" CPU share {share.share:.2f}; dominant: {t['dominant']}", flush=True)

    base = rows[0]
    ident = []
    for r in rows[1:]:
        key = f"new_b{r['batch']}"
        rel, diff_masks, same_dec, n = [], 0, 0, 0
        old = scores["old_b1"]
        finite = [v for v in old.values() if v is not None and math.isfinite(v)]
        thr = float(np.median(finite)) if finite else 0.0
        for sid, s_old in old.items():
            s_new = scores[key].get(sid)
            n += 1
            if s_old is None or s_new is None:
                same_dec += int(s_old is None and s_new is None)
                continue
            if not torch.equal(grids["old_b1"][sid], grids[key][sid]):
                diff_masks += 1
                same_dec += int((s_new > thr) == (s_old > thr))
                continue
            rel.append(abs(s_new - s_old) / max(abs(s_old), 1e-12))
            same_dec += int((s_new > thr) == (s_old > thr))
        ident.append({"batch": r["batch"], "objects": n, "masks_differ": diff_masks,
                      "max_rel_diff": max(rel) if rel else None, "within_1e-4": sum(x <= 1e-4 for x in rel),
                      "compared": len(rel), "same_decision": same_dec})

    best = max(rows[1:], key=lambda r: r["objects_per_s"] or 0)
    one = next((r for r in rows[1:] if r["batch"] == 1), best)
    crit = {k: one["ms_per_object"][k] for k in STAGES if k != "decode"}
    crit["decode (wait)"] = one["ms_per_object"]["decode_wait"]
    if one["ms_per_object"]["write_wait"] > 0:  # written by a thread: its wait is on the scoring thread
        del crit["write"]
        crit["write (wait)"] = one["ms_per_object"]["write_wait"]
    total_one = 1e3 * one["wall_s"] / max(one["objects"], 1)
    ranked = sorted(crit.items(), key=lambda kv: -kv[1])
    command = "python benchmarks/bench_latency.py " + " ".join(sys.argv[1:])
    md = [f"### End-to-end inference per stage, old vs new path ({args.device})", "",
          f"Command: `{command.strip()}`  ",
          f"Machine: {machine_line()}; torch threads {torch.get_num_threads()}; {len(ds)} synthetic {CLASS} objects "
          f"({n_good} good, {n_defect} defective) x {VIEWS} views, JPEG at {size} px; Lite0 at {size} px, paper's flow "
          "(random weights), threshold masks, camera-fault check, outputs written (maps .npy + PNG overlays + "
          "result.json). Old path: NumPy masks view by view, one object at a time, decoding inline. New path: torch "
          f"masks batched on the device, B objects per backbone/flow call, {args.workers} decoding threads ahead of "
          "the scoring and one writing thread behind it. ms/object = stage seconds / objects (decode and write: "
          "summed over their threads; 'wait': the part the scoring thread waited for). CPU share: process CPU time / (wall x cores).", "",
          "| path | B | objects/s | x old | latency ms/object | decode | (wait) | masks | backbone | flow | scoring "
          "| faults | write | (wait) | CPU share | dominant |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        per = r["ms_per_object"]
        md.append(f"| {r['path']} ({r['masks']}) | {r['batch']} | {r['objects_per_s']:.2f} | "
                  f"{(r['objects_per_s'] or 0) / max(base['objects_per_s'] or 1e-9, 1e-9):.2f} | "
                  f"{1e3 * r['wall_s'] / max(r['objects'], 1):.0f} | "
                  + " | ".join(f"{per[k]:.1f}" for k in ("decode", "decode_wait", "masks", "backbone", "flow",
                                                          "scoring", "faults", "write", "write_wait"))
                  + f" | {r['cpu_share']:.2f} | {r['dominant']} |")
    md += ["", "Decision identity (new path against the old one, same objects): sample scores where both paths' grid "
           "masks are equal, relative difference; decisions at the old path's median score.", "",
           "| B | objects | masks differ | scores compared | max rel. diff | within 1e-4 | same decision |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for d in ident:
        mx = "-" if d["max_rel_diff"] is None else f"{d['max_rel_diff']:.1e}"
        md.append(f"| {d['batch']} | {d['objects']} | {d['masks_differ']} | {d['compared']} | {mx} | "
                  f"{d['within_1e-4']} | {d['same_decision']} |")
    md += ["", f"Best throughput: {best['objects_per_s']:.2f} objects/s at B = {best['batch']} "
           f"({(best['objects_per_s'] or 0) / max(base['objects_per_s'] or 1e-9, 1e-9):.2f}x the old path). "
           f"One object (B = 1): {total_one:.0f} ms wall per object; on the scoring thread "
           + ", ".join(f"{k} {v:.0f} ms ({100 * v / max(total_one, 1e-9):.0f} %)" for k, v in ranked[:4])
           + f". Dominant after the change: {ranked[0][0]}."]
    text = "\n".join(md)
    print(text)
    run.mkdir(parents=True, exist_ok=True)
    (run / "latency_pipeline.md").write_text(text + "\n")
    (run / "latency_pipeline.json").write_text(json.dumps({"rows": rows, "identity": ident}, indent=1))
    if not args.no_md and not args.quick:
        update_section("latency-pipeline-cuda" if args.device.startswith("cuda") else "latency-pipeline", text)
    return 0


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
    p.add_argument("--pipeline", action="store_true",
                   help="end to end per stage (decode .. write), old vs new path, decision identity (module docstring)")
    p.add_argument("--size", type=int, default=384, help="--pipeline: input size (px)")
    p.add_argument("--objects", type=int, default=32, help="--pipeline: synthetic test objects (half defective)")
    p.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16], help="--pipeline: objects per batch")
    p.add_argument("--workers", type=int, default=2, help="--pipeline: decoding threads of the new path")
    p.add_argument("--out", default="results/latency_pipeline", help="--pipeline: run folder (data, model, outputs)")
    p.add_argument("--worker", nargs=2, metavar=("BACKBONE", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pipeline:
        if args.quick:
            args.size, args.batches = 128, [1, 4]
        return pipeline(args)
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
