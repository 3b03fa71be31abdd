"""Render one defective sample per synthetic class from all views, defect masks outlined in green.

Usage: ``python scripts/make_synth_figure.py [--out docs/synth_samples.png] [--size 144] [--seed 0]
[--defects HS,CI,YW,QS,ZW] [--colours 256] [--variation realistic]`` (one defect code per class, in
class order). The cross-view defect pictures: ``--defects FM --variation realistic --out docs/synth_fm.png``,
``--defects ML,LB --variation realistic --out docs/synth_cross_view.png``.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from multiflow._atomic import write_bytes
from multiflow.synth import ALL_DEFECT_CODES, DEFAULT_CLASSES, VARIATIONS, render_sample


def outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Draw the 1-px inner boundary of ``mask (H, W)`` onto ``image (H, W, 3)`` in green (dilated x1)."""
    edge = mask & ~ndimage.binary_erosion(mask)
    edge = ndimage.binary_dilation(edge)
    out = image.copy()
    out[edge] = (40, 255, 40)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "synth_samples.png"))
    parser.add_argument("--size", type=int, default=144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--defects", default="HS,CI,YW,QS,ZW", help="one code per class, cycled")
    parser.add_argument("--colours", type=int, default=256, help="palette size (0 = full RGB)")
    parser.add_argument("--variation", default="default", choices=sorted(VARIATIONS),
                        help="instance variation preset of multiflow.synth (lots, pose jitter)")
    args = parser.parse_args()
    codes = args.defects.split(",")
    rows = []
    for k, cls in enumerate(DEFAULT_CLASSES):
        code = codes[k % len(codes)]
        lots, jitter = VARIATIONS[args.variation]
        s = render_sample(cls, defect=code, size=args.size, seed=args.seed, lots=lots, pose_jitter=jitter,
                          labels="LB" in codes)
        tiles = [outline(img, m) for img, m in zip(s.images, s.masks)]
        row = Image.fromarray(np.concatenate(tiles, axis=1))
        label = Image.new("RGB", (row.width, 16), (20, 20, 20))
        ImageDraw.Draw(label).text((4, 2), f"{cls}  {code} ({ALL_DEFECT_CODES[code]})   views: "
                                   + " ".join(s.view_names), fill=(230, 230, 230))
        rows.append(np.concatenate([np.asarray(label), np.asarray(row)], axis=0))
    fig = Image.fromarray(np.concatenate(rows, axis=0))
    if args.colours:  # palette PNG: keeps the file commit-sized
        fig = fig.quantize(colors=args.colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    fig.save(buf, format="PNG", optimize=True)
    out = write_bytes(args.out, buf.getvalue())
    print(f"wrote {out} ({len(buf.getvalue()) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
