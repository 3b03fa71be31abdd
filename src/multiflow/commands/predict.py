"""``multiflow predict``: pass/fail decisions, per-view scores and anomaly maps for new samples."""

from __future__ import annotations

import argparse

from multiflow.numbers import number_arg

NAME = "predict"
HELP = "score new samples with a trained class model: decision, per-view scores, maps (.npy + PNG)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained class folder: results/<run>/<class>")
    p.add_argument("--data", required=True, help="data root (folder format, Real-IAD root) or manifest CSV")
    p.add_argument("--format", default="folder", choices=["folder", "realiad", "manifest"])
    p.add_argument("--split", default="test", help="split to score (folder/manifest: the split folder name)")
    p.add_argument("--category", help="Real-IAD class (default: the model's)")
    p.add_argument("--resolution", default="", help="Real-IAD resolution folder (default: the only one present)")
    p.add_argument("--out", help="output folder (default: <model>/predictions)")
    p.add_argument("--threshold", type=number_arg(), help="override the calibrated decision threshold")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: st-network convolutions in bf16 autocast (NLL in fp32)")
    p.add_argument("--class", dest="class_name", default=None,
                   help="unified multi-class model: the class of the objects (default: identified per object)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from multiflow.api import predict
    from multiflow.errors import DataError

    rows = predict(args.model, data_root=args.data, data_format=args.format, split=args.split,
                   category=args.category, resolution=args.resolution, out_dir=args.out, threshold=args.threshold,
                   progress=not args.quiet,
                   device=args.device, precision=args.precision, class_name=args.class_name)
    n_ng = sum(r["decision"] == "NG" for r in rows)
    n_cam = sum(r["decision"] == "CHECK CAMERA" for r in rows)
    n_unknown = sum(r["decision"] == "UNKNOWN CLASS" for r in rows)
    for r in rows:
        views = " ".join(f"{k}={'-' if v is None else f'{v:.2f}'}" for k, v in r["view_scores"].items())
        score = "-" if r["sample_score"] is None else f"{r['sample_score']:.3f}"
        line = f"{r['sample_id']}: {r['decision']} (score {score}, threshold {r['threshold']:.3f}) {views}"
        if "class" in r:
            margin = "" if r["class_margin"] is None else f", margin {r['class_margin']:.3f}"
            line += f" | class {r['class']} ({r['class_source']}{margin})"
        if r["camera_faults"]:
            line += " | camera faults: " + "; ".join(f"{f['view']} {f['fault']}" for f in r["camera_faults"])
            line += f" | product: {r['product_decision'] or 'not scored'}"
        if r["missing_views"]:
            line += f" | missing: {' '.join(r['missing_views'])}"
        print(line)
    for k in rows.skipped:  # objects not scored (incomplete without view-dropout support, unreadable, bad id)
        print(f"{k['sample_id']}: SKIPPED ({k['reason']})")
    print(f"{len(rows)} samples, {n_ng} NG, {n_cam} CHECK CAMERA, "
          + (f"{n_unknown} UNKNOWN CLASS, " if n_unknown else "") + f"{len(rows) - n_ng - n_cam - n_unknown} OK"
          + (f"; {len(rows.skipped)} skipped (listed in summary.json)" if rows.skipped else ""))
    if rows.skipped and not rows:
        raise DataError("no object could be scored (every one is listed above and in summary.json)", args.data)
    return 0
