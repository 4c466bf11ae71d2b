"""Tests of the synthetic embryo generator (qca_tf.synthetic)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from scipy import ndimage

from qca_tf.errors import ConfigError, OutputError
from qca_tf.io import VoxelSize, find_dataset, read_stack, read_voxel_size
from qca_tf.synthetic import BACKGROUND, SynthConfig, make_series, write_dataset

SPACING = np.array([1.75, 0.8, 0.8])   # default voxel size as (z, y, x)
# Nearly noise-free imaging, for tests that compare intensities exactly.
CLEAN = dict(photons=1e7, gaussian_noise=0.0)


@pytest.fixture(scope="module")
def default_series():
    return make_series(SynthConfig(timepoints=2, seed=3))


def _adjacent_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of label ids that share a face."""
    pairs = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        m = (a != b) & (a > 0) & (b > 0)
        pairs |= {(int(min(p, q)), int(max(p, q))) for p, q in zip(a[m], b[m])}
    return pairs


def test_shapes_dtypes_and_consecutive_labels(default_series):
    for tp in default_series:
        assert tp.image.shape == tp.labels.shape == tp.nsn.shape == tp.ndn.shape == (24, 96, 96)
        assert (tp.image.dtype, tp.labels.dtype, tp.nsn.dtype, tp.ndn.dtype) == (np.uint16, np.uint16, np.uint8, np.uint8)
        n = int(tp.labels.max())
        np.testing.assert_array_equal(np.unique(tp.labels), np.arange(n + 1))
        np.testing.assert_array_equal(tp.nsn, np.where(tp.labels > 0, 255, 0))
        assert set(np.unique(tp.ndn)) == {0, 255}
        centres = np.array(ndimage.center_of_mass(tp.labels > 0, tp.labels, np.arange(1, n + 1))) * SPACING
        np.testing.assert_allclose(tp.centres_um, centres, atol=1e-9)
    assert default_series[0].labels.max() == 8


def test_realistic_intensity_range(default_series):
    img, nsn = default_series[0].image.astype(float), default_series[0].nsn > 0
    background = img[~ndimage.binary_dilation(nsn, iterations=3)]
    assert 80 < np.median(background) < 300
    assert 1000 < np.median(img[nsn]) < 4000
    # Clear contrast even at the bottom slices holding nuclei.
    bottom = max(z for z in range(img.shape[0]) if nsn[z].sum() > 50)
    assert np.median(img[bottom][nsn[bottom]]) > 3 * np.median(background)


def test_nuclei_are_anisotropic_in_voxels(default_series):
    labels = default_series[0].labels
    for sl in ndimage.find_objects(labels):
        z_extent, x_extent = sl[0].stop - sl[0].start, sl[2].stop - sl[2].start
        assert z_extent < x_extent


def test_touching_pairs_fuse_and_others_stay_apart():
    for pairs in (0, 1, 3):
        tp = make_series(SynthConfig(touching_pairs=pairs, seed=5))[0]
        n = int(tp.labels.max())
        assert ndimage.label(tp.nsn > 0)[1] == n - pairs
        assert ndimage.label(tp.nsn > 0, np.ones((3, 3, 3)))[1] == n - pairs
        assert len(_adjacent_pairs(tp.labels)) == pairs


def test_touching_pairs_fuse_when_the_image_is_thresholded():
    tp = make_series(SynthConfig(touching_pairs=2, seed=1))[0]
    img, nsn = tp.image.astype(float), tp.nsn > 0
    threshold = (np.median(img[~nsn]) + np.percentile(img[nsn], 10)) / 2
    components = ndimage.label(ndimage.median_filter(img, 3) > threshold)[0]
    pairs = _adjacent_pairs(tp.labels)
    assert len(pairs) == 2
    for a, b in pairs:
        ca = np.bincount(components[tp.labels == a]).argmax()
        cb = np.bincount(components[tp.labels == b]).argmax()
        assert ca == cb != 0


def test_polar_bodies_in_image_not_in_ground_truth():
    with_pb = make_series(SynthConfig(polar_bodies=2, seed=2))[0]
    without = make_series(SynthConfig(polar_bodies=0, seed=2))[0]
    # Polar bodies are placed after the nuclei: the ground truth is the same.
    np.testing.assert_array_equal(with_pb.labels, without.labels)
    np.testing.assert_array_equal(with_pb.ndn, without.ndn)
    outside = ~ndimage.binary_dilation(with_pb.nsn > 0, iterations=3)
    nucleus_level = np.median(with_pb.image[with_pb.nsn > 0])
    bright_with = ndimage.label((with_pb.image > nucleus_level) & outside)[1]
    bright_without = ndimage.label((without.image > nucleus_level) & outside)[1]
    assert bright_with == 2 and bright_without == 0
    # their recorded centres sit on those bright spots, outside every nucleus
    assert with_pb.polar_centres_um.shape == (2, 3) and without.polar_centres_um.shape == (0, 3)
    spots, _ = ndimage.label((with_pb.image > nucleus_level) & outside)
    spacing = np.array(SynthConfig().spacing)
    at = [tuple(np.rint(c / spacing).astype(int)) for c in with_pb.polar_centres_um]
    assert sorted(int(spots[i]) for i in at) == [1, 2] and all(with_pb.labels[i] == 0 for i in at)


def test_ndn_spheres_one_per_nucleus_at_the_centroids(default_series):
    for tp in default_series:
        n = int(tp.labels.max())
        comps, count = ndimage.label(tp.ndn > 0)
        assert count == n
        seen = set()
        for k, sl in enumerate(ndimage.find_objects(comps), start=1):
            ids = np.unique(tp.labels[sl][comps[sl] == k])
            assert len(ids) == 1 and ids[0] > 0          # entirely inside one nucleus
            seen.add(int(ids[0]))
            centre = np.array(ndimage.center_of_mass(comps == k)) * SPACING
            assert np.all(np.abs(centre - tp.centres_um[ids[0] - 1]) <= SPACING / 2)
            radius_um = 5.0 * 0.8 / 2   # ndn_diameter 5 voxels of 0.8 um
            zz, yy, xx = np.nonzero(comps == k)
            dist = np.sqrt(((np.stack([zz, yy, xx], 1) * SPACING - tp.centres_um[ids[0] - 1]) ** 2).sum(1))
            assert dist.max() <= radius_um + 1e-6
        assert seen == set(range(1, n + 1))


def test_divisions_increase_the_count():
    series = make_series(SynthConfig(timepoints=5, division_interval=2, seed=4))
    assert [int(tp.labels.max()) for tp in series] == [8, 8, 9, 9, 10]
    never = make_series(SynthConfig(timepoints=4, division_interval=0, seed=4))
    assert [int(tp.labels.max()) for tp in never] == [8, 8, 8, 8]


def test_nuclei_drift_between_time_points():
    series = make_series(SynthConfig(timepoints=2, division_interval=0, drift_um=0.8, seed=6))
    moved = np.linalg.norm(series[1].centres_um - series[0].centres_um, axis=1)
    assert moved.max() > 0.5 and moved.max() < 6.0


def test_intensity_falls_linearly_along_z():
    kw = dict(CLEAN, psf_sigma_um=(0.0, 0.0, 0.0), seed=7)
    flat = make_series(SynthConfig(z_attenuation=0.0, **kw))[0]
    att = make_series(SynthConfig(z_attenuation=0.3, **kw))[0]
    np.testing.assert_array_equal(flat.labels, att.labels)
    nsn = att.nsn > 0
    for z in range(24):
        if nsn[z].sum() > 20:
            ratio = (att.image[z][nsn[z]] - BACKGROUND).sum() / (flat.image[z][nsn[z]] - BACKGROUND).sum()
            assert ratio == pytest.approx(1 - 0.3 * z / 23, rel=0.01)


def test_photobleaching_over_time():
    series = make_series(SynthConfig(timepoints=3, bleach_per_timepoint=0.1, division_interval=0, drift_um=0.0,
                                     seed=8, **CLEAN))
    ref = series[0].image.astype(float) - BACKGROUND
    nsn = series[0].nsn > 0
    for t, tp in enumerate(series):
        np.testing.assert_array_equal(tp.labels, series[0].labels)
        ratio = (tp.image[nsn] - BACKGROUND).sum() / ref[nsn].sum()
        assert ratio == pytest.approx(0.9**t, rel=0.005)
    # With the default noise the mean inside nuclei still falls over time.
    noisy = make_series(SynthConfig(timepoints=3, bleach_per_timepoint=0.1, division_interval=0, drift_um=0.0))
    means = [tp.image[tp.nsn > 0].mean() for tp in noisy]
    assert means[0] > means[1] > means[2]


def test_seeded_determinism():
    cfg = SynthConfig(timepoints=4, division_interval=2, seed=11)
    a, b = make_series(cfg), make_series(cfg)
    for ta, tb in zip(a, b):
        for field in ("image", "labels", "nsn", "ndn", "centres_um"):
            np.testing.assert_array_equal(getattr(ta, field), getattr(tb, field))
    c = make_series(dataclasses.replace(cfg, seed=12))
    assert not np.array_equal(a[0].labels, c[0].labels)
    assert not np.array_equal(a[0].image, c[0].image)


def test_default_series_is_fast():
    start = time.perf_counter()
    series = make_series(SynthConfig(timepoints=5))
    assert time.perf_counter() - start < 5.0
    assert len(series) == 5


def test_bad_configs_raise_config_error():
    with pytest.raises(ConfigError, match="touching_pairs"):
        SynthConfig(n_nuclei=3, touching_pairs=2)
    with pytest.raises(ConfigError, match="shape"):
        SynthConfig(shape=(4, 96, 96))
    with pytest.raises(ConfigError, match="z_attenuation"):
        SynthConfig(z_attenuation=1.0)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"n_nuclei=30 .*shape=\(8, 32, 32\)"):
        make_series(SynthConfig(shape=(8, 32, 32), n_nuclei=30))
    assert time.perf_counter() - start < 10.0


def test_write_dataset_layout_and_voxel_size(tmp_path):
    series = make_series(SynthConfig(shape=(12, 48, 48), n_nuclei=3, touching_pairs=1, timepoints=2, seed=9))
    vs = VoxelSize(0.8, 0.8, 1.75)
    names = write_dataset(tmp_path / "ds", series, vs)
    assert names == ["t0000.tif", "t0001.tif"]
    for folder, field in (("images", "image"), ("nsn", "nsn"), ("ndn", "ndn"), ("labels", "labels")):
        assert sorted(p.name for p in (tmp_path / "ds" / folder).iterdir()) == names
        for name, tp in zip(names, series):
            path = tmp_path / "ds" / folder / name
            back = read_stack(path)
            assert back.dtype == getattr(tp, field).dtype
            np.testing.assert_array_equal(back, getattr(tp, field))
            assert read_voxel_size(path) == vs
    samples = find_dataset(tmp_path / "ds")
    assert [s.name for s in samples] == ["t0000", "t0001"]
    assert all(s.nsn and s.ndn and s.labels for s in samples)


def test_write_dataset_refuses_a_file_or_another_dataset(tmp_path):
    series = make_series(SynthConfig(shape=(12, 48, 48), n_nuclei=2, touching_pairs=0, timepoints=2, seed=9))
    vs = VoxelSize(0.8, 0.8, 1.75)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        write_dataset(tmp_path / "file", series, vs)
    write_dataset(tmp_path / "ds", series, vs)
    assert write_dataset(tmp_path / "ds", series, vs) == ["t0000.tif", "t0001.tif"]   # rewriting is fine
    with pytest.raises(OutputError, match="t0001.tif from another dataset"):
        write_dataset(tmp_path / "ds", series[:1], vs)
