"""Object families of the synthetic data set: materials, parts and the five product families.

Every family is a function ``rng -> (parts, params)`` that draws one normal instance in the object's
*local* frame (``z`` up, the tray is ``z = 0``): dimensions, colours (from the palettes below, with a
small per-instance jitter) and the parts' materials. Class names follow Real-IAD's naming:
``bottle_cap`` (ribbed cap with top insert and tamper ring), ``lock_nut`` (drilled hex nut, CSG, with
a nylon insert ring whose colour goes with the metal), ``toy_brick`` (2x3 / 2x4 studded brick),
``plastic_plug`` (housing with two metal pins, strain relief and cable), ``terminal_block`` (base
rail, three housings with screw heads and coloured clips).

A part's ``group`` names the parts that always share one colour within an object; the colours a
group takes over the line are :data:`GROUP_PALETTES` (what the colour defects draw from).

Label variant (opt-in, only in lines that have the LB defect): :class:`Label` /
:func:`label_of` put a printed label on two opposite side faces of the body; a line then makes a
labelled and an unlabelled variant of each family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from multiflow.synth.geometry import Cylinder, Drilled, Primitive, box, hex_prism

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
    """One rigid piece of an object: a primitive (local frame) with its material. ``group``: the
    colour group (parts that always share a colour within one object); ``removable``: a QS defect
    may leave it out."""

    name: str
    prim: Primitive
    material: Material
    group: str = ""  # colour group (parts that always share a colour within one object)
    removable: bool = False


def rounded(x) -> list[float]:
    """``x`` flattened to a list of floats rounded to 5 decimals (the JSON instance records)."""
    return [round(float(v), 5) for v in np.asarray(x).ravel()]


def jitter_albedo(rng: np.random.Generator, rgb, amount: float = 0.06) -> np.ndarray:
    """``rgb`` times a uniform per-channel factor in ``1 +- amount``, clipped to [0, 1] (float32)."""
    return np.clip(np.asarray(rgb, dtype=np.float32) * (1.0 + rng.uniform(-amount, amount, 3)), 0, 1).astype(np.float32)


def _plastic(rng, rgb, **kw) -> Material:
    return Material(albedo=jitter_albedo(rng, rgb), specular=float(rng.uniform(0.06, 0.16)),
                    shininess=float(rng.uniform(30, 60)), **kw)


def _metal(rng, rgb, **kw) -> Material:
    return Material(albedo=jitter_albedo(rng, rgb, 0.04), specular=0.45, shininess=60.0, metal=True,
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


def canonical_class(name: str) -> str:
    """Family name for a class name or alias (``cap`` -> ``bottle_cap``); ValueError if unknown."""
    name = FAMILY_ALIASES.get(name, name)
    if name not in FAMILIES:
        raise ValueError(f"unknown synthetic class {name!r}; known: {sorted(FAMILIES)} "
                         f"(aliases {sorted(FAMILY_ALIASES)})")
    return name



# ----------------------------------------------------------------------------------- label variant


#: A spot belongs to a label face when ``|n . axis| > LABEL_COS`` and ``|n_z| < 0.5`` (geometric normals).
LABEL_COS = 0.6


@dataclass
class Label:
    """The labelled variant of a family: a printed label on the two opposite side faces ``+axis`` and
    ``-axis`` of the main body (local frame), a ``2 half_width x 2 half_height`` rectangle centred on
    ``centre`` seen along ``axis``. ``sides``: the faces that carry a label (``(1, -1)`` for every
    normal labelled object; one side only for the cross-view defect LB)."""

    part: int  # index of the body part in ``Scene.parts``
    axis: np.ndarray  # (3,) unit, horizontal
    centre: np.ndarray  # (3,)
    half_width: float
    half_height: float
    colour: np.ndarray  # (3,) albedo
    sides: tuple[int, ...] = (1, -1)

    def spots(self, p: np.ndarray, n: np.ndarray, on_part: np.ndarray) -> np.ndarray:
        """Int8 ``(N,)``: ``+1`` / ``-1`` for points ``p (N, 3)`` (geometric normals ``n (N, 3)``,
        local frame; ``on_part (N,)`` bool: the point is on the body) inside the label rectangle of the
        ``+axis`` / ``-axis`` face (whether or not that face carries a label), 0 elsewhere."""
        a = self.axis
        rel = p - self.centre
        s = n @ a
        tang = np.array([-a[1], a[0], 0.0], dtype=np.float32)
        on = (on_part & (np.abs(s) > LABEL_COS) & (np.abs(n[:, 2]) < 0.5) & (np.sign(rel @ a) == np.sign(s))
              & (np.abs(rel @ tang) < self.half_width) & (np.abs(rel[:, 2]) < self.half_height))
        return np.where(on, np.sign(s), 0).astype(np.int8)

    def to_dict(self) -> dict:
        return {"part": int(self.part), "axis": rounded(self.axis), "centre": rounded(self.centre),
                "half_width": round(float(self.half_width), 5), "half_height": round(float(self.half_height), 5),
                "colour": rounded(self.colour), "sides": [int(s) for s in self.sides]}


_PAPER_WHITE = (0.80, 0.80, 0.77)
_PRINT_BLACK = (0.05, 0.05, 0.055)


def label_of(family: str, parts: list[Part], params: dict) -> Label:
    """Where the labelled variant of ``family`` carries its labels: the long side faces (``+-y``) of
    the brick, the plug's housing and the middle terminal housing, the cap's shell, two opposite flats
    of the nut. White paper on dark or coloured bodies, black print on light ones."""
    names = [p.name for p in parts]
    y = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    if family == "toy_brick":
        nx, hz = params["studs"][0], params["half_height"]
        part, axis, hw, hh, z = "body", y, 0.3 * nx * params["pitch"], 0.55 * hz, hz
    elif family == "plastic_plug":
        s = params["scale"]
        part, axis, hw, hh, z = "housing", y, 0.18 * s, 0.55 * 0.17 * s, 0.17 * s
    elif family == "terminal_block":
        s = params["scale"]
        part, axis, hw, hh, z = "housing_1", y, 0.12 * s, 0.6 * 0.14 * s, 0.08 + 0.14 * s
    elif family == "bottle_cap":
        part, axis, hw, hh, z = "shell", y, 0.45 * params["radius"], 0.3 * params["height"], 0.04 + params["height"] / 2
    elif family == "lock_nut":
        a = params["hex_angle"]
        part, axis = "nut", np.array([math.cos(a), math.sin(a), 0.0], dtype=np.float32)
        hw, hh, z = 0.35 * params["apothem"], 0.55 * params["half_height"], params["half_height"]
    else:
        raise ValueError(f"no label variant for family {family!r}")
    k = names.index(part)
    centre = np.asarray(parts[k].prim.bounds()[0], dtype=np.float32).copy()
    centre[2] = z
    body = parts[k].material.albedo
    colour = _PRINT_BLACK if float(np.mean(body)) > 0.45 else _PAPER_WHITE
    return Label(part=k, axis=axis, centre=centre, half_width=float(hw), half_height=float(hh),
                 colour=np.asarray(colour, dtype=np.float32))
