"""Quantitative criteria (DESIGN section 1, step 5) in physical units.

Per nucleus: volume (um^3), surface area (um^2), equivalent diameter (um), sphericity
(None for objects too small to have a measurable shape), centre of gravity (um) and
mean intensity; per time point: count and the sum, mean, sd, quartiles and median of
volume and surface area. Label images are (z, y, x) with 0 = background.
Centroids are ``voxel index * voxel size``: the centre of voxel (0, 0, 0) is the origin.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage, sparse
from skimage.measure import marching_cubes, mesh_surface_area

from .atomic import atomic_path
from .errors import InputError, OutputError
from .io import VoxelSize
from .labels import as_label_image, centroids

logger = logging.getLogger(__name__)

NUCLEUS_FIELDS = ["timepoint", "label", "volume_um3", "surface_um2", "equivalent_diameter_um", "sphericity",
                  "centroid_z_um", "centroid_y_um", "centroid_x_um", "mean_intensity"]
SUMMARY_FIELDS = ["timepoint", "count", "volume_sum_um3", "volume_mean_um3", "volume_sd_um3",
                  "surface_sum_um2", "surface_mean_um2", "surface_sd_um2",
                  "volume_q1_um3", "volume_median_um3", "volume_q3_um3",
                  "surface_q1_um2", "surface_median_um2", "surface_q3_um2"]

# Taubin (lambda/mu) smoothing of the marching-cubes mesh: a binary mask's staircase
# inflates the raw mesh area by about 9-14 %; 20 shrink-free smoothing steps bring
# spheres and ellipsoids down to about 1-2 % (see tests/test_criteria.py).
_TAUBIN_STEPS = 20
_TAUBIN_LAMBDA = 0.5
_TAUBIN_MU = -0.53

# Below these sizes a marching-cubes mesh of a voxel object says nothing about its
# shape (a 2-voxel object's smoothed mesh gives sphericity 80): no sphericity, and the
# surface is the exposed voxel-face area. Spheres of >= 96 voxels (3 um radius on a
# 0.8 x 0.8 x 1.75 um grid) measure within about 1 % (see tests/test_criteria.py).
SHAPE_MIN_VOXELS = 96
SHAPE_MIN_EXTENT = 3


def _taubin_smooth(verts: np.ndarray, faces: np.ndarray, steps: int = _TAUBIN_STEPS) -> np.ndarray:
    """Vertices (n, 3) after ``steps`` Taubin smoothing passes with the uniform Laplacian."""
    n = len(verts)
    a, b = faces.ravel(), faces[:, [1, 2, 0]].ravel()
    adjacency = sparse.coo_matrix((np.ones(2 * len(a)), (np.r_[a, b], np.r_[b, a])), shape=(n, n)).tocsr()
    adjacency.data[:] = 1.0  # an edge shared by two faces counts once
    mean_of_neighbours = sparse.diags(1.0 / np.asarray(adjacency.sum(axis=1)).ravel()) @ adjacency
    v = verts.astype(np.float64)
    for _ in range(steps):
        v = v + _TAUBIN_LAMBDA * (mean_of_neighbours @ v - v)
        v = v + _TAUBIN_MU * (mean_of_neighbours @ v - v)
    return v


def surface_area(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """Surface area (um^2) of the binary object ``mask`` (z, y, x): marching cubes at level
    0.5 on the zero-padded mask with the voxel spacing, Taubin-smoothed, mesh area."""
    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    if not padded.any():
        return 0.0
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(spacing_zyx))
    return float(mesh_surface_area(_taubin_smooth(verts, faces), faces))


def _face_areas(labels: np.ndarray, spacing: np.ndarray, n: int) -> np.ndarray:
    """Area (um^2) of the exposed voxel faces of every label 0..n-1 of ``labels``
    (z, y, x): faces between different labels and faces on the volume border. One
    O(voxels) pass per axis."""
    areas = np.zeros(n, np.float64)
    for axis in range(3):
        face = float(np.prod(np.delete(spacing, axis)))
        a = labels[(slice(None),) * axis + (slice(None, -1),)]
        b = labels[(slice(None),) * axis + (slice(1, None),)]
        differ = a != b
        areas += face * np.bincount(a[differ], minlength=n)
        areas += face * np.bincount(b[differ], minlength=n)
        for end in (0, -1):
            areas += face * np.bincount(np.take(labels, end, axis=axis).ravel(), minlength=n)
    return areas


def _shape_is_meaningful(count: int, box: tuple[slice, ...]) -> bool:
    """Enough voxels (and extent on every axis) for a smoothed marching-cubes surface."""
    return count >= SHAPE_MIN_VOXELS and all(s.stop - s.start >= SHAPE_MIN_EXTENT for s in box)


def nucleus_table(labels: np.ndarray, voxel_size: VoxelSize, image: np.ndarray | None = None,
                  timepoint: int = 0) -> list[dict[str, Any]]:
    """One row (keys :data:`NUCLEUS_FIELDS`) per label of ``labels`` (z, y, x), ordered by id.

    ``mean_intensity`` is the mean of ``image`` (z, y, x, same shape) over the nucleus,
    None without an image. Volume, centroid and mean intensity come from one bincount
    pass over the volume; objects of at least :data:`SHAPE_MIN_VOXELS` voxels spanning
    :data:`SHAPE_MIN_EXTENT` on every axis get a smoothed marching-cubes surface on their
    bounding box (``find_objects``) and a sphericity (at most 1); smaller objects (not
    nuclei) get the area of their exposed voxel faces and sphericity None. The time is
    bounded by the volume, not by the number of objects.
    """
    labels = as_label_image("labels", labels)
    if image is not None:
        image = np.asarray(image)
        if image.shape != labels.shape:
            raise InputError(f"image: shape {image.shape} differs from the label image shape {labels.shape}")
    if labels.dtype.itemsize > 4 or labels.dtype.kind == "u" and labels.dtype.itemsize == 4:
        labels = labels.astype(np.intp)
    spacing = np.asarray(voxel_size.zyx, dtype=np.float64)
    voxel_volume = float(np.prod(spacing))
    ids, centres = centroids(labels)
    if not len(ids):
        return []
    n = int(ids[-1]) + 1
    counts = np.bincount(labels.ravel(), minlength=n)
    faces = _face_areas(labels, spacing, n)
    means = ndimage.mean(image, labels, ids) if image is not None else None
    boxes = ndimage.find_objects(labels)
    rows = []
    for k, label in enumerate(ids):
        label = int(label)
        count, box = int(counts[label]), boxes[label - 1]
        volume = count * voxel_volume
        sphericity = None
        if _shape_is_meaningful(count, box):
            area = surface_area(labels[box] == label, spacing)
            # isoperimetric inequality: <= 1 for any shape; the mesh estimate errs by about 1 %
            sphericity = min(1.0, math.pi ** (1.0 / 3.0) * (6.0 * volume) ** (2.0 / 3.0) / area)
        else:
            area = float(faces[label])
        rows.append({
            "timepoint": int(timepoint),
            "label": label,
            "volume_um3": volume,
            "surface_um2": area,
            "equivalent_diameter_um": (6.0 * volume / math.pi) ** (1.0 / 3.0),
            "sphericity": sphericity,
            "centroid_z_um": float(centres[k, 0] * spacing[0]),
            "centroid_y_um": float(centres[k, 1] * spacing[1]),
            "centroid_x_um": float(centres[k, 2] * spacing[2]),
            "mean_intensity": float(means[k]) if means is not None else None,
        })
    logger.debug("time point %d: %d nuclei measured", timepoint, len(rows))
    return rows


def timepoint_summary(rows: list[dict[str, Any]], timepoint: int) -> dict[str, Any]:
    """Summary (keys :data:`SUMMARY_FIELDS`) of the rows of :func:`nucleus_table` whose
    ``timepoint`` equals ``timepoint``. The sd is the population sd (ddof=0); q1, median
    and q3 are the 25th, 50th and 75th percentiles (linear interpolation), values the
    data can take. With no nucleus: count 0, sums 0.0, the other statistics None
    (written as empty CSV cells)."""
    rows = [r for r in rows if r["timepoint"] == timepoint]
    summary: dict[str, Any] = {"timepoint": int(timepoint), "count": len(rows)}
    for key, prefix in (("volume_um3", "volume"), ("surface_um2", "surface")):
        unit = key.split("_")[-1]
        values = np.array([r[key] for r in rows], dtype=np.float64)
        summary[f"{prefix}_sum_{unit}"] = float(values.sum())
        summary[f"{prefix}_mean_{unit}"] = float(values.mean()) if len(values) else None
        summary[f"{prefix}_sd_{unit}"] = float(values.std()) if len(values) else None
        quartiles = np.percentile(values, (25, 50, 75)) if len(values) else (None,) * 3
        for name, q in zip(("q1", "median", "q3"), quartiles):
            summary[f"{prefix}_{name}_{unit}"] = None if q is None else float(q)
    return {key: summary[key] for key in SUMMARY_FIELDS}


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], fieldnames: list[str]) -> None:
    """Write ``rows`` as CSV with the columns ``fieldnames`` (other keys ignored, None
    written as an empty cell), atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: the folder {path.parent} does not exist")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
