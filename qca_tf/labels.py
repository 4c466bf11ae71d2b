"""Label images: the checks and measurements every module that reads instance labels
shares (metrics, criteria, plots, post-processing, NDN targets, the synthetic data).

A label image is a 3D (z, y, x) integer array: 0 is background, each id > 0 one instance.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError


def as_label_image(name: str, labels: np.ndarray) -> np.ndarray:
    """``labels`` checked to be a 3D (z, y, x) label image of integers >= 0 (bool or
    integral floats are converted); returned as an integer array, otherwise InputError."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"{name}: expected a 3D (z, y, x) array, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.int32)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.all(np.mod(labels, 1) == 0):
            raise InputError(f"{name}: a label image must hold integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InputError(f"{name}: negative label ids are not allowed")
    return labels


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


def annotation_offset(image: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, float, float],
                      margin: int = 4) -> tuple[float, float, float]:
    """Where an annotation lies relative to its image, (z, y, x) um: per instance of
    ``labels`` (z, y, x, ids > 0; a mask with one id is split into its 6-connected
    components), the translation that best aligns its mask with the image's signal above
    background (``image`` minus its 5th percentile, in the instance's bounding box grown
    by ``margin`` voxels; cross-correlation to 1/10 voxel), negated; the median over the
    instances, leaving out those whose best translation exceeds ``margin`` voxels on an
    axis (a neighbour's signal, not this nucleus). An annotation drawn on the image gives
    about (0, 0, 0); one drawn half a voxel up in y gives about (0, -0.5 * spacing_y, 0)."""
    from scipy import ndimage
    from skimage.registration import phase_cross_correlation

    labels = as_label_image("labels", labels)
    image = np.asarray(image, dtype=np.float32)
    if image.shape != labels.shape:
        raise InputError(f"image: shape {image.shape} differs from the labels' shape {labels.shape}")
    if len(np.unique(labels)) == 2:  # a binary mask (e.g. 0/255): its nuclei are its components
        labels = ndimage.label(labels > 0)[0]
    signal = np.clip(image - np.percentile(image, 5), 0, None)
    shifts = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, b.start - margin), min(n, b.stop + margin)) for b, n in zip(box, labels.shape))
        if not signal[box].any():
            continue
        mask = (labels[box] == index).astype(np.float32)
        shift, _, _ = phase_cross_correlation(signal[box], mask, upsample_factor=10, normalization=None)
        if np.abs(shift).max() > margin:
            continue
        shifts.append(-np.asarray(shift, dtype=float) * np.asarray(spacing_zyx, dtype=float))
    if not shifts:
        raise InputError("labels: no annotated instance with signal in the image")
    return tuple(round(float(v), 3) for v in np.median(shifts, axis=0))  # type: ignore[return-value]
