"""Run a feature-based baseline (PatchCore) through multiflow's data, cache and evaluation.

The baseline sees exactly what the flow sees: the cached features ``(N, V, C, h, w)`` and grid
masks ``(N, V, h, w)`` of :func:`multiflow.engine.preprocess.prepare_split`, and is evaluated by the
same exact evaluator (S-AUROC = max over views, I-AUROC, P-AUROC, AUPRO, per defect type).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from multiflow.config import RunConfig


def evaluate_patchcore(cfg: RunConfig, category: str, out_dir: Path, *, seed: int = 0, coreset_ratio: float = 0.1,
                       sampler: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Fit PatchCore on the normal training samples of ``category`` and evaluate it on the test split.

    Writes ``out_dir/<category>/metrics.json`` atomically and returns the metrics dict (the keys of
    :class:`multiflow.metrics.EvalResult` plus ``baseline`` and ``seconds``).
    """
    from multiflow.baselines.patchcore import PatchCore
    from multiflow._atomic import write_json
    from multiflow.data.ground_truth import ground_truth_masks
    from multiflow.engine.bundle import json_default
    from multiflow.engine.factories import build_extractor, run_device
    from multiflow.engine.preprocess import prepare_split
    from multiflow.scoring import image_scores_from_maps
    from multiflow.metrics import evaluate_exact

    t0 = time.perf_counter()
    extractor = build_extractor(cfg.features)
    device, _ = run_device(cfg.train)  # the backbone runs on train.device; PatchCore itself on the CPU
    train = prepare_split(cfg, category, "train", extractor, progress=progress, device=device)
    test = prepare_split(cfg, category, "test", extractor, progress=progress, device=device)
    t1 = time.perf_counter()
    model = PatchCore(coreset_ratio=coreset_ratio, sampler=sampler, seed=seed).fit(train.features, train.masks)
    t2 = time.perf_counter()
    maps = model.anomaly_map(test.features, test.masks)
    t3 = time.perf_counter()
    ds = test.dataset
    defects = [r.defect for r in ds.samples]
    gt = None
    labels = None
    if cfg.eval.pixel_metrics:
        gt = np.stack([ground_truth_masks(ds, i) for i in range(len(ds))])
    else:
        labels = np.array([ds.image_labels(i) for i in range(len(ds))])
    result = evaluate_exact(maps, gt, labels=labels, image_scores=image_scores_from_maps(maps).numpy(),
                            sample_ids=test.sample_ids,
                            defects=defects, how=cfg.eval.aggregation)
    metrics = result.as_dict()
    metrics["baseline"] = model.describe()
    metrics["seconds"] = {"features_and_masks": t1 - t0, "fit": t2 - t1, "score": t3 - t2,
                          "total": time.perf_counter() - t0}
    write_json(Path(out_dir) / category / "metrics.json", metrics, default=json_default)
    return metrics
