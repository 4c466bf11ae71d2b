"""NDN ground truth: a sphere of fixed physical diameter at each nucleus' centre of gravity.

Coordinates are voxel indices (z, y, x); spacings are (z, y, x) in the same unit as the
diameter (micrometres, or voxels of an isotropic grid with spacing (1, 1, 1)).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from .labels import centroids  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


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
