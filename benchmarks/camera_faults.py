"""Camera faults and missing views on the synthetic benchmark data (issue 14).

1. Detection with missing views: S-AUROC and I-AUROC (over the views present) of
   (a) the paper model on all views, (b) the view-dropout model on all views, (c) the dropout model
   with each single camera missing (mean and worst over cameras) and with two missing (mean over
   pairs), (d) the single-view flow (``model.single_view=true``).
2. Camera faults: every synthetic fault (:mod:`multiflow.synth.camera_faults`) on every camera of
   every clean normal test object: detection rate per fault type (the right fault on the right
   camera), false fault rate on clean normal (and defective) objects, and what the product decision
   of the paper model would have been without the detector (share of these good objects rejected NG).

Every class writes ``<out>/<class>/result.json`` atomically (a rerun skips finished classes and
resumes trainings); the table goes to the BENCHMARKS.md section ``camera_faults``.

    python benchmarks/camera_faults.py            # full: 2 classes, 256 px (lead, quiet machine)
    python benchmarks/camera_faults.py --quick    # smoke test: 1 class, 64 px, a tiny flow, 1 epoch
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine_line, update_section  # noqa: E402
from multiflow._atomic import write_json  # noqa: E402

SECTION = "camera_faults"
FULL = {"classes": ["bottle_cap", "lock_nut"], "n_train": 26, "n_test_good": 10, "n_test_defect": 18, "size": 256,
        "epochs": 8, "lr": 1e-3, "batch": 4, "view_dropout": 0.3, "seed": 0}
QUICK = {"classes": ["bottle_cap"], "n_train": 10, "n_test_good": 2, "n_test_defect": 2, "size": 64, "epochs": 1,
         "lr": 1e-3, "batch": 4, "view_dropout": 0.3, "seed": 0,
         "model": ["model.n_blocks=2", "model.kernel_sizes=[3,3]", "model.hidden=8"]}
VARIANTS = {"paper": [], "dropout": ["train.view_dropout={vd}"], "single-view": ["model.single_view=true"]}


def config(sizes: dict[str, Any], data: Path, cache: Path, category: str, extra: list[str]):
    from multiflow.config import load_config

    over = [f"data.root={data}", f"data.categories=[{category}]", f"data.resolution='{sizes['size']}'",
            f"features.input_size={sizes['size']}", f"features.cache_dir={cache}", f"train.epochs={sizes['epochs']}",
            f"train.lr={sizes['lr']}", f"train.batch_size={sizes['batch']}", f"train.seed={sizes['seed']}",
            f"train.checkpoint_every={sizes['epochs']}", f"faults.size={sizes['size']}", "eval.pictures=false"]
    over += list(sizes.get("model", []))
    return load_config(None, over + [e.format(vd=sizes["view_dropout"]) for e in extra])


def scores_with_present(model, feats: np.ndarray, masks: np.ndarray | None, present: np.ndarray) -> np.ndarray:
    """Image scores ``(N, V)`` (max of the foreground map) with the views ``present (N, V)``; NaN = absent."""
    import torch

    out = np.full(present.shape, np.nan)
    for s in range(0, len(feats), 8):
        x = torch.from_numpy(np.asarray(feats[s : s + 8])).float()
        m = None if masks is None else torch.from_numpy(np.asarray(masks[s : s + 8])).float()
        p = torch.from_numpy(present[s : s + 8])
        maps = model.anomaly_map(x, m, None if bool(p.all()) else p).numpy()
        out[s : s + 8] = np.where(present[s : s + 8], np.nan_to_num(maps, nan=-np.inf).max(axis=(2, 3)), np.nan)
    return out


def aurocs(img: np.ndarray, labels: np.ndarray, present: np.ndarray) -> tuple[float, float]:
    """``(S-AUROC, I-AUROC)``: sample score = max over the present views; images = present views only."""
    import torch

    from multiflow.metrics import auroc
    from multiflow.scoring import aggregate_scores

    s = aggregate_scores(torch.from_numpy(img), "max", torch.from_numpy(present)).numpy()
    return float(auroc(s, labels.max(1))), float(auroc(img[present], labels[present]))


def detection(sizes, data: Path, cache: Path, out: Path, category: str, progress: bool) -> dict[str, Any]:
    from multiflow.engine.bundle import load_bundle
    from multiflow.engine.factories import build_extractor
    from multiflow.engine.pipeline import fit_category
    from multiflow.engine.preprocess import prepare_split
    from multiflow.engine.maps import compute_maps
    from multiflow.scoring import image_scores_from_maps

    res: dict[str, Any] = {}
    for name, extra in VARIANTS.items():
        folder = out / "runs" / name
        cfg = config(sizes, data, cache, category, extra)
        if not (folder / category / "model.json").is_file():
            fit_category(cfg, category, folder, resume=True, progress=progress)
        model, _ = load_bundle(folder / category)
        test = prepare_split(cfg, category, "test", build_extractor(cfg.features), progress=progress)
        labels = np.array([test.dataset.image_labels(i) for i in range(len(test.dataset))])
        n, v = labels.shape
        if name == "single-view":
            f, m = model.to_flow_samples(test.features, test.masks)
            img = image_scores_from_maps(model.from_flow_samples(compute_maps(model, f, m), v)).numpy()
            res["single-view"] = aurocs(img, labels, np.ones((n, v), bool))
            continue
        full = np.ones((n, v), bool)
        res[f"{name}/all"] = aurocs(scores_with_present(model, test.features, test.masks, full), labels, full)
        if name != "dropout":
            continue
        for k in range(1, 3):
            per = []
            for gone in itertools.combinations(range(v), k):
                p = full.copy()
                p[:, list(gone)] = False
                per.append(aurocs(scores_with_present(model, test.features, test.masks, p), labels, p))
            res[f"dropout/{k}-missing"] = [list(x) for x in per]
    return res


def faults(sizes, data: Path, out: Path, category: str, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from multiflow.data.realiad import RealIADDataset
    from multiflow.engine.predict import Predictor
    from multiflow.faults import FrameMemory, detect_faults
    from multiflow.synth.camera_faults import SYNTH_FAULTS, apply_camera_fault

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = RealIADDataset(data, category, split="test", image_size=sizes["size"], load_masks=False)
    names = list(test.view_names)
    objs = [test[i].images for i in range(len(test))]
    normal = [i for i in range(len(test)) if not any(test.image_labels(i))]
    dropout = Predictor(out / "runs" / "dropout" / category)
    paper = Predictor(out / "runs" / "paper" / category)
    if dropout.fault_model is None:
        raise SystemExit(f"{category}: no camera_faults.json (needs >= 10 normal training objects)")
    paper.fault_model = None  # the decision without the detector
    fm = dropout.fault_model
    clean = {"normal": [0, 0], "defective": [0, 0]}
    mem = FrameMemory()
    for i, o in enumerate(objs):
        key = "normal" if i in normal else "defective"
        clean[key][0] += bool(detect_faults(fm, o, memory=mem))
        clean[key][1] += 1
    rng = np.random.default_rng(sizes["seed"])
    per: dict[str, dict[str, int]] = {}
    cases = [(kind, v, i) for kind in SYNTH_FAULTS for v in range(len(names)) for i in normal]
    if sizes.get("max_cases"):
        cases = cases[:: max(1, len(cases) // sizes["max_cases"])]
    for kind, v, i in tqdm(cases, desc=f"{category}: faults", disable=not progress, leave=False):
        prev = objs[i - 1] if i > 0 else objs[-1]
        img = apply_camera_fault(objs[i], v, kind, rng=rng, previous=prev, other=(v + 1) % len(names))
        mem = FrameMemory()
        detect_faults(fm, prev, memory=mem)
        found = detect_faults(fm, img, memory=mem)
        row = per.setdefault(kind, {"n": 0, "detected": 0, "any_fault_on_camera": 0, "ng_without_detector": 0,
                                    "check_camera": 0, "product_ng_remaining_views": 0})
        row["n"] += 1
        row["detected"] += any(f.view == names[v] and f.fault == kind for f in found)
        row["any_fault_on_camera"] += any(f.view == names[v] for f in found)
        row["ng_without_detector"] += paper.predict(img, sample_id="x").decision == "NG"
        dropout.frame_memory = FrameMemory()
        dropout.predict(prev, sample_id="prev")
        d = dropout.predict(img, sample_id="x")
        row["check_camera"] += d.decision == "CHECK CAMERA"
        row["product_ng_remaining_views"] += d.product_decision == "NG"
    return {"clean": clean, "per_fault": per, "views": names}


def report(results: dict[str, dict], sizes: dict[str, Any], command: str) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.2f}"

    lines = ["### Camera faults and missing views", "",
             "Detection with missing views (class mean; S-AUROC / I-AUROC over the views present, %):", "",
             "| model | views | S-AUROC | I-AUROC |", "|---|---|---:|---:|"]
    cats = list(results)

    def mean(key, j, how="mean"):
        vals = []
        for c in cats:
            r = results[c]["detection"][key]
            if isinstance(r[0], list):
                xs = [x[j] for x in r]
                vals.append(min(xs) if how == "worst" else float(np.mean(xs)))
            else:
                vals.append(r[j])
        return float(np.mean(vals))

    rows = [("(a) paper model", "all", "paper/all", "mean"), ("(b) view-dropout model", "all", "dropout/all", "mean"),
            ("(c) view-dropout model", "one missing (mean over cameras)", "dropout/1-missing", "mean"),
            ("(c) view-dropout model", "one missing (worst camera)", "dropout/1-missing", "worst"),
            ("(c) view-dropout model", "two missing (mean over pairs)", "dropout/2-missing", "mean"),
            ("(d) single-view flow", "all", "single-view", "mean")]
    for label, views, key, how in rows:
        lines.append(f"| {label} | {views} | {pct(mean(key, 0, how))} | {pct(mean(key, 1, how))} |")
    d_ab = 100 * (mean("dropout/all", 0) - mean("paper/all", 0))
    d_c = 100 * (mean("dropout/1-missing", 0) - mean("dropout/all", 0))
    lines += ["", f"(b) - (a): {d_ab:+.2f} pp S-AUROC (goal: within 1 pp); one camera missing - all views: "
              f"{d_c:+.2f} pp S-AUROC (goal: at most 3 pp lost).", "",
              "Camera faults on clean normal test objects (every fault type x every camera; all classes):", "",
              "| fault | cases | detected (right fault, right camera) | any fault on that camera | decision CHECK CAMERA "
              "| without detector: NG (good part rejected) | product NG on the remaining views |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    kinds = list(next(iter(results.values()))["faults"]["per_fault"])
    for k in kinds:
        t = {f: sum(results[c]["faults"]["per_fault"][k][f] for c in cats)
             for f in next(iter(results.values()))["faults"]["per_fault"][k]}
        n = max(t["n"], 1)
        lines.append(f"| {k} | {t['n']} | {pct(t['detected'] / n)} % | {pct(t['any_fault_on_camera'] / n)} % | "
                     f"{pct(t['check_camera'] / n)} % | {pct(t['ng_without_detector'] / n)} % | "
                     f"{pct(t['product_ng_remaining_views'] / n)} % |")
    fn = sum(results[c]["faults"]["clean"]["normal"][0] for c in cats)
    nn = sum(results[c]["faults"]["clean"]["normal"][1] for c in cats)
    fd = sum(results[c]["faults"]["clean"]["defective"][0] for c in cats)
    nd = sum(results[c]["faults"]["clean"]["defective"][1] for c in cats)
    lines += ["", f"False camera faults: {fn} of {nn} clean normal test objects ({pct(fn / max(nn, 1))} %; goal <= 1 %), "
              f"{fd} of {nd} clean defective objects ({pct(fd / max(nd, 1))} %: a product defect taken for a camera "
              "fault).", "",
              f"Command: `{command}`  ",
              f"Data: synthetic (`multiflow synth`), classes {sizes['classes']}, {sizes['n_train']} train / "
              f"{sizes['n_test_good']} good / {sizes['n_test_defect']} defective test objects per class, 5 views at "
              f"{sizes['size']} px; lite0, {sizes['epochs']} epochs, lr {sizes['lr']}, batch {sizes['batch']}, "
              f"view dropout {sizes['view_dropout']}, seed {sizes['seed']}. Camera statistics from the normal "
              "training images only.  ",
              f"Machine: {machine_line()}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 1 class, 64 px, a tiny flow, 1 epoch")
    p.add_argument("--out", help="results folder (default results/camera-faults[-quick])")
    p.add_argument("--no-benchmarks-md", action="store_true", help="do not write the BENCHMARKS.md section")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else ROOT / "results" / ("camera-faults-quick" if args.quick else "camera-faults")
    progress = not args.quiet
    data, cache = out / "data", out / "cache"
    from multiflow.synth import generate_dataset

    generate_dataset(data, classes=sizes["classes"], n_train=sizes["n_train"], n_test_good=sizes["n_test_good"],
                     n_test_defect=sizes["n_test_defect"], size=sizes["size"], seed=0, progress=progress)
    results = {}
    for category in sizes["classes"]:
        path = out / category / "result.json"
        if path.is_file():
            results[category] = json.loads(path.read_text())
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det = detection(sizes, data, cache, out / category, category, progress)
        flt = faults(sizes, data, out / category, category, progress)
        results[category] = {"detection": det, "faults": flt, "seconds": time.perf_counter() - t0}
        write_json(path, results[category])
    cmd = "python benchmarks/camera_faults.py" + (" --quick" if args.quick else "")
    md = report(results, sizes, cmd)
    if not args.no_benchmarks_md:
        update_section(SECTION, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
