"""``multiflow export``: write a trained class model's inference path to ONNX."""

from __future__ import annotations

import argparse

from multiflow.numbers import number_arg

NAME = "export"
HELP = "export a trained class model (backbone + flow + scoring + threshold) to ONNX"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained class folder: results/<run>/<class>")
    p.add_argument("--out", required=True, help="ONNX file to write, e.g. model.onnx")
    p.add_argument("--no-mask", action="store_true",
                   help="export without the foreground-mask input (every pixel counts)")
    p.add_argument("--threshold", type=number_arg(), help="override the calibrated decision threshold")
    p.add_argument("--class", dest="class_name", default=None,
                   help="unified multi-class model (results/<run>/unified): the class to export (one graph per class)")
    p.add_argument("--opset", type=number_arg(integer=True, gt=0), default=17, help="ONNX opset version (default 17)")


def run(args: argparse.Namespace) -> int:
    from multiflow.deploy.onnx_export import export_onnx, onnx_metadata

    path = export_onnx(args.model, args.out, with_mask=not args.no_mask, threshold=args.threshold, opset=args.opset,
                       class_name=args.class_name)
    meta = onnx_metadata(path)
    s = meta["input_size"]
    h, w = meta["feature_size"]
    v = len(meta["view_names"])
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"inputs: images (B, {v}, 3, {s}, {s}) float in [0, 1]" + ("" if args.no_mask else f", mask (B, {v}, {h}, {w})"))
    print(f"outputs: anomaly_maps (B, {v}, {h}, {w}), view_scores (B, {v}), sample_score (B,), decision (B,) bool; "
          f"views {meta['view_names']}, threshold {meta['threshold']:.6g}")
    return 0
