"""Plane-induced homographies between the views of a camera rig, for the ``geometry`` fusion.

The flow layer's view of a rig (:func:`multiflow.data.load_camera_rig` reads the side file): one
camera dict per view, in the flow's view order, in the JSON form of ``cameras.json``
(``{"name", "width", "height", "fx", "fy", "cx", "cy", "R", "t"}``, world-to-camera
``x_cam = R x_world + t``), plus the height ``z0`` of the plane the features are assumed to lie on
(the support plane ``z = 0`` by default; ``docs/data-format.md``).

Homography. A world point ``(x, y, z0)`` of the plane projects into camera ``v`` as
``lambda_v (u, v, 1)^T = G_v (x, y, 1)^T`` with ``G_v = K_v [r1 | r2 | z0 r3 + t]`` (``r_k`` the columns
of ``R_v``, ``lambda_v`` the depth). Pixels are expressed in the normalised coordinates of
``torch.nn.functional.grid_sample`` (``align_corners=False``: ``-1`` / ``+1`` are the outer edges of the
image, ``A_v = [[2/W, 0, -1], [0, 2/H, -1], [0, 0, 1]]``), which are the same for the image and for
its feature grid (the backbone sees the whole image resized, so feature cell ``(r, c)`` of an
``h x w`` grid has the normalised centre ``((2c + 1)/w - 1, (2r + 1)/h - 1)``). Then

    ``q_j ~ H_ji q_i``,  ``H_ji = A_j G_j G_i^{-1} A_i^{-1}``          (target ``i`` -> source ``j``)

and ``p = G_i^{-1} A_i^{-1} q_i`` has third coordinate ``1 / lambda_i``: a target position sees the
plane in front of camera ``i`` iff ``d_i . q_i > 0`` (``d_i`` the third row of ``G_i^{-1} A_i^{-1}``),
and the plane point is in front of camera ``j`` iff additionally ``(H_ji q_i)_3 > 0``.

Everything of the rig the flow needs is these ``V x V`` homographies and ``V`` depth rows; they are
computed from the rig (stored in the flow's config, hence in the model bundle) in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from multiflow.errors import ConfigError

CAMERA_KEYS = ("name", "width", "height", "fx", "fy", "cx", "cy", "R", "t")


def camera_rig_config(cameras: Sequence[Any], view_names: Sequence[str], plane_height: float = 0.0,
                      source: str = "the camera rig") -> dict[str, Any]:
    """The flow's ``camera_rig`` config: ``{"views": [camera dict per view, in view order],
    "plane_height": z0}`` from cameras with the attributes (or keys) of :data:`CAMERA_KEYS`
    (e.g. :class:`multiflow.data.cameras.CameraView`), matched to ``view_names`` BY NAME.

    Raises:
        ConfigError: a view without a camera of that name in ``source``.
    """
    def get(cam: Any, key: str) -> Any:
        return cam[key] if isinstance(cam, dict) else getattr(cam, key)

    by_name = {str(get(c, "name")): c for c in cameras}
    missing = [v for v in view_names if v not in by_name]
    if missing:
        raise ConfigError(f"{source} has no camera for the views {missing} (its cameras: {sorted(by_name)}); "
                          "the geometry fusion maps views to cameras by name")
    views = []
    for v in view_names:
        c = by_name[v]
        views.append({
            "name": str(v), "width": int(get(c, "width")), "height": int(get(c, "height")),
            **{k: float(get(c, k)) for k in ("fx", "fy", "cx", "cy")},
            "R": np.asarray(get(c, "R"), dtype=np.float64).tolist(),
            "t": np.asarray(get(c, "t"), dtype=np.float64).tolist(),
        })
    return {"views": views, "plane_height": float(plane_height)}


def _plane_matrix(cam: dict[str, Any], z0: float) -> np.ndarray:
    """``A G = A K [r1 | r2 | z0 r3 + t]``: plane ``(x, y, 1)`` -> normalised image coordinates."""
    K = np.array([[cam["fx"], 0.0, cam["cx"]], [0.0, cam["fy"], cam["cy"]], [0.0, 0.0, 1.0]])
    R, t = np.asarray(cam["R"], dtype=np.float64), np.asarray(cam["t"], dtype=np.float64)
    G = K @ np.stack([R[:, 0], R[:, 1], z0 * R[:, 2] + t], axis=1)
    A = np.array([[2.0 / cam["width"], 0.0, -1.0], [0.0, 2.0 / cam["height"], -1.0], [0.0, 0.0, 1.0]])
    return A @ G


def plane_homographies(rig: dict[str, Any], n_views: int, view_names: Sequence[str] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(H (V, V, 3, 3), d (V, 3))`` of the module docstring for a ``camera_rig`` config:
    ``H[i, j]`` maps normalised target-``i`` coordinates to source ``j``; ``d[i]`` the depth row of ``i``.

    Raises:
        ConfigError: wrong number of cameras, names not those of the views (in order), a camera whose
            plane matrix is singular (it sees the plane edge-on).
    """
    if not isinstance(rig, dict) or not isinstance(rig.get("views"), list):
        raise ConfigError(f"camera_rig must be {{'views': [...], 'plane_height': z}}, got {type(rig).__name__}")
    cams = rig["views"]
    if len(cams) != n_views:
        raise ConfigError(f"camera_rig has {len(cams)} cameras for {n_views} views")
    names = [c.get("name") for c in cams]
    if view_names is not None and list(view_names) != names:
        raise ConfigError(f"camera_rig cameras {names} are not the views {list(view_names)} in view order")
    z0 = float(rig.get("plane_height", 0.0))
    M = []
    for c in cams:
        missing = [k for k in CAMERA_KEYS if k not in c]
        if missing:
            raise ConfigError(f"camera_rig camera {c.get('name')!r} lacks {missing}")
        M.append(_plane_matrix(c, z0))
    inv = []
    for c, m in zip(cams, M):
        if abs(np.linalg.det(m)) < 1e-12 * max(np.abs(m).max(), 1.0) ** 3:
            raise ConfigError(f"camera {c['name']!r} sees the plane z = {z0} edge-on (no homography)")
        inv.append(np.linalg.inv(m))
    H = np.stack([np.stack([M[j] @ inv[i] for j in range(n_views)]) for i in range(n_views)])
    d = np.stack([inv[i][2] for i in range(n_views)])
    return H, d


def warp_grid(H: Tensor, d: Tensor, hh: int, ww: int) -> tuple[Tensor, Tensor]:
    """Sampling grid of the feature cells of the target in the source: ``H (3, 3)``, ``d (3,)`` ->
    ``grid (1, hh, ww, 2)`` (``grid_sample`` order ``(x, y)``, ``align_corners=False``) and ``valid
    (1, 1, hh, ww)`` float: 1 where the cell centre's plane point is in front of both cameras and
    lands inside the source image, else 0 (the grid is then moved outside, ``(2, 2)``).

    Elementwise arithmetic in the dtype of ``H`` (fp32 or fp64; no matmul, so autocast leaves it
    alone and the ONNX graph is plain arithmetic).
    """
    dev, dt = H.device, H.dtype
    ys = (torch.arange(hh, device=dev, dtype=dt) * 2 + 1) / hh - 1
    xs = (torch.arange(ww, device=dev, dtype=dt) * 2 + 1) / ww - 1
    y, x = ys[:, None].expand(hh, ww), xs[None, :].expand(hh, ww)
    hx = H[0, 0] * x + H[0, 1] * y + H[0, 2]
    hy = H[1, 0] * x + H[1, 1] * y + H[1, 2]
    hz = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    front = (d[0] * x + d[1] * y + d[2] > 0) & (hz > 0)
    safe = torch.where(front, hz, torch.ones_like(hz))
    gx, gy = hx / safe, hy / safe
    valid = front & (gx.abs() <= 1) & (gy.abs() <= 1)
    out = torch.full_like(gx, 2.0)
    grid = torch.stack([torch.where(valid, gx, out), torch.where(valid, gy, out)], dim=-1)
    return grid[None], valid.to(dt)[None, None]
