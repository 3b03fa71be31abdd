"""Scoring and feature switches (issue 12): every image score x per-view calibration from the SAME
stored anomaly maps, plus the trained switches (mask margin, two-stage features), with seeds.

For each trained variant, seed and class the flow is trained once (``fit`` + ``test`` through
:func:`benchmarks.paper_experiments.run_one`, resumable), then its held-out normal training maps
and test maps are recomputed from the cached features and every combination of

* image score (:mod:`multiflow.scoring`): ``max`` (paper), ``topk_mean`` (k = 2, 5, 10, 20 % of
  the foreground cells), ``quantile`` (q = 0.99, 0.95), ``smoothed_max`` (sigma = 4, 8, 16 px at the
  input size);
* calibration: ``none`` (paper); ``zscore`` and ``tail`` (fitted on the held-out normal maps) were
  measured here and removed from multiflow (worse than ``none``); their rows stay in BENCHMARKS.md

is evaluated post hoc (no retraining). Trained variants (each retrained, scored the same way):

* ``paper``: the paper's configuration (``max`` + ``none`` on it is the reference row);
* ``margin``: ``masks.margin=0.05`` (mask grown by 5 % of the object's bounding-box diagonal);
* ``soft`` (removed): ``masks.soft=0.1`` weighted background cells 0.1 in the loss; it measured worse
  than the binary mask (S-AUROC -1.4, I-AUROC -2.6 pp over 3 classes x 2 seeds) and the switch is
  gone; records of earlier runs still show in the report, marked removed;
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
    pe.Variant("multiscale", ("features.layer=blocks:3+blocks:5",)),
    # not a scoring switch: issue 11's bf16 training + inference, for detection parity over seeds
    pe.Variant("bf16", ("train.precision=bf16",)),
)
#: (label, image score, parameters). At a 12x12 grid with ~60 foreground cells k = 1 % is one cell
#: (= max), so the top-k fractions start at 2 %.
#: variants measured by earlier runs whose switch was removed after the measurement (shown if present)
REMOVED = ("soft",)
IMAGE_SCORES = (
    ("max", "max", {}),
    ("topk_mean@0.02", "topk_mean", {"k": 0.02}), ("topk_mean@0.05", "topk_mean", {"k": 0.05}),
    ("topk_mean@0.1", "topk_mean", {"k": 0.1}), ("topk_mean@0.2", "topk_mean", {"k": 0.2}),
    ("quantile@0.99", "quantile", {"q": 0.99}), ("quantile@0.95", "quantile", {"q": 0.95}),
    ("smoothed_max@4", "smoothed_max", {"sigma": 4.0}), ("smoothed_max@8", "smoothed_max", {"sigma": 8.0}),
    ("smoothed_max@16", "smoothed_max", {"sigma": 16.0}),
)
#: per-view calibrations computed: zscore and tail were measured (the tables in BENCHMARKS.md) and removed
#: from multiflow (issue 21), so only "none" is computed now
CALIBRATIONS = ("none",)
#: per-view calibrations reported: the removed ones still show where records of earlier runs carry them
REPORTED_CALIBRATIONS = ("none", "zscore", "tail")
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
    from multiflow.engine.maps import compute_maps
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
    from multiflow.metrics import evaluate_exact
    from multiflow.scoring import ImageScoreSpec, ScorePostprocess, check_calibration, score_arrays

    if val_maps is None:
        calibrations = ("none",)
    out: dict[str, Any] = {}
    pixel: dict[str, Any] = {}
    for label, name, params in IMAGE_SCORES:
        spec = ImageScoreSpec(name=name, **params)
        view_scores = score_arrays(maps, masks, ScorePostprocess(spec=spec, image_size=image_size), how)[0]
        for mode in calibrations:
            check_calibration(mode, "scoring_ablation")  # zscore/tail: removed, an error
            if gt is not None and not pixel:
                res = evaluate_exact(maps, gt, image_scores=view_scores, sample_ids=sample_ids, defects=defects,
                                     how=how).as_dict()
                pixel = {"p_auroc": res.get("p_auroc"), "aupro": res.get("aupro")}
            else:
                res = evaluate_exact(maps, None, labels=labels, image_scores=view_scores, sample_ids=sample_ids,
                                     defects=defects, how=how).as_dict()
            out[combo_name(label, mode)] = {
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
    bundle_json = json.loads((folder / category / "model.json").read_text())
    features = bundle_json["features"]
    record = {"variant": variant.name, "seed": seed, "category": category, "combos": score_run(vcfg, folder, category),
              "test_metrics": rec.get("metrics"), "test_per_defect": rec.get("per_defect"),
              "fit_seconds": rec.get("seconds"), "train_samples_per_s": rec.get("train_samples_per_s"),
              "train_seconds": (bundle_json.get("training") or {}).get("seconds"),
              "channels": features.get("channels"), "grid": (features.get("grid") or [0])[0]}
    write_json(path, record, default=float)
    shutil.rmtree(folder / category / "train_state", ignore_errors=True)
    (folder / category / "model.safetensors").unlink(missing_ok=True)
    return record


# ----------------------------------------------------------------------------------- reporting
def _values(records: list[dict], variant: str, combo: str | None, metric: str) -> dict[tuple[int, str], float | None]:
    """``{(seed, class): metric}`` of one (variant, combo), None where the run has no value;
    ``combo=None``: the pipeline's own test (``multiflow test`` with the variant's config, e.g. bf16
    inference)."""
    out = {}
    for r in records:
        if r["variant"] == variant:
            if combo is not None and combo not in r["combos"]:
                continue  # a removed switch (calibration) that this record was not scored with
            src = (r.get("test_metrics") or {}) if combo is None else r["combos"][combo]["metrics"]
            v = src.get(metric)
            out[(r["seed"], r["category"])] = None if v is None else float(v)
    return out


def _seed_means(records: list[dict], variant: str, combo: str | None, metric: str) -> dict[int, float]:
    """Per seed, the class average of ``metric`` (a seed with a class lacking it is left out)."""
    by_seed: dict[int, list[float | None]] = {}
    for (seed, _), v in _values(records, variant, combo, metric).items():
        by_seed.setdefault(seed, []).append(v)
    return {s: float(np.mean(v)) for s, v in sorted(by_seed.items()) if all(x is not None for x in v)}


def _cell(records, variant, combo, metric) -> str:
    return pe.fmt_ms(list(_seed_means(records, variant, combo, metric).values()))


def _by_run(records: list[dict], variant: str, combo: str | None, metric: str) -> dict[tuple[int, str], float]:
    return {k: v for k, v in _values(records, variant, combo, metric).items() if v is not None}


def paired_delta(records, row, ref, metric) -> tuple[float, float, int] | None:
    """Paired difference ``row - ref`` over the (seed, class) runs both have (same seed, same data), in
    pp: mean, sample std and the number of pairs. The mean over pairs is the difference of the
    class-averaged metric when every seed has every class."""
    a, b = _by_run(records, *row, metric), _by_run(records, *ref, metric)
    diffs = [100 * (a[k] - b[k]) for k in sorted(a) if k in b]
    if not diffs:
        return None
    m, sd = pe.mean_std(diffs)
    return m, sd, len(diffs)


def beyond_noise(d: tuple[float, float, int] | None) -> bool:
    """A paired difference counts when it is larger than twice its standard error over the runs."""
    return d is not None and d[2] > 1 and abs(d[0]) > 2 * d[1] / np.sqrt(d[2])


def _fmt_delta(d) -> str:
    if d is None:
        return "-"
    return f"{d[0]:+.2f} ± {d[1]:.2f}" + (" *" if beyond_noise(d) else "")


def summary_rows(variants: list[str]) -> list[tuple[str, str, str]]:
    """(label, variant, combo): the paper configuration, each switch alone."""
    ref = combo_name("max", "none")
    rows = [("paper configuration", "paper", ref)]
    rows += [(f"image score {lbl}", "paper", combo_name(lbl, "none")) for lbl, _, _ in IMAGE_SCORES if lbl != "max"]
    rows += [(f"calibration {c}", "paper", combo_name("max", c)) for c in REPORTED_CALIBRATIONS if c != "none"]
    labels = {"margin": "mask margin 0.05", "soft": "soft mask 0.1 (switch removed)", "multiscale": "two-stage features"}
    rows += [(labels[v], v, ref) for v in variants if v in labels]
    return rows


def report(records: list[dict], cmd: str, wall: float) -> str:
    """The BENCHMARKS.md section: each switch alone and the best combination against the paper
    configuration (paired over seeds), bf16 parity, per-defect S-AUROC, costs and the whole grid."""
    known = [v.name for v in TRAINED] + [v for v in REMOVED if v not in {x.name for x in TRAINED}]
    scoring_variants = [v for v in known if v != "bf16" and any(r["variant"] == v for r in records)]
    combos = [combo_name(lbl, c) for lbl, _, _ in IMAGE_SCORES for c in REPORTED_CALIBRATIONS
              if c in CALIBRATIONS or any(combo_name(lbl, c) in r["combos"] for r in records)]
    ref = (REFERENCE[0], combo_name(REFERENCE[1], REFERENCE[2]))
    classes = sorted({r["category"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    metrics = [("s_auroc", "S-AUROC"), ("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("aupro", "AUPRO")]

    def score_of(row):  # ranking: mean of the S- and I-AUROC paired gains
        ds = [paired_delta(records, row, ref, m) for m in ("s_auroc", "i_auroc")]
        return -1e9 if any(d is None for d in ds) else (ds[0][0] + ds[1][0]) / 2

    grid_rows = [(v, c) for v in scoring_variants for c in combos]
    best = max(grid_rows, key=score_of) if grid_rows else ref
    lines = [
        "## Scoring and feature switches (issue 12)",
        "",
        f"Synthetic suite: {len(classes)} classes ({', '.join(classes)}), train seeds {seeds}; class-averaged metric "
        "(%), mean ± std over seeds. Rows of one trained variant that differ only in image score / calibration come "
        "from the same maps (post hoc, no retraining; calibration fitted on the run's held-out normal objects); "
        "P-AUROC / AUPRO depend on the maps only. Δ = paired difference to the paper configuration (same seed, "
        "same data), mean ± std over the (seed, class) runs in pp; `*` = larger than twice its standard error.",
        "",
        "| switch | trained variant | image score + calibration | " + " | ".join(lbl for _, lbl in metrics)
        + " | Δ S-AUROC | Δ I-AUROC |",
        "|---|---|---|" + "---:|" * (len(metrics) + 2),
    ]
    rows = [r for r in summary_rows(scoring_variants) if r[2] in combos or r[2] == ref[1]]
    rows += [("best combination (by mean Δ S/I)", *best)]
    for label, v, c in rows:
        if not any(r["variant"] == v for r in records):
            continue
        lines.append(f"| {label} | {v} | {c} | " + " | ".join(_cell(records, v, c, m) for m, _ in metrics)
                     + f" | {_fmt_delta(paired_delta(records, (v, c), ref, 's_auroc'))}"
                     f" | {_fmt_delta(paired_delta(records, (v, c), ref, 'i_auroc'))} |")
    if any(r["variant"] == "bf16" for r in records):
        lines += ["", "bf16 parity (issue 11): the pipeline's own `multiflow test` of a flow trained and scored with "
                  "`train.precision=bf16` vs fp32 (same seeds and data):", "",
                  "| precision | " + " | ".join(lbl for _, lbl in metrics) + " | Δ S-AUROC | Δ I-AUROC |",
                  "|---|" + "---:|" * (len(metrics) + 2)]
        for name in ("paper", "bf16"):
            lines.append(f"| {'fp32' if name == 'paper' else 'bf16'} | "
                         + " | ".join(_cell(records, name, None, m) for m, _ in metrics)
                         + f" | {_fmt_delta(paired_delta(records, (name, None), ('paper', None), 's_auroc'))}"
                         f" | {_fmt_delta(paired_delta(records, (name, None), ('paper', None), 'i_auroc'))} |")
    # per defect: the paper configuration, each trained switch, the best post hoc scoring, the best combination
    per_rows = [("paper", ref[1], "paper")] + [(v, ref[1], v) for v in scoring_variants if v != "paper"]
    best_posthoc = max([("paper", c) for c in combos], key=score_of)
    per_rows += [("paper", best_posthoc[1], f"paper {best_posthoc[1]}")]
    if best != best_posthoc:
        per_rows.append((best[0], best[1], f"{best[0]} {best[1]}"))
    defects = sorted({d for r in records for c in r["combos"].values() for d in c["per_defect"]})

    def per_defect(v, combo, d, key):
        vals = [r["combos"][combo]["per_defect"].get(d, {}).get(key) for r in records if r["variant"] == v]
        vals = [x for x in vals if x is not None]
        return f"{100 * np.mean(vals):.1f}" if vals else "-"

    lines += ["", "Per defect type, S-AUROC (mean over classes and seeds, %):", "",
              "| defect | " + " | ".join(lbl for _, _, lbl in per_rows) + " |", "|---|" + "---:|" * len(per_rows)]
    for d in defects:
        lines.append(f"| {d} | " + " | ".join(per_defect(v, c, d, "s_auroc") for v, c, _ in per_rows) + " |")
    # costs
    lines += ["", "Cost per trained variant (mean over runs): training seconds per class, 5-view training samples per "
              "second, feature channels x grid (floats per view and sample = memory of the features and of the "
              "flow's activations):", "", "| trained variant | training s | samples/s | channels x grid | floats per view |",
              "|---|---:|---:|---:|---:|"]
    for v in [x for x in known if any(r["variant"] == x for r in records)]:
        rs = [r for r in records if r["variant"] == v]
        tr = [float((r.get("train_seconds") or {}).get("total", 0)) - float((r.get("train_seconds") or {}).get(
            "features_and_masks", 0)) for r in rs if r.get("train_seconds")]
        sps = [r["train_samples_per_s"] for r in rs if r.get("train_samples_per_s")]
        c, g = rs[0].get("channels"), rs[0].get("grid")
        lines.append(f"| {v} | {np.mean(tr):.0f} | {np.mean(sps):.2f} | {c} x {g}x{g} | {c * g * g} |"
                     if tr and sps and c and g else f"| {v} | - | - | - | - |")
    lines += ["", "<details><summary>Every trained variant x image score x calibration</summary>", "",
              "| trained variant | image score | calibration | S-AUROC | I-AUROC | Δ S | Δ I |", "|---|---|---|---:|---:|---:|---:|"]
    for v, combo in grid_rows:
        score, cal = combo.split("+")
        lines.append(f"| {v} | {score} | {cal} | {_cell(records, v, combo, 's_auroc')} | {_cell(records, v, combo, 'i_auroc')}"
                     f" | {_fmt_delta(paired_delta(records, (v, combo), ref, 's_auroc'))}"
                     f" | {_fmt_delta(paired_delta(records, (v, combo), ref, 'i_auroc'))} |")
    runs_min = sum(float(r.get("fit_seconds") or 0) for r in records) / 60
    lines += ["", "</details>", "", f"Regenerate: `{cmd}` (finished runs are read back; training and testing the "
              f"{len(records)} runs took {runs_min:.0f} min).  ",
              f"Machine: {machine_line()}."]
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
        for s in seeds:  # seed-major: an interrupted run has every switch on the first seeds
            for v in variants:
                for c in sizes["classes"]:
                    rec = run_variant(cfg, v, s, c, out, progress=not args.quiet)
                    m = rec["combos"][combo_name("max", "none")]["metrics"]
                    print(f"{v.name:>10} seed {s} {c:>12}: paper scoring S-AUROC {100 * (m['s_auroc'] or 0):.2f}", flush=True)
                    records.append(rec)
    except MultiflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in REMOVED:  # measurements of removed switches stay in the report while their records exist
        for s in seeds:
            for c in sizes["classes"]:
                path = out / "scoring" / name / f"seed{s}" / f"{c}.json"
                if path.is_file():
                    records.append(json.loads(path.read_text()))
    cmd = "python benchmarks/scoring_ablation.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    md = report(records, cmd, time.perf_counter() - t0)
    print(md)
    if not args.no_benchmarks_md:
        update_section(SECTION, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
