"""Object families, per-instance variation and 3D surface defects of the synthetic data set.

Everything is defined in the object's *local* frame (``z`` up, the tray is ``z = 0``); an instance is
placed on the tray by a yaw rotation and an in-plane offset, so a defect is a property of the 3D
surface and every camera sees the same defect (or does not see it at all).

Families (class names follow Real-IAD's naming): ``bottle_cap`` (ribbed cap with top insert and
tamper ring), ``lock_nut`` (drilled hex nut, CSG, with a nylon insert ring whose colour goes with
the metal), ``toy_brick`` (2x3 / 2x4 studded brick), ``plastic_plug`` (housing with two metal pins,
strain relief and cable), ``terminal_block`` (base rail, three housings with screw heads and
coloured clips).

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
====  ======================  ===================================================================

Realistic variation (opt-in, see :func:`lot_variation` and :func:`apply_pose_jitter`): *lots* (a
production lot shifts the albedo per channel, the gloss and the highlight sharpness of every part of
the objects made in it) and a larger *pose jitter* (yaw and tray offset scaled up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from multiflow.synth.geometry import Cylinder, Drilled, Primitive, Sphere, box, hex_prism

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
}
ALL_DEFECT_CODES: dict[str, str] = {**DEFECT_CODES, **CROSS_VIEW_CODES}

FAMILY_ALIASES: dict[str, str] = {
    "cap": "bottle_cap",
    "brick": "toy_brick",
    "plug": "plastic_plug",
    "terminal": "terminal_block",
    "nut": "lock_nut",
}

# Linear-RGB albedos.
PLASTIC: dict[str, tuple[float, float, float]] = {
    "red": (0.62, 0.06, 0.05),
    "yellow": (0.74, 0.55, 0.05),
    "blue": (0.06, 0.20, 0.62),
    "green": (0.07, 0.42, 0.14),
    "white": (0.70, 0.70, 0.67),
    "black": (0.045, 0.045, 0.05),
    "orange": (0.85, 0.30, 0.04),
    "grey": (0.36, 0.37, 0.38),
    "beige": (0.66, 0.58, 0.42),
}
METAL: dict[str, tuple[float, float, float]] = {
    "brass": (0.72, 0.52, 0.20),
    "nickel": (0.60, 0.60, 0.62),
}


@dataclass
class Material:
    """Surface appearance: Lambert albedo + Blinn-Phong highlight + procedural texture."""

    albedo: np.ndarray
    specular: float = 0.25
    shininess: float = 24.0
    metal: bool = False
    texture: float = 0.06  # amplitude of the smooth 3D noise (relative albedo change)
    grain: float = 0.03  # amplitude of the per-voxel grain
    ribs: int = 0  # number of bump ribs around a vertical axis (cylinder sides only)
    rib_amp: float = 0.0
    slot: float | None = None  # screw slot angle (radians) on the top cap, or None


@dataclass
class Part:
    name: str
    prim: Primitive
    material: Material
    group: str = ""  # colour group (parts that always share a colour within one object)
    removable: bool = False


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

    def to_dict(self) -> dict:
        d = {
            "code": self.code,
            "type": ALL_DEFECT_CODES[self.code],
            "part": int(self.part),
            "anchor": _r(self.anchor),
            "normal": _r(self.normal),
            "tangent": _r(self.tangent),
            "size": round(float(self.size), 5),
            "width": round(float(self.width), 5),
            "contrast": round(float(self.contrast), 4),
            "hard": bool(self.hard),
            "placement": self.placement,
        }
        if self.colour is not None:
            d["colour"] = _r(self.colour)
        if self.polyline is not None:
            d["polyline"] = [_r(p) for p in self.polyline]
        if self.face_parts:
            d["face_parts"] = [int(i) for i in self.face_parts]
        if self.extra_parts:
            d["foreign_parts"] = [
                {"center": _r(p.prim.center), "radius": round(float(p.prim.radius), 5)}
                for p in self.extra_parts
            ]
        return d


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
    dust_seed: int  # dust specks on the tray: hashed grid cells (see :func:`dust`)
    dust_density: float  # probability that a 6 cm grid cell holds a speck
    waves: np.ndarray  # (K, 4): frequency vector (3) and phase, shared 3D texture noise
    params: dict
    defect: Defect | None = None
    removed: int = -1  # part index removed by a QS defect
    lot_gain: np.ndarray | None = None  # (3,) albedo gain of the object's production lot (None: no lots)

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


def _r(x) -> list[float]:
    return [round(float(v), 5) for v in np.asarray(x).ravel()]


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float32) * (1.0 + rng.uniform(-amount, amount, 3)), 0, 1).astype(np.float32)


def _plastic(rng, rgb, **kw) -> Material:
    return Material(albedo=_jitter(rng, rgb), specular=float(rng.uniform(0.06, 0.16)),
                    shininess=float(rng.uniform(30, 60)), **kw)


def _metal(rng, rgb, **kw) -> Material:
    return Material(albedo=_jitter(rng, rgb, 0.04), specular=0.45, shininess=60.0, metal=True,
                    texture=0.04, grain=0.04, **kw)


# ----------------------------------------------------------------------------------- families


def _bottle_cap(rng: np.random.Generator) -> tuple[list[Part], dict]:
    colour = str(rng.choice(["red", "blue", "white", "green", "yellow"]))
    r = float(rng.uniform(0.42, 0.52))
    h = float(rng.uniform(0.30, 0.42))
    ribs = int(rng.integers(36, 56))
    mat = _plastic(rng, PLASTIC[colour], texture=0.05, grain=0.03, ribs=ribs, rib_amp=0.35)
    insert = _plastic(rng, np.asarray(PLASTIC[colour]) * 1.08, texture=0.08, grain=0.02)
    ring = _plastic(rng, PLASTIC[colour], texture=0.05, grain=0.03, ribs=ribs // 2, rib_amp=0.2)
    parts = [
        Part("shell", Cylinder((0, 0, 0.04 + h / 2), r, h / 2), mat, group="shell"),
        Part("insert", Cylinder((0, 0, 0.04 + h + 0.01), r * 0.72, 0.014), insert, group="shell", removable=True),
        Part("tamper_ring", Cylinder((0, 0, 0.04), r * 1.05, 0.04), ring, group="shell", removable=True),
    ]
    return parts, {"colour": colour, "radius": r, "height": h, "ribs": ribs, "palette": "plastic_cap"}


def _toy_brick(rng: np.random.Generator) -> tuple[list[Part], dict]:
    colour = str(rng.choice(["red", "yellow", "blue", "green", "white"]))
    nx = int(rng.choice([3, 4]))
    pitch = float(rng.uniform(0.27, 0.30)) * (4.0 / nx) ** 0.5
    hz = float(rng.uniform(0.17, 0.22))
    mat = _plastic(rng, PLASTIC[colour], texture=0.03, grain=0.015)
    parts = [Part("body", box((0, 0, hz), (nx * pitch / 2, pitch, hz)), mat, group="brick")]
    sr = pitch * 0.33
    for i in range(nx):
        for j in range(2):
            c = ((i - (nx - 1) / 2) * pitch, (j - 0.5) * pitch, 2 * hz + 0.035)
            parts.append(Part(f"stud_{i}_{j}", Cylinder(c, sr, 0.045), mat, group="brick", removable=True))
    return parts, {"colour": colour, "studs": [nx, 2], "pitch": pitch, "half_height": hz, "palette": "plastic_brick"}


def _plastic_plug(rng: np.random.Generator) -> tuple[list[Part], dict]:
    colour = str(rng.choice(["black", "white", "grey"]))
    metal = str(rng.choice(["brass", "nickel"]))
    s = float(rng.uniform(0.9, 1.1))
    hx, hy, hz = 0.30 * s, 0.24 * s, 0.17 * s
    body = _plastic(rng, PLASTIC[colour], texture=0.05, grain=0.03)
    pin_r = 0.035 * s
    pin_l = float(rng.uniform(0.13, 0.17)) * s
    spacing = float(rng.uniform(0.10, 0.12)) * s
    x0 = 0.15 * s
    parts = [
        Part("housing", box((x0, 0, hz), (hx, hy, hz)), body, group="housing"),
        Part("strain_relief", Cylinder((x0 - hx - 0.05 * s, 0, 0.11 * s), 0.11 * s, 0.06 * s, axis=0), body, group="housing"),
        Part("cable", Cylinder((x0 - hx - 0.40 * s, 0, 0.075 * s), 0.075 * s, 0.32 * s, axis=0),
             _plastic(rng, PLASTIC[colour], texture=0.08, grain=0.04), group="housing"),
    ]
    pin_mat = _metal(rng, METAL[metal])
    for k, sy in enumerate((-1.0, 1.0)):
        c = (x0 + hx + pin_l - 0.01, sy * spacing, hz * 1.0)
        parts.append(Part(f"pin_{k}", Cylinder(c, pin_r, pin_l, axis=0), pin_mat, group="pins", removable=True))
    return parts, {"colour": colour, "metal": metal, "scale": s, "pin_length": pin_l, "pin_spacing": spacing, "palette": "plug"}


def _terminal_block(rng: np.random.Generator) -> tuple[list[Part], dict]:
    housing_colour = str(rng.choice(["grey", "beige", "green"]))
    clip_colour = str(rng.choice(["orange", "blue", "white"]))
    metal = str(rng.choice(["nickel", "brass"]))
    s = float(rng.uniform(0.92, 1.05))
    rail = _metal(rng, (0.45, 0.46, 0.48))
    rail.specular = 0.4
    parts = [Part("rail", box((0, 0, 0.04), (0.68 * s, 0.30 * s, 0.04)), rail)]
    housing = _plastic(rng, PLASTIC[housing_colour], texture=0.04, grain=0.03)
    clip = _plastic(rng, PLASTIC[clip_colour], texture=0.03, grain=0.02)
    hz = 0.14 * s
    for k, x in enumerate((-0.42 * s, 0.0, 0.42 * s)):
        parts.append(Part(f"housing_{k}", box((x, 0, 0.08 + hz), (0.19 * s, 0.26 * s, hz)), housing, group="housing"))
    for k, x in enumerate((-0.42 * s, 0.0, 0.42 * s)):
        screw = _metal(rng, METAL[metal], slot=float(rng.uniform(0, math.pi)))
        parts.append(Part(f"screw_{k}", Cylinder((x, -0.06 * s, 0.08 + 2 * hz + 0.015), 0.085 * s, 0.025),
                          screw, group="screws", removable=True))
    for k, x in enumerate((-0.42 * s, 0.0, 0.42 * s)):
        parts.append(Part(f"clip_{k}", box((x, 0.13 * s, 0.08 + 2 * hz + 0.03), (0.07 * s, 0.07 * s, 0.045)),
                          clip, group="clips", removable=True))
    return parts, {"housing_colour": housing_colour, "clip_colour": clip_colour, "metal": metal, "scale": s,
                   "palette": "terminal"}


def _lock_nut(rng: np.random.Generator) -> tuple[list[Part], dict]:
    """Hex nut with a drilled hole and a nylon insert ring on top; the insert colour is tied to the
    metal (nickel -> white, brass -> blue), so a CI defect is a combination never seen together."""
    metal = str(rng.choice(["nickel", "brass"]))
    insert_colour = {"nickel": "white", "brass": "blue"}[metal]
    apothem = float(rng.uniform(0.34, 0.42))
    hh = float(rng.uniform(0.11, 0.15))
    hole_r = apothem * float(rng.uniform(0.45, 0.52))
    angle = float(rng.uniform(0, math.pi / 3))
    body = Drilled(hex_prism((0, 0, hh), apothem, hh, angle=angle), Cylinder((0, 0, hh), hole_r, hh + 0.05))
    ring_h = 0.035
    ring = Drilled(Cylinder((0, 0, 2 * hh + ring_h - 0.005), apothem * 0.93, ring_h),
                   Cylinder((0, 0, 2 * hh + ring_h), hole_r * 1.05, ring_h + 0.05))
    mat = _metal(rng, METAL[metal])
    mat.specular = 0.35
    parts = [
        Part("nut", body, mat),
        Part("insert", ring, _plastic(rng, PLASTIC[insert_colour], texture=0.06, grain=0.03), group="insert",
             removable=True),
    ]
    return parts, {"metal": metal, "insert_colour": insert_colour, "apothem": apothem, "half_height": hh,
                   "hole_radius": hole_r, "hex_angle": angle, "palette": "lock_nut"}


FAMILIES = {
    "bottle_cap": _bottle_cap,
    "lock_nut": _lock_nut,
    "toy_brick": _toy_brick,
    "plastic_plug": _plastic_plug,
    "terminal_block": _terminal_block,
}

# Colours a colour group may take (the CI defect picks another one of these for one part).
GROUP_PALETTES: dict[tuple[str, str], list[tuple[float, float, float]]] = {
    ("bottle_cap", "shell"): [PLASTIC[c] for c in ("red", "blue", "white", "green", "yellow")],
    ("toy_brick", "brick"): [PLASTIC[c] for c in ("red", "yellow", "blue", "green", "white")],
    ("plastic_plug", "pins"): list(METAL.values()),
    ("lock_nut", "insert"): [PLASTIC["white"], PLASTIC["blue"]],
    ("terminal_block", "clips"): [PLASTIC[c] for c in ("orange", "blue", "white")],
    ("terminal_block", "screws"): list(METAL.values()),
}


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


def canonical_class(name: str) -> str:
    """Family name for a class name or alias (``cap`` -> ``bottle_cap``); ValueError if unknown."""
    name = FAMILY_ALIASES.get(name, name)
    if name not in FAMILIES:
        raise ValueError(f"unknown synthetic class {name!r}; known: {sorted(FAMILIES)} "
                         f"(aliases {sorted(FAMILY_ALIASES)})")
    return name


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
        "yaw": round(yaw, 5), "offset": _r(offset), "light_dir": _r(light_dir), "light": round(scene.light, 4),
        "ambient": round(scene.ambient, 4), "exposure": round(scene.exposure, 4), "dust_seed": dust_seed,
        "dust_density": round(dust_density, 5), "tray_albedo": _r(tray), "tray_gradient": _r(scene.tray_gradient),
        "parts": {p.name: {"albedo": _r(p.material.albedo), "specular": round(p.material.specular, 4),
                           "shininess": round(p.material.shininess, 2), "group": p.group, "removable": p.removable}
                  for p in parts},
    })
    return scene


@dataclass(frozen=True)
class Lot:
    """One production lot: multiplies every part's albedo by ``gain (3,)`` (hue and brightness),
    its specular weight by ``gloss`` and its Blinn-Phong exponent by ``sharpness``."""

    index: int
    gain: np.ndarray
    gloss: float
    sharpness: float

    def to_dict(self) -> dict:
        return {"lot": self.index, "gain": _r(self.gain), "gloss": round(self.gloss, 4),
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
            rec.update({"albedo": _r(part.material.albedo), "specular": round(part.material.specular, 4),
                        "shininess": round(part.material.shininess, 2)})


def apply_pose_jitter(scene: Scene, factor: float) -> None:
    """Scale the instance's pose deviation: yaw (std 8 deg at ``factor`` 1) and tray offset
    (+-0.06 at 1) are multiplied by ``factor``; ``factor`` 1 leaves the scene unchanged."""
    if factor == 1.0:
        return
    scene.yaw = float(scene.yaw * factor)
    scene.offset = (scene.offset * np.float32(factor)).astype(np.float32)
    scene.params.update({"yaw": round(scene.yaw, 5), "offset": _r(scene.offset), "pose_jitter": float(factor)})


# ----------------------------------------------------------------------------------- defects


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


def sample_defect(scene: Scene, code: str, rng: np.random.Generator) -> Defect:
    """Draw a defect of type ``code`` on ``scene`` (sets ``scene.defect`` / ``scene.removed``).

    About 30 % of defects are *hard*: small (x0.5-0.7), low contrast (x0.35-0.6) and, for surface
    defects, placed on a side face (often seen by a single side camera).
    """
    if code not in ALL_DEFECT_CODES:
        raise ValueError(f"unknown defect code {code!r}; known: {sorted(ALL_DEFECT_CODES)}")
    if code == "FM":
        d = _face_mismatch(scene, rng)
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
        colour = _jitter(rng, choices[int(rng.integers(len(choices)))], 0.04)
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
    colour = _jitter(rng, choices[int(rng.integers(len(choices)))], 0.04)
    az = float(rng.uniform(0, 2 * math.pi))
    u = np.array([math.cos(az), math.sin(az), 0.0], dtype=np.float32)
    c, r = scene.parts[idx[0]].prim.bounds()
    return Defect("FM", np.asarray(c, np.float32), u, u.copy(), idx[0], size=float(r), colour=colour,
                  hard=False, placement="face", face_parts=idx)


def face_mismatch_mask(defect: Defect, p: np.ndarray, n: np.ndarray, part: np.ndarray,
                       centres: np.ndarray) -> np.ndarray:
    """Bool ``(N,)``: points ``p (N, 3)`` (geometric normals ``n (N, 3)``, local frame; part index
    ``part (N,)``; ``centres (P, 3)`` the parts' bounding centres) on the FM defect's outer faces: on
    one of ``defect.face_parts``, ``n . u > FACE_COS``, ``|n_z| < 0.5`` and on the ``u`` side of its
    part's centre (not the inside of a bore, whose far wall also faces ``u``)."""
    u = defect.normal
    return (np.isin(part, defect.face_parts) & (n @ u > FACE_COS) & (np.abs(n[:, 2]) < 0.5)
            & (np.einsum("ij,j->i", p - centres[part], u) > 0))


def texture_noise(p: np.ndarray, waves: np.ndarray) -> np.ndarray:
    """Smooth 3D noise ``(N,)`` in about [-1, 1]: ``mean_k cos(f_k . p + phi_k) * sqrt(2)``."""
    return (np.cos(p @ waves[:, :3].T + waves[:, 3]).mean(axis=1) * np.float32(math.sqrt(2.0))).astype(np.float32)


def grain_noise(p: np.ndarray, cells_per_unit: float = 140.0) -> np.ndarray:
    """Per-voxel white noise ``(N,)`` in [-1, 1] from an integer hash of ``floor(p * cells)``."""
    q = np.floor(p * cells_per_unit).astype(np.int64)
    h = (q[:, 0] * 73856093) ^ (q[:, 1] * 19349663) ^ (q[:, 2] * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h & 1023).astype(np.float32) / 511.5 - 1.0).astype(np.float32)


def _hash2(qx: np.ndarray, qy: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Integer hash of grid cells -> uniform floats in [0, 1) ``(N,)``."""
    h = (qx * 73856093) ^ (qy * 19349663) ^ np.int64(seed * 83492791 + salt * 2654435761)
    h = (h ^ (h >> 15)) * 2246822519
    h = (h ^ (h >> 13)) * 3266489917
    h = h ^ (h >> 16)
    return ((h & 0xFFFFFF).astype(np.float32) / np.float32(0x1000000)).astype(np.float32)


def dust(xy: np.ndarray, seed: int, density: float, cell: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Dust specks on the tray plane: ``(hit (N,) bool, tone (N,) float)`` for points ``xy (N, 2)``.

    The plane is cut into ``cell``-sized squares; a square holds one round speck with probability
    ``density``, with centre, radius (4-12 mm) and tone (dark / grey / light) drawn from a hash of the
    square's index and ``seed``, so every camera sees the same specks.
    """
    q = np.floor(xy / cell).astype(np.int64)
    qx, qy = q[:, 0], q[:, 1]
    present = _hash2(qx, qy, seed, 1) < density
    r = 0.004 + 0.008 * _hash2(qx, qy, seed, 2)
    cx = (q[:, 0] + 0.5) * cell + (_hash2(qx, qy, seed, 3) - 0.5) * (cell - 2 * r)
    cy = (q[:, 1] + 0.5) * cell + (_hash2(qx, qy, seed, 4) - 0.5) * (cell - 2 * r)
    hit = present & ((xy[:, 0] - cx) ** 2 + (xy[:, 1] - cy) ** 2 < r * r)
    tone = np.array([0.12, 0.5, 0.9], dtype=np.float32)[(3 * _hash2(qx, qy, seed, 5)).astype(np.int64).clip(0, 2)]
    return hit, tone


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
