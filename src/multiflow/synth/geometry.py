"""Cameras, rays and analytic ray-primitive intersection (numpy, float32, CPU).

Conventions
-----------
* World frame: right-handed, ``z`` up; the tray is the plane ``z = 0``.
* Pinhole camera: world-to-camera rotation ``R`` (rows = camera right, down, forward axes) and
  translation ``t = -R c`` for a camera centre ``c``; intrinsics ``K = [[f, 0, cx], [0, f, cy],
  [0, 0, 1]]``. A world point ``X`` projects to ``K (R X + t)``. Pixel ``(u, v)`` (column, row) is
  sampled at its centre ``(u + 0.5, v + 0.5)``.
* Rays are bundles of ``N`` origins ``o (N, 3)`` and unit directions ``d (N, 3)``; a hit is the
  smallest ``t > 0`` with ``o + t d`` on the surface, ``inf`` where there is none.

Primitives are convex solids, each intersected analytically:

* :class:`Slabs`: an intersection of slabs ``lo_k <= a_k . x <= hi_k`` (boxes, hexagonal prisms),
  solved with the slab method (entry = max of per-slab entries, exit = min of exits);
* :class:`Cylinder`: a capped circular cylinder along a coordinate axis;
* :class:`Sphere`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

INF = np.float32(np.inf)


@dataclass(frozen=True)
class Camera:
    """One pinhole camera. ``position`` ``(3,)``, ``R`` ``(3, 3)`` world-to-camera, ``focal`` px."""

    name: str
    position: np.ndarray
    R: np.ndarray
    focal: float
    size: int

    @property
    def t(self) -> np.ndarray:
        return -self.R @ self.position

    @property
    def K(self) -> np.ndarray:
        c = self.size / 2.0
        return np.array([[self.focal, 0.0, c], [0.0, self.focal, c], [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": self.size,
            "K": self.K.round(6).tolist(),
            "R": self.R.round(8).tolist(),
            "t": self.t.round(8).tolist(),
            "position": self.position.round(8).tolist(),
        }

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project world points ``(N, 3)`` to pixel coordinates ``(N, 2)`` (u = column, v = row)."""
        cam = points @ self.R.T + self.t
        uvw = cam @ self.K.T
        return uvw[:, :2] / uvw[:, 2:3]

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """World-space rays through all pixel centres: origins and unit directions ``(H*W, 3)``.

        Row-major pixel order (``index = v * W + u``). ``d = R^T K^{-1} (u + .5, v + .5, 1)``.
        """
        s = self.size
        c = s / 2.0
        coords = (np.arange(s, dtype=np.float64) + 0.5 - c) / self.focal
        x, y = np.meshgrid(coords, coords)  # x varies along columns, y along rows
        d_cam = np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 3)
        d = d_cam @ self.R  # (R^T d_cam^T)^T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = np.broadcast_to(self.position, d.shape)
        return o.astype(np.float32), d.astype(np.float32)


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera rotation for a camera at ``position`` looking at ``target``.

    Rows: right, down, forward (so image rows grow downwards).
    """
    fwd = target - position
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd])


def camera_rig(
    *, n_views: int, size: int, distance: float = 3.6, elevation_deg: float = 38.0,
    fov_deg: float = 31.0, target_z: float = 0.15,
) -> list[Camera]:
    """The fixed camera rig: ``C1`` straight above the tray, ``C2..C{V}`` evenly spaced around it.

    Side cameras sit at ``distance`` from the target, ``elevation_deg`` above the tray plane, looking
    down at the object; the focal length follows ``f = (size / 2) / tan(fov / 2)``.
    """
    if not 1 <= n_views <= 9:
        raise ValueError(f"n_views must be in 1..9 (Real-IAD camera names are C1..C9), got {n_views}")
    focal = (size / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    target = np.array([0.0, 0.0, target_z])
    cams = [Camera("C1", target + np.array([0.0, 0.0, distance]),
                   look_at(target + np.array([0.0, 0.0, distance]), target, np.array([0.0, 1.0, 0.0])),
                   focal, size)]
    n_side = n_views - 1
    el = math.radians(elevation_deg)
    for k in range(n_side):
        az = 2.0 * math.pi * k / max(n_side, 1) - math.pi / 2.0
        pos = target + distance * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        cams.append(Camera(f"C{k + 2}", pos, look_at(pos, target, np.array([0.0, 0.0, 1.0])), focal, size))
    return cams


@dataclass
class Slabs:
    """Convex solid ``{x : lo_k <= a_k . x <= hi_k for all k}``; ``axes`` ``(K, 3)`` unit vectors."""

    axes: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    bound_center: np.ndarray
    bound_radius: float

    def interval(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entry/exit distances ``(N,)`` and the index of the entry slab ``(N,)`` (its sign in ``side``)."""
        n = o.shape[0]
        t_in = np.full(n, -INF, dtype=np.float32)
        t_out = np.full(n, INF, dtype=np.float32)
        which = np.zeros(n, dtype=np.int16)  # +-(k+1): entered through hi (+) or lo (-) face of slab k
        with np.errstate(divide="ignore", invalid="ignore"):
            for k in range(self.axes.shape[0]):
                a = self.axes[k]
                po = o @ a
                pd = d @ a
                inv = np.float32(1.0) / pd
                t0 = (self.lo[k] - po) * inv
                t1 = (self.hi[k] - po) * inv
                near = np.minimum(t0, t1)
                far = np.maximum(t0, t1)
                # rays parallel to the slab: inside -> (-inf, inf), outside -> empty
                par = pd == 0
                if par.any():
                    inside = (po >= self.lo[k]) & (po <= self.hi[k])
                    near = np.where(par, np.where(inside, -INF, INF), near)
                    far = np.where(par, np.where(inside, INF, -INF), far)
                upd = near > t_in
                which = np.where(upd, np.where(pd < 0, k + 1, -(k + 1)), which).astype(np.int16)
                t_in = np.where(upd, near, t_in)
                t_out = np.minimum(t_out, far)
        return t_in, t_out, which

    def hit(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest positive hit ``t (N,)`` (inf on a miss) and outward normals ``(N, 3)``."""
        t_in, t_out, which = self.interval(o, d)
        ok = (t_in <= t_out) & (t_in > 0)
        t = np.where(ok, t_in, INF).astype(np.float32)
        k = np.abs(which).astype(np.int64) - 1
        k = np.clip(k, 0, self.axes.shape[0] - 1)
        normal = self.axes[k] * np.sign(which).astype(np.float32)[:, None]
        return t, normal.astype(np.float32)

    def bounds(self) -> tuple[np.ndarray, float]:
        """A bounding sphere (centre, radius) of the solid."""
        return self.bound_center, self.bound_radius


def box(center, half) -> Slabs:
    """Axis-aligned box with centre ``(3,)`` and half extents ``(3,)``."""
    c = np.asarray(center, dtype=np.float32)
    h = np.asarray(half, dtype=np.float32)
    return Slabs(np.eye(3, dtype=np.float32), c - h, c + h, c, float(np.linalg.norm(h)))


def hex_prism(center, apothem: float, half_height: float, angle: float = 0.0) -> Slabs:
    """Vertical hexagonal prism: 3 side slabs at 60 degrees (``|a_k . (x - c)| <= apothem``) + z slab."""
    c = np.asarray(center, dtype=np.float32)
    ang = angle + np.arange(3) * np.pi / 3.0
    axes = np.zeros((4, 3), dtype=np.float32)
    axes[:3, 0] = np.cos(ang)
    axes[:3, 1] = np.sin(ang)
    axes[3, 2] = 1.0
    proj = axes @ c
    ext = np.array([apothem, apothem, apothem, half_height], dtype=np.float32)
    radius = math.hypot(apothem / math.cos(math.pi / 6.0), half_height)
    return Slabs(axes, proj - ext, proj + ext, c, radius)


@dataclass
class Cylinder:
    """Capped circular cylinder along coordinate axis ``axis`` (0, 1, 2) through ``center``."""

    center: np.ndarray
    radius: float
    half_length: float
    axis: int = 2
    _perm: tuple[int, int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float32)
        self._perm = {0: (1, 2, 0), 1: (2, 0, 1), 2: (0, 1, 2)}[self.axis]

    def interval(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entry/exit ``(N,)`` and whether the entry is through a cap (bool ``(N,)``).

        Side: solve ``|(o - c)_perp + t d_perp|^2 = r^2``; caps: slab on the axis coordinate.
        """
        i, j, a = self._perm
        oc = o - self.center
        ox, oy, oz = oc[:, i], oc[:, j], oc[:, a]
        dx, dy, dz = d[:, i], d[:, j], d[:, a]
        A = dx * dx + dy * dy
        B = ox * dx + oy * dy
        C = ox * ox + oy * oy - np.float32(self.radius**2)
        disc = B * B - A * C
        with np.errstate(divide="ignore", invalid="ignore"):
            sq = np.sqrt(np.maximum(disc, 0))
            s_in = (-B - sq) / A
            s_out = (-B + sq) / A
            par = A < 1e-12
            s_in = np.where(par, np.where(C <= 0, -INF, INF), s_in)
            s_out = np.where(par, np.where(C <= 0, INF, -INF), s_out)
            s_in = np.where(disc < 0, INF, s_in)
            s_out = np.where(disc < 0, -INF, s_out)
            inv = np.float32(1.0) / dz
            h = np.float32(self.half_length)
            z0 = (-h - oz) * inv
            z1 = (h - oz) * inv
            zn = np.minimum(z0, z1)
            zf = np.maximum(z0, z1)
            zpar = dz == 0
            inside = np.abs(oz) <= h
            zn = np.where(zpar, np.where(inside, -INF, INF), zn)
            zf = np.where(zpar, np.where(inside, INF, -INF), zf)
        cap = zn > s_in
        t_in = np.maximum(s_in, zn)
        t_out = np.minimum(s_out, zf)
        return t_in.astype(np.float32), t_out.astype(np.float32), cap

    def hit(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t_in, t_out, cap = self.interval(o, d)
        ok = (t_in <= t_out) & (t_in > 0)
        t = np.where(ok, t_in, INF).astype(np.float32)
        i, j, a = self._perm
        tt = np.where(ok, t_in, 0)[:, None]
        p = o + tt * d - self.center
        n = np.zeros_like(p)
        n[:, i] = np.where(cap, 0, p[:, i])
        n[:, j] = np.where(cap, 0, p[:, j])
        n[:, a] = np.where(cap, np.sign(p[:, a]), 0)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return t, n.astype(np.float32)

    def bounds(self) -> tuple[np.ndarray, float]:
        return self.center, float(math.hypot(self.radius, self.half_length))

    def side_normal(self, p: np.ndarray) -> np.ndarray:
        """Outward normal ``(N, 3)`` of the curved side at points ``p (N, 3)`` (radial direction)."""
        i, j, _ = self._perm
        rel = p - self.center
        n = np.zeros_like(rel)
        n[:, i] = rel[:, i]
        n[:, j] = rel[:, j]
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


@dataclass
class Sphere:
    center: np.ndarray
    radius: float

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float32)

    def interval(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
        """Solve ``|o - c + t d|^2 = r^2`` (``d`` unit)."""
        oc = o - self.center
        b = np.einsum("ij,ij->i", oc, d)
        c = np.einsum("ij,ij->i", oc, oc) - np.float32(self.radius**2)
        disc = b * b - c
        sq = np.sqrt(np.maximum(disc, 0))
        t_in = np.where(disc >= 0, -b - sq, INF)
        t_out = np.where(disc >= 0, -b + sq, -INF)
        return t_in.astype(np.float32), t_out.astype(np.float32), None

    def hit(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t_in, t_out, _ = self.interval(o, d)
        ok = (t_in <= t_out) & (t_in > 0)
        t = np.where(ok, t_in, INF).astype(np.float32)
        p = o + np.where(ok, t_in, 0)[:, None] * d
        n = (p - self.center) / np.float32(self.radius)
        return t, n.astype(np.float32)

    def bounds(self) -> tuple[np.ndarray, float]:
        return self.center, float(self.radius)


@dataclass
class Drilled:
    """A convex solid ``outer`` with a cylindrical hole ``hole`` (CSG difference ``outer \\ hole``).

    The hole must pass through ``outer`` (open at both ends). Along a ray, with ``outer``'s interval
    ``[a0, a1]`` and the hole's ``[b0, b1]``: the first surface point is ``a0`` unless ``a0`` lies in the
    hole, in which case it is the hole's exit ``b1`` (the inner wall, normal pointing to the axis) if
    ``b1 <= a1``; otherwise the ray passes through the hole.
    """

    outer: Slabs | Cylinder
    hole: Cylinder

    @property
    def center(self) -> np.ndarray:
        return self.outer.bounds()[0]

    def _first(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a0, a1, _ = self.outer.interval(o, d)
        b0, b1, _ = self.hole.interval(o, d)
        in_a = a0 <= a1
        a0_in_hole = (b0 <= b1) & (a0 >= b0) & (a0 <= b1)
        wall = in_a & a0_in_hole & (b1 <= a1)
        t = np.where(in_a & ~a0_in_hole, a0, np.where(wall, b1, INF))
        t = np.where(t > 0, t, INF).astype(np.float32)
        return t, wall

    def interval(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
        """``(t, t, None)`` with ``t`` the first hit (enough for shadow tests, which need any hit)."""
        t, _ = self._first(o, d)
        return t, t, None

    def hit(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t, wall = self._first(o, d)
        _, n = self.outer.hit(o, d)
        if wall.any():
            p = o[wall] + np.where(np.isfinite(t[wall]), t[wall], 0)[:, None] * d[wall]
            n = n.copy()
            n[wall] = -self.hole.side_normal(p)
        return t, n

    def bounds(self) -> tuple[np.ndarray, float]:
        return self.outer.bounds()


Primitive = Slabs | Cylinder | Sphere | Drilled


def sphere_hit_mask(o: np.ndarray, d: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """Bool ``(N,)``: rays ``o + t d`` that pass within ``radius`` of ``center`` (closest approach not
    behind the origin by more than ``radius``).

    ``o`` is ``(3,)`` (one shared origin, e.g. a pinhole camera) or ``(N, 3)``; ``d`` is ``(N, 3)`` or
    ``(3,)`` (one shared direction, e.g. shadow rays towards a directional light); unit ``d``.
    With ``b = (c - o) . d`` the squared ray-centre distance is ``|c - o|^2 - b^2``.
    """
    c = np.asarray(center, dtype=np.float32)
    if o.ndim == 1:
        oc = c - o
        b = d @ oc
        dist2 = np.float32(oc @ oc) - b * b
    elif d.ndim == 1:
        b = np.float32(c @ d) - o @ d
        oc2 = np.float32(c @ c) - 2.0 * (o @ c) + np.einsum("ij,ij->i", o, o)
        dist2 = oc2 - b * b
    else:
        oc = c[None, :] - o
        b = np.einsum("ij,ij->i", oc, d)
        dist2 = np.einsum("ij,ij->i", oc, oc) - b * b
    return (dist2 <= radius * radius) & (b > -radius)
