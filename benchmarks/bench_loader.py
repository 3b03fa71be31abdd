"""Loader throughput: images/s of a DataLoader over RealIADDataset (decode + resize + collate).

Writes a temporary Real-IAD tree of 1024 x 1024 JPEGs with realistic content (skimage's brick,
grass and gravel photographs, tiled 2 x 2 with random flips and a colour tint, so JPEG decode
cost is that of real textures), then times one pass over it with 0, 1 and 2 workers at
image_size 256 and 768 (plus ``fast_jpeg=True``, i.e. libjpeg's reduced-scale decoding), and
writes the ``loader`` section of BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_loader.py            # 12 samples x 5 views
    .venv/bin/python benchmarks/bench_loader.py --quick    # 2 samples x 5 views
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import CpuShare, machine_line, peak_rss_mb, update_section  # noqa: E402

CATEGORY = "bench"


def make_tree(root: Path, samples: int, source: int, seed: int) -> int:
    """Write ``samples`` x 5 views of ``source``-pixel JPEGs plus their JSON; return the image count."""
    from PIL import Image
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    textures = [skdata.brick(), skdata.grass(), skdata.gravel()]
    entries = []
    for n in range(1, samples + 1):
        for cam in range(1, 6):
            tex = textures[(n + cam) % len(textures)].astype(np.float32)
            tiles = [[np.flip(tex, axis=int(rng.integers(0, 2))) for _ in range(2)] for _ in range(2)]
            grey = np.block(tiles)
            grey = np.asarray(
                Image.fromarray(grey.astype(np.uint8)).resize((source, source), Image.Resampling.BILINEAR)
            )
            tint = rng.uniform(0.7, 1.0, size=3).astype(np.float32)
            rgb = np.clip(grey[..., None].astype(np.float32) * tint, 0, 255).astype(np.uint8)
            rel = f"OK/S{n:04d}/{CATEGORY}_{n:04d}_OK_C{cam}_20240101000000.jpg"
            out = root / "realiad_1024" / CATEGORY / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(out, quality=90)
            entries.append({"category": CATEGORY, "anomaly_class": "OK", "image_path": rel, "mask_path": None})
    doc = {"meta": {"prefix": CATEGORY, "normal_class": "OK"}, "train": entries, "test": []}
    (root / "realiad_jsons").mkdir(exist_ok=True)
    (root / "realiad_jsons" / f"{CATEGORY}.json").write_text(json.dumps(doc))
    return len(entries)


def time_pass(root: Path, image_size: int, workers: int, fast_jpeg: bool) -> tuple[float, float, float]:
    """One pass over the data set; returns (images/s, wall s, CPU share incl. workers)."""
    from torch.utils.data import DataLoader

    from multiflow.data.realiad import RealIADDataset
    from multiflow.data.sample import collate_samples

    ds = RealIADDataset(root, CATEGORY, split="train", resolution=1024, image_size=image_size, fast_jpeg=fast_jpeg)
    ds[0]  # warm-up: imports, codec initialisation, page cache
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_samples)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with CpuShare() as share:
        n = sum(batch.images.shape[0] * batch.images.shape[1] for batch in loader)
    del loader
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    total_share = (share.cpu + child_cpu) / max(share.wall * share.cores, 1e-9)
    return n / share.wall, share.wall, total_share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 samples instead of 12 (a smoke run)")
    parser.add_argument("--samples", type=int, default=None, help="number of 5-view samples")
    parser.add_argument("--source-size", type=int, default=1024, help="side of the generated JPEGs")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    samples = args.samples or (2 if args.quick else 12)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        root = Path(tmp)
        images = make_tree(root, samples, args.source_size, seed=0)
        configs = [(s, w, False) for s in (256, 768) for w in (0, 1, 2)] + [(256, w, True) for w in (0, 2)]
        for size, workers, fast in configs:
            ips, wall, cpu = time_pass(root, size, workers, fast)
            rows.append((size, workers, fast, ips, wall, cpu))
            print(
                f"image_size={size} workers={workers} fast_jpeg={fast}: {ips:.1f} images/s "
                f"({wall:.2f} s, CPU share {cpu:.0%})",
                flush=True,
            )

    cmd = (
        "python benchmarks/bench_loader.py"
        + (" --quick" if args.quick else "")
        + (f" --samples {args.samples}" if args.samples else "")
    )
    lines = [
        "## Loader: RealIADDataset through a DataLoader",
        "",
        f"One pass over {samples} samples x 5 views = {images} JPEGs of {args.source_size} x "
        f"{args.source_size} px (real textures from skimage.data, quality 90), batch 2 samples; "
        "decode + bilinear resize + collate. CPU share = (CPU time of this process and its "
        "workers) / (wall x cores).",
        "",
        "| image_size | workers | fast_jpeg | images/s | wall s | CPU share |",
        "|---:|---:|:---:|---:|---:|---:|",
    ]
    for size, workers, fast, ips, wall, cpu in rows:
        lines.append(f"| {size} | {workers} | {'yes' if fast else 'no'} | {ips:.1f} | {wall:.2f} | {cpu:.0%} |")
    lines += [
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {machine_line()}; peak RSS {peak_rss_mb():.0f} MiB"
        + ("; **--quick smoke run on a busy machine, not final numbers**" if args.quick else ""),
    ]
    md = "\n".join(lines)
    if args.no_write:
        print(md)
    else:
        update_section("loader", md)
        print(f"wrote the 'loader' section of BENCHMARKS.md ({os.path.basename(__file__)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
