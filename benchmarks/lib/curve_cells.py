"""The learning curve's cells: train (or fit) one method on the first ``N`` training objects of a
class, score the shared test set and record the diagnosis; rescore finished cells from their maps."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import CpuShare
from benchmarks.lib.curve_plan import METHODS, METRICS, cell_path
from benchmarks.lib.data import CachedClass
from multiflow._atomic import write_bytes, write_json


def evaluate_maps(maps: np.ndarray, d: CachedClass) -> dict[str, Any]:
    """S-/I-AUROC of test maps ``(T, V, h, w)`` (paper scoring: max), overall and per defect type."""
    from multiflow.scoring import image_scores_from_maps
    from multiflow.metrics import evaluate_exact

    r = evaluate_exact(maps, None, labels=d.labels, image_scores=image_scores_from_maps(maps).numpy(),
                       sample_ids=d.sample_ids,
                       defects=d.defects, how="max").as_dict()
    return {"metrics": {k: r.get(k) for k, _ in METRICS},
            "per_defect": {k: {"s_auroc": v.get("s_auroc"), "i_auroc": v.get("i_auroc"),
                               "num_samples": v.get("num_samples")} for k, v in (r.get("per_defect") or {}).items()}}


def _score_variants(maps: np.ndarray, val_maps, val_masks, d: CachedClass, grid: dict[str, Any]) -> dict[str, Any]:
    """Issue 12's post-hoc scoring switches on this cell's maps: every image score x per-view
    calibration (fitted on the cell's held-out normal objects; flows trained on whole objects only)."""
    from benchmarks.scoring_ablation import score_combos

    return score_combos(maps, d.test_masks, val_maps, val_masks, labels=d.labels, defects=d.defects,
                        sample_ids=d.sample_ids, image_size=grid["input_size"])


def _save_maps(path: Path | None, maps: np.ndarray, val_maps) -> None:
    """The cell's test (and held-out normal) anomaly maps, float32, for later rescoring (``--rescore``)."""
    if path is None:
        return
    import io

    buf = io.BytesIO()
    arrays = {"test": np.asarray(maps, dtype=np.float32)}
    if val_maps is not None:
        arrays["val"] = np.asarray(val_maps, dtype=np.float32)
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def run_cell(cfg, grid: dict[str, Any], d: CachedClass, cls: str, n: int, method: str, seed: int,
             tmp_root: Path, maps_path: Path | None = None) -> dict[str, Any]:
    """Train (or fit) one method on the first ``n`` training objects and score the shared test set;
    ``maps_path``: where the cell's anomaly maps go (``.npz``)."""
    from multiflow.engine.factories import build_flow, resolve_camera_rig, run_device
    from multiflow.engine.maps import compute_maps
    from multiflow.engine.train import train_flow
    from multiflow.flow.subnet import cross_view_scaled, view_gammas

    m = METHODS[method]
    v = len(d.view_names)
    feats = d.train_features[:n]
    masks = None if d.train_masks is None else d.train_masks[:n]
    rec: dict[str, Any] = {"class": cls, "n": n, "method": method, "seed": seed}
    t0 = time.perf_counter()
    with CpuShare() as share:
        if m.kind == "patchcore":
            from multiflow.baselines.patchcore import PatchCore

            model = PatchCore(seed=seed).fit(feats, masks)
            maps = np.asarray(model.anomaly_map(d.test_features, d.test_masks))
            rec |= evaluate_maps(maps, d)
            rec["scoring"] = _score_variants(maps, None, None, d, grid)
            _save_maps(maps_path, maps, None)
        else:
            tcfg = dataclasses.replace(
                cfg.train, seed=seed, epochs=cfg.train.epochs * (v if m.epoch_views else 1),
                batch_size=cfg.train.batch_size * (v if m.batch_views else 1))
            tcfg = dataclasses.replace(tcfg, checkpoint_every=tcfg.epochs, checkpoint_minutes=0.0)
            device, precision = run_device(tcfg)
            on = dict(device=device, precision=precision)
            mcfg = dataclasses.replace(cfg.model, graph=m.graph, single_view=m.single_view,
                                       fusion=m.fusion or cfg.model.fusion)
            rig = resolve_camera_rig(mcfg, cfg.data, cls, list(d.view_names))  # the geometry fusion only
            model = build_flow(mcfg, d.channels, d.view_names, seed, camera_rig=rig)
            tf, tm = model.to_flow_samples(feats, masks)
            tmp_root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=tmp_root) as td:
                result = train_flow(model, tf, tm, tcfg, Path(td) / "state", progress=False, device=device)
            if m.single_view:
                sf, sm = model.to_flow_samples(d.test_features, d.test_masks)
                maps = model.from_flow_samples(compute_maps(model, sf, sm, batch_size=64, **on), v)
            else:
                maps = compute_maps(model, d.test_features, d.test_masks, batch_size=16, **on)
            rec |= evaluate_maps(maps, d)
            val_maps = val_masks = None
            if not m.single_view and result.val_index is not None and len(result.val_index):
                vi = np.asarray(result.val_index)
                val_masks = None if masks is None else masks[vi]
                val_maps = compute_maps(model, feats[vi], val_masks, batch_size=16, **on)
            rec["scoring"] = _score_variants(maps, val_maps, val_masks, d, grid)
            _save_maps(maps_path, maps, val_maps)
            gammas = np.abs(np.asarray(view_gammas(model)))  # (st-networks, views)
            rec["gamma_abs"] = {"per_view_mean": gammas.mean(axis=0).round(5).tolist(),
                                "min": float(gammas.min()), "max": float(gammas.max())}
            per_epoch = math.ceil(len(result.train_index) / tcfg.batch_size)
            rec["steps"] = per_epoch * len(result.history)
            rec["steps_selected"] = per_epoch * max(result.best_epoch, 0)  # steps taken by the scored weights
            rec["epochs"] = len(result.history)
            rec["best_epoch"] = result.best_epoch
            rec["stop_reason"] = result.stop_reason
            rec["val_loss"] = [r.get("val_loss") for r in result.history]
            rec["lr"] = tcfg.lr
            rec["gamma_lr"] = tcfg.gamma_lr or tcfg.lr  # the rate the fusion gates moved at
            if m.graph != "none" and not m.single_view:
                with cross_view_scaled(model, 0.0):
                    off = compute_maps(model, d.test_features, d.test_masks, batch_size=16, **on)
                rec["cross_view_off"] = evaluate_maps(off, d)
    rec["seconds"] = time.perf_counter() - t0
    rec["cpu_share"] = share.share
    return rec


def rescore(out: Path, cells, grid: dict[str, Any], data: dict[str, CachedClass], val_fraction: float) -> None:
    """Recompute the ``scoring`` of every finished cell from its ``.maps.npz`` (atomic rewrite)."""
    n = 0
    for c in cells:
        path = cell_path(out, *c)
        maps_path = path.with_suffix(".maps.npz")
        if not (path.is_file() and maps_path.is_file()):
            continue
        rec = json.loads(path.read_text())
        d = data[c[0]]
        with np.load(maps_path) as z:
            maps = z["test"].astype(np.float32)
            val = z["val"].astype(np.float32) if "val" in z.files else None
        val_masks = None
        if val is not None and d.train_masks is not None:
            from multiflow.engine.train import split_train_val

            _, vi = split_train_val(c[1], val_fraction, c[3])  # train_flow's held-out split of the first N objects
            if len(vi) != len(val):
                raise SystemExit(f"{maps_path}: {len(val)} held-out maps, but the split has {len(vi)} objects")
            val_masks = d.train_masks[: c[1]][vi]
        rec["scoring"] = _score_variants(maps, val, val_masks, d, grid)
        write_json(path, rec, default=float)
        n += 1
    print(f"== rescored {n} cells from their maps", flush=True)


def load_cells(out: Path, cells) -> list[dict[str, Any]]:
    recs = []
    for c in cells:
        p = cell_path(out, *c)
        if p.is_file():
            recs.append(json.loads(p.read_text()))
    return recs
