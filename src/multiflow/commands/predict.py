"""``multiflow predict``: pass/fail decisions, per-view scores and anomaly maps for new samples.

Over a data set (``--data``): every object is scored, the outputs written, and objects/s with the
seconds per stage printed at the end (also in ``summary.json``'s ``timing``). As a line's
streaming scorer (``--watch DIR``): objects are scored as their last view file arrives and each
result is appended to a JSON-lines file (:mod:`multiflow.engine.watch`); Ctrl-C stops after the
object being scored is written; a restart skips the objects already in the file.
"""

from __future__ import annotations

import argparse

from multiflow.numbers import number_arg

NAME = "predict"
HELP = "score new samples with a trained class model: decision, per-view scores, maps (.npy + PNG)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="trained class folder: results/<run>/<class>")
    p.add_argument("--data", help="data root (folder format, Real-IAD root) or manifest CSV")
    p.add_argument("--format", default="folder", choices=["folder", "realiad", "manifest"])
    p.add_argument("--split", default="test", help="split to score (folder/manifest: the split folder name)")
    p.add_argument("--category", help="Real-IAD class (default: the model's)")
    p.add_argument("--resolution", default="", help="Real-IAD resolution folder (default: the only one present)")
    p.add_argument("--out", help="output folder (default: <model>/predictions)")
    p.add_argument("--threshold", type=number_arg(), help="override the calibrated decision threshold")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="fp32 (default: as the threshold was calibrated); bf16: st-network convolutions in bf16 "
                        "autocast (NLL in fp32); auto: bf16 where the device computes it natively")
    p.add_argument("--batch-size", type=number_arg(integer=True, gt=0), default=4,
                   help="objects scored together (one backbone call on all their views); default 4")
    p.add_argument("--workers", type=number_arg(integer=True, ge=0), default=2,
                   help="threads decoding the next objects' files while a batch is scored (0 = inline); default 2")
    p.add_argument("--maps", default="png", choices=["png", "npy", "none"],
                   help="per object besides result.json: raw maps (.npy) and PNG overlays (default), raw maps only, "
                        "or nothing (the overlays are most of the write time)")
    p.add_argument("--masks-backend", default="torch", choices=["torch", "numpy"],
                   help="threshold masks: batched on the device (torch) or the NumPy reference (for comparison)")
    p.add_argument("--watch", metavar="DIR",
                   help="streaming: score each object folder DIR/<id>/<view>.<ext> once all its views have arrived; "
                        "results appended to --output; stop with Ctrl-C; a restart skips the objects already written")
    p.add_argument("--output", help="--watch: the JSON-lines result file (default: <out>/results.jsonl)")
    p.add_argument("--settle", type=number_arg(gt=0), default=1.0,
                   help="--watch: seconds a view file must be unchanged before it is read (default 1.0)")
    p.add_argument("--poll", type=number_arg(gt=0), default=0.25,
                   help="--watch: seconds between scans of the folder (default 0.25)")
    p.add_argument("--class", dest="class_name", default=None,
                   help="unified multi-class model: the class of the objects (default: identified per object)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from multiflow.errors import ConfigError

    if args.watch:
        if args.data:
            raise ConfigError("give either --data (score a data set) or --watch DIR (score objects as they arrive)")
        return _watch(args)
    if not args.data:
        raise ConfigError("predict needs --data (a data set to score) or --watch DIR (a folder objects arrive in)")
    return _dataset(args)


def _dataset(args: argparse.Namespace) -> int:
    from multiflow.api import predict
    from multiflow.engine.timing import format_report
    from multiflow.errors import DataError

    rows = predict(args.model, data_root=args.data, data_format=args.format, split=args.split,
                   category=args.category, resolution=args.resolution, out_dir=args.out, threshold=args.threshold,
                   progress=not args.quiet, device=args.device, precision=args.precision,
                   batch_size=args.batch_size, workers=args.workers, masks_backend=args.masks_backend,
                   maps=args.maps, class_name=args.class_name)
    n_ng = sum(r["decision"] == "NG" for r in rows)
    n_cam = sum(r["decision"] == "CHECK CAMERA" for r in rows)
    n_unknown = sum(r["decision"] == "UNKNOWN CLASS" for r in rows)
    for r in rows:
        print(_line(r))
    for k in rows.skipped:  # objects not scored (incomplete without view-dropout support, unreadable, bad id)
        print(f"{k['sample_id']}: SKIPPED ({k['reason']})")
    print(f"{len(rows)} samples, {n_ng} NG, {n_cam} CHECK CAMERA, "
          + (f"{n_unknown} UNKNOWN CLASS, " if n_unknown else "") + f"{len(rows) - n_ng - n_cam - n_unknown} OK"
          + (f"; {len(rows.skipped)} skipped (listed in summary.json)" if rows.skipped else ""))
    if rows.timing:
        print(format_report(rows.timing) + f"; batch {rows.timing['batch_size']}, {rows.timing['workers']} decode "
              f"worker(s), {rows.timing['device']}")
    if rows.skipped and not rows:
        raise DataError("no object could be scored (every one is listed above and in summary.json)", args.data)
    return 0


def _line(r: dict) -> str:
    if r.get("decision") is None:
        return f"{r['sample_id']}: SKIPPED ({r.get('skipped', '')})"
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
    return line


def _watch(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading
    from pathlib import Path

    from multiflow.engine.predict import Predictor
    from multiflow.engine.timing import format_report
    from multiflow.engine.watch import watch_folder

    predictor = Predictor(args.model, threshold=args.threshold, device=args.device, precision=args.precision,
                          masks_backend=args.masks_backend)
    out = Path(args.output) if args.output else Path(args.out or Path(args.model) / "predictions") / "results.jsonl"
    stop = threading.Event()

    def on_signal(signum, _frame):  # finish and write the object being scored, then stop
        stop.set()
        signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C stops at once (a cut line is redone on restart)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if not args.quiet:
        print(f"watching {args.watch} for {predictor.view_names} (settle {args.settle} s); results -> {out}; "
              "Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        report = watch_folder(predictor, args.watch, out, settle=args.settle, poll=args.poll,
                              batch_size=args.batch_size, stop=stop,
                              on_result=None if args.quiet else (lambda r: print(_line(r), flush=True)))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(f"stopped; {report['resumed']} object(s) were already in {out}; " + format_report(report), flush=True)
    return 0
