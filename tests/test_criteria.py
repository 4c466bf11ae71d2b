"""Quantitative criteria against analytic volumes, surfaces and centroids."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy import special

from qca_tf.criteria import (NUCLEUS_FIELDS, SUMMARY_FIELDS, nucleus_table, surface_area, timepoint_summary,
                             write_csv)
from qca_tf.errors import InputError, OutputError
from qca_tf.io import VoxelSize


def ellipsoid_area(a: float, b: float, c: float) -> float:
    """Exact surface area of an ellipsoid with semi-axes a, b, c (Legendre's elliptic integrals)."""
    a, b, c = sorted((a, b, c), reverse=True)
    if a == c:
        return 4 * math.pi * a * a
    phi = math.acos(c / a)
    m = (a * a * (b * b - c * c)) / (b * b * (a * a - c * c))
    e, f = special.ellipeinc(phi, m), special.ellipkinc(phi, m)
    return 2 * math.pi * c * c + 2 * math.pi * a * b / math.sin(phi) * (e * math.sin(phi) ** 2 + f * math.cos(phi) ** 2)


def ellipsoid_mask(shape, centre_um, semi_axes_zyx_um, spacing_zyx):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing_zyx)], indexing="ij")
    return sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre_um, semi_axes_zyx_um)) <= 1.0


def test_ellipsoid_area_formula():
    assert ellipsoid_area(5, 5, 5) == pytest.approx(4 * math.pi * 25)
    # Knud Thomsen's approximation agrees to about 1 %
    p = 1.6075
    a, b, c = 12.0, 8.0, 6.0
    thomsen = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    assert ellipsoid_area(a, b, c) == pytest.approx(thomsen, rel=0.011)


def test_sphere_volume_surface_sphericity():
    vs = VoxelSize(1.0, 1.0, 1.0)
    centre = (12.3, 12.6, 12.1)
    labels = ellipsoid_mask((25, 25, 25), centre, (10, 10, 10), vs.zyx).astype(np.int32)
    (row,) = nucleus_table(labels, vs)
    assert set(row) == set(NUCLEUS_FIELDS)
    assert row["label"] == 1 and row["timepoint"] == 0 and row["mean_intensity"] is None
    assert row["volume_um3"] == pytest.approx(4 / 3 * math.pi * 1000, rel=0.03)
    assert row["surface_um2"] == pytest.approx(4 * math.pi * 100, rel=0.03)
    assert row["equivalent_diameter_um"] == pytest.approx(20.0, rel=0.02)
    assert row["sphericity"] == pytest.approx(1.0, abs=0.03)
    got = (row["centroid_z_um"], row["centroid_y_um"], row["centroid_x_um"])
    np.testing.assert_allclose(got, centre, atol=0.05)


@pytest.mark.parametrize("semi_axes_zyx", [(6.0, 8.0, 12.0), (12.0, 8.0, 6.0)])
def test_ellipsoid_on_anisotropic_grid(semi_axes_zyx):
    vs = VoxelSize(x=0.5, y=0.5, z=1.0)
    shape = tuple(int(2 * a / s) + 6 for a, s in zip(semi_axes_zyx, vs.zyx))
    centre = tuple((n // 2 + 0.37) * s for n, s in zip(shape, vs.zyx))
    labels = ellipsoid_mask(shape, centre, semi_axes_zyx, vs.zyx).astype(np.uint16) * 4
    (row,) = nucleus_table(labels, vs, timepoint=3)
    assert row["label"] == 4 and row["timepoint"] == 3
    assert row["volume_um3"] == pytest.approx(4 / 3 * math.pi * np.prod(semi_axes_zyx), rel=0.03)
    assert row["surface_um2"] == pytest.approx(ellipsoid_area(*semi_axes_zyx), rel=0.03)
    assert row["sphericity"] < 0.95  # clearly not a sphere
    np.testing.assert_allclose((row["centroid_z_um"], row["centroid_y_um"], row["centroid_x_um"]), centre,
                               atol=0.1)


def test_raw_marching_cubes_would_overestimate():
    """The smoothing matters: without it a binary sphere's mesh is ~9 % too large."""
    from skimage.measure import marching_cubes, mesh_surface_area
    mask = ellipsoid_mask((25, 25, 25), (12.3, 12.6, 12.1), (10, 10, 10), (1, 1, 1))
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5)
    assert mesh_surface_area(verts, faces) > 1.05 * 4 * math.pi * 100
    assert surface_area(mask, (1, 1, 1)) == pytest.approx(4 * math.pi * 100, rel=0.03)


def test_several_labels_in_one_pass_with_intensity():
    vs = VoxelSize(x=0.8, y=0.8, z=1.75)
    labels = np.zeros((12, 30, 40), np.int32)
    labels[2:6, 3:8, 4:10] = 9  # a 4 x 5 x 6 box
    sphere = ellipsoid_mask(labels.shape, (6 * 1.75, 18 * 0.8, 28 * 0.8), (5.0, 5.0, 5.0), vs.zyx)
    labels[sphere] = 5
    image = np.where(labels == 9, 100.0, 0.0) + np.where(labels == 5, 40.0, 0.0) + 1.0
    rows = nucleus_table(labels, vs, image=image, timepoint=7)
    assert [r["label"] for r in rows] == [5, 9]
    box = rows[1]
    assert box["volume_um3"] == pytest.approx(120 * 0.8 * 0.8 * 1.75)
    assert box["surface_um2"] == pytest.approx(2 * (4 * 1.75 * 5 * 0.8 + 4 * 1.75 * 6 * 0.8 + 5 * 0.8 * 6 * 0.8),
                                               rel=0.15)  # a smoothed box has rounded edges
    assert (box["centroid_z_um"], box["centroid_y_um"], box["centroid_x_um"]) == pytest.approx(
        (3.5 * 1.75, 5.0 * 0.8, 6.5 * 0.8))
    assert box["mean_intensity"] == pytest.approx(101.0)
    assert rows[0]["mean_intensity"] == pytest.approx(41.0)
    assert rows[0]["volume_um3"] == pytest.approx(4 / 3 * math.pi * 125, rel=0.05)
    assert rows[0]["volume_um3"] == pytest.approx(int(sphere.sum()) * 0.8 * 0.8 * 1.75)


def test_timepoint_summary():
    rows = [{"timepoint": 1, "volume_um3": 10.0, "surface_um2": 30.0},
            {"timepoint": 1, "volume_um3": 20.0, "surface_um2": 50.0},
            {"timepoint": 2, "volume_um3": 99.0, "surface_um2": 99.0}]
    s = timepoint_summary(rows, 1)
    assert list(s) == SUMMARY_FIELDS
    assert s == {"timepoint": 1, "count": 2, "volume_sum_um3": 30.0, "volume_mean_um3": 15.0,
                 "volume_sd_um3": 5.0, "surface_sum_um2": 80.0, "surface_mean_um2": 40.0,
                 "surface_sd_um2": 10.0, "volume_q1_um3": 12.5, "volume_median_um3": 15.0, "volume_q3_um3": 17.5,
                 "surface_q1_um2": 35.0, "surface_median_um2": 40.0, "surface_q3_um2": 45.0}
    empty = timepoint_summary(rows, 5)
    assert empty["count"] == 0 and empty["volume_sum_um3"] == 0.0 and empty["surface_sum_um2"] == 0.0
    assert empty["volume_mean_um3"] is None and empty["surface_sd_um2"] is None
    assert empty["volume_median_um3"] is None and empty["surface_q3_um2"] is None
    skewed = [{"timepoint": 0, "volume_um3": v, "surface_um2": 1.0} for v in (1.0, 1.0, 1.0, 1.0, 400.0)]
    s = timepoint_summary(skewed, 0)
    assert s["volume_mean_um3"] - s["volume_sd_um3"] < 0  # mean - sd: an impossible negative volume
    assert s["volume_q1_um3"] == s["volume_median_um3"] == s["volume_q3_um3"] == 1.0  # quartiles stay in the data


def test_empty_label_image():
    assert nucleus_table(np.zeros((4, 5, 6), np.int32), VoxelSize(1, 1, 1)) == []


def test_write_csv_roundtrip(tmp_path):
    rows = [{"timepoint": 0, "count": 0, "volume_sum_um3": 0.0, "volume_mean_um3": None, "extra": "x"},
            {"timepoint": 1, "count": 2, "volume_sum_um3": 1.5, "volume_mean_um3": 0.75}]
    path = tmp_path / "summary.csv"
    write_csv(path, rows, SUMMARY_FIELDS)
    with open(path, newline="") as fh:
        back = list(csv.DictReader(fh))
    assert list(back[0]) == SUMMARY_FIELDS
    assert back[0]["volume_mean_um3"] == "" and back[0]["surface_sd_um2"] == ""
    assert back[1]["volume_mean_um3"] == "0.75" and back[1]["count"] == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]  # no temp file left
    with pytest.raises(OutputError, match="does not exist"):
        write_csv(tmp_path / "missing" / "a.csv", rows, SUMMARY_FIELDS)


def test_bad_inputs():
    with pytest.raises(InputError, match="image"):
        nucleus_table(np.ones((3, 3, 3), np.int32), VoxelSize(1, 1, 1), image=np.ones((3, 3, 4)))
    with pytest.raises(InputError, match="integers"):
        nucleus_table(np.full((3, 3, 3), 0.5), VoxelSize(1, 1, 1))


@pytest.mark.parametrize("spacing_zyx", [(1.0, 1.0, 1.0), (1.75, 0.8, 0.8)])
def test_sphericity_of_spheres_near_one_and_never_above(spacing_zyx):
    """Spheres of radius 3 to 8 um at random sub-voxel offsets: sphericity within 3 % of 1
    and never above 1."""
    rng = np.random.default_rng(5)
    vs = VoxelSize(x=spacing_zyx[2], y=spacing_zyx[1], z=spacing_zyx[0])
    for radius in (3.0, 3.5, 4.0, 5.0, 6.0, 8.0):
        shape = tuple(int(2 * radius / s) + 6 for s in spacing_zyx)
        centre = tuple((n / 2 + rng.uniform(-0.5, 0.5)) * s for n, s in zip(shape, spacing_zyx))
        labels = ellipsoid_mask(shape, centre, (radius,) * 3, spacing_zyx).astype(np.int32)
        (row,) = nucleus_table(labels, vs)
        assert row["sphericity"] is not None, radius
        assert 0.97 <= row["sphericity"] <= 1.0, (radius, row["sphericity"])


def test_tiny_objects_have_no_sphericity_and_a_face_surface():
    """Fragments too small for a shape: sphericity None (an empty CSV cell), surface the
    exposed voxel-face area; a nucleus-sized object in the same image keeps both."""
    vs = VoxelSize(x=0.8, y=0.8, z=1.75)
    labels = np.zeros((12, 60, 60), np.int32)
    labels[0, 0, 0] = 1                       # one voxel, on the volume border
    labels[5, 5, 5:7] = 2                     # two voxels along x
    labels[3:5, 10:14, 10:14] = 3             # 32 voxels, flat
    labels[4, 12, 14] = 4                     # one voxel touching label 3: the shared face counts for both
    sphere = ellipsoid_mask(labels.shape, (10.5, 24.0, 24.0), (7.0, 7.0, 7.0), vs.zyx)
    assert not labels[sphere].any()
    labels[sphere] = 5
    rows = {r["label"]: r for r in nucleus_table(labels, vs)}
    yz, xz, xy = 1.75 * 0.8, 1.75 * 0.8, 0.8 * 0.8   # face areas normal to x, y, z
    assert rows[1]["surface_um2"] == pytest.approx(2 * (yz + xz + xy))
    assert rows[2]["surface_um2"] == pytest.approx(2 * yz + 4 * xz + 4 * xy)
    assert rows[3]["surface_um2"] == pytest.approx(2 * 16 * xy + 4 * (2 * 4) * yz)
    assert rows[4]["surface_um2"] == pytest.approx(2 * (yz + xz + xy))
    for label in (1, 2, 3, 4):
        assert rows[label]["sphericity"] is None
    assert 0.97 <= rows[5]["sphericity"] <= 1.0
    assert rows[5]["surface_um2"] == pytest.approx(4 * math.pi * 49, rel=0.03)


def test_sphericity_never_exceeds_one_on_random_fragments(tmp_path):
    """Thousands of random small objects (a weak network's output): every sphericity is
    empty or in (0, 1], and the CSV writes the empty ones as empty cells."""
    rng = np.random.default_rng(0)
    from scipy import ndimage
    noise = ndimage.gaussian_filter(rng.normal(size=(40, 60, 60)), 1.0)
    labels, n = ndimage.label(noise > 0.15)
    assert n > 200
    rows = nucleus_table(labels, VoxelSize(0.8, 0.8, 1.75))
    assert len(rows) == n
    values = [r["sphericity"] for r in rows]
    assert any(v is None for v in values) and any(v is not None for v in values)
    assert all(0 < v <= 1.0 for v in values if v is not None)
    assert all(r["surface_um2"] > 0 for r in rows)
    write_csv(tmp_path / "n.csv", rows, NUCLEUS_FIELDS)
    with open(tmp_path / "n.csv", newline="") as fh:
        cells = [r["sphericity"] for r in csv.DictReader(fh)]
    assert cells.count("") == values.count(None)
