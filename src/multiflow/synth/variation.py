"""Realistic variation of the synthetic line (opt-in, ``variation="realistic"``).

* *Lots* (:func:`lot_variation`, :func:`apply_lot`): a production lot shifts the albedo per channel,
  the gloss and the highlight sharpness of every part of the objects made in it;
* a larger *pose jitter* (:func:`apply_pose_jitter`): yaw and tray offset scaled up.

Neither is applied by default, so data sets generated with the default variation are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multiflow.synth.families import rounded
from multiflow.synth.scene import Scene


@dataclass(frozen=True)
class Lot:
    """One production lot: multiplies every part's albedo by ``gain (3,)`` (hue and brightness),
    its specular weight by ``gloss`` and its Blinn-Phong exponent by ``sharpness``."""

    index: int
    gain: np.ndarray
    gloss: float
    sharpness: float

    def to_dict(self) -> dict:
        return {"lot": self.index, "gain": rounded(self.gain), "gloss": round(self.gloss, 4),
                "sharpness": round(self.sharpness, 4)}


def lot_variation(rng: np.random.Generator, index: int, *, spread: float = 0.08) -> Lot:
    """Draw lot ``index``'s parameters: per-channel log-albedo gain ~ N(0, spread) (clipped to
    +-2.5 spread), log gloss ~ N(0, 2.5 spread), log sharpness ~ N(0, 2 spread).

    The instance-to-instance jitter within a lot is +-6 % per channel (uniform, std 3.5 %), so with the
    default ``spread`` objects of one lot are closer in colour than objects of different lots.
    """
    gain = np.exp(np.clip(rng.normal(0.0, spread, 3), -2.5 * spread, 2.5 * spread)).astype(np.float32)
    gloss = float(np.exp(rng.normal(0.0, 2.5 * spread)))
    sharp = float(np.exp(rng.normal(0.0, 2.0 * spread)))
    return Lot(index=int(index), gain=gain, gloss=gloss, sharpness=sharp)


def apply_lot(scene: Scene, lot: Lot) -> None:
    """Apply ``lot`` to every part of ``scene`` (each shared material once); records it in ``params``."""
    seen: set[int] = set()
    for part in scene.parts:
        mat = part.material
        if id(mat) in seen:
            continue
        seen.add(id(mat))
        mat.albedo = np.clip(mat.albedo * lot.gain, 0.0, 1.0).astype(np.float32)
        mat.specular = float(min(mat.specular * lot.gloss, 0.9))
        mat.shininess = float(mat.shininess * lot.sharpness)
    scene.lot_gain = lot.gain
    scene.params["lot"] = lot.to_dict()
    for part in scene.parts:
        rec = scene.params.get("parts", {}).get(part.name)
        if rec is not None:
            rec.update({"albedo": rounded(part.material.albedo), "specular": round(part.material.specular, 4),
                        "shininess": round(part.material.shininess, 2)})


def apply_pose_jitter(scene: Scene, factor: float) -> None:
    """Scale the instance's pose deviation: yaw (std 8 deg at ``factor`` 1) and tray offset
    (+-0.06 at 1) are multiplied by ``factor``; ``factor`` 1 leaves the scene unchanged."""
    if factor == 1.0:
        return
    scene.yaw = float(scene.yaw * factor)
    scene.offset = (scene.offset * np.float32(factor)).astype(np.float32)
    scene.params.update({"yaw": round(scene.yaw, 5), "offset": rounded(scene.offset), "pose_jitter": float(factor)})

