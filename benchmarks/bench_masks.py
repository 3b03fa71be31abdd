"""Foreground-mask quality on a synthetic data set, against the generator's object silhouettes.

For every provider (``none``, ``threshold``, ``isnet`` when the model is set up) and every image
of the chosen classes (train and test splits), the raw mask and the paper's post-processed mask
(hole filling + one 8 x 8 dilation, :func:`multiflow.features.masks.postprocess_mask`) are
compared with the silhouette written by ``multiflow synth``::

    <data>/realiad_<size>/<class>/<rel>.jpg   image
    <data>/silhouettes_<size>/<class>/<rel>.png   object silhouette (incl. foreign objects)

Reported per provider: mean IoU of the raw and of the post-processed mask with the silhouette,
the share of ground-truth defect pixels that the post-processed mask removes (marks as
background, at image resolution and on the feature grid), and seconds per image. Writes the
``masks`` section of BENCHMARKS.md.

    .venv/bin/python -m multiflow synth --out /tmp/synth --size 256
    .venv/bin/python benchmarks/bench_masks.py --data /tmp/synth
    .venv/bin/python benchmarks/bench_masks.py --data /tmp/synth --quick   # few images per class

``--backends``: the ``threshold`` provider + post-processing, NumPy/SciPy reference
(``ThresholdMasks(backend="numpy")``, view by view) against the batched torch path
(:func:`multiflow.features.masks.batch_view_masks`), on 5-view objects rendered in memory by
:func:`multiflow.synth.render_sample` (every family, normal and defective): milliseconds per object
for calls of 1, 4 and 16 objects at 384 px, the speed-up, and the agreement of the two (IoU of the
raw and of the post-processed masks, grid cells that differ) over all rendered objects. Writes the
``masks-backends`` section of BENCHMARKS.md (not with ``--quick``, a smoke check at 96 px)::

    .venv/bin/python benchmarks/bench_masks.py --backends --threads 2          # CPU, 2 torch threads
    .venv/bin/python benchmarks/bench_masks.py --backends --device cuda
    .venv/bin/python benchmarks/bench_masks.py --backends --quick
    .venv/bin/python benchmarks/bench_masks.py --backends --batches 1 --no-md --profile   # where the time goes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import CpuShare, machine_line, peak_rss_mb, update_section  # noqa: E402


def _classes(data: Path) -> list[str]:
    folder = data / "realiad_jsons"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a data set written by `multiflow synth` (not with --backends)")
    parser.add_argument("--classes", default=None, help="comma-separated classes (default: all in the data set)")
    parser.add_argument("--grid", type=int, default=None,
                        help="feature grid side for the grid-level numbers (default 24; --backends: size // 32, "
                             "EfficientNet-Lite0's grid)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many samples per class and split")
    parser.add_argument("--isnet-limit", type=int, default=12,
                        help="IS-Net is slow on CPU (seconds per image): at most this many images per class")
    parser.add_argument("--quick", action="store_true",
                        help="--limit 2 --isnet-limit 2; with --backends: 96 px, 2 objects, 1 repeat, print only")
    parser.add_argument("--backends", action="store_true",
                        help="time the NumPy reference against the batched torch path and compare their masks")
    parser.add_argument("--size", type=int, default=384, help="--backends: image side in pixels")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16], help="--backends: objects per call")
    parser.add_argument("--objects", type=int, default=16,
                        help="--backends: objects rendered (at least the largest batch; all enter the IoU)")
    parser.add_argument("--repeats", type=int, default=3, help="--backends: median of this many timed runs")
    parser.add_argument("--device", default="cpu", help="--backends: where the torch path runs (cpu, cuda)")
    parser.add_argument("--precision", default="float32", help="--backends: float32 or float64")
    parser.add_argument("--threads", type=int, default=0, help="--backends: torch threads (0: torch's default)")
    parser.add_argument("--steps", default="auto", choices=["auto", "torch", "scipy"],
                        help="--backends: border k-means, connected components and hole filling by SciPy (auto on "
                             "the CPU) or as tensor operations (auto elsewhere)")
    parser.add_argument("--no-md", action="store_true", help="--backends: print only; do not write BENCHMARKS.md")
    parser.add_argument("--profile", action="store_true",
                        help="--backends: also print the 15 most expensive functions of the torch path for one "
                             "object (cProfile, CPU time by function)")
    args = parser.parse_args(argv)
    if args.backends:
        return backends(args, argv)
    if args.data is None:
        parser.error("--data is required (except with --backends)")
    if args.grid is None:
        args.grid = 24
    if args.quick:
        args.limit, args.isnet_limit = 2, 2

    from multiflow.data.realiad import RealIADDataset
    from multiflow.errors import MultiflowError
    from multiflow.features.isnet import isnet_model_path
    from multiflow.features.masks import FileMasks, IsNetMasks, NoMasks, ThresholdMasks, postprocess_mask

    data = Path(args.data)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else _classes(data)
    if not classes:
        print(f"error: no classes found in {data / 'realiad_jsons'}", file=sys.stderr)
        return 1
    providers = {"silhouette (reference)": None, "none": NoMasks(), "threshold": ThresholdMasks()}
    isnet_note = ""
    if isnet_model_path("medium").is_file():
        providers["isnet"] = IsNetMasks(variant="medium")
    else:
        isnet_note = f"IS-Net not measured: no model at {isnet_model_path('medium')} (run `multiflow setup-isnet`)."
    stats = {name: {"iou_raw": [], "iou_post": [], "defect": 0, "removed": 0, "defect_cells": 0,
                    "removed_cells": 0, "seconds": 0.0, "images": 0} for name in providers}
    g = (args.grid, args.grid)
    n_images = 0
    with CpuShare() as share:
        for cls in classes:
            isnet_done = 0
            for split in ("test", "train"):  # test first: IS-Net's image limit then covers defects
                try:
                    ds = RealIADDataset(data, cls, split=split)
                except MultiflowError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                root = Path(ds.image_root)
                sil = FileMasks(mask_root=root.parent / ("silhouettes_" + root.name[len("realiad_"):]), image_root=root)
                order = list(range(len(ds)))
                if split == "test":  # defective samples first, so --limit still measures defect pixels
                    order.sort(key=lambda i: ds.samples[i].defect == ds.normal_class)
                for i in order[: args.limit]:
                    sample = ds[i]
                    for v in range(sample.num_views):
                        img = sample.images[v].permute(1, 2, 0).numpy()
                        truth = sil(img, sample.image_paths[v])
                        defect = sample.masks[v].numpy() if sample.masks is not None else np.zeros_like(truth)
                        cell_defect = _cells_touched(defect, g)
                        n_images += 1
                        for name, provider in providers.items():
                            if name == "isnet" and isnet_done >= args.isnet_limit:
                                continue
                            t = time.perf_counter()
                            raw = truth if provider is None else provider(img, sample.image_paths[v])
                            full, grid = postprocess_mask(raw, g)
                            st = stats[name]
                            st["seconds"] += time.perf_counter() - t
                            st["images"] += 1
                            st["iou_raw"].append(_iou(raw, truth))
                            st["iou_post"].append(_iou(full, truth))
                            st["defect"] += int(defect.sum())
                            st["removed"] += int((defect & ~full).sum())
                            st["defect_cells"] += int(cell_defect.sum())
                            st["removed_cells"] += int((cell_defect & ~grid).sum())
                        if "isnet" in providers:
                            isnet_done += 1
            print(f"{cls}: done")

    cmd = " ".join(["python benchmarks/bench_masks.py"] + (argv if argv is not None else sys.argv[1:]))
    lines = [
        "## Foreground masks vs. synthetic silhouettes",
        "",
        f"Command: `{cmd}` (data: `multiflow synth`, classes {', '.join(classes)}; {n_images} images)",
        f"Machine: {machine_line()}; CPU share {share.share:.0%}; peak RSS {peak_rss_mb():.0f} MiB",
        "",
        "| provider | images | IoU raw | IoU post-processed | defect pixels removed | defect cells removed "
        f"({args.grid}x{args.grid}) | s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, st in stats.items():
        if not st["images"]:
            continue
        rem = f"{st['removed'] / st['defect']:.2%}" if st["defect"] else "n/a (no defect pixels seen)"
        rem_c = f"{st['removed_cells'] / st['defect_cells']:.2%}" if st["defect_cells"] else "n/a"
        lines.append(
            f"| {name} | {st['images']} | {np.mean(st['iou_raw']):.3f} | {np.mean(st['iou_post']):.3f} | "
            f"{rem} | {rem_c} | {st['seconds'] / st['images']:.3f} |"
        )
    lines += [
        "",
        "Post-processing = hole filling + one 8x8 dilation (at image resolution) + area>0.5 reduction to the grid. "
        "IoU post-processed is lower than raw by design: the dilation adds a margin around the object. "
        "'Defect pixels removed' = ground-truth defect pixels the mask marks as background (those can never "
        "be detected); 'defect cells' = grid cells containing any defect pixel. The reference row post-processes "
        "the true silhouettes: defects outside the object (e.g. a missing or bent pin, whose ground truth "
        "covers background) are removed even by a perfect mask, so it is the floor for that column.",
    ]
    if isnet_note:
        lines.append(isnet_note)
    elif "isnet" in stats:
        lines.append(f"IS-Net (medium, 1024x1024 input) on at most {args.isnet_limit} images per class.")
    update_section("masks", "\n".join(lines))
    for line in lines:
        if line.startswith("| ") and not line.startswith("| provider"):
            print(line)
    return 0


def _render_objects(n: int, size: int, views: int = 5) -> np.ndarray:
    """``(n, V, S, S, 3)`` uint8: objects of every family in turn, normal and defective alternately."""
    from multiflow.synth import FAMILIES, render_sample

    fams = sorted(FAMILIES)
    return np.stack([
        render_sample(fams[i % len(fams)], defect=None if (i // len(fams)) % 2 == 0 else "HS", size=size,
                      n_views=views, seed=0, sample_id=i + 1).images
        for i in range(n)
    ])


def _median_seconds(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def backends(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--backends``: NumPy reference vs. batched torch masks (see the module docstring)."""
    import torch

    from multiflow.features.masks import ThresholdMasks, batch_view_masks, postprocess_mask

    if args.quick:
        args.size, args.objects, args.batches, args.repeats, args.no_md = 96, 2, [1, 2], 1, True
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.batches or min(args.batches) < 1:
        print("error: --batches needs positive numbers of objects", file=sys.stderr)
        return 1
    args.objects = max(args.objects, max(args.batches))
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    grid = (args.grid or max(1, args.size // 32),) * 2  # EfficientNet-Lite0's grid: 12 x 12 at 384 px
    t0 = time.perf_counter()
    u8 = _render_objects(args.objects, args.size)
    print(f"rendered {args.objects} objects x {u8.shape[1]} views at {args.size} px ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    images = torch.from_numpy(u8).permute(0, 1, 4, 2, 3).float().div(255)  # (N, V, 3, S, S) as data sets give them
    on_device = images.to(device)
    ref, fast = ThresholdMasks(backend="numpy"), ThresholdMasks(precision=args.precision)

    rows = []
    with CpuShare() as share:
        for b in args.batches:
            t_np = _median_seconds(lambda: batch_view_masks(ref, images[:b], grid), args.repeats, lambda: None)
            t_torch = _median_seconds(lambda: batch_view_masks(fast, on_device[:b], grid, steps=args.steps),
                                      args.repeats, sync)
            rows.append((b, t_np / b, t_torch / b))
            print(f"{b:>3} objects per call: numpy {t_np / b * 1e3:8.1f} ms/object  torch {t_torch / b * 1e3:8.1f} "
                  f"ms/object  x{t_np / t_torch:.1f}", flush=True)
        # agreement over every rendered object: raw masks, post-processed masks, grid cells
        iou_raw, iou_full, cells, n_cells = [], [], 0, 0
        flat = images.reshape(-1, *images.shape[2:])
        raw_fast = fast.batch(flat.to(device), steps=args.steps).cpu().numpy()
        full_fast, grid_fast = (t.cpu() for t in batch_view_masks(fast, on_device, grid, steps=args.steps))
        full_fast, grid_fast = full_fast.reshape(-1, *full_fast.shape[2:]).numpy(), grid_fast.reshape(-1, *grid).numpy()
        for i in range(len(flat)):
            raw_ref = ref(flat[i].permute(1, 2, 0).numpy())
            full_ref, grid_ref = postprocess_mask(raw_ref, grid)
            iou_raw.append(_iou(raw_fast[i], raw_ref))
            iou_full.append(_iou(full_fast[i], full_ref))
            cells += int((grid_fast[i] != grid_ref).sum())
            n_cells += grid_ref.size

    if args.profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(max(1, args.repeats)):
            batch_view_masks(fast, on_device[:1], grid, steps=args.steps)
        sync()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue())

    cmd = " ".join(["python benchmarks/bench_masks.py"] + (argv if argv is not None else sys.argv[1:]))
    lines = [
        "## Foreground masks: NumPy reference vs. batched torch",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_line()}; torch threads {torch.get_num_threads()}; torch device {device}; "
        f"CPU share {share.share:.0%}  ",
        f"Threshold provider + post-processing (hole filling, 8x8 dilation, area reduction to {grid[0]}x{grid[1]}) of "
        f"5-view objects at {args.size} px rendered by `multiflow.synth` (every family, normal and defective). "
        f"NumPy: `ThresholdMasks(backend=\"numpy\")` + `postprocess_mask`, view by view on the CPU; torch: "
        f"`batch_view_masks` ({args.precision}, steps {args.steps}), all views of the call's objects at once. Median of {args.repeats} "
        "after a warm-up.",
        "",
        "| objects per call | NumPy ms / object | torch ms / object | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {b} | {tn * 1e3:.1f} | {tt * 1e3:.1f} | {tn / tt:.1f}x |" for b, tn, tt in rows]
    lines += [
        "",
        f"Agreement over {len(iou_raw)} masks ({args.objects} objects): IoU raw mean {np.mean(iou_raw):.4f} "
        f"(min {np.min(iou_raw):.4f}), post-processed mean {np.mean(iou_full):.4f} (min {np.min(iou_full):.4f}); "
        f"grid cells that differ: {cells} of {n_cells}.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_md:
        update_section("masks-backends", text)
    return 0


def _cells_touched(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` bool: grid cells (same partition as the area reduction) holding any ``True`` pixel."""
    h, w = grid
    H, W = mask.shape
    ys = (np.arange(h + 1) * H) // h
    xs = (np.arange(w + 1) * W) // w
    out = np.zeros((h, w), dtype=bool)
    for i in range(h):
        for j in range(w):
            out[i, j] = mask[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].any()
    return out


if __name__ == "__main__":
    raise SystemExit(main())
