"""3D surface defects of the synthetic data set: sampling them on an instance and painting them.

A defect is defined in the object's *local* frame (``z`` up, the tray is ``z = 0``), so it is a
property of the 3D surface and every camera sees the same defect (or does not see it at all).
:func:`sample_defect` draws one on a :class:`~multiflow.synth.scene.Scene`; the renderer
(:mod:`~multiflow.synth.render`) paints it with :func:`apply_surface_defect` (surface paint) or
:func:`face_mismatch_mask` (FM) and marks its pixels in the ground-truth mask.

Defect codes (Real-IAD's two-letter codes plus ``CI``):

====  ======================  ===================================================================
code  name                    rendering
====  ======================  ===================================================================
AK    pit                     small dark crater with a bright rim and tilted normals
BX    deformation             dent: normals bent radially inside a disc, slight darkening
CH    abrasion                matte patch of fine parallel micro-scratches, lighter
HS    scratch                 thin line segment on the surface, lighter or darker
PS    damage                  jagged crack (random polyline), dark
QS    missing parts           one removable part (stud, pin, screw, clip, ring, insert) absent
YW    foreign object          particle or fibre (chain of spheres) lying on the object
ZW    contamination           stain with an irregular boundary (oil, rust, residue, dirt)
CI    colour inconsistency    one part of a colour group in another colour that is normal for
                              other instances (e.g. one blue stud on a red brick)
====  ======================  ===================================================================

Cross-view defect families (opt-in, :data:`CROSS_VIEW_CODES`; not in the default set, so data sets
generated with the default codes are unchanged):

====  ======================  ===================================================================
FM    face colour mismatch    the side faces of the main body that face one horizontal direction
                              are in another colour of the class's palette: every surface patch
                              has a colour that normal instances have, the top camera and the
                              cameras on the opposite side see a normal object; only the views
                              facing that side (or comparing them with the others) reveal it
ML    mixed lot               the side faces of the main body towards one horizontal direction
                              come from another production lot (a side panel or half shell from
                              another batch): albedo, gloss and highlight sharpness of that lot.
                              Each view shows an object of *some* lot; views facing that side show
                              another lot than the rest. Needs lots (``variation="realistic"``)
LB    one-sided label         the line makes a labelled and an unlabelled variant (the label sits
                              on both opposite side faces ``+-axis`` of the body, see
                              :class:`~multiflow.synth.families.Label`); this object carries the
                              label on one side only. A view of either side alone shows a normal
                              object of one variant. The mask marks both label spots (the label
                              that is there and where the other one is missing), in the views
                              that see them. Turns the label variant on for the whole data set
====  ======================  ===================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from multiflow.synth.families import GROUP_PALETTES, METAL, PLASTIC, Material, Part, jitter_albedo, rounded
from multiflow.synth.geometry import Sphere
from multiflow.synth.textures import texture_noise

if TYPE_CHECKING:
    from multiflow.synth.scene import Scene
    from multiflow.synth.variation import Lot


DEFECT_CODES: dict[str, str] = {
    "AK": "pit",
    "BX": "deformation",
    "CH": "abrasion",
    "HS": "scratch",
    "PS": "damage",
    "QS": "missing_parts",
    "YW": "foreign_object",
    "ZW": "contamination",
    "CI": "colour_inconsistency",
}
#: Defects that only a comparison across views reveals (opt-in: not in the default defect set).
CROSS_VIEW_CODES: dict[str, str] = {
    "FM": "face_colour_mismatch",
    "ML": "mixed_lot",
    "LB": "one_sided_label",
}
#: Cross-view codes that recolour the body's faces towards ``Defect.normal`` (:func:`face_mismatch_mask`).
FACE_CODES = ("FM", "ML")
ALL_DEFECT_CODES: dict[str, str] = {**DEFECT_CODES, **CROSS_VIEW_CODES}


@dataclass
class Defect:
    """One surface defect, in the object's local frame."""

    code: str
    anchor: np.ndarray
    normal: np.ndarray
    tangent: np.ndarray
    part: int  # index of the part it sits on / concerns
    size: float
    width: float = 0.0
    contrast: float = 1.0
    colour: np.ndarray | None = None
    hard: bool = False
    placement: str = "any"
    polyline: np.ndarray | None = None  # (P, 3) for cracks
    extra_parts: list[Part] = field(default_factory=list)  # foreign objects
    face_parts: list[int] = field(default_factory=list)  # FM: parts whose faces along ``normal`` change colour
    gloss: float = 1.0  # ML: specular weight factor of the other lot relative to the object's lot
    sharpness: float = 1.0  # ML: Blinn-Phong exponent factor, likewise
    lot: int = -1  # ML: the other lot's index

    def to_dict(self) -> dict:
        d = {
            "code": self.code,
            "type": ALL_DEFECT_CODES[self.code],
            "part": int(self.part),
            "anchor": rounded(self.anchor),
            "normal": rounded(self.normal),
            "tangent": rounded(self.tangent),
            "size": round(float(self.size), 5),
            "width": round(float(self.width), 5),
            "contrast": round(float(self.contrast), 4),
            "hard": bool(self.hard),
            "placement": self.placement,
        }
        if self.colour is not None:
            d["colour"] = rounded(self.colour)
        if self.polyline is not None:
            d["polyline"] = [rounded(p) for p in self.polyline]
        if self.face_parts:
            d["face_parts"] = [int(i) for i in self.face_parts]
        if self.code == "ML":
            d |= {"lot": int(self.lot), "gloss": round(float(self.gloss), 4), "sharpness": round(float(self.sharpness), 4)}
        if self.extra_parts:
            d["foreign_parts"] = [
                {"center": rounded(p.prim.center), "radius": round(float(p.prim.radius), 5)}
                for p in self.extra_parts
            ]
        return d


#: FM defect: (names of the main-body parts, colours the body takes in normal instances) per family.
FACE_PALETTES: dict[str, tuple[tuple[str, ...], list[tuple[float, float, float]]]] = {
    "bottle_cap": (("shell",), GROUP_PALETTES[("bottle_cap", "shell")]),
    "toy_brick": (("body",), GROUP_PALETTES[("toy_brick", "brick")]),
    "plastic_plug": (("housing",), [PLASTIC[c] for c in ("black", "white", "grey")]),
    "terminal_block": (("housing_0", "housing_1", "housing_2"), [PLASTIC[c] for c in ("grey", "beige", "green")]),
    "lock_nut": (("nut",), list(METAL.values())),
}
#: FM defect: a surface point belongs to the mismatched face when ``n . u > FACE_COS`` and ``|n_z| < 0.5``.
FACE_COS = 0.6


def cast(scene: Scene, origin: np.ndarray, direction: np.ndarray) -> tuple[float, np.ndarray, int]:
    """Cast one ray (local frame) at the visible parts: ``(t, normal (3,), part index)``; t = inf on a miss."""
    o = np.asarray(origin, dtype=np.float32)[None]
    d = np.asarray(direction, dtype=np.float32)[None]
    best, normal, part = np.inf, np.zeros(3, np.float32), -1
    for i, p in enumerate(scene.parts):
        if i == scene.removed:
            continue
        t, n = p.prim.hit(o, d)
        if t[0] < best:
            best, normal, part = float(t[0]), n[0], i
    return best, normal, part


def _anchor(scene: Scene, rng: np.random.Generator, placement: str, min_nz: float = -1.0):
    """A random visible surface point: a ray from a direction of the chosen ``placement``
    (``top``: 55-90 deg elevation, ``side``: 5-30 deg, ``any``: 5-90 deg) aimed at the object."""
    lo, hi = {"top": (55.0, 90.0), "side": (5.0, 30.0), "any": (5.0, 90.0)}[placement]
    for _ in range(64):
        el = math.radians(float(rng.uniform(lo, hi)))
        az = float(rng.uniform(0, 2 * math.pi))
        u = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        target = np.array([rng.uniform(-0.45, 0.45), rng.uniform(-0.25, 0.25), rng.uniform(0.05, 0.35)])
        t, n, part = cast(scene, target + 5.0 * u, -u)
        if np.isfinite(t) and n[2] >= min_nz:
            p = target + 5.0 * u - t * u
            return p.astype(np.float32), n.astype(np.float32), part
    raise RuntimeError("could not place a defect on the object")  # pragma: no cover - geometry bug


def _tangent(n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=3)
    t = a - (a @ n) * n
    return (t / np.linalg.norm(t)).astype(np.float32)


def sample_defect(scene: Scene, code: str, rng: np.random.Generator, *, lots: Sequence[Lot] = ()) -> Defect:
    """Draw a defect of type ``code`` on ``scene`` (sets ``scene.defect`` / ``scene.removed``).

    About 30 % of defects are *hard*: small (x0.5-0.7), low contrast (x0.35-0.6) and, for surface
    defects, placed on a side face (often seen by a single side camera).
    ``lots``: every production lot of the line (ML draws the other lot from them; the scene must
    carry one of them, :func:`~multiflow.synth.variation.apply_lot`). LB needs ``scene.label``.
    """
    if code not in ALL_DEFECT_CODES:
        raise ValueError(f"unknown defect code {code!r}; known: {sorted(ALL_DEFECT_CODES)}")
    if code == "FM":
        d = _face_mismatch(scene, rng)
        scene.removed = -1
        scene.defect = d
        return d
    if code == "ML":
        d = _mixed_lot(scene, rng, lots)
        scene.removed = -1
        scene.defect = d
        return d
    if code == "LB":
        d = _one_sided_label(scene, rng)
        scene.removed = -1
        scene.defect = d
        return d
    hard = bool(rng.random() < 0.3)
    sf = float(rng.uniform(0.5, 0.7)) if hard else float(rng.uniform(0.8, 1.4))
    cf = float(rng.uniform(0.35, 0.6)) if hard else float(rng.uniform(0.8, 1.2))
    placement = "side" if hard else str(rng.choice(["top", "any"]))
    scene.removed = -1
    if code == "QS":
        idx = [i for i, p in enumerate(scene.parts) if p.removable]
        part = int(rng.choice(idx))
        scene.removed = part
        c, r = scene.parts[part].prim.bounds()
        d = Defect(code, np.asarray(c, np.float32), np.array([0, 0, 1], np.float32), np.array([1, 0, 0], np.float32),
                   part, size=r, hard=hard, placement="part")
    elif code == "CI":
        groups = [g for (fam, g) in GROUP_PALETTES if fam == scene.family]
        group = str(rng.choice(groups))
        members = [i for i, p in enumerate(scene.parts) if p.group == group]
        small = [i for i in members if scene.parts[i].removable]  # a stud / pin / clip, not the body
        members = small or members
        part = int(rng.choice(members))
        current = scene.parts[part].material.albedo
        choices = [np.asarray(c, np.float32) for c in GROUP_PALETTES[(scene.family, group)]]
        choices = [c for c in choices if np.abs(c - current).max() > 0.12]
        colour = jitter_albedo(rng, choices[int(rng.integers(len(choices)))], 0.04)
        c, r = scene.parts[part].prim.bounds()
        d = Defect(code, np.asarray(c, np.float32), np.array([0, 0, 1], np.float32), np.array([1, 0, 0], np.float32),
                   part, size=r, colour=colour, hard=False, placement="part")
    else:
        min_nz = 0.6 if code == "YW" else -1.0
        anchor, normal, part = _anchor(scene, rng, "top" if code == "YW" and not hard else placement, min_nz)
        tangent = _tangent(normal, rng)
        d = Defect(code, anchor, normal, tangent, part, size=0.0, contrast=cf, hard=hard, placement=placement)
        if code == "HS":
            d.size = 0.34 * sf * float(rng.uniform(0.7, 1.3))
            d.width = float(rng.uniform(0.010, 0.020))
        elif code == "CH":
            d.size = 0.11 * sf * float(rng.uniform(0.8, 1.3))
        elif code == "BX":
            d.size = 0.11 * sf * float(rng.uniform(0.8, 1.3))
        elif code == "AK":
            d.size = 0.045 * sf * float(rng.uniform(0.8, 1.4))
        elif code == "PS":
            d.size = 0.28 * sf * float(rng.uniform(0.7, 1.3))
            d.width = float(rng.uniform(0.009, 0.016))
            bitangent = np.cross(normal, tangent)
            n_seg = int(rng.integers(4, 7))
            pts = [anchor - tangent * d.size / 2]
            for _ in range(n_seg):
                step = tangent * (d.size / n_seg) + bitangent * rng.normal(0, 0.35) * (d.size / n_seg)
                pts.append(pts[-1] + step)
            d.polyline = np.asarray(pts, dtype=np.float32)
        elif code == "ZW":
            d.size = 0.10 * sf * float(rng.uniform(0.8, 1.4))
            stains = [(0.12, 0.06, 0.02), (0.02, 0.02, 0.02), (0.85, 0.85, 0.80), (0.40, 0.14, 0.03)]
            d.colour = np.asarray(stains[int(rng.integers(len(stains)))], np.float32)
        elif code == "YW":
            kind = "particle" if rng.random() < 0.5 else "fibre"
            col = [(0.02, 0.02, 0.02), (0.1, 0.2, 0.75), (0.9, 0.9, 0.9), (0.55, 0.4, 0.25)][int(rng.integers(4))]
            mat = Material(albedo=np.asarray(col, np.float32), specular=0.2, shininess=20.0, texture=0.1, grain=0.05)
            if kind == "particle":
                r = 0.03 * sf * float(rng.uniform(0.8, 1.5))
                d.extra_parts = [Part("foreign_0", Sphere(anchor + normal * r * 0.6, r), mat)]
                d.size = r
            else:
                r = float(rng.uniform(0.009, 0.014))
                length = 0.3 * sf * float(rng.uniform(0.8, 1.2))
                n_balls = max(4, int(length / (1.2 * r)))
                bitangent = np.cross(normal, tangent)
                bend = float(rng.normal(0, 2.0))
                s = np.linspace(-0.5, 0.5, n_balls) * length
                centers = anchor + normal * r * 0.7 + np.outer(s, tangent) + np.outer(bend * s**2, bitangent)
                d.extra_parts = [Part(f"foreign_{k}", Sphere(c, r), mat) for k, c in enumerate(centers)]
                d.size = length
            d.width = float(r)
    scene.defect = d
    return d


def _face_mismatch(scene: Scene, rng: np.random.Generator) -> Defect:
    """FM: the body's faces towards a random horizontal direction ``u`` (local frame) take another
    colour of the family's body palette (times the object's lot gain, so it is a colour normal
    objects of this lot have). ``Defect.normal = Defect.tangent = u``."""
    names, palette = FACE_PALETTES[scene.family]
    idx = [i for i, p in enumerate(scene.parts) if p.name in names]
    current = scene.parts[idx[0]].material.albedo
    gain = np.ones(3, np.float32) if scene.lot_gain is None else scene.lot_gain
    choices = [np.clip(np.asarray(c, np.float32) * gain, 0, 1) for c in palette]
    choices = [c for c in choices if np.abs(c - current).max() > 0.12]
    colour = jitter_albedo(rng, choices[int(rng.integers(len(choices)))], 0.04)
    az = float(rng.uniform(0, 2 * math.pi))
    u = np.array([math.cos(az), math.sin(az), 0.0], dtype=np.float32)
    c, r = scene.parts[idx[0]].prim.bounds()
    return Defect("FM", np.asarray(c, np.float32), u, u.copy(), idx[0], size=float(r), colour=colour,
                  hard=False, placement="face", face_parts=idx)


def _body_faces(scene: Scene, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
    """The main body's parts (:data:`FACE_PALETTES`) and a random horizontal direction ``u (3,)``."""
    names = FACE_PALETTES[scene.family][0]
    idx = [i for i, p in enumerate(scene.parts) if p.name in names]
    az = float(rng.uniform(0, 2 * math.pi))
    return idx, np.array([math.cos(az), math.sin(az), 0.0], dtype=np.float32)


def _mixed_lot(scene: Scene, rng: np.random.Generator, lots: Sequence[Lot]) -> Defect:
    """ML: the body's faces towards a random horizontal direction ``u`` come from another lot ``B``:
    albedo ``x gain_B / gain_A``, specular weight ``x gloss_B / gloss_A``, exponent ``x sharpness_B /
    sharpness_A`` (``A`` the object's lot). ``B`` is drawn among the lots that differ from ``A`` by at
    least 6 % in one albedo channel or 20 % in gloss (the most different one if none does)."""
    mine = scene.params.get("lot", {}).get("lot")
    if mine is None or len(lots) < 2:
        raise ValueError("ML (mixed lot) needs production lots: an object of one of at least 2 lots "
                         "(variation='realistic' or lots >= 2)")
    a = next(lot for lot in lots if lot.index == mine)
    others = [lot for lot in lots if lot.index != mine]

    def distance(b: Lot) -> float:
        return max(float(np.abs(np.log(b.gain / a.gain)).max()) / 0.06, abs(math.log(b.gloss / a.gloss)) / 0.2)

    far = [b for b in others if distance(b) >= 1.0]
    b = far[int(rng.integers(len(far)))] if far else max(others, key=distance)
    idx, u = _body_faces(scene, rng)
    current = scene.parts[idx[0]].material.albedo
    colour = np.clip(current * (b.gain / a.gain), 0, 1).astype(np.float32)
    c, r = scene.parts[idx[0]].prim.bounds()
    return Defect("ML", np.asarray(c, np.float32), u, u.copy(), idx[0], size=float(r), colour=colour, hard=False,
                  placement="face", face_parts=idx, gloss=b.gloss / a.gloss, sharpness=b.sharpness / a.sharpness,
                  lot=b.index)


def _one_sided_label(scene: Scene, rng: np.random.Generator) -> Defect:
    """LB: the object carries its label on one of the two label faces only (drawn at random)."""
    label = scene.label
    if label is None:
        raise ValueError("LB (one-sided label) needs the labelled variant: render with labels=True")
    side = 1 if rng.random() < 0.5 else -1
    label.sides = (side,)
    if "label" in scene.params:
        scene.params["label"]["sides"] = [side]
    u = (label.axis * side).astype(np.float32)
    return Defect("LB", label.centre.copy(), u, u.copy(), label.part, size=float(label.half_width),
                  colour=label.colour.copy(), hard=False, placement="face", face_parts=[label.part])


def face_mismatch_mask(defect: Defect, p: np.ndarray, n: np.ndarray, part: np.ndarray,
                       centres: np.ndarray) -> np.ndarray:
    """Bool ``(N,)``: points ``p (N, 3)`` (geometric normals ``n (N, 3)``, local frame; part index
    ``part (N,)``; ``centres (P, 3)`` the parts' bounding centres) on the FM defect's outer faces: on
    one of ``defect.face_parts``, ``n . u > FACE_COS``, ``|n_z| < 0.5`` and on the ``u`` side of its
    part's centre (not the inside of a bore, whose far wall also faces ``u``)."""
    u = defect.normal
    return (np.isin(part, defect.face_parts) & (n @ u > FACE_COS) & (np.abs(n[:, 2]) < 0.5)
            & (np.einsum("ij,j->i", p - centres[part], u) > 0))


def _seg_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    s = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - a - s[:, None] * ab, axis=1)


def apply_surface_defect(
    defect: Defect, p: np.ndarray, n: np.ndarray, part: np.ndarray, albedo: np.ndarray, spec: np.ndarray,
    waves: np.ndarray,
) -> np.ndarray:
    """Paint a surface defect (AK, BX, CH, HS, PS, ZW) onto shaded points; returns its mask ``(N,)``.

    ``p, n (N, 3)`` local hit points / normals, ``part (N,)`` part index, ``albedo (N, 3)`` and
    ``spec (N,)`` are modified in place. Only points on the defect's part count.
    """
    code = defect.code
    rel = p - defect.anchor
    height = rel @ defect.normal
    on = (part == defect.part) & (np.abs(height) < max(defect.size * 0.6, 0.03))
    tang = rel - height[:, None] * defect.normal
    r = np.linalg.norm(tang, axis=1)
    cf = defect.contrast
    lum = albedo.mean(axis=1, keepdims=True)
    if code == "HS":
        a = defect.anchor - defect.tangent * defect.size / 2
        b = defect.anchor + defect.tangent * defect.size / 2
        m = on & (_seg_dist(p, a, b) < defect.width / 2)
        target = np.where(lum < 0.3, 0.75, 0.08).astype(np.float32)
        alpha = np.float32(min(0.75 * cf, 0.9))
        albedo[m] = albedo[m] * (1 - alpha) + alpha * target[m]
        spec[m] *= 0.3
    elif code == "CH":
        bit = np.cross(defect.normal, defect.tangent)
        u, v = tang @ defect.tangent, tang @ bit
        m = on & ((u / defect.size) ** 2 + (v / (0.6 * defect.size)) ** 2 < 1.0)
        stripes = 0.5 + 0.5 * np.sin(v * 900.0 + 3.0 * texture_noise(p * 4.0, waves))
        alpha = (0.25 + 0.35 * stripes) * min(cf, 1.2)
        albedo[m] = albedo[m] * (1 - alpha[m, None]) + alpha[m, None] * np.float32(0.7)
        spec[m] *= 0.2
    elif code == "BX":
        m = on & (r < defect.size)
        g = np.sin(np.pi * np.clip(r / defect.size, 0, 1))
        radial = tang / np.maximum(r, 1e-6)[:, None]
        k = np.float32(1.1 * cf)
        n[m] = n[m] + (k * g[m])[:, None] * radial[m]
        n[m] /= np.linalg.norm(n[m], axis=1, keepdims=True)
        albedo[m] *= (1.0 - 0.15 * cf * g[m])[:, None]
    elif code == "AK":
        m = on & (r < defect.size)
        core = m & (r < 0.65 * defect.size)
        rim = m & ~core
        albedo[core] *= np.float32(1.0 - 0.8 * min(cf, 1.1))
        albedo[rim] = np.minimum(albedo[rim] * (1.0 + 0.5 * cf) + 0.05 * cf, 1.0)
        radial = tang / np.maximum(r, 1e-6)[:, None]
        n[core] = n[core] - 0.8 * radial[core]
        n[core] /= np.linalg.norm(n[core], axis=1, keepdims=True)
        spec[core] *= 0.2
    elif code == "PS":
        dist = np.full(p.shape[0], np.inf, dtype=np.float32)
        for a, b in zip(defect.polyline[:-1], defect.polyline[1:]):
            dist = np.minimum(dist, _seg_dist(p, a, b))
        m = on & (dist < defect.width / 2)
        albedo[m] *= np.float32(1.0 - 0.85 * min(cf, 1.1))
        spec[m] *= 0.1
    elif code == "ZW":
        wobble = 1.0 + 0.35 * texture_noise(p * 3.0, waves)
        m = on & (r < defect.size * wobble)
        soft = np.clip(1.2 - r / (defect.size * wobble), 0, 1)
        alpha = (0.8 * min(cf, 1.1) * (0.55 + 0.45 * soft)).astype(np.float32)
        albedo[m] = albedo[m] * (1 - alpha[m, None]) + alpha[m, None] * defect.colour
        spec[m] = spec[m] * 0.5 + 0.3 * (defect.colour.mean() < 0.1)
    else:
        raise ValueError(f"{code} is not a surface-paint defect")
    return m
