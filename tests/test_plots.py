"""Figures: files written, valid PNGs, edge cases, outline colours where they belong."""
from __future__ import annotations

import io as _io

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from qca_tf.errors import InputError
from qca_tf.io import VoxelSize
from qca_tf.plots import (MAX_LABEL_NUMBERS, MAX_POINTS_PER_TIMEPOINT, display_range, label_colour, numbered_labels,
                          outline_rgba, plot_quicklook, plot_timeseries, quicklook_figure, timeseries_figure)


def _summary(t, count, vol=None, vol_sd=None, surf=None, surf_sd=None):
    return {"timepoint": t, "count": count, "volume_sum_um3": (vol or 0.0) * count, "volume_mean_um3": vol,
            "volume_sd_um3": vol_sd, "surface_sum_um2": (surf or 0.0) * count, "surface_mean_um2": surf,
            "surface_sd_um2": surf_sd}


def _nucleus(t, label, z, y, x):
    return {"timepoint": t, "label": label, "volume_um3": 500.0, "surface_um2": 300.0, "centroid_z_um": z,
            "centroid_y_um": y, "centroid_x_um": x}


def _read_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def _is_grey(rgb, tol=0.02):
    return np.ptp(rgb[..., :3], axis=-1) <= tol


def test_timeseries_png(tmp_path):
    rng = np.random.default_rng(1)
    summary = [_summary(t, 2 ** t, 500 - 50 * t, 20.0, 300 - 20 * t, 10.0) for t in range(4)]
    nuclei = [_nucleus(t, k + 1, *rng.uniform(0, 50, 3)) for t in range(4) for k in range(2 ** t)]
    out = tmp_path / "plots" / "timeseries.png"  # folder created
    plot_timeseries(summary, nuclei, out, time_unit="frame")
    img = _read_png(out)
    assert img.shape[0] > 800 and img.shape[1] > 1000  # 11 x 8.5 in at 150 dpi
    assert not _is_grey(img).all()  # coloured curves and points
    assert [p.name for p in out.parent.iterdir()] == ["timeseries.png"]  # no temp file left


def test_timeseries_from_csv_strings_single_timepoint(tmp_path):
    summary = [{k: ("" if v is None else str(v)) for k, v in _summary(5, 1, 480.0, 0.0, 290.0, 0.0).items()}]
    nuclei = [{k: str(v) for k, v in _nucleus(5, 1, 10.0, 20.0, 30.0).items()}]
    out = tmp_path / "one.png"
    plot_timeseries(summary, nuclei, out)
    assert _read_png(out).shape[0] > 800


def test_single_timepoint_draws_its_quartiles():
    """One time point cannot make a band: its 25-75 % range is drawn as a bar at that time
    point (the legend's entry then shows something), from the first to the third quartile."""
    nuclei = [dict(_nucleus(3, k + 1, 1.0, 2.0, 3.0), volume_um3=v) for k, v in enumerate([100.0, 200.0, 300.0, 900.0])]
    fig = timeseries_figure([_summary(3, 4, 375.0, 0.0, 300.0, 0.0)], nuclei)
    ax_volume = fig.axes[1]
    bar = ax_volume.collections[-1]
    assert bar.get_label() == "25–75 %"
    (segment,) = bar.get_segments()
    np.testing.assert_allclose(segment, [[3.0, 175.0], [3.0, 450.0]])  # numpy's quartiles of the 4 volumes
    assert "25–75 %" in [t.get_text() for t in ax_volume.get_legend().get_texts()]


def test_time_colour_bar_only_when_time_varies():
    """The centroids' colour bar maps time: with several time points it spans them; one
    time point has no scale to show (the bar once spanned t to t + 1), so the title names it."""
    several = timeseries_figure([_summary(t, 1) for t in (2, 5)], [_nucleus(t, 1, 1.0, 2.0, 3.0) for t in (2, 5)])
    (bar_ax,) = [ax for ax in several.axes if ax.get_ylabel() == "time point"]
    assert bar_ax.get_ylim() == (2.0, 5.0)
    one = timeseries_figure([_summary(3, 1)], [_nucleus(3, 1, 1.0, 2.0, 3.0)])
    assert len(one.axes) == 4 and one.axes[3].get_title().endswith("time point 3")
    assert len(timeseries_figure([], []).axes) == 4  # no time point: no scale either


def test_timeseries_zero_nuclei(tmp_path):
    plot_timeseries([_summary(0, 0), _summary(1, 0)], [], tmp_path / "none.png")
    assert _read_png(tmp_path / "none.png").shape[1] > 1000
    plot_timeseries([], [], tmp_path / "empty.png")
    assert _read_png(tmp_path / "empty.png").shape[1] > 1000


def test_outline_rgba_known_pixels():
    proj = np.zeros((12, 12), np.int32)
    proj[2:6, 2:6] = 3
    proj[7:11, 2:10] = 40
    rgba = outline_rgba(proj)
    assert rgba.shape == (12, 12, 4)
    np.testing.assert_allclose(rgba[2, 3], (*label_colour(3), 1.0))  # top edge of label 3
    np.testing.assert_allclose(rgba[8, 9], (*label_colour(40), 1.0))  # right edge of label 40
    assert rgba[3, 3, 3] == 0.0 and rgba[8, 5, 3] == 0.0  # interiors transparent
    assert rgba[0, 0, 3] == 0.0 and rgba[6, 6, 3] == 0.0  # background transparent
    assert not np.allclose(label_colour(3), label_colour(40))
    assert all(np.ptp(label_colour(i)) > 0.5 for i in range(1, 50))  # saturated, never grey


def _render(fig):
    buffer = _io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    buffer.seek(0)
    return imread(buffer)


def _pixel(img, ax, x, y):
    """RGB of the rendered PNG at data coordinates (x, y) of ``ax``."""
    dx, dy = ax.transData.transform((x, y))
    return img[int(round(img.shape[0] - dy)), int(round(dx)), :3]


def test_quicklook_outline_pixels_are_coloured():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (6, 20, 20)).astype(np.float32)
    labels = np.zeros(image.shape, np.int32)
    labels[1:5, 5:15, 5:15] = 7
    image[labels > 0] += 200
    fig = quicklook_figure(image, labels, None, title="t0")
    img = _render(fig)
    ax_xy, ax_xz = fig.axes
    assert np.allclose(_pixel(img, ax_xy, 10, 5), label_colour(7), atol=0.02)  # top edge in the xy view
    assert np.allclose(_pixel(img, ax_xz, 14, 3), label_colour(7), atol=0.02)  # right edge in the xz view
    for ax, x, y in ((ax_xy, 7, 7), (ax_xy, 1, 1), (ax_xz, 7, 2), (ax_xz, 18, 0)):
        assert _is_grey(_pixel(img, ax, x, y)), (x, y)  # interior and background stay grey
    no_labels = _render(quicklook_figure(image, np.zeros_like(labels)))
    assert _is_grey(no_labels).all()


def test_quicklook_physical_proportions(tmp_path):
    vs = VoxelSize(x=0.5, y=0.5, z=2.0)
    image = np.zeros((10, 30, 40), np.uint16)
    labels = np.zeros(image.shape, np.int32)
    labels[2:8, 10:20, 10:30] = 1
    fig = quicklook_figure(image, labels, vs)
    fig.canvas.draw()
    ax_xy, ax_xz = fig.axes
    for ax, height_um in ((ax_xy, 30 * 0.5), (ax_xz, 10 * 2.0)):
        box = ax.get_window_extent()
        assert box.height / box.width == pytest.approx(height_um / (40 * 0.5), rel=0.02)
    assert "µm" in ax_xz.get_ylabel()
    out = tmp_path / "q" / "ql.png"
    plot_quicklook(image, labels, out, vs, title="constant image")
    assert _read_png(out).shape[1] > 500


def test_quicklook_empty_and_bad_input(tmp_path):
    out = tmp_path / "empty.png"
    plot_quicklook(np.zeros((3, 8, 8)), np.zeros((3, 8, 8), np.int32), out)
    assert _read_png(out).shape[0] > 100
    with pytest.raises(InputError, match="image"):
        plot_quicklook(np.zeros((3, 8, 9)), np.zeros((3, 8, 8), np.int32), out)


def _skewed_series():
    """Per time point: a few large nuclei and many tiny fragments, so mean - sd < 0."""
    nuclei, summary = [], []
    for t in range(3):
        volumes = [400.0, 420.0, 450.0] + [2.0] * (10 + 5 * t)
        for k, v in enumerate(volumes):
            nuclei.append({"timepoint": t, "label": k + 1, "volume_um3": v, "surface_um2": v ** (2 / 3) * 4.8,
                           "centroid_z_um": 1.0 * k, "centroid_y_um": 2.0, "centroid_x_um": 3.0})
        summary.append(_summary(t, len(volumes), float(np.mean(volumes)), float(np.std(volumes)), 1.0, 1.0))
    return summary, nuclei


def test_timeseries_spread_respects_the_data():
    """Volume and surface panels: the 25-75 % band and the median lie within the data
    (never negative where mean - sd is), and every nucleus is a point."""
    summary, nuclei = _skewed_series()
    assert all(r["volume_mean_um3"] - r["volume_sd_um3"] < 0 for r in summary)  # what mean ± sd would draw
    fig = timeseries_figure(summary, nuclei)
    _, ax_volume, ax_surface = fig.axes[:3]
    for ax, key in ((ax_volume, "volume_um3"), (ax_surface, "surface_um2")):
        per_t = [np.array([r[key] for r in nuclei if r["timepoint"] == t]) for t in range(3)]
        band = ax.collections[-1].get_paths()[0].vertices[:, 1]  # fill_between, drawn after the points
        assert band.min() >= min(v.min() for v in per_t) - 1e-9
        assert band.max() <= max(v.max() for v in per_t) + 1e-9
        (median_line,) = ax.get_lines()
        np.testing.assert_allclose(median_line.get_ydata(), [np.median(v) for v in per_t])
        points = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections[:-1]])
        assert sorted(points) == pytest.approx(sorted(np.concatenate(per_t)))
        assert ax.get_ylim()[0] == 0.0


def test_timeseries_caps_points_per_timepoint():
    n = MAX_POINTS_PER_TIMEPOINT + 250
    nuclei = [{"timepoint": 0, "label": k, "volume_um3": 1.0 + k, "surface_um2": 5.0, "centroid_z_um": 0.0,
               "centroid_y_um": 0.0, "centroid_x_um": float(k)} for k in range(n)]
    fig = timeseries_figure([_summary(0, n, 1.0, 1.0, 5.0, 0.0)], nuclei)
    ax_volume = fig.axes[1]
    assert len(ax_volume.collections[0].get_offsets()) == MAX_POINTS_PER_TIMEPOINT
    assert "random nuclei drawn" in ax_volume.get_title()
    (median_line,) = ax_volume.get_lines()
    assert median_line.get_ydata()[0] == pytest.approx(np.median(1.0 + np.arange(n)))  # from all nuclei


def test_display_range_does_not_saturate_a_max_projection():
    """A textured bright object in a max projection: the projection's own range clips
    almost none of its pixels and spreads them over the grey levels (texture visible)."""
    rng = np.random.default_rng(2)
    volume = rng.normal(100, 5, (40, 50, 50))
    volume[20, 10:32, 10:32] = rng.uniform(500, 1500, (22, 22))  # one bright slab, textured
    projection = volume.max(axis=0)
    vmin, vmax = display_range(projection)
    nuclear = projection[10:32, 10:32]
    assert np.mean(nuclear >= vmax) < 0.02
    assert np.ptp(np.clip((nuclear - vmin) / (vmax - vmin), 0, 1)) > 0.5
    assert vmin < 110 and display_range(np.full((4, 4), 7.0)) == (7.0, 8.0)
    assert display_range(np.full((4, 4), np.nan)) == (0.0, 1.0)


def test_quicklook_draws_a_capped_number_of_labels():
    rng = np.random.default_rng(4)
    labels = np.zeros((4, 60, 60), np.int32)
    positions = [(y, x) for y in range(1, 59, 3) for x in range(1, 59, 3)]  # 400 separate specks
    for k, (y, x) in enumerate(positions, start=1):
        labels[1, y, x] = k
    labels[1:3, 20:30, 20:30] = 999  # one big object among them
    image = rng.normal(100, 5, labels.shape).astype(np.float32)
    n_ids = len(np.unique(labels)) - 1
    assert n_ids > MAX_LABEL_NUMBERS
    fig = quicklook_figure(image, labels, title="t7")
    for ax in fig.axes:
        numbers = [int(t.get_text()) for t in ax.texts]
        assert len(numbers) == MAX_LABEL_NUMBERS
        assert 999 in numbers
    assert fig.get_suptitle() == f"t7\nnumbers on the {MAX_LABEL_NUMBERS} largest of {n_ids} objects"
    few = np.where(labels == 999, 1, 0)
    fig = quicklook_figure(image, few, title="t7")
    assert [t.get_text() for t in fig.axes[0].texts] == ["1"] and fig.get_suptitle() == "t7"


def test_numbered_labels_prefers_the_largest():
    ids = np.array([3, 5, 8, 9])
    np.testing.assert_array_equal(numbered_labels(ids, np.array([10, 40, 40, 5]), cap=2), [5, 8])
    np.testing.assert_array_equal(numbered_labels(ids, np.array([10, 40, 1, 40]), cap=3), [3, 5, 9])
    np.testing.assert_array_equal(numbered_labels(ids, np.ones(4), cap=10), ids)
