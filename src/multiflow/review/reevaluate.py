"""Re-evaluate the stored scores of a run with operator labels (no model, no recomputation).

A ``confirmed_defect`` label makes an object anomalous, ``false_alarm`` makes it normal,
``unsure`` keeps the ground truth. The sample scores come from ``scores.csv``, the decisions are
``predict``'s at the class model's *current* threshold (:mod:`multiflow.review.store`: ``score >
threshold``, ``CHECK CAMERA`` for an object with a stored camera fault, counted apart).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from multiflow._atomic import write_json
from multiflow.errors import CheckpointError

CORRECTION = {"confirmed_defect": 1, "false_alarm": 0}


def corrected_labels(labels: np.ndarray, sample_ids: list[str], category: str,
                     operator: dict[tuple[str, str], str]) -> np.ndarray:
    """``(N,)`` 0/1 sample labels after applying the operator labels of ``category``."""
    out = np.asarray(labels, dtype=np.int64).copy()
    for i, sid in enumerate(sample_ids):
        lab = operator.get((category, sid))
        if lab in CORRECTION:
            out[i] = CORRECTION[lab]
    return out


def decision_counts(decision: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts of the ``(N,)`` decisions ``"OK"``/``"NG"``/``"CHECK CAMERA"`` (at ``threshold``;
    :attr:`~multiflow.review.store.TestedClass.decision`) against 0/1 ``labels``, with FPR and TPR;
    objects held for a camera check are counted apart (``check_camera``), in no other count."""
    decision = np.asarray(decision)
    ng, ok = decision == "NG", decision == "OK"
    labels = np.asarray(labels).astype(bool)
    tp, fp = int((ng & labels).sum()), int((ng & ~labels).sum())
    fn, tn = int((ok & labels).sum()), int((ok & ~labels).sum())
    return {"threshold": float(threshold), "true_positives": tp, "false_positives": fp, "true_negatives": tn,
            "false_negatives": fn, "check_camera": int((~ng & ~ok).sum()), "fpr": fp / (fp + tn) if fp + tn else None,
            "tpr": tp / (tp + fn) if tp + fn else None}


def reevaluate_class(data, operator: dict[tuple[str, str], str]) -> dict[str, Any]:
    """S-AUROC and decision counts of one class (:class:`~multiflow.review.store.TestedClass`) before
    and after the operator's corrections."""
    from multiflow.metrics.curves import auroc

    new = corrected_labels(data.labels, data.sample_ids, data.name, operator)

    def summary(lab: np.ndarray) -> dict[str, Any]:
        both = 0 < lab.sum() < len(lab)
        return {"s_auroc": auroc(data.scores, lab) if both else None, "anomalous": int(lab.sum()),
                "normal": int(len(lab) - lab.sum()), **decision_counts(data.decision, lab, data.threshold)}

    used = {sid: operator[(data.name, sid)] for sid in data.sample_ids if (data.name, sid) in operator}
    return {
        "category": data.name,
        "labelled": len(used),
        "changed": int((new != data.labels).sum()),
        "label_counts": {k: sum(1 for v in used.values() if v == k) for k in ("confirmed_defect", "false_alarm",
                                                                                 "unsure")},
        "ground_truth": summary(np.asarray(data.labels)),
        "corrected": summary(new),
    }


def reevaluate_run(run_dir: str | os.PathLike, labels_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Re-evaluate every tested class of a run; writes ``<class>/metrics_relabelled.json``."""
    from multiflow.review.labels import read_labels
    from multiflow.review.store import RunStore

    store = RunStore(run_dir)
    operator = read_labels(labels_path)
    out = {}
    for name in store.class_names():
        data = store.get(name)
        if not data.complete:
            continue
        res = reevaluate_class(data, operator) | {"labels_file": str(Path(labels_path).resolve())}
        write_json(data.folder / "metrics_relabelled.json", res)
        out[name] = res
    if not out:
        raise CheckpointError("no tested class in this run folder (run `multiflow test` first)", run_dir)
    return out


def relabelled_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: S-AUROC, false alarms and misses with the ground truth and corrected."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    lines = ["| class | labelled | changed | S-AUROC (truth) | S-AUROC (corrected) | false alarms | misses |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        g, c = r["ground_truth"], r["corrected"]
        lines.append(f"| {name} | {r['labelled']} | {r['changed']} | {pct(g['s_auroc'])} | {pct(c['s_auroc'])} | "
                     f"{g['false_positives']} -> {c['false_positives']} | {g['false_negatives']} -> "
                     f"{c['false_negatives']} |")
    return "\n".join(lines)
