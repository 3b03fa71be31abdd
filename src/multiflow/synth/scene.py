"""One object instance on the tray: its parts, pose, lighting and tray, and (for a defective sample)
its defect.

Everything about the object is defined in its *local* frame (``z`` up, the tray is ``z = 0``); an
instance is placed on the tray by a yaw rotation and an in-plane offset (:attr:`Scene.rotation`,
:attr:`Scene.offset`). What an object is made of lives in :mod:`~multiflow.synth.families`, its
defects in :mod:`~multiflow.synth.defects`, the lot / pose variation in
:mod:`~multiflow.synth.variation` and the procedural textures in :mod:`~multiflow.synth.textures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from multiflow.synth.defects import Defect
from multiflow.synth.families import FAMILIES, Label, Part, rounded


@dataclass
class Scene:
    """One object instance on the tray with its lighting; ``parts`` in the local frame."""

    family: str
    parts: list[Part]
    yaw: float
    offset: np.ndarray  # (2,) tray-plane translation
    light_dir: np.ndarray  # (3,) unit, world frame, pointing towards the light
    light: float
    ambient: float
    exposure: float
    tray_albedo: np.ndarray  # (3,)
    tray_gradient: np.ndarray  # (2,) relative albedo change per unit x / y
    dust_seed: int  # dust specks on the tray: hashed grid cells (see :func:`~multiflow.synth.textures.dust`)
    dust_density: float  # probability that a 6 cm grid cell holds a speck
    waves: np.ndarray  # (K, 4): frequency vector (3) and phase, shared 3D texture noise
    params: dict
    defect: Defect | None = None
    removed: int = -1  # part index removed by a QS defect
    lot_gain: np.ndarray | None = None  # (3,) albedo gain of the object's production lot (None: no lots)
    label: Label | None = None  # the labelled variant's labels (None: unlabelled, or no label variants)

    @property
    def rotation(self) -> np.ndarray:
        """``Rz (3, 3)``: local -> world is ``x_w = Rz x_l + [offset, 0]``."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)

    def visible_parts(self) -> list[Part]:
        parts = [p for i, p in enumerate(self.parts) if i != self.removed]
        if self.defect is not None:
            parts += self.defect.extra_parts
        return parts


def sample_scene(family: str, rng: np.random.Generator) -> Scene:
    """Draw one normal instance of ``family``: dimensions, colours, texture, pose, light, tray."""
    parts, params = FAMILIES[family](rng)
    yaw = float(rng.normal(0.0, math.radians(8.0)))
    offset = rng.uniform(-0.06, 0.06, 2).astype(np.float32)
    az = math.radians(35.0) + rng.uniform(-0.4, 0.4)
    el = math.radians(float(rng.uniform(55.0, 72.0)))
    light_dir = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=np.float32)
    dust_seed = int(rng.integers(0, 2**31 - 1))
    dust_density = float(rng.uniform(0.008, 0.03))
    waves = np.zeros((6, 4), dtype=np.float32)
    dirs = rng.normal(size=(6, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves[:, :3] = dirs * rng.uniform(8.0, 30.0, (6, 1))
    waves[:, 3] = rng.uniform(0, 2 * math.pi, 6)
    tray = np.array([0.30, 0.31, 0.33], dtype=np.float32) * float(rng.uniform(0.9, 1.1))
    scene = Scene(
        family=family, parts=parts, yaw=yaw, offset=offset, light_dir=light_dir,
        light=float(rng.uniform(0.72, 0.88)), ambient=float(rng.uniform(0.20, 0.28)),
        exposure=float(rng.uniform(0.95, 1.05)), tray_albedo=tray,
        tray_gradient=rng.uniform(-0.08, 0.08, 2).astype(np.float32), dust_seed=dust_seed, dust_density=dust_density, waves=waves,
        params=params,
    )
    scene.params.update({
        "yaw": round(yaw, 5), "offset": rounded(offset), "light_dir": rounded(light_dir), "light": round(scene.light, 4),
        "ambient": round(scene.ambient, 4), "exposure": round(scene.exposure, 4), "dust_seed": dust_seed,
        "dust_density": round(dust_density, 5), "tray_albedo": rounded(tray), "tray_gradient": rounded(scene.tray_gradient),
        "parts": {p.name: {"albedo": rounded(p.material.albedo), "specular": round(p.material.specular, 4),
                           "shininess": round(p.material.shininess, 2), "group": p.group, "removable": p.removable}
                  for p in parts},
    })
    return scene

