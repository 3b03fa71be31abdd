"""One model for the whole line (issue 23): the unified multi-class Multi-Flow against one model per class.

Synthetic data (``multiflow.synth``): the five product families plus *inverted* variants (``<family>_inv``:
the same parts with the object's colours inverted inside its silhouette, i.e. another product on the
same tray; :func:`derive_inverted`), so there are more classes than families. The models are trained
on ``train_classes`` (6 in the full grid); ``heldout_classes`` (2) are never trained on and measure
how often an object of an unseen product is flagged ``UNKNOWN CLASS`` rather than OK.

Methods (``--methods``), every one through the engine (``multiflow fit`` + ``multiflow test``):

* ``per-class``: one Multi-Flow per class (today's default), same epochs per class;
* ``unified-none``: one flow for every class, no class conditioning (the baseline);
* ``unified-embedding``: one flow, a learned class embedding given to every st-network;
* ``unified-latent``: one flow, a class-aware latent (a Gaussian per class).

Every unified model is trained for the same number of epochs over all classes' objects, i.e. the
same number of optimiser steps as all per-class models together.

Per run (``<out>/runs/<method>-seed<k>/``, a normal multiflow run folder; ``result.json`` is written
atomically when the run is complete): S-AUROC, I-AUROC, P-AUROC, AUPRO per class and their mean;
training time (fit wall time without feature extraction: the bundles' ``training.seconds``); the
model size (``model.safetensors`` + ``model.json``: the unified bundle against one per-class bundle);
predict latency per object (the engine's predictor on ``latency_objects`` test objects, class given
and, for the unified models that can, identified); class identification accuracy on the trained
classes' test objects; the share of the trained classes' normal test objects flagged unknown (the
false-unknown rate) and of the held-out classes' test objects flagged unknown (class identified;
for ``unified-none``, which cannot identify, with each trained class claimed in turn). A killed run
resumes: finished runs are skipped, an unfinished one continues its training (``--resume``).
A results folder keeps one set of settings (``settings.json``) and refuses others.

    python benchmarks/unified.py --quick --out /tmp/unified-quick          # smoke test, a few minutes
    python benchmarks/unified.py --out results/unified-bench                 # full grid; rerun continues
    python benchmarks/unified.py --out results/unified-bench --precision bf16 --device cuda   # on a GPU

Output: ``<out>/report.md`` and (full grid, unless ``--no-benchmarks-md``) the BENCHMARKS.md section
``unified``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import CpuShare, machine_line, update_section  # noqa: E402
from benchmarks.lib.results import check_settings  # noqa: E402
from multiflow._atomic import write_json, write_text  # noqa: E402

SECTION = "unified"
METHODS = ("per-class", "unified-none", "unified-embedding", "unified-latent")
FULL: dict[str, Any] = {
    "train_classes": ["bottle_cap", "lock_nut", "toy_brick", "plastic_plug", "terminal_block", "toy_brick_inv"],
    "heldout_classes": ["lock_nut_inv", "bottle_cap_inv"],
    "n_train": 100, "n_test_good": 10, "n_test_defect": 18, "size": 256, "input_size": 256, "epochs": 8,
    "batch": 4, "lr": 1e-3, "seeds": [0, 1],  # the learning curve's schedule (benchmarks/lib/curve_plan.py) "methods": list(METHODS), "latency_objects": 8, "model": [],
    "calibration_fraction": 0.1, "faults": True,
}
QUICK: dict[str, Any] = {
    "train_classes": ["bottle_cap", "toy_brick", "toy_brick_inv"], "heldout_classes": ["lock_nut"],
    "n_train": 10, "n_test_good": 2, "n_test_defect": 2, "size": 128, "input_size": 128, "epochs": 2, "batch": 4,
    "lr": 1e-3, "seeds": [0], "methods": list(METHODS), "latency_objects": 2,
    "model": ["model.n_blocks=1", "model.kernel_sizes=[3]", "model.hidden=8"], "calibration_fraction": 0.2,
    "faults": False,
}
#: keys that select runs (may change between reruns of a folder); the rest change what a run computes
SELECTING = ("seeds", "methods")


# ----------------------------------------------------------------------------------------- data
def derive_inverted(data: Path, size: int, src: str, dst: str) -> None:
    """Write class ``dst``: every image of ``src`` with the object's colours inverted inside its
    silhouette (``255 - x``), ground-truth masks and silhouettes copied, file names and the class
    JSON renamed. Idempotent: the JSON is written last and a class with its JSON is left alone."""
    from PIL import Image

    jdir = data / "realiad_jsons"
    if (jdir / f"{dst}.json").is_file():
        return
    img_src, img_dst = data / f"realiad_{size}" / src, data / f"realiad_{size}" / dst
    sil_src, sil_dst = data / f"silhouettes_{size}" / src, data / f"silhouettes_{size}" / dst
    for d in (img_dst, sil_dst):
        shutil.rmtree(d, ignore_errors=True)

    def renamed(rel: str) -> str:
        p = Path(rel)
        return str(p.with_name(p.name.replace(src, dst, 1)))

    for path in sorted(img_src.rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(img_src))
        out = img_dst / renamed(rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "cameras.json":  # the rig description names its class
            rig = json.loads(path.read_text())
            write_json(out, rig | {"class": dst} if "class" in rig else rig)
            continue
        if path.suffix.lower() not in (".jpg", ".jpeg"):
            shutil.copyfile(path, out)  # ground-truth masks
            continue
        sil = (sil_src / rel).with_suffix(".png")
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB")).copy()
        with Image.open(sil) as s:
            inside = np.asarray(s.convert("L")) > 127
        arr[inside] = 255 - arr[inside]
        Image.fromarray(arr).save(out, quality=95)
        sout = sil_dst / Path(renamed(rel)).with_suffix(".png")
        sout.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sil, sout)
    meta = json.loads((jdir / f"{src}.json").read_text())
    meta["meta"]["prefix"] = dst
    for split in ("train", "test"):
        for rec in meta[split]:
            rec["category"] = dst
            rec["image_path"] = renamed(rec["image_path"])
            if rec.get("mask_path"):
                rec["mask_path"] = renamed(rec["mask_path"])
    write_json(jdir / f"{dst}.json", meta)


def prepare_data(grid: dict[str, Any], data: Path) -> None:
    from multiflow.synth import generate_dataset

    classes = grid["train_classes"] + grid["heldout_classes"]
    families = sorted({c.removesuffix("_inv") for c in classes})
    generate_dataset(data, classes=families, n_train=grid["n_train"], n_test_good=grid["n_test_good"],
                     n_test_defect=grid["n_test_defect"], size=grid["size"], seed=0, progress=False)
    for c in classes:
        if c.endswith("_inv"):
            derive_inverted(data, grid["size"], c.removesuffix("_inv"), c)


def overrides(grid: dict[str, Any], out: Path, method: str, seed: int, device: str, precision: str) -> list[str]:
    data = out / "data"
    ov = [f"data.root={data}", f"data.resolution='{grid['size']}'",
          "data.categories=[" + ",".join(grid["train_classes"]) + "]",
          "features.backbone=lite0", f"features.input_size={grid['input_size']}", f"features.cache_dir={out / 'cache'}",
          "masks.provider=file", f"masks.mask_root={data / ('silhouettes_' + str(grid['size']))}",
          f"train.epochs={grid['epochs']}", f"train.batch_size={grid['batch']}", f"train.lr={grid['lr']}",
          f"train.seed={seed}", f"train.device={device}", f"train.precision={precision}",
          f"threshold.calibration_fraction={grid['calibration_fraction']}",
          f"faults.enabled={str(grid['faults']).lower()}",
          f"faults.size={grid['size']}", "eval.pictures=false", f"out={out / 'runs'}", f"name={method}-seed{seed}",
          *grid["model"]]
    if method.startswith("unified-"):
        ov += ["model.unified=true", f"model.class_conditioning={method.removeprefix('unified-')}"]
    return ov


# ----------------------------------------------------------------------------------------- runs
def _bundle_bytes(folder: Path) -> int:
    return sum((folder / f).stat().st_size for f in ("model.safetensors", "model.json"))


def _latency(model_dir: Path, ds, n: int, *, device: str, class_name: str | None, identify: bool) -> float:
    """Seconds per object of the engine's predictor (decoded images in memory; backbone + flow + scoring)."""
    import torch

    from multiflow.engine.unified_predict import open_predictor

    pred = open_predictor(model_dir, class_name=None if identify else class_name, device=device, frozen_check=False)
    root = getattr(ds, "image_root", None) or getattr(ds, "root", None)
    root = None if root is None else str(root)
    objs = [ds[i] for i in range(min(n, len(ds)))]  # file masks need the image paths
    x0 = objs[0]
    pred.predict(torch.as_tensor(x0.images).float(), list(x0.view_names), "warm-up", image_paths=list(x0.image_paths),
                 image_root=root)
    t0 = time.perf_counter()
    for s in objs:
        pred.predict(torch.as_tensor(s.images).float(), list(s.view_names), s.sample_id,
                     image_paths=list(s.image_paths), image_root=root)
    return (time.perf_counter() - t0) / len(objs)


def _class_checks(run_dir: Path, grid: dict[str, Any], *, device: str) -> dict[str, Any]:
    """Identification on the trained classes' test objects and unknown flags on every class's test
    objects, from the unified bundle and the cached test features (engine/unified.py)."""
    import dataclasses

    from multiflow.config import load_config
    from multiflow.engine.bundle import load_bundle
    from multiflow.engine.factories import build_extractor
    from multiflow.engine.preprocess import prepare_split
    from multiflow.engine.unified import ClassRows, object_scores

    model, bundle = load_bundle(run_dir / "unified")
    cfg = load_config(run_dir / "config.yaml")
    extractor = build_extractor(bundle.features.to_config())
    cut = np.array([bundle.per_class[c].unknown.value for c in bundle.classes])
    out: dict[str, Any] = {"classes": {}}
    for c in grid["train_classes"] + grid["heldout_classes"]:
        ccfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, categories=[c]))
        te = prepare_split(ccfg, c, "test", extractor, progress=False)
        labels = np.array([max(te.dataset.image_labels(i)) for i in range(len(te.sample_ids))]).astype(bool)
        feats = ClassRows([(te.features, np.arange(len(te.sample_ids)), 0)], tag=True)
        if model.can_identify:
            s = object_scores(model, feats, te.masks, device=device, all_classes=True)
            best = s.argmin(1)
            flagged = s[np.arange(len(s)), best] > cut[best]
            rec = {"flagged_unknown": float(flagged.mean()), "flagged_unknown_normal": float(flagged[~labels].mean())}
            if c in bundle.classes:
                rec["identified"] = float((best == bundle.classes.index(c)).mean())
        else:  # cannot identify: the share flagged when the caller claims each trained class in turn
            s = object_scores(model, feats, te.masks, device=device)
            flagged = s[:, None] > cut[None, :]
            rec = {"flagged_unknown": float(flagged.mean()),
                   "flagged_unknown_normal": float(flagged[~labels].mean())}
        rec["heldout"] = c not in bundle.classes
        out["classes"][c] = rec
        model.to("cpu")
    known = [r for r in out["classes"].values() if not r["heldout"]]
    unseen = [r for r in out["classes"].values() if r["heldout"]]
    out["identification"] = float(np.mean([r["identified"] for r in known])) if model.can_identify else None
    out["false_unknown_normal"] = float(np.mean([r["flagged_unknown_normal"] for r in known]))
    out["unseen_flagged"] = float(np.mean([r["flagged_unknown"] for r in unseen])) if unseen else None
    return out


def run_one(grid: dict[str, Any], out: Path, method: str, seed: int, *, device: str, precision: str,
            progress: bool) -> dict[str, Any]:
    from multiflow import api
    from multiflow.config import DataConfig
    from multiflow.engine.bundle import read_bundle
    from multiflow.engine.factories import open_dataset

    run_dir = out / "runs" / f"{method}-seed{seed}"
    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    ov = overrides(grid, out, method, seed, device, precision)
    with warnings.catch_warnings(), CpuShare() as share:
        warnings.simplefilter("ignore")  # small calibration sets warn on every threshold
        api.fit(overrides=ov, progress=progress, resume=run_dir.exists())
        api.evaluate(run_dir, progress=progress)
    res: dict[str, Any] = {"method": method, "seed": seed, "per_class": {}, "cpu_share": share.share}
    for c in grid["train_classes"]:
        m = json.loads((run_dir / c / "metrics.json").read_text())
        res["per_class"][c] = {k: m.get(k) for k in ("s_auroc", "i_auroc", "p_auroc", "aupro")}
    for k in ("s_auroc", "i_auroc", "p_auroc", "aupro"):
        vals = [v[k] for v in res["per_class"].values() if v[k] is not None]
        res[k] = float(np.mean(vals)) if vals else None
    folders = [run_dir / "unified"] if method.startswith("unified-") else [run_dir / c for c in grid["train_classes"]]
    bundles = [read_bundle(f) for f in folders]
    res["train_seconds"] = float(sum(b.training.seconds.get("total", 0.0) - b.training.seconds.get(
        "features_and_masks", 0.0) for b in bundles))
    res["model_bytes"] = int(sum(_bundle_bytes(f) for f in folders))
    res["one_model_bytes"] = float(np.mean([_bundle_bytes(f) for f in folders]))
    cls = grid["train_classes"][0]
    data = DataConfig(root=str(out / "data"), format="realiad", resolution=str(grid["size"]))
    ds = open_dataset(data, cls, "test", grid["input_size"], load_masks=False)
    lat_dev = "cpu" if device == "auto" else device
    res["latency_given"] = _latency(folders[0], ds, grid["latency_objects"], device=lat_dev, class_name=cls,
                                    identify=False)
    res["latency_identified"] = None
    if method in ("unified-embedding", "unified-latent"):
        res["latency_identified"] = _latency(folders[0], ds, grid["latency_objects"], device=lat_dev,
                                             class_name=None, identify=True)
        res |= _class_checks(run_dir, grid, device=lat_dev)
    elif method == "unified-none":
        res |= _class_checks(run_dir, grid, device=lat_dev)
    write_json(result_path, res)
    return res


# ----------------------------------------------------------------------------------------- report
def _ms(vals: list[float | None], scale: float = 100.0, digits: int = 1) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "–"
    m = np.mean(v) * scale
    return f"{m:.{digits}f}" + (f" ± {np.std(v) * scale:.{digits}f}" if len(v) > 1 else "")


def report(grid: dict[str, Any], results: list[dict[str, Any]], command: str) -> str:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["method"], []).append(r)
    base = by.get("per-class", [])
    base_t = np.mean([r["train_seconds"] for r in base]) if base else None
    base_one = np.mean([r["one_model_bytes"] for r in base]) if base else None
    lines = [
        "## Unified multi-class model (issue 23)",
        "",
        f"{len(grid['train_classes'])} synthetic classes trained ({', '.join(grid['train_classes'])}; `_inv` = the "
        f"family with its colours inverted inside the silhouette), {grid['n_train']} normal training objects per "
        f"class ({grid['calibration_fraction']:.0%} held out per class for the thresholds and unknown-class cut-offs), "
        f"{grid['n_test_good']} good + {grid['n_test_defect']} defective test objects per class, "
        f"{grid['size']} px, Lite0 features, {grid['epochs']} epochs (unified: over all classes' objects = the "
        f"per-class models' total steps), seeds {grid['seeds']}. Held-out classes (never trained on): "
        f"{', '.join(grid['heldout_classes'])}. Mean ± std over seeds; AUROCs in %.",
        "",
        "| method | S-AUROC | I-AUROC | P-AUROC | AUPRO | train time (x per-class total) | size of all its models "
        "(x one per-class model) | predict ms/object (given / identified) | class identified % | "
        "false unknown % (normal, known classes) | unseen classes flagged unknown % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in grid["methods"]:
        rs = by.get(m, [])
        if not rs:
            continue
        t = np.mean([r["train_seconds"] for r in rs])
        size = np.mean([r["model_bytes"] for r in rs])
        lat_g = np.mean([r["latency_given"] for r in rs]) * 1e3
        lat_i = [r["latency_identified"] for r in rs if r.get("latency_identified") is not None]
        lines.append(
            f"| {m} | {_ms([r['s_auroc'] for r in rs])} | {_ms([r['i_auroc'] for r in rs])} | "
            f"{_ms([r['p_auroc'] for r in rs])} | {_ms([r['aupro'] for r in rs])} | "
            f"{t:.0f} s" + (f" ({t / base_t:.2f}x)" if base_t else "") + " | "
            f"{size / 2**20:.2f} MiB" + (f" ({size / base_one:.2f}x)" if base_one else "") + " | "
            f"{lat_g:.1f} / " + (f"{np.mean(lat_i) * 1e3:.1f}" if lat_i else "–") + " | "
            f"{_ms([r.get('identification') for r in rs])} | {_ms([r.get('false_unknown_normal') for r in rs])} | "
            f"{_ms([r.get('unseen_flagged') for r in rs])} |")
    lines += ["", "Per class (S-AUROC / I-AUROC, %):", "",
              "| class | " + " | ".join(m for m in grid["methods"] if by.get(m)) + " |",
              "|---|" + "---|" * len([m for m in grid["methods"] if by.get(m)])]
    for c in grid["train_classes"]:
        cells = []
        for m in grid["methods"]:
            rs = by.get(m, [])
            if rs:
                cells.append(_ms([r["per_class"][c]["s_auroc"] for r in rs]) + " / "
                             + _ms([r["per_class"][c]["i_auroc"] for r in rs]))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    shares = [r["cpu_share"] for r in results]
    lines += ["", "Model size: `model.safetensors` + `model.json` (the unified model: its one bundle; per-class: "
              "the mean of one class's bundle; the total of all per-class bundles is the per-class row's size x "
              f"{len(grid['train_classes'])}). Training time: the bundles' fit time without feature extraction. "
              "Unknown class: the object's mean foreground NLL under its identified class above that class's "
              "cut-off (fitted on its held-out normal objects for the threshold's false-reject target); "
              "`unified-none` cannot identify a class, so its rates are those with each trained class claimed "
              "in turn. Latency: the engine's predictor, decoded images in memory.",
              "", f"Regenerate: `{command}`", "",
              f"Machine: {machine_line()}; CPU share of the runs {min(shares):.0%}–{max(shares):.0%} "
              "(other processes were running; timings are comparable within a run folder only)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "unified-bench"))
    p.add_argument("--quick", action="store_true", help="tiny grid (smoke test); never writes BENCHMARKS.md")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--methods", nargs="+", choices=METHODS)
    p.add_argument("--n-train", type=int, help="normal training objects per class (full grid: 100)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--no-benchmarks-md", action="store_true")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    grid = dict(QUICK if args.quick else FULL)
    if args.seeds:
        grid["seeds"] = list(args.seeds)
    if args.methods:
        grid["methods"] = list(args.methods)
    if args.n_train:
        grid["n_train"] = int(args.n_train)
    if args.epochs:
        grid["epochs"] = int(args.epochs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, {k: v for k, v in grid.items() if k not in SELECTING} | {"precision": args.precision})
    prepare_data(grid, out / "data")
    results = []
    for seed in grid["seeds"]:
        for method in grid["methods"]:
            t0 = time.perf_counter()
            results.append(run_one(grid, out, method, seed, device=args.device, precision=args.precision,
                                   progress=args.progress))
            print(f"{method} seed {seed}: S-AUROC {results[-1]['s_auroc']:.4f}, I-AUROC {results[-1]['i_auroc']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    command = "python benchmarks/unified.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = report(grid, results, command.strip())
    write_text(out / "report.md", md)
    print(md)
    if not args.quick and not args.no_benchmarks_md:
        update_section(SECTION, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
