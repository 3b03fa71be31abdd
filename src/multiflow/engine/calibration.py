"""What the threshold and the flow's swap check are fitted on: scores of normal objects the flow
did not train on (issue 20).

Two designs, chosen by ``threshold.cross_fit``:

* **held-out split** (``cross_fit=0``, the default): ``threshold.calibration_fraction`` of the
  normal objects are held out before training (:func:`multiflow.engine.threshold.split_calibration`)
  and scored by the trained flow. Cheap, but at N = 200 that is 20 objects, and 20 objects rarely
  show the right tail of good objects' scores (a rare look of a good part): measured on
  terminal_block, their scores spread with sd 0.084 where 100 new good objects spread with 0.208,
  and the 1 % threshold rejected 4 % of them (BENCHMARKS.md, decision_trust).
* **cross-fitting** (``cross_fit=K >= 2``): nothing is held out; the flow trains on every normal
  object. The objects are dealt into ``K`` folds (:func:`cross_fit_folds`); for each fold a flow
  of the same architecture and seed trains on the other folds with the same settings, without a
  validation split, up to the epoch the flow selected (:func:`train_flow`'s ``until_epoch``, so a
  cosine keeps its planned length), and scores its fold. Every normal object then has an
  out-of-fold score, so the threshold sees ``N`` scores: the conformal floor of
  :func:`multiflow.scoring.fit_threshold` applies from 99 objects on (1 % target) and the tail is
  seen. The fold flows see ``(K - 1) / K`` of the objects, a little less than the flow itself,
  so their scores run slightly high: the threshold errs towards fewer false rejects. Costs ``K``
  more trainings. Each finished fold is kept under ``<class>/crossfit/`` (its maps, per-view-count
  scores and swap gains) until the bundle is written, so a killed fit resumes fold by fold.

Both return a :class:`CalibrationEvidence`: maps ``(N, V, h, w)`` in fp32 (as predict scores),
the grid masks, sample ids, the largest score per number of present views (view-dropout models)
and the flow's swap gains per camera pair (for :mod:`multiflow.faults.flow_swap`).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from multiflow._atomic import atomic_path
from multiflow.errors import ConfigError

CROSSFIT_DIR = "crossfit"
_FOLD_STREAM = 7919  # seeds the folds apart from the train/val and calibration splits


@dataclass
class CalibrationEvidence:
    """Scores of normal objects the scoring flow did not train on (module docstring).

    ``maps``: ``(N, V, h, w)`` fp32 anomaly maps; ``masks``: ``(N, V, h, w)`` grid masks or None;
    ``sample_ids``; ``view_scores``: ``{k: (N,)}`` the largest sample score over the scored subsets
    of ``k`` present views (view-dropout models; else empty); ``swap_gains``: ``(N, P)`` the flow's
    likelihood gain per camera pair (None when not asked for); ``source``: one line for the bundle.
    """

    maps: np.ndarray
    masks: np.ndarray | None
    sample_ids: list[str]
    view_scores: dict[int, np.ndarray]
    swap_gains: np.ndarray | None
    source: str


def cross_fit_folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint sorted folds of ``range(n)`` (sizes differ by at most one), deterministic from ``seed``."""
    if k < 2 or k > n:
        raise ConfigError(f"threshold.cross_fit={k}: cross-fitting needs 2 <= folds <= the {n} normal training "
                          "objects")
    perm = np.random.default_rng(seed + _FOLD_STREAM).permutation(n)
    return [np.sort(perm[i::k]) for i in range(k)]


def flow_rows(objects: np.ndarray, per: int) -> np.ndarray:
    """The flow-sample rows of ``objects`` when each object is ``per`` flow samples in order."""
    return (np.asarray(objects, dtype=np.int64)[:, None] * per + np.arange(per)[None]).reshape(-1)


def score_objects(model, features, masks, *, scoring, image_size: int, maps_fn: Callable[..., np.ndarray],
                  view_scores: bool, swap_gains: bool, batch_size: int, device, seed: int,
                  progress: bool = False) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray | None]:
    """``(maps, view scores, swap gains)`` of ``features (N, V, C, h, w)`` under ``model``, all in
    fp32: ``maps_fn(model, features, masks)`` gives the maps; view scores and gains only when asked."""
    from multiflow.engine.threshold import scores_by_views

    maps = maps_fn(model, features, masks)
    worst: dict[int, np.ndarray] = {}
    if view_scores:
        worst = scores_by_views(model, features, masks, scoring, image_size=image_size, batch_size=batch_size,
                                device=device, precision="fp32", seed=seed)
        model.to("cpu")
    gains = None
    if swap_gains:
        import torch

        from multiflow.faults.flow_swap import swap_gains_in_batches

        dev = torch.device("cpu") if device is None else device
        model.to(dev)
        gains, _ = swap_gains_in_batches(model, features, batch=2, device=dev, precision="fp32", progress=progress,
                                         desc="flow swap gains", fg=masks)
        model.to("cpu")
    return maps, worst, gains


def _save_fold(path: Path, maps: np.ndarray, worst: dict[int, np.ndarray], gains: np.ndarray | None,
               objects: np.ndarray, until: int) -> None:
    arrays: dict[str, Any] = {"maps": np.asarray(maps, dtype=np.float32), "objects": np.asarray(objects),
                              "until": np.asarray(int(until))}
    arrays |= {f"views_{k}": np.asarray(v, dtype=np.float64) for k, v in worst.items()}
    if gains is not None:
        arrays["gains"] = np.asarray(gains, dtype=np.float64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _load_fold(path: Path, objects: np.ndarray, until: int, swap_gains: bool):
    """A finished fold's ``(maps, view scores, gains)``, or None when it is missing or from other settings."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["objects"], objects) or int(z["until"]) != int(until):
                return None
            if swap_gains and "gains" not in z.files:
                return None
            worst = {int(name[6:]): z[name] for name in z.files if name.startswith("views_")}
            return z["maps"], worst, (z["gains"] if "gains" in z.files else None)
    except (OSError, ValueError, KeyError):
        return None  # a fold cut off while writing is computed again


def cross_fit_evidence(cfg, *, build: Callable[[], Any], train_fold: Callable[..., Any], features, masks,
                       sample_ids: list[str], until_epoch: int, out: Path, scoring, image_size: int,
                       maps_fn: Callable[..., np.ndarray], view_scores: bool, swap_gains: bool, device,
                       resume: bool, progress: bool, is_main: bool = True,
                       sync: Callable[[], None] = lambda: None) -> CalibrationEvidence:
    """Out-of-fold evidence of every normal object (module docstring).

    ``build()`` returns a fresh flow; ``train_fold(model, objects, train_cfg, state_dir, resume)``
    trains it in place on ``objects`` (object indices) up to ``until_epoch`` (the caller maps
    objects to flow samples); ``features`` ``(N, V, C, h, w)`` and ``masks`` are every normal object's.
    Under ``torchrun`` every rank trains and scores (the maps are sharded), rank 0 (``is_main``)
    writes; ``sync`` is the ranks' barrier.
    """
    n, k = int(features.shape[0]), int(cfg.threshold.cross_fit)
    folds = cross_fit_folds(n, k, cfg.train.seed)
    root = out / CROSSFIT_DIR
    if not resume and root.exists() and is_main:
        shutil.rmtree(root)
    sync()
    root.mkdir(parents=True, exist_ok=True)
    fold_cfg = dataclasses.replace(cfg.train, val_fraction=0.0, early_stopping_patience=0, select="last")
    maps = None
    worst: dict[int, np.ndarray] = {}
    gains = None
    for i, fold in enumerate(folds):
        path = root / f"fold{i}.npz"
        done = _load_fold(path, fold, until_epoch, swap_gains)
        if done is None:
            if progress:
                print(f"cross-fit fold {i + 1}/{k}: training on {n - len(fold)} objects up to epoch {until_epoch}, "
                      f"scoring {len(fold)}", flush=True)
            model = build()
            rest = np.setdiff1d(np.arange(n), fold)
            state = root / f"fold{i}_state"
            train_fold(model, rest, fold_cfg, state, resume and state.exists())
            fm = None if masks is None else masks[fold]
            done = score_objects(model, features[fold], fm, scoring=scoring, image_size=image_size, maps_fn=maps_fn,
                                 view_scores=view_scores, swap_gains=swap_gains, batch_size=cfg.eval.batch_size,
                                 device=device, seed=cfg.train.seed, progress=progress)
            if is_main:
                _save_fold(path, *done, fold, until_epoch)
                shutil.rmtree(state, ignore_errors=True)
        f_maps, f_worst, f_gains = done
        if maps is None:
            maps = np.zeros((n, *f_maps.shape[1:]), dtype=np.float32)
            gains = None if f_gains is None else np.zeros((n, f_gains.shape[1]))
        maps[fold] = f_maps
        for kk, v in f_worst.items():
            worst.setdefault(kk, np.zeros(n))[fold] = v
        if gains is not None:
            gains[fold] = f_gains
    return CalibrationEvidence(
        maps=maps, masks=None if masks is None else np.asarray(masks), sample_ids=list(sample_ids),
        view_scores=worst, swap_gains=gains,
        source=f"out-of-fold scores of all {n} normal training objects (threshold.cross_fit={k}: {k} fold flows, "
               f"each trained without its fold up to epoch {until_epoch}, as the flow was)")


def remove_cross_fit(out: Path) -> None:
    """Delete the finished folds once the bundle (with the out-of-fold maps) is written."""
    shutil.rmtree(out / CROSSFIT_DIR, ignore_errors=True)
