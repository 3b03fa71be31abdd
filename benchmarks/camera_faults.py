"""Camera faults and missing views (issues 14, 20 and 21): measured on synthetic or existing data.

Per class (``<out>/<class>/result.json``, written atomically; a rerun skips finished classes and
resumes trainings; a folder keeps one set of settings and refuses others):

1. Detection with missing views: S-AUROC and I-AUROC (over the views present) of the paper model
   and the view-dropout model on all views, the dropout model with one and two cameras missing, and
   (``--variants`` with ``single-view``) the single-view flow.
2. Camera faults (:mod:`multiflow.faults`, fitted by ``fit`` on the normal training images):
   * false camera faults on the clean normal test objects (in acquisition order, frame memory on,
     ids = sample ids) and which check fired;
   * product defects taken for camera faults: clean defective test objects with any camera fault;
   * every synthetic fault (:mod:`multiflow.synth.camera_faults`) on every camera (swaps: on every
     pair of cameras) of the clean normal test objects, at most ``--max-cases`` per kind and class
     (a seeded random subset): detected = the right fault on the right camera (both cameras of a
     swap), the check that fired, and with the view-dropout model's predictor the decision
     (``CHECK CAMERA``) and the product decision on the remaining views;
   * swap evidence from the flow (:func:`multiflow.faults.flow_swap_gains` on the whole maps, the
     paper and dropout models): per camera pair the AUROC of the likelihood gain of the swapped assignment, swapped
     objects against the same pair on the clean objects, and the share of swaps above the largest
     clean gain (i.e. at no false alarm on the clean objects).

    python benchmarks/camera_faults.py --quick --no-benchmarks-md --out /tmp/cf-quick   # smoke test
    python benchmarks/camera_faults.py                 # synthetic data set of issue 14 (2 classes, 256 px)
    python benchmarks/camera_faults.py --data results/trust/data --classes toy_brick,terminal_block \\
        --size 384 --epochs 40 --batch 8 --lr 2e-4 --precision bf16 --max-cases 200 \\
        --out results/camera-faults-trust                # issue 20: existing data, 200 train objects
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
        "epochs": 8, "lr": 1e-3, "batch": 4, "precision": "fp32", "view_dropout": 0.3, "seed": 0, "max_cases": 0,
        "variants": ["paper", "dropout", "single-view"], "false_alarm": 0.01}
QUICK = {"classes": ["bottle_cap"], "n_train": 12, "n_test_good": 3, "n_test_defect": 2, "size": 64, "epochs": 1,
         "lr": 1e-3, "batch": 4, "precision": "fp32", "view_dropout": 0.3, "seed": 0, "max_cases": 3,
         "variants": ["paper", "dropout"], "false_alarm": 0.01,
         "model": ["model.n_blocks=2", "model.kernel_sizes=[3,3]", "model.hidden=8"]}
VARIANTS = {"paper": [], "dropout": ["train.view_dropout={vd}"], "single-view": ["model.single_view=true"]}
#: settings that change what a class result means (a results folder keeps one set of them)
SETTINGS = ("size", "epochs", "lr", "batch", "precision", "view_dropout", "seed", "max_cases", "variants",
            "false_alarm", "model", "data")


def config(sizes: dict[str, Any], data: Path, cache: Path, category: str, extra: list[str]):
    """The run configuration of one class and variant; masks from ``<data>/silhouettes_<size>`` files
    when that folder exists (as benchmarks/learning_curve.py's ``make_config``)."""
    from multiflow.config import load_config

    over = [f"data.root={data}", f"data.categories=[{category}]", f"data.resolution='{sizes['size']}'",
            f"features.input_size={sizes['size']}", f"features.cache_dir={cache}", f"train.epochs={sizes['epochs']}",
            f"train.lr={sizes['lr']}", f"train.batch_size={sizes['batch']}", f"train.seed={sizes['seed']}",
            f"train.precision={sizes['precision']}", f"train.checkpoint_every={sizes['epochs']}",
            f"faults.size={sizes['size']}", f"faults.false_alarm={sizes['false_alarm']}", "eval.pictures=false"]
    silhouettes = data / f"silhouettes_{sizes['size']}"
    if silhouettes.is_dir():
        over += ["masks.provider=file", f"masks.mask_root={silhouettes}"]
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


def train(sizes, data: Path, cache: Path, out: Path, category: str, progress: bool) -> None:
    """Fit every variant of ``sizes['variants']`` (resumed from its checkpoints when interrupted).

    With ``sizes['runs']`` (``--runs``), a variant already trained there (``<runs>/<name>/<class>``,
    or ``<runs>/<name>_<class>/<class>``: ``multiflow fit --out <runs> --name <name>``) is linked instead
    of trained. A model whose ``camera_faults.json`` is missing or of an older format gets it (re)fitted
    from the class's normal training images (the statistics do not depend on the flow)."""
    from multiflow.engine.factories import open_dataset
    from multiflow.engine.pipeline import fit_camera_fault_stats, fit_category
    from multiflow.faults.fit import FAULTS_FORMAT

    for name in sizes["variants"]:
        folder = out / "runs" / name
        cfg = config(sizes, data, cache, category, VARIANTS[name])
        if not (folder / category / "model.json").is_file() and sizes.get("runs"):
            for cand in (Path(sizes["runs"]) / name / category, Path(sizes["runs"]) / f"{name}_{category}" / category):
                if (cand / "model.json").is_file():
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / category).symlink_to(cand.resolve(), target_is_directory=True)
                    break
        if not (folder / category / "model.json").is_file():
            fit_category(cfg, category, folder, resume=True, progress=progress)
        stats = folder / category / "camera_faults.json"
        try:
            current = json.loads(stats.read_text()).get("format") == FAULTS_FORMAT
        except (OSError, ValueError, AttributeError):
            current = False
        if not current:
            ds = open_dataset(cfg.data, category, "train", sizes["size"], load_masks=False)
            fit_camera_fault_stats(cfg, category, ds, stats, progress=progress)


def detection(sizes, data: Path, cache: Path, out: Path, category: str, progress: bool) -> dict[str, Any]:
    from multiflow.engine.bundle import load_bundle
    from multiflow.engine.factories import build_extractor
    from multiflow.engine.preprocess import prepare_split
    from multiflow.engine.maps import compute_maps
    from multiflow.scoring import image_scores_from_maps

    res: dict[str, Any] = {}
    for name in sizes["variants"]:
        cfg = config(sizes, data, cache, category, VARIANTS[name])
        model, _ = load_bundle(out / "runs" / name / category)
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


def fault_cases(kinds, n_views: int, normal: list[int], max_cases: int, seed: int) -> list[tuple[str, tuple, int]]:
    """``(kind, cameras, object)``: every kind on every camera (a swap: on every pair) of every normal
    object; at most ``max_cases`` per kind (0: all), a seeded random subset in a stable order."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in kinds:
        where = list(itertools.combinations(range(n_views), 2)) if kind == "swapped" else [(v,) for v in range(n_views)]
        cases = [(kind, w, i) for w in where for i in normal]
        if max_cases and len(cases) > max_cases:
            cases = [cases[j] for j in sorted(rng.choice(len(cases), size=max_cases, replace=False))]
        out += cases
    return out


def _checks(found) -> list[str]:
    return [f"{f.fault}/{f.check}" for f in found]


def faults(sizes, data: Path, out: Path, category: str, progress: bool) -> dict[str, Any]:
    from collections import Counter

    from tqdm.auto import tqdm

    from multiflow.data.realiad import RealIADDataset
    from multiflow.engine.predict import Predictor
    from multiflow.faults import FrameMemory, detect_faults, flow_swap_gains
    from multiflow.synth.camera_faults import SYNTH_FAULTS, apply_camera_fault

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = RealIADDataset(data, category, split="test", image_size=sizes["size"], load_masks=False)
    names = list(test.view_names)
    root = str(getattr(test, "image_root", None) or data)
    normal = [i for i in range(len(test)) if not any(test.image_labels(i))]
    defective = [i for i in range(len(test)) if any(test.image_labels(i))]
    predictors = {name: Predictor(out / "runs" / name / category, frozen_check=False, device=sizes.get("device", "auto"))
                  for name in sizes["variants"] if name in ("paper", "dropout")}
    fm = next(iter(predictors.values())).fault_model
    if fm is None:
        raise SystemExit(f"{category}: no camera_faults.json (needs >= 10 normal training objects)")
    objs: dict[int, Any] = {}

    def obj(i: int):
        if i not in objs:
            objs[i] = test[i].images
        return objs[i]

    def paths(i: int) -> list[str]:
        return list(test.samples[i].image_paths)

    def swap_gains(images, i: int) -> dict[str, list[float]]:
        out_: dict[str, list[float]] = {}
        for name, pred in predictors.items():
            # whole maps: mask files are looked up by camera slot, so after a swap they would not
            # belong to the image they mask and favour the swap back for the wrong reason
            f, _ = pred.preprocessor(images, view_names=names, image_paths=paths(i), image_root=root,
                                     sample_id=test.samples[i].sample_id)
            out_[name] = flow_swap_gains(pred.flow.eval(), f, None).tolist()
        return out_

    # 1. clean objects, in acquisition order with the frame memory (ids = sample ids)
    clean: dict[str, Any] = {}
    for key, idx in (("normal", normal), ("defective", defective)):
        mem, flagged, checks = FrameMemory(), 0, Counter()
        for i in tqdm(idx, desc=f"{category}: clean {key}", disable=not progress, leave=False):
            found = detect_faults(fm, obj(i), memory=mem, object_id=test.samples[i].sample_id)
            flagged += bool(found)
            checks.update(_checks(found))
        clean[key] = {"n": len(idx), "flagged": flagged, "checks": dict(checks)}
    # 2. the flow's swap evidence on the clean normal objects (the null distribution per pair)
    clean_gains = {i: swap_gains(obj(i), i) for i in tqdm(normal, desc=f"{category}: flow swap (clean)",
                                                         disable=not progress, leave=False)}
    pairs = list(itertools.combinations(range(len(names)), 2))
    # 3. synthetic faults
    per: dict[str, dict[str, Any]] = {}
    swaps: list[dict[str, Any]] = []
    cases = fault_cases(SYNTH_FAULTS, len(names), normal, int(sizes.get("max_cases") or 0), sizes["seed"])
    rng = np.random.default_rng(sizes["seed"])
    dropout = predictors.get("dropout")
    for kind, cams, i in tqdm(cases, desc=f"{category}: faults", disable=not progress, leave=False):
        prev = obj(normal[normal.index(i) - 1])  # the previous normal object (the last one for the first)
        v, other = cams[0], (cams[1] if len(cams) > 1 else None)
        img = apply_camera_fault(obj(i), v, kind, rng=rng, previous=prev, other=other)
        mem = FrameMemory()
        detect_faults(fm, prev, memory=mem, object_id="previous")
        found = detect_faults(fm, img, memory=mem, object_id=test.samples[i].sample_id)
        on = {names[c] for c in cams}
        row = per.setdefault(kind, {"n": 0, "detected": 0, "any_fault_on_camera": 0, "other_cameras_flagged": 0,
                                    "check_camera": 0, "product_ng_remaining_views": 0, "checks": {}})
        row["n"] += 1
        hit = all(any(f.view == c and f.fault == kind for f in found) for c in on)
        row["detected"] += hit
        row["any_fault_on_camera"] += any(f.view in on for f in found)
        row["other_cameras_flagged"] += any(f.view not in on for f in found)
        for c in _checks([f for f in found if f.view in on]):
            row["checks"][c] = row["checks"].get(c, 0) + 1
        if dropout is not None:
            d = dropout.predict(img, sample_id=test.samples[i].sample_id, image_paths=paths(i), image_root=root)
            row["check_camera"] += d.decision == "CHECK CAMERA"
            row["product_ng_remaining_views"] += d.product_decision == "NG"
        if kind == "swapped":
            swaps.append({"pair": [names[c] for c in cams], "object": i, "detected": bool(hit),
                          "gain": {m: g[pairs.index(cams)] for m, g in swap_gains(img, i).items()}})
    flow_swap = {m: {f"{names[a]}-{names[b]}": [clean_gains[i][m][k] for i in normal] for k, (a, b) in enumerate(pairs)}
                 for m in predictors}
    return {"clean": clean, "per_fault": per, "views": names, "swaps": swaps, "flow_swap_clean": flow_swap,
            "threshold": fm.threshold, "calibration": {k: v for k, v in fm.calibration.items() if k != "statistic"}}


def flow_swap_table(results: dict[str, dict]) -> list[tuple[str, str, int, float, float, float]]:
    """Per model and camera pair (all classes): ``(model, pair, swaps, AUROC of the flow's gain
    swapped vs clean, share of swaps above the largest clean gain, share the image checks detected)``."""
    from multiflow.metrics import auroc

    rows = []
    models = sorted({m for r in results.values() for m in r["faults"].get("flow_swap_clean", {})})
    for m in models:
        pairs = sorted({tuple(s["pair"]) for r in results.values() for s in r["faults"].get("swaps", [])})
        for pair in pairs:
            key = "-".join(pair)
            aucs, above, img, n = [], 0, 0, 0
            for r in results.values():
                null = np.asarray(r["faults"]["flow_swap_clean"][m][key], dtype=np.float64)
                hits = [s for s in r["faults"]["swaps"] if tuple(s["pair"]) == pair]
                if not hits or not len(null):
                    continue
                g = np.array([s["gain"][m] for s in hits])
                aucs.append(float(auroc(np.r_[null, g], np.r_[np.zeros(len(null)), np.ones(len(g))])))
                above += int((g > null.max()).sum())
                img += sum(s["detected"] for s in hits)
                n += len(hits)
            if n:
                rows.append((m, key, n, float(np.mean(aucs)), above / n, img / n))
    return rows


def report(results: dict[str, dict], sizes: dict[str, Any], command: str) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.2f}"

    cats = list(results)
    variants = sizes["variants"]
    lines = ["### Camera faults and missing views", "",
             "Detection with missing views (class mean; S-AUROC / I-AUROC over the views present, %):", "",
             "| model | views | S-AUROC | I-AUROC |", "|---|---|---:|---:|"]

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

    rows = [("(a) paper model", "all", "paper/all", "mean", "paper"),
            ("(b) view-dropout model", "all", "dropout/all", "mean", "dropout"),
            ("(c) view-dropout model", "one missing (mean over cameras)", "dropout/1-missing", "mean", "dropout"),
            ("(c) view-dropout model", "one missing (worst camera)", "dropout/1-missing", "worst", "dropout"),
            ("(c) view-dropout model", "two missing (mean over pairs)", "dropout/2-missing", "mean", "dropout"),
            ("(d) single-view flow", "all", "single-view", "mean", "single-view")]
    for label, views, key, how, variant in rows:
        if variant in variants:
            lines.append(f"| {label} | {views} | {pct(mean(key, 0, how))} | {pct(mean(key, 1, how))} |")
    if "paper" in variants and "dropout" in variants:
        d_ab = 100 * (mean("dropout/all", 0) - mean("paper/all", 0))
        d_c = 100 * (mean("dropout/1-missing", 0) - mean("dropout/all", 0))
        lines += ["", f"(b) - (a): {d_ab:+.2f} pp S-AUROC (goal: within 1 pp); one camera missing - all views: "
                  f"{d_c:+.2f} pp S-AUROC (goal: at most 3 pp lost)."]
    fk = [results[c]["faults"] for c in cats]
    lines += ["", "Camera faults on clean normal test objects (every fault kind on every camera, swaps on every "
              "camera pair; all classes):", "",
              "| fault | cases | detected (right fault, right camera; goal >= 95 %) | any fault on that camera "
              "| another camera flagged | decision CHECK CAMERA | product NG on the remaining views | checks that fired |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    kinds = list(dict.fromkeys(k for f in fk for k in f["per_fault"]))
    for k in kinds:
        rs = [f["per_fault"][k] for f in fk if k in f["per_fault"]]
        t = {key: sum(r[key] for r in rs) for key in rs[0] if key != "checks"}
        checks: dict[str, int] = {}
        for r in rs:
            for c, x in r["checks"].items():
                checks[c] = checks.get(c, 0) + x
        n = max(t["n"], 1)
        fired = ", ".join(f"{c} {x}" for c, x in sorted(checks.items(), key=lambda kv: -kv[1]))
        lines.append(f"| {k} | {t['n']} | {pct(t['detected'] / n)} % | {pct(t['any_fault_on_camera'] / n)} % | "
                     f"{pct(t['other_cameras_flagged'] / n)} % | {pct(t['check_camera'] / n)} % | "
                     f"{pct(t['product_ng_remaining_views'] / n)} % | {fired} |")

    def clean(key):
        n = sum(f["clean"][key]["n"] for f in fk)
        flagged = sum(f["clean"][key]["flagged"] for f in fk)
        checks: dict[str, int] = {}
        for f in fk:
            for c, x in f["clean"][key]["checks"].items():
                checks[c] = checks.get(c, 0) + x
        return flagged, n, ", ".join(f"{c} {x}" for c, x in sorted(checks.items(), key=lambda kv: -kv[1])) or "none"

    fn, nn, cn = clean("normal")
    fd, nd, cd = clean("defective")
    cal = "; ".join(f"{c}: tau {results[c]['faults']['threshold']:.2f} from {results[c]['faults']['calibration']['n_objects']} "
                    f"training objects ({results[c]['faults']['calibration']['method']})" for c in cats)
    lines += ["", f"False camera faults: {fn} of {nn} clean normal test objects ({pct(fn / max(nn, 1))} %; goal <= 1 %; "
              f"checks: {cn}); {fd} of {nd} clean defective objects ({pct(fd / max(nd, 1))} %; goal <= 2 %: a product "
              f"defect taken for a camera fault; checks: {cd}). Object-level threshold: {cal}."]
    table = flow_swap_table(results)
    if table:
        lines += ["", "Swap evidence from the flow (likelihood gain of the swapped assignment, "
                  "`multiflow.faults.flow_swap_gains`) against the image checks, per camera pair (all classes):", "",
                  "| flow | pair | swaps | AUROC gain (swapped vs clean) | flow: above every clean gain "
                  "| image checks: detected |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {m} | {p} | {n} | {pct(a)} | {pct(b)} % | {pct(c)} % |" for m, p, n, a, b, c in table]
    data = (f"existing data `{sizes['data']}`" if sizes.get("data") else
            f"synthetic (`multiflow synth`), {sizes['n_train']} train / {sizes['n_test_good']} good / "
            f"{sizes['n_test_defect']} defective test objects per class")
    lines += ["", f"Command: `{command}`  ",
              f"Data: {data}, classes {sizes['classes']}, {sizes['size']} px; lite0, {sizes['epochs']} epochs, "
              f"lr {sizes['lr']}, batch {sizes['batch']}, {sizes['precision']}, view dropout {sizes['view_dropout']}, "
              f"seed {sizes['seed']}, at most {sizes['max_cases'] or 'all'} cases per fault kind and class. Camera "
              f"statistics from the normal training images only (faults.false_alarm {sizes['false_alarm']}).  ",
              f"Machine: {machine_line()}."]
    return "\n".join(lines)


def settings_of(sizes: dict[str, Any]) -> dict[str, Any]:
    return {k: sizes.get(k) for k in SETTINGS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 1 class, 64 px, a tiny flow, 1 epoch")
    p.add_argument("--data", help="an existing data folder (Real-IAD format) instead of generating one")
    p.add_argument("--classes", help="comma-separated classes (default: the mode's)")
    p.add_argument("--size", type=int, help="image and feature size (data.resolution, features.input_size)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch", type=int)
    p.add_argument("--precision", choices=["fp32", "bf16"])
    p.add_argument("--view-dropout", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--false-alarm", type=float, help="faults.false_alarm (object-level camera-fault budget)")
    p.add_argument("--variants", help="comma-separated models: paper,dropout[,single-view] (paper and dropout needed "
                   "for the comparison)")
    p.add_argument("--max-cases", type=int, help="at most this many cases per fault kind and class (0: all)")
    p.add_argument("--device", default="auto", help="device of the fault-case predictors (auto, cpu, cuda, cuda:N)")
    p.add_argument("--out", help="results folder (default results/camera-faults[-quick])")
    p.add_argument("--runs", help="reuse models trained there by `multiflow fit --out RUNS --name <variant>` "
                   "(or --name <variant>_<class>) with the same settings instead of training them")
    p.add_argument("--no-benchmarks-md", action="store_true", help="do not write the BENCHMARKS.md section")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in ("size", "epochs", "lr", "batch", "precision", "view_dropout", "seed", "false_alarm", "max_cases"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if args.classes:
        sizes["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.variants:
        sizes["variants"] = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in sizes["variants"] if v not in VARIANTS]
        if unknown or not set(sizes["variants"]) & {"paper", "dropout"}:
            p.error(f"--variants: choose from {sorted(VARIANTS)}, with paper or dropout (got {args.variants})")
    sizes["device"] = args.device
    if args.runs:
        sizes["runs"] = str(Path(args.runs).resolve())
    out = Path(args.out) if args.out else ROOT / "results" / ("camera-faults-quick" if args.quick else "camera-faults")
    progress = not args.quiet
    cache = out / "cache"
    if args.data:
        data = Path(args.data)
        if not data.is_dir():
            p.error(f"--data {data}: not a folder")
        sizes["data"] = str(data.resolve())
    else:
        from multiflow.synth import generate_dataset

        data = out / "data"
        generate_dataset(data, classes=sizes["classes"], n_train=sizes["n_train"], n_test_good=sizes["n_test_good"],
                         n_test_defect=sizes["n_test_defect"], size=sizes["size"], seed=0, progress=progress)
    results = {}
    for category in sizes["classes"]:
        path = out / category / "result.json"
        if path.is_file():
            done = json.loads(path.read_text())
            if done.get("settings") != settings_of(sizes):
                raise SystemExit(f"{path}: written with other settings {done.get('settings')}; use another --out "
                                 f"or the same settings ({settings_of(sizes)})")
            results[category] = done
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train(sizes, data, cache, out / category, category, progress)
            det = detection(sizes, data, cache, out / category, category, progress)
        flt = faults(sizes, data, out / category, category, progress)
        results[category] = {"settings": settings_of(sizes), "detection": det, "faults": flt,
                             "seconds": time.perf_counter() - t0}
        write_json(path, results[category])
    cmd = "python benchmarks/camera_faults.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = report(results, sizes, cmd.strip())
    if not args.no_benchmarks_md:
        update_section(SECTION, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
