"""Pre-processing on (z, y, x) numpy arrays: resampling to the isotropic network grid
and back, intensity normalisation (min-max or percentile) and mirror padding.

Resampling maps voxel centres with half-pixel alignment: output voxel ``i`` of an axis
resized from ``n_in`` to ``n_out`` samples input coordinate ``(i + 0.5) * n_in / n_out - 0.5``
(scipy's ``grid_mode=True``), clamped at the borders (``mode='nearest'``).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from .config import DataConfig
from .errors import ConfigError
from .io import VoxelSize

log = logging.getLogger(__name__)

Shape3 = tuple[int, int, int]


def zoom_factors(voxel_size: VoxelSize, spacing_um: float) -> tuple[float, float, float]:
    """Per-axis (z, y, x) factors taking a volume with ``voxel_size`` to an isotropic ``spacing_um`` grid."""
    if not spacing_um > 0:
        raise ConfigError(f"spacing_um={spacing_um!r} must be a positive number (micrometres)")
    vz, vy, vx = voxel_size.zyx
    return (vz / spacing_um, vy / spacing_um, vx / spacing_um)


def resampled_shape(shape: Sequence[int], factors: Sequence[float]) -> Shape3:
    """Shape after resampling by ``factors``: round(n * f) per axis (as scipy.ndimage.zoom), at least 1."""
    return tuple(max(1, int(round(n * f))) for n, f in zip(shape, factors))  # type: ignore[return-value]


def _linear_axis(volume: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation of ``volume`` along ``axis`` to ``n_out`` samples (half-pixel centres)."""
    n_in = volume.shape[axis]
    coords = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(coords).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    weight_shape = [1] * volume.ndim
    weight_shape[axis] = n_out
    w = (coords - i0).astype(np.float32).reshape(weight_shape)
    a0 = np.take(volume, i0, axis=axis)
    return a0 + (np.take(volume, i1, axis=axis) - a0) * w


def resample(volume: np.ndarray, factors: Sequence[float], order: int = 1) -> np.ndarray:
    """Resample a (z, y, x) volume by per-axis ``factors`` with spline ``order`` 0, 1 or 3 -> float32.

    The output shape is :func:`resampled_shape`; axes whose size does not change are
    returned untouched. Order 1 runs as separable 1D interpolation (several times faster
    than scipy's 3D zoom); orders 0 and 3 use scipy.ndimage.zoom.
    """
    if order not in (0, 1, 3):
        raise ConfigError(f"resample order {order!r} is not 0, 1 or 3")
    out_shape = resampled_shape(volume.shape, factors)
    result = np.asarray(volume, dtype=np.float32)
    if out_shape == result.shape:
        return result.copy() if result is volume else result
    if order == 1:
        for axis, n_out in enumerate(out_shape):
            if n_out != result.shape[axis]:
                result = _linear_axis(result, axis, n_out)
        return result
    zoom = [n_out / n_in for n_in, n_out in zip(result.shape, out_shape)]
    return ndi.zoom(result, zoom, order=order, mode="nearest", grid_mode=True, output=np.float32)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label/mask image to exactly ``shape`` (dtype kept).

    Output index ``i`` takes source index floor((i + 0.5) * n_in / n_out), computed in
    integers, so upsampling then resizing back returns the original exactly.
    """
    if len(shape) != labels.ndim:
        raise ValueError(f"target shape {tuple(shape)} does not match a {labels.ndim}D label image")
    result = labels
    for axis, n_out in enumerate(shape):
        n_in = result.shape[axis]
        if n_out != n_in:
            index = ((2 * np.arange(n_out) + 1) * n_in) // (2 * n_out)
            result = np.take(result, index, axis=axis)
    return result if result is not labels else labels.copy()


def normalize(volume: np.ndarray, method: str = "minmax",
              percentiles: Sequence[float] = (1.0, 99.8)) -> np.ndarray:
    """Normalise intensities to [0, 1] as float32; a constant volume gives zeros.

    ``minmax``: (v - min) / (max - min), the reference tool's scaling. ``percentile``:
    (v - p_low) / (p_high - p_low) clipped to [0, 1], with p_low, p_high the
    ``percentiles`` of the volume; robust to hot pixels and to the overall brightness
    of a stack. When p_high == p_low (a mostly flat stack) it falls back to min-max.
    """
    v = np.asarray(volume, dtype=np.float32)
    if v.size == 0:
        return v.copy()
    if method == "percentile":
        lo, hi = (float(q) for q in np.percentile(v, list(percentiles)))
        if hi > lo:
            return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    elif method != "minmax":
        raise ConfigError(f"unknown normalization {method!r}; choose minmax or percentile")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros_like(v)
    return ((v - lo) / (hi - lo)).astype(np.float32)


def to_network_grid(raw: np.ndarray, voxel_size: VoxelSize, spacing_um: float, *, order: int = 1,
                    normalization: str = "minmax", percentiles: Sequence[float] = (1.0, 99.8)) -> np.ndarray:
    """The one recipe that brings a stored (z, y, x) stack to the network: resample to the
    isotropic ``spacing_um`` grid with spline ``order``, then :func:`normalize`.
    Returns (Z, Y, X) float32 in [0, 1]. Training and prediction both go through it.
    A (z, y, x, c) multi-channel stack gives (Z, Y, X, c), each channel resampled and
    normalised on its own."""
    if np.ndim(raw) == 4:
        return np.stack([to_network_grid(raw[..., c], voxel_size, spacing_um, order=order,
                                         normalization=normalization, percentiles=percentiles)
                         for c in range(raw.shape[-1])], axis=-1)
    grid = resample(np.asarray(raw, dtype=np.float32), zoom_factors(voxel_size, spacing_um), order=order)
    return normalize(grid, normalization, percentiles)


@dataclass(frozen=True)
class GridRecipe:
    """What :func:`to_network_grid` needs besides the stack: the network's grid spacing
    (um), the spline ``order`` and the normalisation. A model records it (its DataConfig)
    and prediction replays it; equal recipes share one prepared volume."""

    spacing_um: float
    order: int = 1
    normalization: str = "minmax"
    percentiles: tuple[float, float] = (1.0, 99.8)

    @classmethod
    def from_data_config(cls, spacing_um: float, data_cfg: DataConfig | None) -> GridRecipe:
        """The recipe of a model with grid ``spacing_um`` trained with ``data_cfg``; None
        (nothing recorded) gives the reference defaults: linear resampling, min-max."""
        if data_cfg is None:
            return cls(float(spacing_um))
        return cls(float(spacing_um), data_cfg.resample_order, data_cfg.normalization,
                   tuple(float(p) for p in data_cfg.norm_percentiles))  # type: ignore[arg-type]

    def apply(self, raw: np.ndarray, voxel_size: VoxelSize) -> np.ndarray:
        """(z, y, x) stack with ``voxel_size`` -> (Z, Y, X) float32 in [0, 1] on the network grid."""
        return to_network_grid(raw, voxel_size, self.spacing_um, order=self.order,
                               normalization=self.normalization, percentiles=self.percentiles)


def mirror_pad(volume: np.ndarray, pad: int | Sequence[tuple[int, int]]) -> np.ndarray:
    """Reflect-pad (dcb|abcd|cba) by ``pad`` (an int, or per-axis (before, after) pairs as np.pad).

    Pads longer than an axis reflect repeatedly; a length-1 axis repeats its value.
    """
    return np.pad(volume, pad, mode="reflect")


def pad_to_multiple(volume: np.ndarray, multiple: int, min_shape: Sequence[int] | None = None,
                    channels_last: bool = False) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Mirror-pad at the end of each axis to a multiple of ``multiple`` (and at least ``min_shape``).

    Returns the padded array and the slices with ``padded[slices]`` equal to ``volume``.
    ``channels_last``: the last axis holds channels and is not padded (nor sliced).
    """
    if not (isinstance(multiple, (int, np.integer)) and multiple >= 1):
        raise ValueError(f"multiple={multiple!r} must be a positive integer")
    spatial = volume.shape[:-1] if channels_last else volume.shape
    minimum = tuple(min_shape) if min_shape is not None else (1,) * len(spatial)
    if len(minimum) != len(spatial):
        raise ValueError(f"min_shape {minimum} does not match a {len(spatial)}D volume")
    target = [-(-max(n, m) // multiple) * multiple for n, m in zip(spatial, minimum)]
    pads = [(0, t - n) for n, t in zip(spatial, target)] + ([(0, 0)] if channels_last else [])
    slices = tuple(slice(0, n) for n in spatial)
    if not any(after for _, after in pads):
        return volume, slices
    return mirror_pad(volume, pads), slices
