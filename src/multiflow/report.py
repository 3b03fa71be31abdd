"""Pictures and the static HTML report of a run.

* :func:`plot_sample` draws the paper's Fig. 5 layout for one sample: row 1 the V views with the
  ground-truth defect outlined, row 2 the raw anomaly map, row 3 the overlay.
* :func:`plot_roc` ROC curves (sample-wise and image-wise), :func:`plot_histogram` normal vs
  anomalous score histograms with the calibrated threshold.
* :func:`write_html_report` one self-contained page per run linking the pictures and the metrics.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from multiflow._atomic import atomic_path, write_text  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (the format follows the suffix) and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_sample(
    images: np.ndarray,
    maps: np.ndarray,
    gt_masks: np.ndarray | None,
    view_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    view_scores: Sequence[float] | None = None,
) -> Path:
    """Fig. 5 layout for one sample.

    Args:
        images: ``(V, H, W, 3)`` uint8 or float in [0, 1].
        maps: ``(V, H, W)`` anomaly maps at image resolution (NLL, higher = more anomalous).
        gt_masks: ``(V, H, W)`` bool defect masks or None.
        vmin, vmax: colour range shared by all views (default: the sample's own range).
    """
    v = len(images)
    vmin = float(np.min(maps)) if vmin is None else vmin
    vmax = float(np.max(maps)) if vmax is None else vmax
    fig, axes = plt.subplots(3, v, figsize=(2.2 * v, 6.8), squeeze=False)
    for i in range(v):
        img = images[i]
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        axes[0, i].imshow(img)
        if gt_masks is not None and gt_masks[i].any():
            axes[0, i].contour(gt_masks[i].astype(float), levels=[0.5], colors="red", linewidths=1.2)
        name = view_names[i] if i < len(view_names) else f"view {i}"
        if view_scores is not None:
            name += f"\n{view_scores[i]:.2f}"
        axes[0, i].set_title(name, fontsize=9)
        axes[1, i].imshow(maps[i], cmap="jet", vmin=vmin, vmax=vmax)
        axes[2, i].imshow(img)
        axes[2, i].imshow(maps[i], cmap="jet", vmin=vmin, vmax=vmax, alpha=0.45)
        for r in range(3):
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
    axes[0, 0].set_ylabel("image + defect", fontsize=9)
    axes[1, 0].set_ylabel("anomaly map", fontsize=9)
    axes[2, 0].set_ylabel("overlay", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """ROC curves; ``curves`` maps a label to ``(labels, scores)``."""
    from sklearn.metrics import roc_auc_score

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for name, (labels, scores) in curves.items():
        labels = np.asarray(labels)
        if labels.min() == labels.max():
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * roc_auc_score(labels, scores):.1f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, Path(path))


def plot_histogram(
    normal: np.ndarray, anomalous: np.ndarray, path: str | Path, *, threshold: float | None = None, title: str = ""
) -> Path:
    """Histogram of normal vs anomalous scores, with the decision threshold as a line."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    both = np.concatenate([np.asarray(normal, float), np.asarray(anomalous, float)])
    bins = np.linspace(both.min(), both.max(), 40) if both.size and both.min() < both.max() else 20
    ax.hist(normal, bins=bins, alpha=0.6, label=f"normal (n={len(normal)})", color="tab:green")
    ax.hist(anomalous, bins=bins, alpha=0.6, label=f"anomalous (n={len(anomalous)})", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label="threshold")
    ax.set_xlabel("sample score")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, Path(path))


def write_html_report(
    path: str | Path,
    *,
    title: str,
    metrics_markdown: str,
    sections: Sequence[tuple[str, Sequence[str]]],
    extra_markdown: str = "",
    notes: Sequence[str] = (),
) -> Path:
    """One static HTML page: the metrics table and, per section, its pictures (relative paths)."""
    path = Path(path)
    rows = _markdown_table_to_html(metrics_markdown)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#eee}img{max-width:100%;margin:4px 0}h2{margin-top:2em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        rows,
    ]
    if extra_markdown:
        parts.append("<h2>Per defect type</h2>")
        parts.append(_markdown_table_to_html(extra_markdown))
    for note in notes:
        parts.append(f"<p>{html.escape(note)}</p>")
    for heading, images in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for img in images:
            parts.append(f"<div><img src='{html.escape(img)}' alt='{html.escape(img)}'></div>")
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
    return path


def _markdown_table_to_html(md: str) -> str:
    lines = [ln.strip() for ln in md.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<pre>{html.escape(md)}</pre>"
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head, body = cells[0], cells[2:]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
