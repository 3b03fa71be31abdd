"""What an evaluation writes: per-sample scores, metrics tables, figures (all atomically).

Called by the orchestrator (:mod:`multiflow.engine.pipeline`); holds no scoring math (that is
:mod:`multiflow.scoring`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiflow._atomic import write_json, write_text
from multiflow.data.ground_truth import ground_truth_masks
from multiflow.engine.bundle import json_default


def write_scores_csv(path: Path, sample_ids, defects, views, img_scores, labels, s_scores, decisions) -> None:
    """``scores.csv``: one row per sample (label, sample score, decision, per-view scores and labels)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["sample_id", "defect", "label", "sample_score", "decision"]
               + [f"score_{v}" for v in views] + [f"label_{v}" for v in views])
    for i, sid in enumerate(sample_ids):
        w.writerow([sid, defects[i], int(labels[i].max()), f"{s_scores[i]:.6f}", "NG" if decisions[i] else "OK"]
                   + [f"{x:.6f}" for x in img_scores[i]] + [int(x) for x in labels[i]])
    write_text(path, buf.getvalue())


def write_run_tables(run_dir: Path, per_class: dict[str, dict[str, Any]]) -> tuple[str, str, list[dict[str, Any]]]:
    """The run's ``metrics.json``, ``metrics.csv`` and ``metrics.md``; returns ``(table, per_defect, rows)``."""
    md, rows = metrics_table(per_class)
    per_defect = per_defect_table(per_class)
    write_json(run_dir / "metrics.json", {"per_class": per_class, "mean": rows[-1]}, default=json_default)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(run_dir / "metrics.csv", buf.getvalue())
    write_text(run_dir / "metrics.md", md + "\n\n" + per_defect + "\n")
    return md, per_defect, rows


def _upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(maps).float()[:, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def category_pictures(folder, category, ds, maps, img_scores, s_scores, labels, threshold, views, how) -> None:
    from multiflow.data.images import flips_for, load_image
    from multiflow.report import plot_histogram, plot_roc, plot_sample

    fig_dir = folder / "figures"
    s_labels = labels.max(1)
    plot_roc(
        {"sample-wise": (s_labels, s_scores), "image-wise": (labels.reshape(-1), img_scores.reshape(-1))},
        fig_dir / "roc.png", title=f"{category}: ROC",
    )
    plot_histogram(s_scores[s_labels == 0], s_scores[s_labels == 1], fig_dir / "histogram.png",
                   threshold=threshold, title=f"{category}: sample scores ({how} over views)")
    vmin, vmax = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))
    chosen: list[tuple[str, int]] = []
    defects = [r.defect for r in ds.samples]
    for d in sorted(set(defects)):
        idx = [i for i in range(len(ds)) if defects[i] == d and s_labels[i] == 1]
        if idx:
            chosen.append((f"example_{d}", max(idx, key=lambda i: s_scores[i])))
    normal = np.flatnonzero(s_labels == 0)
    anomalous = np.flatnonzero(s_labels == 1)
    for k, i in enumerate(normal[np.argsort(-s_scores[normal])][:3]):
        chosen.append((f"worst_false_positive_{k + 1}", int(i)))
    for k, i in enumerate(anomalous[np.argsort(s_scores[anomalous])][:3]):
        chosen.append((f"worst_false_negative_{k + 1}", int(i)))
    for name, i in chosen:
        rec = ds.samples[i]
        gt = ground_truth_masks(ds, i)
        flips = flips_for(ds.flips, rec.view_names)
        imgs = np.stack([
            load_image(p, size=gt.shape[-2:], flip=flips[v])[0].permute(1, 2, 0).numpy()
            for v, p in enumerate(rec.image_paths)
        ])
        up = _upsample(maps[i], gt.shape[-2:])
        verdict = "NG" if s_scores[i] > threshold else "OK"
        plot_sample(
            imgs, up, gt, views, fig_dir / f"{name}.png",
            title=f"{category} {rec.sample_id} ({rec.defect}): score {s_scores[i]:.2f} -> {verdict}",
            vmin=vmin, vmax=vmax, view_scores=list(img_scores[i]),
        )


METRIC_COLUMNS = [("s_auroc", "S-AUROC"), ("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("aupro", "AUPRO"),
                  ("s_ap", "S-AP"), ("i_ap", "I-AP"), ("s_f1_max", "S-F1max"), ("i_f1_max", "I-F1max")]


def metrics_table(per_class: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table in the paper's layout (classes as rows, metrics in %, mean last) + CSV rows."""
    rows = []
    for cat, m in per_class.items():
        rows.append({"class": cat, **{k: m.get(k) for k, _ in METRIC_COLUMNS}})
    mean = {"class": "mean"}
    for k, _ in METRIC_COLUMNS:
        vals = [r[k] for r in rows]
        mean[k] = None if any(v is None for v in vals) else float(np.mean(vals))
    rows.append(mean)

    def fmt(v):
        return "-" if v is None else f"{100 * v:.2f}"

    head = "| class | " + " | ".join(lbl for _, lbl in METRIC_COLUMNS) + " |"
    sep = "|---|" + "|".join("---:" for _ in METRIC_COLUMNS) + "|"
    lines = [head, sep] + [
        f"| {r['class']} | " + " | ".join(fmt(r[k]) for k, _ in METRIC_COLUMNS) + " |" for r in rows
    ]
    return "\n".join(lines), rows


def per_defect_table(per_class: dict[str, dict[str, Any]]) -> str:
    lines = ["| class | defect | samples | S-AUROC | I-AUROC |", "|---|---|---:|---:|---:|"]
    for cat, m in per_class.items():
        for d, r in sorted((m.get("per_defect") or {}).items()):
            s = "-" if r.get("s_auroc") is None else f"{100 * r['s_auroc']:.2f}"
            i = "-" if r.get("i_auroc") is None else f"{100 * r['i_auroc']:.2f}"
            lines.append(f"| {cat} | {d} | {r.get('num_samples')} | {s} | {i} |")
    return "\n".join(lines)
