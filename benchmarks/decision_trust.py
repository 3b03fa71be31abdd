"""Does the shipped threshold keep its stated false-reject rate on new good parts? (issue 20 §1)

For every class: the threshold is fitted (:func:`multiflow.scoring.fit_threshold`) on the sample
scores of held-out normal *calibration* objects of a trained model, for the targets 1 % and 5 %
(confidence 90 %), and compared on the class's test set: the observed false-reject rate on the clean
test objects against the target (goal: at most target + 1 pp) and the miss rate on the defective
ones at that threshold. The old rule (0.99 quantile of the held-out scores) is reported beside it.

For a model trained with view dropout (``--dropout-run``), the same for objects scored from ``k`` of
``V`` cameras: every clean test object with one random subset of ``k`` views, against the threshold
fitted for ``k`` views (:func:`multiflow.engine.threshold.fit_by_views`) and against the all-views
threshold (what happened before per-view-count thresholds); and its S-/I-AUROC on all views against
the paper model's (goal: within 1 pp).

Calibration objects: a bundle written with ``threshold.calibration_fraction`` records them
(:func:`multiflow.engine.threshold.split_calibration`); an older bundle (format 2, trained before
the calibration split) uses its held-out ``train.val_fraction`` objects, which also selected the
epoch — the report states for each model whether the selected epoch was the last one (then the
selection did not depend on those objects' scores).

    python benchmarks/decision_trust.py --runs results/trust/runs --paper-run paper \
        --dropout-run dropout dropout_tb --crossfit-run crossfit --classes toy_brick terminal_block

A paper model fitted with ``threshold.cross_fit`` (``--crossfit-run``) is evaluated the same way; its
calibration scores are the out-of-fold scores stored with it (the model itself trained on those
objects, so it must not score them). A class whose stored result lacks a model now asked for is
completed, not recomputed.

Each run folder is what ``multiflow fit --out <runs> --name <run>`` writes (its ``config.yaml`` names
the data and the feature cache). Per class ``<runs>/decision_trust/<class>.json`` (atomic; a rerun
reuses it unless ``--force``); the table goes to the BENCHMARKS.md section ``decision_trust``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import CpuShare, machine_line, update_section  # noqa: E402
from multiflow._atomic import write_json  # noqa: E402

SECTION = "decision_trust"
#: the models whose threshold is evaluated, in report order
KINDS = (("paper", "Paper model, held-out calibration split"),
         ("crossfit", "Paper model, cross-fitted threshold (threshold.cross_fit)"))
TARGETS = (0.01, 0.05)
CONFIDENCE = 0.9


def _find(runs: Path, names: list[str], cls: str) -> Path | None:
    for name in names:
        if (runs / name / cls / "model.json").is_file():
            return runs / name / cls
    return None


def _split(bundle, cfg) -> tuple[np.ndarray, str]:
    """Calibration object indices of the normal training objects, and how they were chosen."""
    from multiflow.engine.threshold import split_calibration
    from multiflow.engine.train import split_train_val

    if getattr(bundle.training, "cross_fit", 0):
        n = int(bundle.training.calibration_samples)
        return np.arange(n), (f"out-of-fold scores of all {n} normal training objects (threshold.cross_fit="
                              f"{bundle.training.cross_fit}; the model itself trained on all of them)")
    n = int(bundle.training.train_samples) + int(bundle.training.val_samples) + int(
        getattr(bundle.training, "calibration_samples", 0) or 0)
    if getattr(bundle.training, "calibration_samples", 0):
        _, cal = split_calibration(n, cfg.threshold.calibration_fraction, cfg.train.seed,
                                   min_rest=2 if cfg.train.val_fraction > 0 else 1)
        return cal, "calibration split (held out before training)"
    _, val = split_train_val(n, cfg.train.val_fraction, cfg.train.seed)
    last = int(bundle.training.best_epoch) == len(bundle.training.history)
    return val, ("held-out val objects (format-2 bundle); selected epoch = last: " + ("yes" if last else "NO"))


def _scores(model, bundle, feats, masks, *, present=None, image_size: int) -> np.ndarray:
    from multiflow.engine.maps import compute_maps
    from multiflow.scoring import score_arrays

    maps = compute_maps(model, feats, masks, batch_size=8, present=present)
    post = bundle.scoring.postprocess(image_size)
    return score_arrays(maps, masks, post, bundle.scoring.aggregation, present=present)[1]


def _rates(threshold: float, good: np.ndarray, bad: np.ndarray) -> dict[str, float]:
    return {"threshold": float(threshold), "false_reject": float(np.mean(good > threshold)),
            "miss": float(np.mean(bad <= threshold))}


def _stored_calibration_scores(folder: Path, bundle, size: int) -> tuple[np.ndarray, list[str]]:
    """The sample scores of the maps the bundle's threshold was fitted on (the out-of-fold maps of a
    cross-fitted model: the model itself trained on those objects, so it must not score them)."""
    from multiflow.engine.threshold import load_calibration_maps
    from multiflow.scoring import score_arrays

    maps, masks, ids = load_calibration_maps(folder / bundle.threshold.calibration_maps)
    post = bundle.scoring.postprocess(size)
    return score_arrays(maps, masks, post, bundle.scoring.aggregation)[1], ids


def evaluate_class(runs: Path, cls: str, models: dict[str, Path | None], done: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    from multiflow.config import load_config
    from multiflow.engine.bundle import load_bundle
    from multiflow.engine.factories import build_extractor
    from multiflow.engine.preprocess import prepare_split
    from multiflow.engine.threshold import fit_from_view_scores, scores_by_views
    from multiflow.metrics import auroc
    from multiflow.scoring import fit_threshold

    out: dict[str, Any] = {"class": cls} | dict(done or {})
    cache: dict[str, Any] = {}
    for kind, folder in models.items():
        if folder is None or kind in out:
            continue
        cfg = load_config(folder.parent / "config.yaml")
        model, bundle = load_bundle(folder)
        model.eval()
        key = str(cfg.features.cache_dir)
        if key not in cache:
            ex = build_extractor(cfg.features)
            cache[key] = (prepare_split(cfg, cls, "train", ex, progress=False),
                          prepare_split(cfg, cls, "test", ex, progress=False), int(ex.input_size))
        train, test, size = cache[key]
        cal, how = _split(bundle, cfg)
        ids = [train.sample_ids[i] for i in cal]
        cal_masks = None if train.masks is None else train.masks[cal]
        if getattr(bundle.training, "cross_fit", 0):
            cal_s, ids = _stored_calibration_scores(folder, bundle, size)
        else:
            cal_s = _scores(model, bundle, train.features[cal], cal_masks, image_size=size)
        labels = np.array([test.dataset.image_labels(i) for i in range(len(test.dataset))]).max(1) > 0
        test_s = _scores(model, bundle, test.features, test.masks, image_size=size)
        good, bad = test_s[~labels], test_s[labels]
        rec: dict[str, Any] = {"calibration": how, "n_calibration": int(len(cal)), "n_good": int(len(good)),
                               "n_defective": int(len(bad)), "s_auroc": float(auroc(test_s, labels)),
                               "old_rule_q99": _rates(float(np.quantile(cal_s, 0.99)), good, bad), "targets": {},
                               "scores": {name: {"n": int(len(x)), "mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1)),
                                                 "max": float(np.max(x))} for name, x in (("calibration", cal_s),
                                                                                          ("good", good))}}
        for t in TARGETS:
            fit = fit_threshold(cal_s, ids, false_reject=t, confidence=CONFIDENCE)
            rec["targets"][str(t)] = _rates(fit.value, good, bad) | {
                "method": fit.method, "needed_n": int(fit.needed_n), "outliers": [o for o in fit.outliers],
                "warning": fit.warning}
        if kind == "dropout":
            from types import SimpleNamespace

            v = int(test.features.shape[1])
            rng = np.random.default_rng(0)
            good_idx = np.flatnonzero(~labels)
            rec["by_views"] = {}
            # each view subset scored once; the thresholds of every target are fitted from those scores
            worst = scores_by_views(model, train.features[cal], cal_masks, bundle.scoring, image_size=size,
                                    batch_size=8, seed=cfg.train.seed)
            for t in TARGETS:
                fits = fit_from_view_scores(worst, ids, SimpleNamespace(false_reject=t, confidence=CONFIDENCE))
                all_views = rec["targets"][str(t)]["threshold"]
                for k in range(1, v):
                    present = np.zeros((len(good_idx), v), dtype=bool)
                    for row in present:
                        row[rng.choice(v, size=k, replace=False)] = True
                    s = _scores(model, bundle, test.features[good_idx],
                                None if test.masks is None else test.masks[good_idx], present=present, image_size=size)
                    rec["by_views"].setdefault(str(k), {})[str(t)] = {
                        "threshold_k": float(fits[str(k)].value),
                        "false_reject_k": float(np.mean(s > fits[str(k)].value)),
                        "false_reject_all_views_threshold": float(np.mean(s > all_views))}
        out[kind] = rec
    return out


def report(results: list[dict[str, Any]], command: str, cpu: str) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    lines = ["## Decision threshold: observed false-reject rate against the stated target (issue 20)", "",
             f"Command: `{command}`  ", f"Machine: {machine_line()}; {cpu}.", ""]
    for kind, title in KINDS:
        rs = [r for r in results if kind in r]
        if not rs:
            continue
        lines += [f"{title}; threshold fitted on the calibration objects' sample scores (confidence "
                  f"{CONFIDENCE:.0%}); rates on the class's clean / defective test objects (%):", "",
                  "| class | calibration objects | good / defective | rule | threshold | false rejects | misses | "
                  "method | S-AUROC |", "|---|---:|---:|---|---:|---:|---:|---|---:|"]
        for r in rs:
            p = r[kind]
            cnt, auc = f"{p['n_good']} / {p['n_defective']}", f"{100 * p['s_auroc']:.2f}"
            o = p["old_rule_q99"]
            lines.append(f"| {r['class']} | {p['n_calibration']} | {cnt} | old: 0.99 quantile | {o['threshold']:.3f} | "
                         f"{pct(o['false_reject'])} | {pct(o['miss'])} | | {auc} |")
            for t, x in p["targets"].items():
                lines.append(f"| {r['class']} | {p['n_calibration']} | {cnt} | target {pct(float(t))} % | "
                             f"{x['threshold']:.3f} | {pct(x['false_reject'])} | {pct(x['miss'])} | {x['method']} | "
                             f"{auc} |")
        for t in TARGETS:
            good = sum(r[kind]["n_good"] for r in rs)
            fr = sum(r[kind]["targets"][str(t)]["false_reject"] * r[kind]["n_good"] for r in rs) / max(good, 1)
            lines.append("")
            lines.append(f"{title}, target {pct(t)} %: {pct(fr)} % of {good} clean test objects rejected over all "
                         f"classes (goal: at most {pct(t + 0.01)} %).")
        lines += ["", "How the calibration objects were chosen: " + "; ".join(
            f"{r['class']}: {r[kind]['calibration']}" for r in rs) + "."]
        sc = [r for r in rs if "scores" in r[kind]]
        if sc:
            lines += ["", "Sample scores, calibration objects against the clean test objects (n, mean, sd, max): "
                      + "; ".join(f"{r['class']}: " + ", ".join(
                          f"{k} {v['n']} / {v['mean']:.3f} / {v['sd']:.3f} / {v['max']:.3f}"
                          for k, v in r[kind]["scores"].items()) for r in sc) + "."]
        lines += [""]
    drop = [r for r in results if "dropout" in r]
    if drop:
        lines += ["View-dropout model, clean test objects scored from k cameras (one random subset each): "
                  "false rejects (%) with the threshold fitted for k views vs the all-views threshold:", "",
                  "| class | target | " + " | ".join(f"k = {k}" for k in sorted(drop[0]["dropout"]["by_views"])) + " |",
                  "|---|---|" + "---:|" * len(drop[0]["dropout"]["by_views"])]
        for r in drop:
            bv = r["dropout"]["by_views"]
            for t in TARGETS:
                cells = [f"{pct(bv[k][str(t)]['false_reject_k'])} (all-views thr.: "
                         f"{pct(bv[k][str(t)]['false_reject_all_views_threshold'])})" for k in sorted(bv)]
                lines.append(f"| {r['class']} | {pct(t)} % | " + " | ".join(cells) + " |")
        d = [100 * (r["dropout"]["s_auroc"] - r["paper"]["s_auroc"]) for r in drop]
        lines += ["", "S-AUROC on all views, dropout model minus paper model: " + ", ".join(
            f"{r['class']} {x:+.2f} pp" for r, x in zip(drop, d)) + f" (mean {np.mean(d):+.2f}; goal: within 1 pp)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(ROOT / "results" / "trust" / "runs"), help="folder of the fit runs")
    p.add_argument("--paper-run", nargs="+", default=["paper"], help="run name(s) holding the paper models")
    p.add_argument("--dropout-run", nargs="*", default=[], help="run name(s) holding the view-dropout models")
    p.add_argument("--crossfit-run", nargs="*", default=[], help="run name(s) holding paper models fitted with "
                   "threshold.cross_fit")
    p.add_argument("--classes", nargs="+", required=True)
    p.add_argument("--force", action="store_true", help="recompute classes with a stored result")
    p.add_argument("--no-benchmarks-md", action="store_true")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    results = []
    with CpuShare() as cpu:
        _run_classes(args, runs, results)
    cmd = "python benchmarks/decision_trust.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = report(results, cmd, f"CPU share of this run {cpu.share:.2f} (classes computed now; stored ones reused)")
    if not args.no_benchmarks_md:
        update_section(SECTION, md)
    print(md)
    return 0


def _run_classes(args, runs: Path, results: list) -> None:
    for cls in args.classes:
        path = runs / "decision_trust" / f"{cls}.json"
        done = json.loads(path.read_text()) if path.is_file() and not args.force else {}
        models = {"paper": _find(runs, args.paper_run, cls), "dropout": _find(runs, args.dropout_run, cls),
                  "crossfit": _find(runs, args.crossfit_run, cls)}
        if models["paper"] is None and "paper" not in done:
            raise SystemExit(f"{cls}: no trained paper model in {runs}/{{{','.join(args.paper_run)}}}/{cls}")
        if all(k in done for k, f in models.items() if f is not None):
            results.append(done)  # every model asked for is stored
            continue
        t0 = time.perf_counter()
        res = evaluate_class(runs, cls, models, done={k: v for k, v in done.items() if k in models})
        res["seconds"] = float(done.get("seconds", 0.0)) + time.perf_counter() - t0
        write_json(path, res)
        results.append(res)


if __name__ == "__main__":
    raise SystemExit(main())
