"""CPU ray-cast renderer: one image, part-id buffer and defect mask per camera.

Per pixel: cast the camera ray (in the object's local frame) at the tray plane ``z = 0`` and at the
object's primitives (only rays that pass the object's bounding sphere), keep the nearest hit, then
shade it with

    c = albedo * (ambient + key * max(n . l, 0) * (1 - 0.8 s)) + k_s * max(n . h, 0)^alpha * key * (1 - s)

(Lambert + Blinn-Phong, ``l`` the key light, ``h`` the half vector, ``s`` = 1 where a shadow ray
towards the light hits the object), a sky fill term ``0.12 * max(n_z, 0)``, gamma 1/2.2 and sensor
noise. Surface defects are painted on the 3D hit points, so a defect shows exactly in the views that
see that piece of surface, and its mask is the set of pixels whose visible surface point lies in the
defect (for a missing part: where the part would have been visible; for a foreign object or a
re-coloured part or face: the visible pixels of that part or face; for a one-sided label: both
label spots, the label that is there and where the other one is missing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multiflow.synth.geometry import INF, Camera, sphere_hit_mask
from multiflow.synth.defects import FACE_CODES, apply_surface_defect, face_mismatch_mask
from multiflow.synth.families import Part
from multiflow.synth.scene import Scene
from multiflow.synth.textures import dust, grain_noise, texture_noise

SURFACE_CODES = ("AK", "BX", "CH", "HS", "PS", "ZW")


@dataclass
class ViewRender:
    """One camera's render: ``image (H, W, 3) uint8``, ``ids (H, W) int16`` (part index in
    ``scene.visible_parts()``, -1 = tray), ``silhouette (H, W) bool``, ``mask (H, W) bool``."""

    image: np.ndarray
    ids: np.ndarray
    silhouette: np.ndarray
    mask: np.ndarray


def _bounding_sphere(parts: list[Part]) -> tuple[np.ndarray, float]:
    bounds = [p.prim.bounds() for p in parts]
    centers = np.stack([b[0] for b in bounds]).astype(np.float32)
    c = centers.mean(axis=0)
    r = max(float(np.linalg.norm(bc - c)) + br for bc, br in bounds)
    return c, r * 1.001 + 1e-4


def _nearest(parts: list[Part], o: np.ndarray, d: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit over ``parts`` of rays from the shared ``origin (3,)`` (``o`` is it broadcast to
    ``(N, 3)``): ``t (N,)``, normal ``(N, 3)``, part index ``(N,)`` (-1 = none)."""
    best = np.full(o.shape[0], INF, dtype=np.float32)
    normal = np.zeros_like(d)
    ids = np.full(o.shape[0], -1, dtype=np.int16)
    for i, part in enumerate(parts):
        c, r = part.prim.bounds()
        sel = np.flatnonzero(sphere_hit_mask(origin, d, np.asarray(c, np.float32), r * 1.001 + 1e-4))
        if sel.size == 0:
            continue
        t, n = part.prim.hit(o[sel], d[sel])
        upd = t < best[sel]
        idx = sel[upd]
        best[idx] = t[upd]
        normal[idx] = n[upd]
        ids[idx] = i
    return best, normal, ids


def _occluded(parts: list[Part], o: np.ndarray, light: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """Bool ``(N,)``: the shadow ray ``o + t light`` (t > 0, ``light (3,)`` unit) hits any part."""
    out = np.zeros(o.shape[0], dtype=bool)
    cand = np.flatnonzero(sphere_hit_mask(o, light, center, radius))
    if cand.size == 0:
        return out
    oo = o[cand]
    dd = np.broadcast_to(light, oo.shape)
    hit = np.zeros(cand.size, dtype=bool)
    for part in parts:
        t_in, t_out, _ = part.prim.interval(oo, dd)
        hit |= (t_in <= t_out) & (t_out > 0) & (t_in > 0)
    out[cand] = hit
    return out


def render_view(
    scene: Scene, camera: Camera, *, noise_seed: int, rays: tuple[np.ndarray, np.ndarray] | None = None,
) -> ViewRender:
    """Render ``scene`` from ``camera`` (see the module docstring for the shading model).

    ``rays``: ``camera.rays()`` when the caller already has them (they only depend on the camera).
    """
    size = camera.size
    Rz = scene.rotation
    T = np.array([scene.offset[0], scene.offset[1], 0.0], dtype=np.float32)
    _, d_w = camera.rays() if rays is None else rays
    origin = ((camera.position.astype(np.float32) - T) @ Rz).astype(np.float32)  # local = Rz^T (x - T)
    d = d_w @ Rz
    o = np.broadcast_to(origin, d.shape)
    light = (scene.light_dir @ Rz).astype(np.float32)
    n_pix = o.shape[0]

    parts = scene.visible_parts()
    n_base = len(scene.parts) - (1 if scene.removed >= 0 else 0)  # ids >= n_base are foreign objects
    center, radius = _bounding_sphere(parts + ([scene.parts[scene.removed]] if scene.removed >= 0 else []))

    # tray plane z = 0 (every camera ray points downwards)
    with np.errstate(divide="ignore"):
        t_tray = np.where(d[:, 2] < 0, -origin[2] / d[:, 2], INF).astype(np.float32)

    ids = np.full(n_pix, -1, dtype=np.int16)
    t_obj = np.full(n_pix, INF, dtype=np.float32)
    n_obj = np.zeros((n_pix, 3), dtype=np.float32)
    mask = np.zeros(n_pix, dtype=bool)
    cand = np.flatnonzero(sphere_hit_mask(origin, d, center, radius))
    if cand.size:
        oc, dc = o[cand], d[cand]
        t, nrm, pid = _nearest(parts, oc, dc, origin)
        if scene.removed >= 0:
            t_ghost, _ = scene.parts[scene.removed].prim.hit(oc, dc)
            ghost = (t_ghost < t) & (t_ghost < t_tray[cand])
            mask[cand[ghost]] = True
        t_obj[cand], n_obj[cand], ids[cand] = t, nrm, pid
    obj = np.flatnonzero(t_obj < t_tray)
    ids[t_obj >= t_tray] = -1

    colour = np.zeros((n_pix, 3), dtype=np.float32)
    half = (light[None, :] - d)
    half /= np.linalg.norm(half, axis=1, keepdims=True)

    # ---- object pixels
    if obj.size:
        p = origin + t_obj[obj, None] * d[obj]
        n = n_obj[obj]
        pid = ids[obj].astype(np.int64)
        albedo = np.stack([pp.material.albedo for pp in parts])[pid].astype(np.float32)
        spec = np.array([pp.material.specular for pp in parts], dtype=np.float32)[pid]
        shin = np.array([pp.material.shininess for pp in parts], dtype=np.float32)[pid]
        metal = np.array([pp.material.metal for pp in parts], dtype=bool)[pid]
        tex = np.array([pp.material.texture for pp in parts], dtype=np.float32)[pid]
        grn = np.array([pp.material.grain for pp in parts], dtype=np.float32)[pid]
        albedo *= (1.0 + tex * texture_noise(p, scene.waves) + grn * grain_noise(p))[:, None]
        face = None
        if scene.defect is not None and scene.defect.code in FACE_CODES:  # geometric normals, before the ribs
            centres = np.stack([np.asarray(pp.prim.bounds()[0], np.float32) for pp in parts])
            face = face_mismatch_mask(scene.defect, p, n, pid, centres)
        spots = None
        if scene.label is not None:  # the labelled variant: paper (or print) on the label faces
            body = next(i for i, pp in enumerate(parts) if pp is scene.parts[scene.label.part])
            spots = scene.label.spots(p, n, pid == body)
            paper = np.isin(spots, scene.label.sides) & (spots != 0)
            albedo[paper] = scene.label.colour[None, :] * (1.0 + 0.03 * grain_noise(p[paper]))[:, None]
            spec[paper] = 0.05
        for i, pp in enumerate(parts):
            mat = pp.material
            if mat.ribs <= 0 and mat.slot is None:
                continue
            sel = np.flatnonzero(pid == i)
            if sel.size == 0:
                continue
            c = np.asarray(pp.prim.center)
            rel = p[sel] - c
            if mat.ribs > 0:  # bump ribs on a vertical cylinder's side: tilt n along the tangent
                side = np.abs(n[sel, 2]) < 0.5
                ang = np.arctan2(rel[:, 1], rel[:, 0])
                tang = np.stack([-np.sin(ang), np.cos(ang), np.zeros_like(ang)], axis=1)
                bump = (mat.rib_amp * np.sin(mat.ribs * ang) * side)[:, None]
                nn = n[sel] + bump * tang
                n[sel] = nn / np.linalg.norm(nn, axis=1, keepdims=True)
                albedo[sel] *= (1.0 - 0.08 * side * (np.cos(mat.ribs * ang) > 0.6))[:, None]
            if mat.slot is not None:  # screw slot: dark bar across the top cap
                u = np.array([np.cos(mat.slot), np.sin(mat.slot), 0.0], dtype=np.float32)
                across = np.abs(rel @ u) < 0.014
                top = n[sel, 2] > 0.5
                albedo[sel[across & top]] *= 0.15
        if scene.defect is not None:
            code = scene.defect.code
            if code in SURFACE_CODES:
                m = apply_surface_defect(scene.defect, p, n, pid, albedo, spec, scene.waves)
                mask[obj[m]] = True
            elif code == "YW":
                mask[obj[pid >= n_base]] = True
            elif code == "CI":
                target = scene.parts[scene.defect.part]
                k = next(i for i, pp in enumerate(parts) if pp is target)
                sel = pid == k
                albedo[sel] *= (scene.defect.colour / np.maximum(target.material.albedo, 1e-3))[None, :]
                mask[obj[sel]] = True
            elif code in FACE_CODES:
                target = scene.parts[scene.defect.part].material.albedo
                albedo[face] *= (scene.defect.colour / np.maximum(target, 1e-3))[None, :]
                if code == "ML":
                    spec[face] *= np.float32(scene.defect.gloss)
                    shin[face] *= np.float32(scene.defect.sharpness)
                mask[obj[face]] = True
            elif code == "LB":  # both label spots: the label that is there and the one that is missing
                mask[obj[spots != 0]] = True
        ndl = np.maximum(n @ light, 0.0)
        shadow = _occluded(parts, p + n * 2e-3, light, center, radius)
        key = scene.light * (1.0 - 0.8 * shadow)
        ndh = np.maximum(np.einsum("ij,ij->i", n, half[obj]), 0.0)
        highlight = spec * ndh**shin * scene.light * (1.0 - shadow)
        fill = 0.12 * np.maximum(n[:, 2], 0.0)
        tint = np.where(metal[:, None], albedo / np.maximum(albedo.max(axis=1, keepdims=True), 1e-3), 1.0)
        colour[obj] = albedo * (scene.ambient + fill + key * ndl)[:, None] + highlight[:, None] * tint

    # ---- tray pixels
    tray = np.flatnonzero(ids < 0)
    if tray.size:
        p = origin + t_tray[tray, None] * d[tray]
        x_w = p @ Rz.T + T  # world coordinates so the tray pattern does not rotate with the object
        shade = 1.0 + x_w[:, 0] * scene.tray_gradient[0] + x_w[:, 1] * scene.tray_gradient[1]
        shade += 0.02 * grain_noise(x_w, 90.0)
        rim = np.maximum(np.abs(x_w[:, 0]), np.abs(x_w[:, 1])) > 2.0
        shade = np.where(rim, shade * 0.55, shade)
        albedo = scene.tray_albedo[None, :] * shade[:, None]
        hit, tone = dust(x_w[:, :2], scene.dust_seed, scene.dust_density)
        albedo[hit] = 0.3 * albedo[hit] + 0.7 * tone[hit, None]
        shadow = _occluded(parts, p + np.array([0, 0, 1e-3], np.float32), light, center, radius)
        key = scene.light * (1.0 - 0.75 * shadow) * max(float(light[2]), 0.0)
        colour[tray] = albedo * (scene.ambient + 0.25 + key)[:, None]

    rng = np.random.default_rng(noise_seed)
    colour = np.clip(colour * scene.exposure, 0.0, 1.0) ** (1.0 / 2.2)
    colour += rng.normal(0.0, 1.2 / 255.0, colour.shape).astype(np.float32)
    image = (np.clip(colour, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(size, size, 3)
    ids2 = ids.reshape(size, size)
    return ViewRender(image=image, ids=ids2, silhouette=ids2 >= 0, mask=mask.reshape(size, size))
