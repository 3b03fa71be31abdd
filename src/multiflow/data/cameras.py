"""Camera rig side file (``cameras.json``): each camera's intrinsics and extrinsics and each object's
placement, so that a 3D point of an object can be projected into every view.

``multiflow synth`` writes one per class next to the images (``realiad_<size>/<class>/cameras.json``);
a real line's rig can be described in the same format. Format (``docs/data-format.md``)::

    {"format": "multiflow.camera_rig", "version": 1,
     "views": [{"name": "C1", "width": W, "height": H, "fx": .., "fy": .., "cx": .., "cy": ..,
                "R": [[3 x 3]], "t": [3]}, ...],                       # x_cam = R x_world + t
     "objects": {"<sample key>": {"R": [[3 x 3]], "t": [3], "yaw": ..}}}  # x_world = R x_obj + t

A world point ``X`` lands at pixel ``(u, v) = (fx x / z + cx, fy y / z + cy)`` with
``(x, y, z) = R X + t`` (``u`` the column, ``v`` the row; pixel ``(i, j)`` covers ``[i, i + 1) x
[j, j + 1)``, so its centre is ``(i + 0.5, j + 0.5)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from multiflow.errors import DataError

FORMAT = "multiflow.camera_rig"
VERSION = 1


@dataclass(frozen=True)
class CameraView:
    """One pinhole camera: intrinsics at the image size ``width x height`` and world-to-camera
    extrinsics ``R (3, 3)``, ``t (3,)``."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    R: np.ndarray
    t: np.ndarray

    @property
    def K(self) -> np.ndarray:
        """Intrinsic matrix ``(3, 3)``."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def centre(self) -> np.ndarray:
        """Camera centre in world coordinates ``(3,)``: ``-R^T t``."""
        return -self.R.T @ self.t

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` -> pixel coordinates ``(N, 2)`` (column, row); NaN behind the camera."""
        cam = np.asarray(points, dtype=np.float64) @ self.R.T + self.t
        z = cam[:, 2:3]
        uv = np.concatenate([self.fx * cam[:, :1] / z + self.cx, self.fy * cam[:, 1:2] / z + self.cy], axis=1)
        return np.where(z > 0, uv, np.nan)


@dataclass(frozen=True)
class ObjectPose:
    """An object's placement: object-to-world ``R (3, 3)``, ``t (3,)``; ``yaw`` (radians about ``z``)
    when the object stands on the support plane ``z = 0``."""

    R: np.ndarray
    t: np.ndarray
    yaw: float | None = None

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """Object-frame points ``(N, 3)`` -> world points ``(N, 3)``."""
        return np.asarray(points, dtype=np.float64) @ self.R.T + self.t


@dataclass(frozen=True)
class CameraRig:
    """The cameras of one class (in view order) and the placement of each sample's object."""

    views: tuple[CameraView, ...]
    objects: dict[str, ObjectPose] = field(default_factory=dict)
    path: str | None = None

    @property
    def view_names(self) -> list[str]:
        return [v.name for v in self.views]

    def view(self, name: str) -> CameraView:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(f"no camera {name!r} in {self.path or 'the rig'}; cameras: {self.view_names}")


def _matrix(value: Any, shape: tuple[int, ...], what: str, path: Path) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{what} is not a numeric array", path) from None
    if a.shape != shape or not np.isfinite(a).all():
        raise DataError(f"{what} must be a finite array of shape {list(shape)}, got {value!r}", path)
    return a


def _rotation(value: Any, what: str, path: Path) -> np.ndarray:
    R = _matrix(value, (3, 3), what, path)
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
        raise DataError(f"{what} is not a rotation matrix (orthonormal, det +1)", path)
    return R


def _number(entry: dict, key: str, what: str, path: Path, *, positive: bool = False) -> float:
    v = entry.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or (positive and v <= 0):
        raise DataError(f"{what}: {key!r} must be a finite{' positive' if positive else ''} number, got {v!r}", path)
    return float(v)


def load_camera_rig(path: str | PathLike) -> CameraRig:
    """Read a ``cameras.json`` side file; :class:`DataError` naming the file when it is missing, not
    JSON, of another format or version, or has a malformed camera or object entry."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError("camera rig file not found", path) from None
    except OSError as exc:
        raise DataError(f"cannot read the camera rig file ({exc})", path) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON (line {exc.lineno}: {exc.msg})", path) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise DataError(f"not a camera rig file (expected \"format\": \"{FORMAT}\")", path)
    if obj.get("version") != VERSION:
        raise DataError(f"camera rig format version {obj.get('version')!r} is not supported (this reader: {VERSION})", path)
    entries = obj.get("views")
    if not isinstance(entries, list) or not entries:
        raise DataError("'views' must be a non-empty list of cameras", path)
    views = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"]:
            raise DataError(f"views[{i}] must be an object with a 'name'", path)
        what = f"camera {e['name']!r}"
        size = [e.get("width"), e.get("height")]
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
            raise DataError(f"{what}: 'width' and 'height' must be positive integers, got {size}", path)
        views.append(CameraView(
            name=e["name"], width=size[0], height=size[1],
            fx=_number(e, "fx", what, path, positive=True), fy=_number(e, "fy", what, path, positive=True),
            cx=_number(e, "cx", what, path), cy=_number(e, "cy", what, path),
            R=_rotation(e.get("R"), f"{what}: 'R'", path), t=_matrix(e.get("t"), (3,), f"{what}: 't'", path)))
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise DataError(f"camera names repeat: {names}", path)
    raw = obj.get("objects", {})
    if not isinstance(raw, dict):
        raise DataError("'objects' must map sample keys to placements", path)
    objects = {}
    for key, e in raw.items():
        if not isinstance(e, dict):
            raise DataError(f"object {key!r} must be an object with 'R' and 't'", path)
        yaw = e.get("yaw")
        objects[key] = ObjectPose(R=_rotation(e.get("R"), f"object {key!r}: 'R'", path),
                                  t=_matrix(e.get("t"), (3,), f"object {key!r}: 't'", path),
                                  yaw=None if yaw is None else _number(e, "yaw", f"object {key!r}", path))
    return CameraRig(views=tuple(views), objects=objects, path=str(path))
