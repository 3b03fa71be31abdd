"""Procedural surface and tray patterns of the synthetic renderer, all pure functions of 3D points.

* :func:`texture_noise`: smooth 3D noise (a sum of plane waves) that modulates a part's albedo;
* :func:`grain_noise`: per-voxel white noise (an integer hash of the voxel index), the fine grain;
* :func:`dust`: round dust specks on the tray plane, from a hash of grid cells.

Every pattern is a function of the *surface point*, never of the pixel, so every camera sees the same
texture on the same piece of surface.
"""

from __future__ import annotations

import math

import numpy as np


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
