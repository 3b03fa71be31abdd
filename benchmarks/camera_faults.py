"""Camera faults and missing views (issues 14, 20 and 21): measured on synthetic or existing data.

Per class (``<out>/<class>/result.json``, written atomically; a rerun skips finished classes and
resumes trainings; a folder keeps one set of settings and refuses others):

1. Detection with missing views: S-AUROC and I-AUROC (over the views present) of the paper model
   and the view-dropout model on all views, the dropout model with one and two cameras missing, and
   (``--variants`` with ``single-view``) the single-view flow.
2. Camera faults (:mod:`multiflow.faults`, fitted by ``fit`` on the normal training images), by the
   image checks alone and by the combined rule ``predict`` uses (image checks; an occlusion flag
   dismissed where the flow's anomaly map shows a product defect on the object; the flow's swap
   check, fitted on the model's held-out calibration objects within its share of the budget, here
   when the model's ``camera_faults.json`` has none: ``<out>/<class>/faults_<variant>.json``):
   * false camera faults on the clean normal test objects (in acquisition order, frame memory on,
     ids = sample ids) and which check fired;
   * product defects taken for camera faults: clean defective test objects with any camera fault;
   * every synthetic fault (:mod:`multiflow.synth.camera_faults`) on every camera (swaps: on every
     pair of cameras) of the clean normal test objects, at most ``--max-cases`` per kind and class
     (a seeded random subset, one generator per case): detected = the right fault on the right
     camera (both cameras of a swap), the check that fired, and with the view-dropout model's
     predictor the decision (``CHECK CAMERA``) and the product decision on the remaining views;
   * swap evidence from the flow (:func:`multiflow.faults.flow_swap_gains` on the whole maps, the
     paper and dropout models): per camera pair the AUROC of the likelihood gain of the swapped
     assignment, swapped objects against the same pair on the clean objects, the share of swaps
     above the largest clean gain, and the detection by the fitted flow check and by image checks
     OR flow check.

Resumable: the flow's evidence on the clean objects is computed from the cached test features in
batches and saved per chunk (``<out>/<class>/flow_<variant>.npz``), each fault case's result is
appended to ``<out>/<class>/cases.jsonl``; a killed run continues where it stopped. Progress is
printed per stage.

    python benchmarks/camera_faults.py --quick --no-benchmarks-md --out /tmp/cf-quick   # smoke test
    python benchmarks/camera_faults.py                 # synthetic data set of issue 14 (2 classes, 256 px)
    python benchmarks/camera_faults.py --data results/trust/data --classes toy_brick,terminal_block \\
        --size 384 --epochs 8 --batch 4 --lr 0.001 --precision bf16 --variants paper,dropout \\
        --max-cases 20 --runs results/trust/runs --out results/camera-faults-trust  # issue 20, N = 200
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
QUICK = {"classes": ["bottle_cap"], "n_train": 30, "n_test_good": 3, "n_test_defect": 2, "size": 64, "epochs": 1,
         "lr": 1e-3, "batch": 4, "precision": "fp32", "view_dropout": 0.3, "seed": 0, "max_cases": 3,
         "variants": ["paper", "dropout"], "false_alarm": 0.01,
         "model": ["model.n_blocks=2", "model.kernel_sizes=[3,3]", "model.hidden=8"]}
VARIANTS = {"paper": [], "dropout": ["train.view_dropout={vd}"], "single-view": ["model.single_view=true"]}
#: settings that change what a class result means (a results folder keeps one set of them)
RESULT_FORMAT = 2  # results of format 1 (image checks only) are not reused
SETTINGS = ("format", "size", "epochs", "lr", "batch", "precision", "view_dropout", "seed", "max_cases", "variants",
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
    return [f"{f.fault}/{f.check}" if hasattr(f, "fault") else f"{f['fault']}/{f['check']}" for f in found]


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


def fault_model_with_flow(pred, variant: str, sizes, data: Path, out: Path, category: str, progress: bool):
    """The camera-fault model of a predictor with the flow-swap check: the model's own when ``fit``
    already fitted one, else fitted here on the swap gains of the model's held-out calibration
    objects (``calibration_maps.npz`` names them), with ``faults.flow_swap_share`` of the budget.
    Written to ``<out>/faults_<variant>.json`` (reused on a rerun), never into the run folder."""
    from multiflow.config import FaultConfig
    from multiflow.data.realiad import RealIADDataset
    from multiflow.engine.threshold import load_calibration_maps
    from multiflow.faults import CameraFaultModel, with_flow_swap
    from multiflow.faults.flow_swap import swap_gains_in_batches

    fm = pred.fault_model
    if fm is None or fm.flow_swap is not None:
        return fm
    path = out / f"faults_{variant}.json"
    if path.is_file():
        return CameraFaultModel.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = RealIADDataset(data, category, split="train", image_size=sizes["size"], load_masks=False)
    by_id = {r.sample_id: k for k, r in enumerate(train.samples)}
    if pred.bundle.threshold.calibration_maps:
        _, _, ids = load_calibration_maps(pred.model_dir / pred.bundle.threshold.calibration_maps)
        source = f"{len(ids)} held-out calibration objects"
    else:
        # a model from before the calibration split (multiflow-model/2): its validation objects did
        # not train the weights (they chose the epoch), so their swap gains are those of unseen
        # objects; the split is train.py's, replayed with the model's own counts and seed
        ids = _validation_ids(pred, train, sizes["seed"])
        source = f"{len(ids)} validation objects (not trained on; they selected the epoch)"
        _say(progress, f"{category}/{variant}: no calibration objects recorded: flow swap check from {source}")
    if len(ids) < 3:
        _say(progress, f"{category}/{variant}: {len(ids)} held-out objects: no flow swap check (needs >= 3)")
        return fm
    feats = []
    for sid in ids:
        k = by_id[sid]
        f, _ = pred.preprocessor(train[k].images, view_names=list(train.view_names),
                                 image_paths=list(train.samples[k].image_paths),
                                 image_root=str(getattr(train, "image_root", None) or data), sample_id=sid)
        feats.append(f[0].cpu())
    import torch

    gains, _ = swap_gains_in_batches(pred.flow, torch.stack(feats), batch=4, device=pred.device,
                                     precision=pred.precision, progress=progress,
                                     desc=f"{category}/{variant}: flow swap check ({len(ids)} calibration objects)")
    fm = with_flow_swap(fm, gains, FaultConfig().flow_swap_share, source=source)
    fm.save(path)
    return fm


def _validation_ids(pred, train, seed: int) -> list[str]:
    """The sample ids of a model's validation objects: :func:`multiflow.engine.train.split_train_val`
    of its training objects with the counts and seed its bundle records (empty when the bundle does
    not record them or they do not match the data)."""
    from multiflow.engine.train import split_train_val

    tr = pred.bundle.training
    n_train, n_val = int(getattr(tr, "train_samples", 0) or 0), int(getattr(tr, "val_samples", 0) or 0)
    if n_val < 1 or n_train + n_val != len(train.samples):
        return []
    _, val = split_train_val(n_train + n_val, n_val / (n_train + n_val), seed)
    if len(val) != n_val:
        return []
    return [train.samples[int(k)].sample_id for k in val]


def clean_flow_evidence(pred, variant: str, test, out: Path, category: str, progress: bool, batch: int = 4):
    """``(gains (N, P), nll (N, V, h, w))`` of the flow ``variant`` on every test object's cached
    features (batched; saved per chunk to ``<out>/flow_<variant>.npz`` so a killed run resumes)."""
    import torch

    from multiflow._atomic import atomic_path
    from multiflow.faults.flow_swap import swap_gains_in_batches

    path = out / f"flow_{variant}.npz"
    n = len(test.sample_ids)
    gains, maps, done = [], [], 0
    if path.is_file():
        with np.load(path) as z:
            if list(z["ids"]) == list(test.sample_ids):
                done = int(z["done"])
                gains, maps = [z["gains"][:done]], [z["nll"][:done]]
    t0 = time.perf_counter()
    chunk = 8 * batch
    for s in range(done, n, chunk):
        g, m = swap_gains_in_batches(pred.flow, torch.as_tensor(np.asarray(test.features[s:s + chunk])), batch=batch,
                                     device=pred.device, precision=pred.precision)
        gains.append(g)
        maps.append(m)
        done = min(s + chunk, n)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, gains=np.concatenate(gains), nll=np.concatenate(maps), done=done,
                     ids=np.asarray(test.sample_ids, dtype=str))
        _say(progress, f"{category}/{variant}: flow evidence on clean objects {done}/{n} "
                       f"({time.perf_counter() - t0:.0f} s)")
    return np.concatenate(gains), np.concatenate(maps)


def _hit(found, cams: set[str], kind: str) -> bool:
    return all(any(f["view"] == c and f["fault"] == kind for f in found) for c in cams)


def faults(sizes, data: Path, cache: Path, out: Path, category: str, progress: bool) -> dict[str, Any]:
    """Camera-fault measurements of one class (module docstring): image checks alone and the
    combined rule (image checks with the product rule and the flow swap check, per flow model)."""
    from collections import Counter

    import torch

    from multiflow.data.realiad import RealIADDataset
    from multiflow.engine.factories import build_extractor
    from multiflow.engine.predict import Predictor
    from multiflow.engine.preprocess import prepare_split
    from multiflow.faults import FrameMemory, check_cameras, detect_faults, flow_swap_batch
    from multiflow.faults.detect import flow_swap_scores
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
    base = next(iter(predictors.values())).fault_model
    if base is None:
        raise SystemExit(f"{category}: no camera_faults.json (needs >= 10 normal training objects)")
    fms = {m: fault_model_with_flow(p, m, sizes, data, out, category, progress) for m, p in predictors.items()}
    for m, p in predictors.items():
        p.fault_model = fms[m]
    objs: dict[int, Any] = {}

    def obj(i: int):
        if i not in objs:
            objs[i] = test[i].images
        return objs[i]

    def paths(i: int) -> list[str]:
        return list(test.samples[i].image_paths)

    # 1. the flow's evidence on the clean test objects, from the cached features (batched, resumable)
    cfg = config(sizes, data, cache, category, VARIANTS["paper"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = prepare_split(cfg, category, "test", build_extractor(cfg.features), progress=progress)
    row_of = {sid: k for k, sid in enumerate(split.sample_ids)}
    evidence = {m: clean_flow_evidence(p, m, split, out, category, progress) for m, p in predictors.items()}
    # 2. clean objects, in acquisition order with the frame memory (ids = sample ids): the image
    # checks alone, and the combined rule of each flow model
    clean: dict[str, Any] = {}
    for key, idx in (("normal", normal), ("defective", defective)):
        mems = {"image": FrameMemory()} | {m: FrameMemory() for m in predictors}
        rec = {"n": len(idx), "flagged": 0, "checks": Counter(),
               "combined": {m: {"flagged": 0, "checks": Counter(), "dismissed": 0} for m in predictors}}
        for i in idx:
            sid = test.samples[i].sample_id
            found = detect_faults(base, obj(i), memory=mems["image"], object_id=sid)
            rec["flagged"] += bool(found)
            rec["checks"].update(_checks(found))
            r = row_of[sid]
            for m in predictors:
                gains, nll = evidence[m]
                masks = None if split.masks is None else torch.as_tensor(np.asarray(split.masks[r]))
                got = check_cameras(fms[m], obj(i), memory=mems[m], object_id=sid, anomaly_maps=nll[r], masks=masks,
                                    swap_gains=gains[r] if fms[m].flow_swap is not None else None)
                c = rec["combined"][m]
                c["flagged"] += bool(got.faults)
                c["checks"].update(_checks(got.faults))
                c["dismissed"] += bool(got.dismissed)
        clean[key] = rec
        _say(progress, f"{category}: clean {key}: {rec['flagged']} of {len(idx)} flagged by the image checks, "
                       + ", ".join(f"{m} combined {c['flagged']}" for m, c in rec["combined"].items()))
    # 3. synthetic faults (one row per case in cases.jsonl: a killed run resumes)
    pairs = list(itertools.combinations(range(len(names)), 2))
    cases = fault_cases(SYNTH_FAULTS, len(names), normal, int(sizes.get("max_cases") or 0), sizes["seed"])
    decider = predictors.get("dropout") or next(iter(predictors.values()))
    decider_name = "dropout" if "dropout" in predictors else next(iter(predictors))
    log = out / "cases.jsonl"
    rows: dict[int, dict] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut off by a killed run
            rows[r["case"]] = r
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        for c, (kind, cams, i) in enumerate(cases):
            if c in rows:
                continue
            rng = np.random.default_rng([sizes["seed"], c])
            prev = obj(normal[normal.index(i) - 1])  # the previous normal object (the last one for the first)
            v, other = cams[0], (cams[1] if len(cams) > 1 else None)
            img = apply_camera_fault(obj(i), v, kind, rng=rng, previous=prev, other=other)
            on = {names[x] for x in cams}
            sid = test.samples[i].sample_id
            mem = FrameMemory()
            detect_faults(base, prev, memory=mem, object_id="previous")
            found = [f.as_dict() for f in detect_faults(base, img, memory=mem, object_id=sid)]
            mem = FrameMemory()
            detect_faults(base, prev, memory=mem, object_id="previous")
            decider.frame_memory = mem
            d = decider.predict(img, sample_id=sid, image_paths=paths(i), image_root=root)
            decider.frame_memory = None
            comb = d.camera_faults
            row = {"case": c, "kind": kind, "cameras": [names[x] for x in cams], "object": i,
                   "image": {"detected": _hit(found, on, kind), "any_on_camera": any(f["view"] in on for f in found),
                             "other_cameras": any(f["view"] not in on for f in found), "checks": _checks(
                                 [f for f in found if f["view"] in on])},
                   "combined": {"detected": _hit(comb, on, kind), "any_on_camera": any(f["view"] in on for f in comb),
                                "other_cameras": any(f["view"] not in on for f in comb),
                                "checks": _checks([f for f in comb if f["view"] in on]),
                                "dismissed": len(d.dismissed_camera_faults)},
                   "check_camera": d.decision == "CHECK CAMERA", "product_ng": d.product_decision == "NG"}
            if kind == "swapped":
                p = pairs.index(tuple(cams))
                gains = {decider_name: None if d.swap_gains is None else float(d.swap_gains[p])}
                for m, pred in predictors.items():
                    if m == decider_name and gains[m] is not None:
                        continue
                    f, _ = pred.preprocessor(img, view_names=names, image_paths=paths(i), image_root=root,
                                             sample_id=sid)
                    with torch.no_grad():
                        gains[m] = float(flow_swap_batch(pred.flow.eval(), f)[0][0, p])
                row["gain"] = gains
                row["flow_detected"] = {
                    m: bool(fms[m].flow_swap is not None and flow_swap_scores(
                        fms[m], np.full(len(pairs), gains[m]))[p] > 0) for m in gains}
            rows[c] = row
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            if progress and (len(rows) % 10 == 0 or len(rows) == len(cases)):
                _say(progress, f"{category}: fault cases {len(rows)}/{len(cases)} ({time.perf_counter() - t0:.0f} s)")
    per: dict[str, dict[str, Any]] = {}
    swaps = []
    for c in range(len(cases)):
        r = rows[c]
        a = per.setdefault(r["kind"], {"n": 0, "detected": 0, "any_fault_on_camera": 0, "other_cameras_flagged": 0,
                                       "image_detected": 0, "dismissed": 0, "check_camera": 0,
                                       "product_ng_remaining_views": 0, "checks": {}})
        a["n"] += 1
        a["detected"] += r["combined"]["detected"]
        a["any_fault_on_camera"] += r["combined"]["any_on_camera"]
        a["other_cameras_flagged"] += r["combined"]["other_cameras"]
        a["image_detected"] += r["image"]["detected"]
        a["dismissed"] += bool(r["combined"]["dismissed"])
        a["check_camera"] += r["check_camera"]
        a["product_ng_remaining_views"] += r["product_ng"]
        for k in r["combined"]["checks"]:
            a["checks"][k] = a["checks"].get(k, 0) + 1
        if r["kind"] == "swapped":
            swaps.append({"pair": r["cameras"],
                          "object": r["object"], "detected": r["image"]["detected"], "gain": r["gain"],
                          "flow_detected": r["flow_detected"], "combined_detected": r["combined"]["detected"]})
    flow_swap = {m: {f"{names[a]}-{names[b]}": [float(evidence[m][0][row_of[test.samples[i].sample_id], k])
                                               for i in normal] for k, (a, b) in enumerate(pairs)} for m in predictors}
    for rec in clean.values():
        rec["checks"] = dict(rec["checks"])
        for cm in rec["combined"].values():
            cm["checks"] = dict(cm["checks"])
    return {"clean": clean, "per_fault": per, "views": names, "swaps": swaps, "flow_swap_clean": flow_swap,
            "decider": decider_name, "threshold": base.threshold,
            "calibration": {k: v for k, v in base.calibration.items() if k != "statistic"},
            "flow_swap_check": {m: None if fm.flow_swap is None else {
                "pairs": [f"{names[a]}-{names[b]}" for a, b in pairs], "cut": fm.flow_swap["cut"],
                "separation": fm.flow_swap["separation"], "expected_detection": fm.flow_swap["expected_detection"],
                "pair_false_alarm": fm.flow_swap["pair_false_alarm"], "false_alarm": fm.flow_swap["false_alarm"],
                "n_objects": fm.flow_swap.get("n_objects"), "method": fm.flow_swap["method"],
                "image_threshold": fm.threshold} for m, fm in fms.items()}}


def flow_swap_table(results: dict[str, dict]) -> list[tuple]:
    """Per model and camera pair (all classes): ``(model, pair, swap cases, AUROC of the flow's gain
    swapped vs clean, share of swap cases the image checks detected, share the flow check flagged,
    share image checks OR flow check, separation d on the calibration objects (class mean), the
    fitted model's expected detection (class mean), the flow check on every clean normal test object
    swapped (exact: a swap turns the pair's gain into its negative), the best detection any cut-off
    on this pair alone could give at the flow's whole budget (Gaussian fitted to the clean test
    gains))``."""
    from scipy.stats import norm

    from multiflow.metrics import auroc

    rows = []
    models = sorted({m for r in results.values() for m in r["faults"].get("flow_swap_clean", {})})
    for m in models:
        pairs = list(dict.fromkeys(k for r in results.values() for k in r["faults"]["flow_swap_clean"].get(m, {})))
        for key in pairs:
            aucs, img, flow, comb, n, sep, exp, every, best = [], 0, 0, 0, 0, [], [], [], []
            for r in results.values():
                null = np.asarray(r["faults"]["flow_swap_clean"][m][key], dtype=np.float64)
                check = (r["faults"].get("flow_swap_check") or {}).get(m)
                if check and key in check["pairs"]:
                    k = check["pairs"].index(key)
                    cut = np.inf if check["cut"][k] is None else check["cut"][k]
                    sep.append(check["separation"][k])
                    exp.append(check["expected_detection"][k])
                    every.append(float((-null > cut).mean()))
                    mu, sd = float(null.mean()), float(null.std(ddof=1))
                    best.append(float(norm.cdf(-2 * mu / sd - norm.isf(check["false_alarm"]))) if mu < 0 else 0.0)
                hits = [s for s in r["faults"]["swaps"] if "-".join(s["pair"]) == key]
                if not hits or not len(null):
                    continue
                g = np.array([s["gain"][m] for s in hits])
                aucs.append(float(auroc(np.r_[null, g], np.r_[np.zeros(len(null)), np.ones(len(g))])))
                img += sum(s["detected"] for s in hits)
                f = [bool(s.get("flow_detected", {}).get(m)) for s in hits]
                flow += sum(f)
                comb += sum(s["detected"] or fd for s, fd in zip(hits, f))
                n += len(hits)
            nan = float("nan")

            def mean(x):
                return float(np.mean(x)) if x else nan

            rows.append((m, key, n, mean(aucs), img / n if n else nan, flow / n if n else nan,
                         comb / n if n else nan, mean(sep), mean(exp), mean(every), mean(best)))
    return rows


def _sum_checks(dicts) -> str:
    total: dict[str, int] = {}
    for d in dicts:
        for c, x in d.items():
            total[c] = total.get(c, 0) + x
    return ", ".join(f"{c} {x}" for c, x in sorted(total.items(), key=lambda kv: -kv[1])) or "none"


def summary_rows(results: dict[str, dict], variants: list[str]) -> list[tuple]:
    """Per class and pooled: ``(name, clean normal n, false faults combined, image alone, defective n,
    defects taken combined, {kind: (detected, n)}, S-AUROC paper, S-AUROC dropout, I-AUROC paper,
    I-AUROC dropout)`` (counts; the combined rule is the decision model's)."""
    rows = []
    cats = list(results)
    for name, group in [(c, [c]) for c in cats] + ([("pooled", cats)] if len(cats) > 1 else []):
        fk = [results[c]["faults"] for c in group]
        nn = sum(f["clean"]["normal"]["n"] for f in fk)
        img = sum(f["clean"]["normal"]["flagged"] for f in fk)
        comb = sum(f["clean"]["normal"]["combined"][f["decider"]]["flagged"] for f in fk)
        nd = sum(f["clean"]["defective"]["n"] for f in fk)
        dcomb = sum(f["clean"]["defective"]["combined"][f["decider"]]["flagged"] for f in fk)
        kinds = {}
        for f in fk:
            for k, r in f["per_fault"].items():
                d, n = kinds.get(k, (0, 0))
                kinds[k] = (d + r["detected"], n + r["n"])

        def au(key, j):
            vals = [results[c]["detection"][key][j] for c in group if key in results[c]["detection"]]
            return float(np.mean(vals)) if vals else float("nan")

        rows.append((name, nn, comb, img, nd, dcomb, kinds, au("paper/all", 0), au("dropout/all", 0),
                     au("paper/all", 1), au("dropout/all", 1)))
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
    decider = fk[0].get("decider", "dropout")
    kinds = list(dict.fromkeys(k for f in fk for k in f["per_fault"]))
    lines += ["", f"Goals per class and pooled (combined rule: image checks, product rule and the {decider} flow's swap "
              "check; false camera faults <= 1 %, each fault kind detected >= 95 %, product defects taken for camera "
              "faults <= 2 %, dropout S-AUROC within 1 pp of paper):", "",
              "| class | false camera faults (combined) | image checks alone | product defects taken | "
              + " | ".join(kinds) + " | S-AUROC paper / dropout | I-AUROC paper / dropout |",
              "|---|---:|---:|---:|" + "---:|" * len(kinds) + "---:|---:|"]
    for name, nn, comb, img, nd, dcomb, kd, sp, sd, ip, idr in summary_rows(results, variants):
        det = " | ".join(f"{pct(kd[k][0] / max(kd[k][1], 1))} % ({kd[k][0]}/{kd[k][1]})" if k in kd else "-"
                         for k in kinds)
        lines.append(f"| {name} | {comb}/{nn} ({pct(comb / max(nn, 1))} %) | {img}/{nn} ({pct(img / max(nn, 1))} %) | "
                     f"{dcomb}/{nd} ({pct(dcomb / max(nd, 1))} %) | {det} | {pct(sp)} / {pct(sd)} | "
                     f"{pct(ip)} / {pct(idr)} |")
    lines += ["", "Camera faults on clean normal test objects (every fault kind on every camera, swaps on every "
              f"camera pair; all classes; decision and combined rule from the {decider} model's predictor):", "",
              "| fault | cases | detected, combined rule (right fault, right camera; goal >= 95 %) | image checks alone "
              "| any fault on that camera | another camera flagged | a flag dismissed as product | decision CHECK CAMERA "
              "| product NG on the remaining views | checks that fired |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for k in kinds:
        rs = [f["per_fault"][k] for f in fk if k in f["per_fault"]]
        t = {key: sum(r.get(key, 0) for r in rs) for key in rs[0] if key != "checks"}
        n = max(t["n"], 1)
        lines.append(f"| {k} | {t['n']} | {pct(t['detected'] / n)} % | {pct(t.get('image_detected', 0) / n)} % | "
                     f"{pct(t['any_fault_on_camera'] / n)} % | {pct(t['other_cameras_flagged'] / n)} % | "
                     f"{pct(t.get('dismissed', 0) / n)} % | {pct(t['check_camera'] / n)} % | "
                     f"{pct(t['product_ng_remaining_views'] / n)} % | {_sum_checks(r['checks'] for r in rs)} |")

    def clean(key):
        n = sum(f["clean"][key]["n"] for f in fk)
        img = sum(f["clean"][key]["flagged"] for f in fk)
        per = {}
        for m in sorted({m for f in fk for m in f["clean"][key].get("combined", {})}):
            cs = [f["clean"][key]["combined"][m] for f in fk if m in f["clean"][key].get("combined", {})]
            per[m] = (sum(c["flagged"] for c in cs), _sum_checks(c["checks"] for c in cs), sum(c["dismissed"] for c in cs))
        return n, img, _sum_checks(f["clean"][key]["checks"] for f in fk), per

    for key, what, goal in (("normal", "clean normal test objects", "goal <= 1 %"),
                            ("defective", "clean defective test objects (a product defect taken for a camera fault)",
                             "goal <= 2 %")):
        n, img, checks, per = clean(key)
        lines += ["", f"False camera faults on {n} {what}; {goal}: image checks alone {img} ({pct(img / max(n, 1))} %; "
                  f"checks: {checks})" + "".join(
                      f"; combined rule with the {m} flow {x} ({pct(x / max(n, 1))} %; checks: {c}; objects with a flag "
                      f"dismissed as product: {d})" for m, (x, c, d) in per.items()) + "."]
    cal = "; ".join(f"{c}: tau {results[c]['faults']['threshold']:.2f} from {results[c]['faults']['calibration']['n_objects']} "
                    f"training objects ({results[c]['faults']['calibration']['method']})" for c in cats)
    lines += ["", f"Object-level threshold of the image checks (full budget, before the split): {cal}."]
    fsc = [(c, m, x) for c in cats for m, x in (results[c]["faults"].get("flow_swap_check") or {}).items() if x]
    if fsc:
        lines += ["Flow swap check (its share of the budget, allocated over the camera pairs; the image checks' "
                  "threshold refitted for the rest): " + "; ".join(
                      f"{c}/{m}: {x['false_alarm']:g} from {x['n_objects']} calibration objects ({x['method']}), "
                      f"expected detection {100 * float(np.mean(x['expected_detection'])):.1f} % (mean over pairs), "
                      f"image tau {x['image_threshold']:.2f}" for c, m, x in fsc) + "."]
    table = flow_swap_table(results)
    if table:
        def p2(x: float) -> str:
            return "-" if x != x else pct(x)

        lines += ["", "Swap evidence from the flow (likelihood gain of the swapped wiring, "
                  "`multiflow.faults.flow_swap_gains`) per camera pair (all classes, class means). A swap turns the "
                  "pair's gain into its negative exactly, so every clean normal test object also gives its swapped "
                  "case: the flow check on all of them, its expected rate from the calibration objects, and the best "
                  "any cut-off on this pair alone could do at the flow's whole budget (the separation d = "
                  "-2 mean / sd of the clean gains decides it):", "",
                  "| flow | pair | swap cases | AUROC gain (swapped vs clean) | image checks: detected "
                  "| flow check | image checks OR flow check | separation d (calibration) | flow check expected "
                  "| flow check on every clean object swapped | best cut-off, this pair alone |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {m} | {p} | {n} | {p2(a)} | {p2(c)} % | {p2(f)} % | {p2(o)} % | {d:.1f} | {p2(e)} % | "
                  f"{p2(ev)} % | {p2(bst)} % |" for m, p, n, a, c, f, o, d, e, ev, bst in table]
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
    return {k: sizes.get(k) for k in SETTINGS} | {"format": RESULT_FORMAT}


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
            _say(progress, f"{category}: models ({', '.join(sizes['variants'])})")
            train(sizes, data, cache, out / category, category, progress)
            _say(progress, f"{category}: detection with missing views ({time.perf_counter() - t0:.0f} s)")
            det = detection(sizes, data, cache, out / category, category, progress)
        _say(progress, f"{category}: camera faults ({time.perf_counter() - t0:.0f} s)")
        flt = faults(sizes, data, cache, out / category, category, progress)
        _say(progress, f"{category}: done ({time.perf_counter() - t0:.0f} s)")
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
