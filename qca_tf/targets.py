"""NDN ground truth: a sphere of fixed physical diameter at each nucleus' centre of gravity.

Coordinates are voxel indices (z, y, x); spacings are (z, y, x) in the same unit as the
diameter (micrometres, or voxels of an isotropic grid with spacing (1, 1, 1)).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)


def centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of gravity of every label id > 0 of a (z, y, x) label image.

    Returns ``ids`` (n,) int64 in increasing order and ``centres`` (n, 3) float64 voxel
    coordinates (z, y, x). One pass over the volume, one z slice at a time.
    """
    if labels.ndim != 3:
        raise InputError(f"labels have shape {labels.shape}; expected a 3D (z, y, x) label image")
    if labels.dtype.kind not in "biu":
        raise InputError(f"labels have dtype {labels.dtype}; expected integer ids")
    if labels.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 3), np.float64)
    if labels.dtype.kind == "i" and labels.min() < 0:
        raise InputError("labels contain negative ids; expected 0 (background) and positive ids")
    n = int(labels.max()) + 1
    yy, xx = (g.ravel() for g in np.indices(labels.shape[1:], dtype=np.float64))
    count = np.zeros(n, np.float64)
    sums = np.zeros((3, n), np.float64)
    for z, plane in enumerate(labels):
        flat = plane.ravel().astype(np.intp)
        c = np.bincount(flat, minlength=n)
        count += c
        sums[0] += z * c
        sums[1] += np.bincount(flat, weights=yy, minlength=n)
        sums[2] += np.bincount(flat, weights=xx, minlength=n)
    ids = np.flatnonzero(count[1:]) + 1
    centres = (sums[:, ids] / count[ids]).T
    return ids.astype(np.int64), np.ascontiguousarray(centres)


def centre_spheres(shape: Sequence[int], centres: np.ndarray, spacing_zyx: Sequence[float],
                   diameter_um: float) -> np.ndarray:
    """uint8 0/1 (z, y, x) mask of spheres of physical ``diameter_um`` around ``centres`` (n, 3).

    A voxel belongs to a sphere when its physical distance to the centre is <= diameter / 2,
    so anisotropic spacing gives an ellipsoid in voxels. Each sphere whose nearest voxel lies
    inside the volume includes that voxel. Only a bounding box around each centre is touched.
    """
    if not diameter_um > 0:
        raise ValueError(f"diameter_um={diameter_um!r} must be > 0")
    shape = tuple(int(n) for n in shape)
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    radius = diameter_um / 2.0
    r2 = radius * radius * (1 + 1e-9)  # tolerate rounding for voxels exactly on the sphere
    half = radius / spacing
    mask = np.zeros(shape, np.uint8)
    for centre in centres:
        lo = [max(0, math.ceil(c - h)) for c, h in zip(centre, half)]
        hi = [min(n - 1, math.floor(c + h)) for c, h, n in zip(centre, half, shape)]
        if all(a <= b for a, b in zip(lo, hi)):
            dz, dy, dx = ((np.arange(a, b + 1) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing))
            inside = dz[:, None, None] ** 2 + dy[None, :, None] ** 2 + dx[None, None, :] ** 2 <= r2
            box = mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
            box |= inside.astype(np.uint8)
        nearest = tuple(int(math.floor(c + 0.5)) for c in centre)
        if all(0 <= i < n for i, n in zip(nearest, shape)):
            mask[nearest] = 1
    return mask


def ndn_target(labels: np.ndarray, spacing_zyx: Sequence[float], diameter_um: float) -> np.ndarray:
    """NDN ground truth: uint8 spheres of ``diameter_um`` at the centroid of each label of ``labels``."""
    _, centres = centroids(labels)
    return centre_spheres(labels.shape, centres, spacing_zyx, diameter_um)
