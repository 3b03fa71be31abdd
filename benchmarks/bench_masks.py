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
    parser.add_argument("--data", required=True, help="a data set written by `multiflow synth`")
    parser.add_argument("--classes", default=None, help="comma-separated classes (default: all in the data set)")
    parser.add_argument("--grid", type=int, default=24, help="feature grid side for the grid-level numbers")
    parser.add_argument("--limit", type=int, default=None, help="at most this many samples per class and split")
    parser.add_argument("--isnet-limit", type=int, default=12,
                        help="IS-Net is slow on CPU (seconds per image): at most this many images per class")
    parser.add_argument("--quick", action="store_true", help="--limit 2 --isnet-limit 2")
    args = parser.parse_args(argv)
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
