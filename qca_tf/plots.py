"""Figures: the time series of quantitative criteria (the paper's Figure 4) and a
per-time-point quick-look image. Matplotlib's object-oriented API with the Agg
canvas: no pyplot, no global backend state. PNGs are written atomically (150 dpi).
"""
from __future__ import annotations

import colorsys
import logging
import math
import os
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from skimage.segmentation import find_boundaries

from .atomic import atomic_path
from .errors import InputError
from .io import VoxelSize
from .labels import as_label_image, centroids

logger = logging.getLogger(__name__)

DPI = 150


def save_png_atomic(fig: Figure, out_png: str | os.PathLike) -> None:
    """Render ``fig`` to ``out_png`` (PNG, 150 dpi): temp file in the same folder (created
    if missing), then rename."""
    with atomic_path(out_png, suffix=".png") as tmp, open(tmp, "wb") as fh:
        FigureCanvasAgg(fig).print_png(fh, metadata={"Software": "qca_tf"})


def _num(value: Any) -> float:
    """A table cell as a float: None and '' (missing) become NaN; CSV strings are parsed."""
    if value is None or value == "":
        return math.nan
    return float(value)


# --------------------------------------------------------------------------- time series


def timeseries_figure(summary_rows: list[dict[str, Any]], nucleus_rows: list[dict[str, Any]],
                      time_unit: str = "time point") -> Figure:
    """The 4-panel figure of :func:`plot_timeseries` (rows as from
    :func:`qca_tf.criteria.timepoint_summary` / ``nucleus_table``; numbers or CSV strings)."""
    summary = sorted(summary_rows, key=lambda r: _num(r["timepoint"]))
    t = np.array([_num(r["timepoint"]) for r in summary])

    def column(key: str) -> np.ndarray:
        return np.array([_num(r.get(key)) for r in summary])

    fig = Figure(figsize=(11, 8.5), dpi=DPI, layout="constrained")
    axes = [fig.add_subplot(2, 2, i) for i in (1, 2, 3)]
    ax_count, ax_volume, ax_surface = axes
    ax_count.plot(t, column("count"), "o-", color="tab:blue")
    ax_count.set_title("Number of nuclei")
    ax_count.set_ylabel("count")
    ax_count.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, prefix, unit, colour, title in (
            (ax_volume, "volume", "um3", "tab:orange", "Nuclear volume (mean ± sd)"),
            (ax_surface, "surface", "um2", "tab:green", "Nuclear surface area (mean ± sd)")):
        mean, sd = column(f"{prefix}_mean_{unit}"), column(f"{prefix}_sd_{unit}")
        ax.plot(t, mean, "o-", color=colour)
        ax.fill_between(t, mean - sd, mean + sd, color=colour, alpha=0.25, linewidth=0)
        ax.errorbar(t, mean, yerr=sd, fmt="none", ecolor=colour, capsize=3)
        ax.set_title(title)
        if len(t) and not np.isfinite(mean).any():
            ax.text(0.5, 0.5, "no nuclei", transform=ax.transAxes, ha="center", va="center")
        ax.set_ylabel(f"{prefix} ({'µm³' if unit == 'um3' else 'µm²'})")
    for ax in axes:
        ax.set_xlabel(time_unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(t) == 0:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        elif t.min() == t.max():  # one time point: keep integer ticks around it
            ax.set_xlim(t[0] - 1, t[0] + 1)
    top = max(1.0, float(np.nanmax(column("count"), initial=0)) * 1.1)
    ax_count.set_ylim(-0.05 * top, top)

    ax3d = fig.add_subplot(2, 2, 4, projection="3d")
    xyz = np.array([[_num(r["centroid_x_um"]), _num(r["centroid_y_um"]), _num(r["centroid_z_um"])]
                    for r in nucleus_rows]).reshape(-1, 3)
    times = np.array([_num(r["timepoint"]) for r in nucleus_rows])
    known = np.concatenate([t, times])
    lo, hi = (float(np.nanmin(known)), float(np.nanmax(known))) if known.size else (0.0, 1.0)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    ax3d.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=times, cmap="viridis", norm=norm, s=18, depthshade=False)
    if len(xyz):
        ax3d.set_aspect("equal")
    ax3d.set_xlabel("x (µm)")
    ax3d.set_ylabel("y (µm)")
    ax3d.set_zlabel("z (µm)")
    ax3d.set_title("Nuclear centres of gravity")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax3d, shrink=0.7, pad=0.1, label=time_unit)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def plot_timeseries(summary_rows: list[dict[str, Any]], nucleus_rows: list[dict[str, Any]],
                    out_png: str | os.PathLike, time_unit: str = "time point") -> None:
    """Write the paper's Figure 4 as one PNG: nuclear count, mean ± sd volume (µm³) and
    surface area (µm²) over time, and all centroids in 3D coloured by time. Works for
    one time point and for time points without nuclei (mean/sd None)."""
    save_png_atomic(timeseries_figure(summary_rows, nucleus_rows, time_unit), out_png)
    logger.debug("wrote %s", out_png)


# --------------------------------------------------------------------------- quick look


def label_colour(label: int) -> tuple[float, float, float]:
    """A saturated RGB colour for ``label``; golden-ratio hue steps keep neighbours distinct."""
    return colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 1.0, 1.0)


def outline_rgba(projected_labels: np.ndarray) -> np.ndarray:
    """(h, w, 4) RGBA overlay of a 2D label image: each label's inner boundary pixels in
    :func:`label_colour`, opaque; everything else transparent."""
    labels = np.asarray(projected_labels)
    edges = find_boundaries(labels, connectivity=1, mode="inner") & (labels > 0)
    ids, inverse = np.unique(labels, return_inverse=True)
    palette = np.array([(*label_colour(int(i)), 1.0) for i in ids]).reshape(-1, 4)
    rgba = palette[inverse.reshape(labels.shape)]
    rgba[~edges] = 0.0
    return rgba


def quicklook_figure(image: np.ndarray, labels: np.ndarray, voxel_size: VoxelSize | None = None,
                     title: str = "") -> Figure:
    """The figure of :func:`plot_quicklook`; axes in µm (voxels when ``voxel_size`` is None)."""
    image = np.asarray(image, dtype=np.float32)
    labels = as_label_image("labels", labels)
    if image.shape != labels.shape:
        raise InputError(f"image: shape {image.shape} differs from the label image shape {labels.shape}")
    vz, vy, vx = voxel_size.zyx if voxel_size is not None else (1.0, 1.0, 1.0)
    unit = "µm" if voxel_size is not None else "voxels"
    nz, ny, nx = labels.shape
    ids, centres = centroids(labels)
    finite = image[np.isfinite(image)]
    vmin, vmax = (np.percentile(finite, (0.5, 99.8)) if finite.size else (0.0, 1.0))
    vmax = vmax if vmax > vmin else vmin + 1.0

    height_xy, height_xz, width = ny * vy, nz * vz, nx * vx
    fig_width = 7.0
    fig_height = min(max(fig_width * (height_xy + height_xz) / width + 1.2, 3.0), 14.0)
    fig = Figure(figsize=(fig_width, fig_height), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, 1, height_ratios=[height_xy, max(height_xz, 1e-6)])
    cz, cy, cx = centres.reshape(-1, 3).T
    for row, axis, name, spacing, n, vertical in ((0, 0, "y", vy, ny, cy), (1, 1, "z", vz, nz, cz)):
        ax = fig.add_subplot(grid[row])
        extent = (-0.5 * vx, (nx - 0.5) * vx, (n - 0.5) * spacing, -0.5 * spacing)
        ax.imshow(image.max(axis=axis), cmap="gray", vmin=vmin, vmax=vmax, extent=extent,
                  interpolation="nearest")
        ax.imshow(outline_rgba(labels.max(axis=axis)), extent=extent, interpolation="nearest")
        for label, c_vertical, c_x in zip(ids, vertical, cx):
            ax.text(c_x * vx, c_vertical * spacing, str(int(label)), color=label_colour(int(label)),
                    fontsize=7, ha="center", va="center",
                    path_effects=[patheffects.withStroke(linewidth=1.5, foreground="black")])
        ax.set_aspect("equal")
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"{name} ({unit})")
        ax.set_title(f"max projection along {'z (xy view)' if axis == 0 else 'y (xz view)'}", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def plot_quicklook(image: np.ndarray, labels: np.ndarray, out_png: str | os.PathLike,
                   voxel_size: VoxelSize | None = None, title: str = "") -> None:
    """Write a quick-look PNG of one time point: max projections of ``image`` (z, y, x)
    along z (xy view) and along y (xz view, physical proportions from ``voxel_size``),
    grey, with each label's outline (of the projected label image) in its own colour and
    its number at its centroid. ``labels`` (z, y, x) has the image's shape."""
    save_png_atomic(quicklook_figure(image, labels, voxel_size, title), out_png)
    logger.debug("wrote %s", out_png)
