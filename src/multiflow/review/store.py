"""Reading a tested run folder for review, and writing a class model's threshold.

A class is *complete* when ``<run>/<class>/`` holds ``model.json``, ``scores.csv``,
``samples.json`` and ``maps.npy`` (written by ``multiflow test``); otherwise it is shown as
incomplete with the reason (a run still being trained or evaluated is not an error).

Decisions (:attr:`TestedClass.decision`) are made as ``predict`` and ``serve`` make them, by
:func:`multiflow.faults.decide_object` on each object's stored sample score, the class model's *current*
threshold and the object's stored camera faults: ``CHECK CAMERA`` when a camera fault is stored,
else ``NG`` when ``score > threshold``, else ``OK``. ``multiflow test`` does not run the
camera-fault check today, so a run it wrote has no faults and every object is ``OK``/``NG``; a
``scores.csv`` with the columns of ``predict``'s ``predictions.csv`` (``camera_faults``:
``"view: fault; ..."``, or ``decision`` = ``CHECK CAMERA``) has them. A ``CHECK CAMERA`` object is
neither a false alarm nor a miss (the product was not judged); the pages count it apart.
"""

from __future__ import annotations

import csv
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multiflow.errors import CheckpointError, DataError

FILTERS = ("all", "fp", "fn", "ng", "ok", "camera", "anomalous", "normal")


class NotFound(LookupError):
    """An unknown class, object or file: the message says which."""


def resolve_under(root: str | os.PathLike, relative: str) -> Path:
    """``root / relative`` resolved (links followed); :class:`NotFound` if it leaves ``root``."""
    base = Path(root).resolve()
    if "\x00" in relative:
        raise NotFound("invalid path")
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise NotFound(f"{relative!r} is outside the run folder")
    return target


def apply_threshold(model_dir: str | os.PathLike, value: float, *, who: str, reason: str,
                    class_name: str | None = None) -> dict[str, Any]:
    """Set the decision threshold of a class model; returns the audit record.

    Goes through :func:`multiflow.engine.bundle.set_threshold`: ``model.json`` is rewritten
    atomically with the new value and an audit record ``{value, previous, who, when, reason}``;
    every consumer of the model (``predict``, ``export``, ``serve``,
    :class:`~multiflow.engine.predict.Predictor`) reads the threshold from the bundle.
    """
    from multiflow.engine.bundle import set_threshold

    path = Path(model_dir) / "model.json"
    value = float(value)
    if not np.isfinite(value):
        raise DataError(f"threshold must be a finite number, got {value}", path)
    if not who.strip():
        raise DataError("who must name the person applying the threshold", path)
    bundle = set_threshold(model_dir, value, who=who.strip(), reason=reason.strip() or "set in multiflow review",
                           class_name=class_name)
    return asdict(bundle.threshold.audit[-1])


@dataclass
class TestedClass:
    """One class of a tested run as the review pages need it (arrays in ``scores.csv`` row order).

    ``scores`` ``(N,)``, ``view_scores`` ``(N, V)``, ``labels`` ``(N,)`` 0/1 sample ground truth,
    ``view_labels`` ``(N, V)``; ``maps`` ``(N, V, h, w)`` float16 (memory-mapped) or None;
    ``camera_faults``: per object, the stored camera faults (empty: none; module docstring);
    ``decision`` ``(N,)``: ``"OK"``, ``"NG"`` or ``"CHECK CAMERA"`` at the current threshold.
    ``threshold_info``: the threshold's fields other than its value and audit trail (quantile,
    source, and whatever the threshold estimate records: target, sample size, ...);
    ``threshold_warnings``: what the estimate warns about (too few held-out objects, suspected
    outliers, ...), from the threshold's ``*warning*`` fields and ``model.json``'s
    ``threshold_warnings`` list.
    """

    name: str
    folder: Path
    complete: bool
    #: the folder of the class's model: ``folder``, or the run's unified bundle (``<run>/unified``)
    model_dir: Path | None = None
    reason: str = ""
    threshold: float | None = None
    threshold_history: list[dict[str, Any]] = field(default_factory=list)
    threshold_info: dict[str, Any] = field(default_factory=dict)
    threshold_warnings: list[str] = field(default_factory=list)
    view_names: list[str] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    view_labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    view_scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    samples: list[dict[str, Any]] = field(default_factory=list)
    flips: dict[str, str] = field(default_factory=dict)
    maps: np.ndarray | None = None
    metrics: dict[str, Any] | None = None
    map_range: tuple[float, float] = (0.0, 1.0)
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    camera_faults: list[list[Any]] = field(default_factory=list)
    decision: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))

    @property
    def decisions(self) -> np.ndarray:
        """``(N,)`` bool: NG at the class model's current threshold (a ``CHECK CAMERA`` object is not NG)."""
        return self.decision == "NG"

    @property
    def passed(self) -> np.ndarray:
        """``(N,)`` bool: OK at the current threshold (a ``CHECK CAMERA`` object is not passed)."""
        return self.decision == "OK"

    @property
    def check_camera(self) -> np.ndarray:
        """``(N,)`` bool: a camera fault held the object for a camera check."""
        return self.decision == "CHECK CAMERA"

    def counts(self) -> dict[str, int]:
        """Decision counts against the ground truth: ``false_alarms`` (normal, NG), ``misses``
        (anomalous, OK), ``true_defects`` (anomalous, NG), ``good_passed`` (normal, OK),
        ``check_camera`` (held for a camera check, counted in neither)."""
        normal = self.labels == 0
        return {"false_alarms": int((normal & self.decisions).sum()), "misses": int((~normal & self.passed).sum()),
                "true_defects": int((~normal & self.decisions).sum()), "good_passed": int((normal & self.passed).sum()),
                "check_camera": int(self.check_camera.sum())}

    @property
    def deciding_view(self) -> np.ndarray:
        """``(N,)`` index of the view with the highest image score."""
        return self.view_scores.argmax(1)

    def select(self, kind: str = "all", *, defect: str = "", view: str = "") -> np.ndarray:
        """Indices of the objects matching a filter, highest sample score first.

        ``kind``: ``all``, ``fp`` (normal but NG), ``fn`` (anomalous but OK), ``ng``, ``ok``,
        ``camera`` (CHECK CAMERA), ``anomalous``, ``normal``; ``defect``: keep one defect code;
        ``view``: keep the objects whose highest-scoring view is this camera.
        """
        if kind not in FILTERS:
            raise NotFound(f"unknown filter {kind!r} (one of {', '.join(FILTERS)})")
        keep = np.ones(len(self.scores), dtype=bool)
        ng = self.decisions
        if kind == "fp":
            keep &= (self.labels == 0) & ng
        elif kind == "fn":
            keep &= (self.labels == 1) & self.passed
        elif kind == "ng":
            keep &= ng
        elif kind == "ok":
            keep &= self.passed
        elif kind == "camera":
            keep &= self.check_camera
        elif kind == "anomalous":
            keep &= self.labels == 1
        elif kind == "normal":
            keep &= self.labels == 0
        if defect:
            keep &= np.array([d == defect for d in self.defects], dtype=bool)
        if view:
            if view not in self.view_names:
                raise NotFound(f"class {self.name!r} has no view {view!r} (views: {self.view_names})")
            keep &= self.deciding_view == self.view_names.index(view)
        return self.order[keep[self.order]]


def read_scores_csv(path: Path) -> dict[str, Any]:
    """Parse ``scores.csv`` (written by ``multiflow test``) into arrays; :class:`DataError` if malformed."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            head = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read scores: {exc}", path) from None
    views = [k[len("score_"):] for k in head if k.startswith("score_")]
    need = {"sample_id", "defect", "label", "sample_score"} | {f"label_{v}" for v in views}
    if not views or not need <= set(head):
        raise DataError(f"not a scores.csv of `multiflow test` (columns {head})", path)
    try:
        return {
            "view_names": views,
            "sample_ids": [r["sample_id"] for r in rows],
            "defects": [r["defect"] for r in rows],
            "labels": np.array([int(r["label"]) for r in rows], dtype=np.int64),
            "scores": np.array([float(r["sample_score"]) for r in rows], dtype=np.float64),
            "view_scores": np.array([[float(r[f"score_{v}"]) for v in views] for r in rows],
                                    dtype=np.float64).reshape(len(rows), len(views)),
            "view_labels": np.array([[int(r[f"label_{v}"]) for v in views] for r in rows],
                                    dtype=np.int64).reshape(len(rows), len(views)),
            "camera_faults": [_stored_faults(r) for r in rows],
        }
    except (TypeError, ValueError) as exc:
        raise DataError(f"malformed row: {exc}", path) from None


def _stored_faults(row: dict[str, str]) -> list[Any]:
    """The camera faults a ``scores.csv`` row stores, as :class:`multiflow.faults.CameraFault`s.

    Columns as in ``predict``'s ``predictions.csv``: ``camera_faults`` ``"view: fault; ..."``, or a
    ``decision`` of ``CHECK CAMERA`` without details; a row with neither has no fault.
    """
    from multiflow.faults import CameraFault

    text = (row.get("camera_faults") or "").strip()
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        view, _, kind = part.partition(":")
        out.append(CameraFault(view=view.strip(), fault=kind.strip() or "fault", reason="stored in scores.csv"))
    if not out and (row.get("decision") or "").strip().upper() == "CHECK CAMERA":
        out.append(CameraFault(view="", fault="fault", reason="stored in scores.csv"))
    return out


def decide_all(scores: np.ndarray, threshold: float, faults: list[list[Any]], where: Path) -> np.ndarray:
    """``(N,)`` decisions of :func:`multiflow.faults.decide_object` (``predict``'s and ``serve``'s rule)."""
    from multiflow.faults import decide_object as decide

    out = np.empty(len(scores), dtype=object)
    for i, (s, f) in enumerate(zip(scores, faults)):
        try:
            out[i] = decide(float(s), threshold, f)[0]
        except DataError as exc:
            raise DataError(f"row {i + 2}: {exc}", where) from None
    return out


def threshold_notes(bundle: Any, raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(info, warnings)`` of a bundle's threshold (see :class:`TestedClass`); ``raw``: ``model.json``."""
    info = {k: v for k, v in asdict(bundle.threshold).items() if k not in ("value", "audit")}
    warnings: list[str] = list(getattr(bundle.threshold, "warnings", []) or [])
    for k in [k for k in info if "warning" in k.lower()]:
        v = info.pop(k)
        warnings += [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)] if v else []
    extra = raw.get("threshold_warnings") if isinstance(raw, dict) else None
    if isinstance(extra, (list, tuple)):
        warnings += [str(x) for x in extra if x not in warnings]
    return info, warnings


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON: {exc}", path) from None


def load_class(run_dir: Path, name: str) -> TestedClass:
    """Read one class of a run (see :class:`TestedClass`); incomplete classes carry a ``reason``."""
    folder = run_dir / name
    model_dir = folder if (folder / "model.json").is_file() else unified_model_dir(run_dir, name)
    if model_dir is None:
        raise NotFound(f"run {run_dir.name!r} has no class {name!r}")
    from multiflow.engine.bundle import read_bundle

    try:
        bundle = read_bundle(model_dir)
    except CheckpointError as exc:
        raise DataError(str(exc), model_dir / "model.json") from None
    raw = _read_json(model_dir / "model.json")
    if bundle.unified:  # the class's own threshold (a unified model's, per class)
        bundle = bundle.for_class(name)
        raw = dict(raw, threshold=raw["per_class"][name]["threshold"])
    info, warnings = threshold_notes(bundle, raw)
    base = dict(name=name, folder=folder, model_dir=model_dir, threshold=float(bundle.threshold.value),
                threshold_history=[asdict(a) for a in bundle.threshold.audit], threshold_info=info,
                threshold_warnings=warnings)
    missing = [f for f in ("scores.csv", "samples.json", "maps.npy") if not (folder / f).is_file()]
    if missing:
        return TestedClass(complete=False, reason="not evaluated yet (missing " + ", ".join(missing)
                         + "): run `multiflow test` on this run", **base)
    table = read_scores_csv(folder / "scores.csv")
    info = _read_json(folder / "samples.json")
    samples = info.get("samples") if isinstance(info, dict) else None
    if not isinstance(samples, list) or [s.get("sample_id") for s in samples] != table["sample_ids"]:
        raise DataError("samples do not match scores.csv (re-run `multiflow test`)", folder / "samples.json")
    try:
        maps = np.load(folder / "maps.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read anomaly maps: {exc}", folder / "maps.npy") from None
    n, v = len(table["sample_ids"]), len(table["view_names"])
    if maps.ndim != 4 or maps.shape[:2] != (n, v):
        raise DataError(f"maps of shape {maps.shape} do not match {n} objects x {v} views", folder / "maps.npy")
    metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else None
    if isinstance(metrics, dict) and metrics.get("overrides"):
        # the stored scores come from test-time scoring overrides: the model's threshold is for another
        # score; `multiflow test` refitted one for them (or says none applies)
        refit = metrics.get("threshold") if metrics.get("threshold_refitted_for_overrides") else None
        if isinstance(refit, (int, float)) and np.isfinite(refit):
            base["threshold"] = float(refit)
            note = (f"scores from test-time overrides {metrics['overrides']}: decisions use the threshold "
                    f"refitted for them ({refit:.6g}), not the model's")
        else:
            note = (f"scores from test-time overrides {metrics['overrides']}: no threshold was fitted for them, "
                    "so the decisions shown use the model's threshold for another score")
        base["threshold_warnings"] = [note, *base["threshold_warnings"]]
    step = max(1, n // 200)  # the colour range from a subsample keeps start-up fast at 1,000+ objects
    sub = np.asarray(maps[::step], dtype=np.float32)
    lo, hi = float(np.percentile(sub, 1)), float(np.percentile(sub, 99.9))
    order = np.argsort(-table["scores"], kind="stable")
    decision = decide_all(table["scores"], base["threshold"], table["camera_faults"], folder / "scores.csv")
    return TestedClass(complete=True, decision=decision, samples=samples, flips=dict(info.get("flips") or {}), maps=maps,
                     metrics=metrics, map_range=(lo, hi if hi > lo else lo + 1.0), order=order, **table, **base)


def unified_classes(run_dir: Path) -> list[str]:
    """The classes of the run's unified multi-class model (``<run>/unified``; empty: none)."""
    path = Path(run_dir) / "unified" / "model.json"
    if not path.is_file():
        return []
    raw = _read_json(path)
    return [str(c) for c in raw.get("classes") or []] if isinstance(raw, dict) else []


def unified_model_dir(run_dir: Path, name: str) -> Path | None:
    """``<run>/unified`` when the run's unified model holds class ``name``, else None."""
    return Path(run_dir) / "unified" if name in unified_classes(run_dir) else None


class RunStore:
    """A run folder with a per-class cache that reloads a class when its files change."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir).resolve()
        if not self.run_dir.is_dir():
            raise CheckpointError("run folder not found", self.run_dir)
        self._cache: dict[str, tuple[tuple, TestedClass]] = {}
        self._lock = threading.Lock()

    def class_names(self) -> list[str]:
        names = {p.parent.name for p in self.run_dir.glob("*/model.json")} - {"unified"}
        return sorted(names | set(unified_classes(self.run_dir)))

    def run_metrics(self) -> dict[str, Any] | None:
        p = self.run_dir / "metrics.json"
        return _read_json(p) if p.is_file() else None

    def _stamp(self, name: str) -> tuple:
        out = []
        model = self.run_dir / name / "model.json"
        if not model.is_file() and name in unified_classes(self.run_dir):
            model = self.run_dir / "unified" / "model.json"
        for f in (model, "scores.csv", "samples.json", "maps.npy", "metrics.json"):
            try:
                st = (self.run_dir / name / f).stat()
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def get(self, name: str) -> TestedClass:
        """The class ``name`` (:class:`NotFound` if the run has no such class)."""
        if name not in self.class_names():
            raise NotFound(f"run {self.run_dir.name!r} has no class {name!r}")
        stamp = self._stamp(name)
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        data = load_class(self.run_dir, name)
        with self._lock:
            self._cache[name] = (stamp, data)
        return data
