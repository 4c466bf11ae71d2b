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
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from skimage.segmentation import find_boundaries

from .atomic import atomic_path
from .errors import InputError
from .io import VoxelSize
from .labels import as_label_image, centroids

logger = logging.getLogger(__name__)

DPI = 150
MAX_LABEL_NUMBERS = 60       # more numbers than this overlap into an unreadable quick-look
PERCENTILES = (1.0, 99.7)    # grey range of a quick-look projection (its own percentiles)
GAMMA = 0.6                  # quick-look grey levels: lifts dim nuclei beside bright ones
MAX_POINTS_PER_TIMEPOINT = 400  # nuclei drawn per time point in the volume/surface panels
MAX_CENTROIDS = 5000            # centroids drawn in the 3D panel


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


def _per_timepoint(nucleus_rows: list[dict[str, Any]], key: str, t: np.ndarray) -> list[np.ndarray]:
    """Finite values of ``key`` of the nucleus rows of every time point in ``t``."""
    groups: dict[float, list[float]] = {float(v): [] for v in t}
    for r in nucleus_rows:
        value, tp = _num(r.get(key)), _num(r.get("timepoint"))
        if math.isfinite(value) and tp in groups:
            groups[tp].append(value)
    return [np.array(groups[float(v)]) for v in t]


def _subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``cap`` of ``n`` items (all of them when n <= cap), sorted."""
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))


def timeseries_figure(summary_rows: list[dict[str, Any]], nucleus_rows: list[dict[str, Any]],
                      time_unit: str = "time point") -> Figure:
    """The 4-panel figure of :func:`plot_timeseries` (rows as from
    :func:`qca_tf.criteria.timepoint_summary` / ``nucleus_table``; numbers or CSV strings)."""
    summary = sorted(summary_rows, key=lambda r: _num(r["timepoint"]))
    t = np.array([_num(r["timepoint"]) for r in summary])
    counts = np.array([_num(r.get("count")) for r in summary])
    rng = np.random.default_rng(0)  # which points are drawn when there are too many: reproducible

    fig = Figure(figsize=(11, 8.5), dpi=DPI, layout="constrained")
    axes = [fig.add_subplot(2, 2, i) for i in (1, 2, 3)]
    ax_count, ax_volume, ax_surface = axes
    ax_count.plot(t, counts, "o-", color="tab:blue")
    ax_count.set_title("Number of nuclei")
    ax_count.set_ylabel("count")
    ax_count.yaxis.set_major_locator(MaxNLocator(integer=True))
    step = float(np.min(np.diff(np.unique(t)))) if len(np.unique(t)) > 1 else 1.0
    for ax, key, colour, title, label in (
            (ax_volume, "volume_um3", "tab:orange", "Nuclear volume", "volume (µm³)"),
            (ax_surface, "surface_um2", "tab:green", "Nuclear surface area", "surface area (µm²)")):
        values = _per_timepoint(nucleus_rows, key, t)
        sampled = labelled = False
        for tp, v in zip(t, values):
            keep = _subsample(len(v), MAX_POINTS_PER_TIMEPOINT, rng)
            sampled |= len(keep) < len(v)
            jitter = rng.uniform(-0.18, 0.18, len(keep)) * step
            ax.scatter(tp + jitter, v[keep], s=9, color=colour, alpha=0.6, linewidths=0, zorder=2,
                       label=None if labelled or not len(keep) else "nuclei")
            labelled |= len(keep) > 0
        q1, median, q3 = (np.array([np.percentile(v, q) if len(v) else np.nan for v in values]) for q in (25, 50, 75))
        if len(t) > 1:
            ax.fill_between(t, q1, q3, color=colour, alpha=0.2, linewidth=0, label="25–75 %", zorder=1)
        else:  # a band needs two time points: one time point's quartiles are a bar
            ax.vlines(t, q1, q3, color=colour, alpha=0.35, linewidth=12, label="25–75 %", zorder=1)
        ax.plot(t, median, "o-", color="black", markersize=4, linewidth=1.2, label="median", zorder=3)
        ax.set_title(f"{title}: each nucleus, median and quartiles"
                     + (f"\n({MAX_POINTS_PER_TIMEPOINT} random nuclei drawn per time point)" if sampled else ""),
                     fontsize=10)
        if len(t) and not any(len(v) for v in values):
            ax.text(0.5, 0.5, "no nuclei", transform=ax.transAxes, ha="center", va="center")
        else:
            ax.legend(loc="best", fontsize=8, markerscale=2)
            ax.set_ylim(bottom=0)  # volumes and areas are positive: show them from 0
        ax.set_ylabel(label)
    for ax in axes:
        ax.set_xlabel(time_unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(t) == 0:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        elif t.min() == t.max():  # one time point: keep integer ticks around it
            ax.set_xlim(t[0] - 1, t[0] + 1)
    top = max(1.0, float(np.nanmax(counts, initial=0)) * 1.1)
    ax_count.set_ylim(-0.05 * top, top)

    ax3d = fig.add_subplot(2, 2, 4, projection="3d")
    xyz = np.array([[_num(r["centroid_x_um"]), _num(r["centroid_y_um"]), _num(r["centroid_z_um"])]
                    for r in nucleus_rows]).reshape(-1, 3)
    times = np.array([_num(r["timepoint"]) for r in nucleus_rows])
    known = np.concatenate([t, times])
    lo, hi = (float(np.nanmin(known)), float(np.nanmax(known))) if known.size else (0.0, 1.0)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    keep = _subsample(len(xyz), MAX_CENTROIDS, rng)
    ax3d.scatter(xyz[keep, 0], xyz[keep, 1], xyz[keep, 2], c=times[keep], cmap="viridis", norm=norm,
                 s=18 if len(keep) < 500 else 4, depthshade=False)
    if len(xyz):
        ax3d.set_aspect("equal")
    ax3d.set_xlabel("x (µm)")
    ax3d.set_ylabel("y (µm)")
    ax3d.set_zlabel("z (µm)")
    one_time = known.size > 0 and hi == lo
    ax3d.set_title("Nuclear centres of gravity" + (f" ({MAX_CENTROIDS} random of {len(xyz)})"
                                                   if len(keep) < len(xyz) else "")
                   + (f"\n{time_unit} {lo:g}" if one_time else ""), fontsize=10)
    if known.size and hi > lo:  # a colour scale of time needs two time points; one is named in the title
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax3d, shrink=0.7, pad=0.1, label=time_unit)
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def plot_timeseries(summary_rows: list[dict[str, Any]], nucleus_rows: list[dict[str, Any]],
                    out_png: str | os.PathLike, time_unit: str = "time point") -> None:
    """Write the paper's Figure 4 as one PNG: nuclear count; volume (µm³) and surface
    area (µm²) over time as every nucleus (a point, at most
    :data:`MAX_POINTS_PER_TIMEPOINT` per time point), the median and the 25-75 %
    band (values the data can take, unlike mean ± sd); and the centroids in 3D
    coloured by time. Time points come from ``summary_rows``, the spread from
    ``nucleus_rows``. Works for one time point and for time points without nuclei."""
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


def display_range(projection: np.ndarray) -> tuple[float, float]:
    """Grey-level range (vmin, vmax) for a 2D projection: its own 1st and 99.7th
    percentiles over finite pixels, so a max projection (brighter than the volume)
    shows nuclear texture instead of white discs; (0, 1) when there is nothing."""
    finite = projection[np.isfinite(projection)]
    if not finite.size:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(finite, PERCENTILES))
    return (vmin, vmax) if vmax > vmin else (vmin, vmin + 1.0)


def numbered_labels(ids: np.ndarray, sizes: np.ndarray, cap: int = MAX_LABEL_NUMBERS) -> np.ndarray:
    """The ids (of ``ids``, with voxel counts ``sizes``) whose numbers are drawn: all of
    them up to ``cap``, else the ``cap`` largest (ties: lower id first), in id order."""
    if len(ids) <= cap:
        return np.asarray(ids)
    order = np.lexsort((ids, -np.asarray(sizes)))[:cap]
    return np.sort(np.asarray(ids)[order])


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
    sizes = np.bincount(labels.ravel())[ids] if len(ids) else np.zeros(0, np.int64)
    shown = np.isin(ids, numbered_labels(ids, sizes))

    height_xy, height_xz, width = ny * vy, nz * vz, nx * vx
    fig_width = 7.0
    fig_height = min(max(fig_width * (height_xy + height_xz) / width + 1.2, 3.0), 14.0)
    fig = Figure(figsize=(fig_width, fig_height), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, 1, height_ratios=[height_xy, max(height_xz, 1e-6)])
    cz, cy, cx = centres.reshape(-1, 3).T
    for row, axis, name, spacing, n, vertical in ((0, 0, "y", vy, ny, cy), (1, 1, "z", vz, nz, cz)):
        ax = fig.add_subplot(grid[row])
        extent = (-0.5 * vx, (nx - 0.5) * vx, (n - 0.5) * spacing, -0.5 * spacing)
        projection = image.max(axis=axis)
        vmin, vmax = display_range(projection)
        ax.imshow(projection, cmap="gray", norm=PowerNorm(GAMMA, vmin=vmin, vmax=vmax), extent=extent,
                  interpolation="nearest")
        ax.imshow(outline_rgba(labels.max(axis=axis)), extent=extent, interpolation="nearest")
        for label, c_vertical, c_x in zip(ids[shown], vertical[shown], cx[shown]):
            ax.text(c_x * vx, c_vertical * spacing, str(int(label)), color=label_colour(int(label)),
                    fontsize=8, fontweight="bold", ha="center", va="center",
                    path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
        ax.set_aspect("equal")
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"{name} ({unit})")
        ax.set_title(f"max projection along {'z (xy view)' if axis == 0 else 'y (xz view)'}", fontsize=9)
    notes = [title] if title else []
    if len(ids) > shown.sum():
        notes.append(f"numbers on the {int(shown.sum())} largest of {len(ids)} objects")
    if notes:
        fig.suptitle("\n".join(notes), fontsize=11)
    return fig


def plot_quicklook(image: np.ndarray, labels: np.ndarray, out_png: str | os.PathLike,
                   voxel_size: VoxelSize | None = None, title: str = "") -> None:
    """Write a quick-look PNG of one time point: max projections of ``image`` (z, y, x)
    along z (xy view) and along y (xz view, physical proportions from ``voxel_size``),
    grey (each projection scaled to its own 1st-99.7th percentiles, gamma 0.6), with each label's
    outline (of the projected label image) in its own colour and its number at its
    centroid, numbers for at most :data:`MAX_LABEL_NUMBERS` labels (the largest; the
    title says so). ``labels`` (z, y, x) has the image's shape."""
    save_png_atomic(quicklook_figure(image, labels, voxel_size, title), out_png)
    logger.debug("wrote %s", out_png)
