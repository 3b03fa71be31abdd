"""Scoring and feature switches (issue 12): every image score x per-view calibration from the SAME
stored anomaly maps, plus the trained switches (mask margin, two-stage features), with seeds.

For each trained variant, seed and class the flow is trained once (``fit`` + ``test`` through
:func:`benchmarks.paper_experiments.run_one`, resumable), then its held-out normal training maps
and test maps are recomputed from the cached features and every combination of

* image score (:mod:`multiflow.scoring`): ``max`` (paper), ``topk_mean`` (k = 1 % of
  the foreground cells), ``quantile`` (q = 0.99), ``smoothed_max`` (sigma = 4 px at the input size);
* calibration: ``none`` (paper), ``zscore``, ``tail`` (fitted on the held-out normal maps)

is evaluated post hoc (no retraining). Trained variants (each retrained, scored the same way):

* ``paper``: the paper's configuration (``max`` + ``none`` on it is the reference row);
* ``margin``: ``masks.margin=0.05`` (mask grown by 5 % of the object's bounding-box diagonal);
* ``soft``: ``masks.soft=0.1`` (background cells count in the loss with weight 0.1);
* ``multiscale``: ``features.layer=blocks:3+blocks:5`` (stage 4 + stage 6 on the stage-4 grid).

Each (variant, seed, class) writes ``<out>/<run>/scoring/<variant>/seed<k>/<class>.json``
atomically; a rerun skips finished ones. The model files are deleted once scored.

    .venv/bin/python benchmarks/scoring_ablation.py            # 3 classes x 3 seeds (slow: the lead runs it)
    .venv/bin/python benchmarks/scoring_ablation.py --quick    # a few minutes, for checking

Results: BENCHMARKS.md section ``scoring_ablation`` (one table + per-defect S-AUROC / I-AUROC).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import paper_experiments as pe  # noqa: E402
from benchmarks._report import machine_line, update_section  # noqa: E402
from multiflow._atomic import write_json  # noqa: E402

SECTION = "scoring_ablation"
FULL = dict(pe.FULL, classes=["bottle_cap", "lock_nut", "toy_brick"])
QUICK = dict(pe.QUICK, n_train=6, n_test_good=3, n_test_defect=5, size=96)
TRAINED = (
    pe.Variant("paper"),
    pe.Variant("margin", ("masks.margin=0.05",)),
    pe.Variant("soft", ("masks.soft=0.1",)),
    pe.Variant("multiscale", ("features.layer=blocks:3+blocks:5",)),
)
IMAGE_SCORES = (
    ("max", {}), ("topk_mean", {"k": 0.01}), ("quantile", {"q": 0.99}), ("smoothed_max", {"sigma": 4.0}),
)
CALIBRATIONS = ("none", "zscore", "tail")
REFERENCE = ("paper", "max", "none")


def combo_name(score: str, calibration: str) -> str:
    return f"{score}+{calibration}"


def score_run(cfg, folder: Path, category: str) -> dict[str, Any]:
    """Every image score x calibration of one trained class model, from one pass over its maps.

    Returns ``{combo: {"metrics": {...}, "per_defect": {...}}}``; the pixel metrics (the maps do
    not depend on the scoring) are computed once and shared by every combination.
    """
    from multiflow.data.ground_truth import ground_truth_masks
    from multiflow.engine.bundle import load_bundle
    from multiflow.engine.factories import build_extractor
    from multiflow.engine.preprocess import prepare_split
    from multiflow.engine.scoring import compute_maps
    from multiflow.engine.train import split_train_val

    model, bundle = load_bundle(folder / category)
    # the bundle's backbone (input size resolved at fit) and masks, the run's data and cache settings
    cfg = dataclasses.replace(
        cfg, features=dataclasses.replace(cfg.features, input_size=int(bundle.features.input_size)),
        masks=bundle.masks.to_config(),
    )
    how = bundle.scoring.aggregation
    extractor = build_extractor(cfg.features)
    train = prepare_split(cfg, category, "train", extractor, progress=False)
    _, val = split_train_val(len(train.sample_ids), cfg.train.val_fraction, cfg.train.seed)
    val_masks = None if train.masks is None else train.masks[val]
    val_maps = compute_maps(model, train.features[val], val_masks, batch_size=cfg.eval.batch_size)
    test = prepare_split(cfg, category, "test", extractor, progress=False)
    maps = compute_maps(model, test.features, test.masks, batch_size=cfg.eval.batch_size)
    ds = test.dataset
    defects = [r.defect for r in ds.samples]
    labels = np.array([ds.image_labels(i) for i in range(len(ds))])
    gt = np.stack([ground_truth_masks(ds, i) for i in range(len(ds))])
    return score_combos(maps, test.masks, val_maps, val_masks, gt=gt, labels=labels, defects=defects,
                        sample_ids=list(test.sample_ids), image_size=extractor.input_size, how=how)


def score_combos(maps, masks, val_maps, val_masks, *, defects: list[str], sample_ids: list[str], image_size: int,
                 labels, how: str = "max", gt=None, calibrations=CALIBRATIONS) -> dict[str, Any]:
    """Every image score x calibration of one model's test maps ``(T, V, h, w)``, calibrations fitted on
    its held-out normal maps ``val_maps`` (None: only ``none``). Pixel metrics once, from ``gt`` when
    given; ``labels (T, V)``: the image labels. Returns ``{combo: {"metrics", "per_defect"}}``."""
    from multiflow.engine.scoring import postprocess_scores
    from multiflow.metrics import evaluate_exact
    from multiflow.scoring import ImageScoreSpec, ScorePostprocess, ViewCalibration

    if val_maps is None:
        calibrations = ("none",)
    out: dict[str, Any] = {}
    pixel: dict[str, Any] = {}
    for name, params in IMAGE_SCORES:
        spec = ImageScoreSpec(name=name, **params)
        raw_val = None
        if val_maps is not None:
            raw_val, _, _ = postprocess_scores(val_maps, val_masks, ScorePostprocess(spec=spec, image_size=image_size), how)
        for mode in calibrations:
            cal = None if raw_val is None else ViewCalibration.fit(raw_val, mode)
            post = ScorePostprocess(spec=spec, calibration=cal, image_size=image_size)
            _, view_scores, _ = postprocess_scores(maps, masks, post, how)
            if gt is not None and not pixel:
                res = evaluate_exact(maps, gt, image_scores=view_scores, sample_ids=sample_ids, defects=defects,
                                     how=how).as_dict()
                pixel = {"p_auroc": res.get("p_auroc"), "aupro": res.get("aupro")}
            else:
                res = evaluate_exact(maps, None, labels=labels, image_scores=view_scores, sample_ids=sample_ids,
                                     defects=defects, how=how).as_dict()
            out[combo_name(name, mode)] = {
                "metrics": {"s_auroc": res.get("s_auroc"), "i_auroc": res.get("i_auroc"), **pixel},
                "per_defect": {d: {"s_auroc": r.get("s_auroc"), "i_auroc": r.get("i_auroc")}
                               for d, r in (res.get("per_defect") or {}).items()},
            }
    return out


def run_variant(cfg, variant, seed: int, category: str, out: Path, *, progress: bool) -> dict[str, Any]:
    """Train (resumable), score every combination, drop the model files; returns the stored record."""
    path = out / "scoring" / variant.name / f"seed{seed}" / f"{category}.json"
    if path.is_file():
        return json.loads(path.read_text())
    folder = out / "runs" / variant.name / f"seed{seed}"
    rec = pe.run_one(cfg, variant, seed, category, folder, mask_root="", progress=progress, keep_models=True)
    from multiflow.config import load_config

    vcfg = load_config(folder / "config.yaml")
    features = json.loads((folder / category / "model.json").read_text())["features"]
    record = {"variant": variant.name, "seed": seed, "category": category, "combos": score_run(vcfg, folder, category),
              "fit_seconds": rec.get("seconds"), "train_samples_per_s": rec.get("train_samples_per_s"),
              "channels": features.get("channels"), "grid": (features.get("grid") or [0])[0]}
    write_json(path, record, default=float)
    shutil.rmtree(folder / category / "train_state", ignore_errors=True)
    (folder / category / "model.safetensors").unlink(missing_ok=True)
    return record


# ----------------------------------------------------------------------------------- reporting
def _seed_means(records: list[dict], variant: str, combo: str, metric: str) -> list[float | None]:
    """Per seed, the class average of ``metric`` for one (variant, combo)."""
    by_seed: dict[int, list[float | None]] = {}
    for r in records:
        if r["variant"] == variant:
            by_seed.setdefault(r["seed"], []).append(r["combos"][combo]["metrics"].get(metric))
    return [None if any(v is None for v in vals) else float(np.mean(vals)) for _, vals in sorted(by_seed.items())]


def _delta(records, row, ref, metric) -> str:
    a = [v for v in _seed_means(records, row[0], row[1], metric) if v is not None]
    b = [v for v in _seed_means(records, ref[0], ref[1], metric) if v is not None]
    if not a or not b:
        return "-"
    d = 100 * (pe.mean_std(a)[0] - pe.mean_std(b)[0])
    noise = 100 * max(pe.mean_std(a)[1], pe.mean_std(b)[1])
    return f"{d:+.2f}" + (" *" if len(a) > 1 and abs(d) > 2 * noise else "")


def report(records: list[dict], cmd: str, wall: float) -> str:
    """The BENCHMARKS.md section: one table (every variant x image score x calibration) and the
    per-defect S-/I-AUROC of the reference and of the best combination."""
    variants = [v.name for v in TRAINED if any(r["variant"] == v.name for r in records)]
    combos = [combo_name(s, c) for s, _ in IMAGE_SCORES for c in CALIBRATIONS]
    ref = (REFERENCE[0], combo_name(REFERENCE[1], REFERENCE[2]))
    classes = sorted({r["category"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    lines = [
        "## Scoring and feature switches (issue 12)",
        "",
        f"Synthetic suite: {len(classes)} classes ({', '.join(classes)}), seeds {seeds}; mean ± std over seeds of the "
        "class-averaged metric (%). Image score x calibration rows of one trained variant come from the same "
        "maps (post hoc, no retraining); P-AUROC / AUPRO depend on the maps only. Δ = difference to the paper "
        "configuration (`paper`, `max`, `none`) in pp; `*` = beyond twice the larger seed std.",
        "",
        "| trained variant | image score | calibration | S-AUROC | I-AUROC | P-AUROC | AUPRO | Δ S | Δ I | fit s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    best, best_s = ref, -1.0
    for v in variants:
        fit = [r["fit_seconds"] for r in records if r["variant"] == v and r.get("fit_seconds")]
        fit_s = f"{np.mean(fit):.0f}" if fit else "-"
        for combo in combos:
            cells = [pe.fmt_ms(_seed_means(records, v, combo, m)) for m, _ in pe.METRICS]
            s_vals = [x for x in _seed_means(records, v, combo, "s_auroc") if x is not None]
            if s_vals and np.mean(s_vals) > best_s:
                best, best_s = (v, combo), float(np.mean(s_vals))
            score, cal = combo.split("+")
            lines.append(f"| {v} | {score} | {cal} | " + " | ".join(cells) + f" | {_delta(records, (v, combo), ref, 's_auroc')}"
                         f" | {_delta(records, (v, combo), ref, 'i_auroc')} | {fit_s} |")
    lines += ["", f"Best S-AUROC: `{best[0]}` with `{best[1]}`. Per defect type (S-AUROC / I-AUROC, mean over "
              "classes and seeds):", "", "| defect | paper max+none | " + f"{best[0]} {best[1]} |", "|---|---:|---:|"]
    defects = sorted({d for r in records for c in r["combos"].values() for d in c["per_defect"]})

    def per_defect(v, combo, d):
        vals = [r["combos"][combo]["per_defect"].get(d, {}) for r in records if r["variant"] == v]
        s = [x["s_auroc"] for x in vals if x.get("s_auroc") is not None]
        i = [x["i_auroc"] for x in vals if x.get("i_auroc") is not None]
        return (f"{100 * np.mean(s):.1f}" if s else "-") + " / " + (f"{100 * np.mean(i):.1f}" if i else "-")

    for d in defects:
        lines.append(f"| {d} | {per_defect(ref[0], ref[1], d)} | {per_defect(best[0], best[1], d)} |")
    lines += ["", f"Regenerate: `{cmd}` ({wall / 60:.0f} min). {machine_line()}",
              "Nothing here changes a default: a switch becomes the default only where it beats the paper "
              "configuration beyond seed noise on the full suite."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "scoring-ablation"), help="results root")
    p.add_argument("--quick", action="store_true", help="tiny check: 1 class, 6 train samples, 96 px, 1 epoch, 1 seed")
    p.add_argument("--classes", nargs="*", help="classes (default: the suite's)")
    p.add_argument("--seeds", type=int, nargs="*", help="train.seed values (default 0 1 2; --quick: 0)")
    p.add_argument("--only", nargs="*", choices=[v.name for v in TRAINED], help="trained variants to run")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra override of the base config")
    p.add_argument("--no-benchmarks-md", action="store_true", help="do not touch BENCHMARKS.md (still prints)")
    p.add_argument("--quiet", action="store_true", help="no progress bars inside a run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from multiflow.errors import MultiflowError

    args = parse_args(argv)
    t0 = time.perf_counter()
    sizes = dict(QUICK if args.quick else FULL)
    if args.classes:
        sizes["classes"] = list(args.classes)
    seeds = args.seeds or sizes["seeds"]
    out = Path(args.out) / ("synthetic-quick" if args.quick else "synthetic-full")
    variants = [v for v in TRAINED if not args.only or v.name in args.only]
    try:
        pe.ensure_synthetic(out / "data", sizes, progress=not args.quiet)
        ns = argparse.Namespace(base_masks="", config=None, epochs=0, set=args.set)
        cfg = pe.make_config(ns, out / "data", out / "cache", sizes["classes"], sizes)
        records = []
        for v in variants:
            for s in seeds:
                for c in sizes["classes"]:
                    rec = run_variant(cfg, v, s, c, out, progress=not args.quiet)
                    m = rec["combos"][combo_name("max", "none")]["metrics"]
                    print(f"{v.name:>10} seed {s} {c:>12}: paper scoring S-AUROC {100 * (m['s_auroc'] or 0):.2f}", flush=True)
                    records.append(rec)
    except MultiflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cmd = "python benchmarks/scoring_ablation.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    md = report(records, cmd, time.perf_counter() - t0)
    print(md)
    if not args.no_benchmarks_md:
        update_section(SECTION, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
