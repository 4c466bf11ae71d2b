"""Tests of qca_tf.preprocess: resampling to the network grid and back, normalisation, padding."""
from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.ndimage as ndi

from qca_tf.errors import ConfigError
from qca_tf.io import VoxelSize
from qca_tf.preprocess import (mirror_pad, normalize, pad_to_multiple, resample, resampled_shape, resize_labels,
                               zoom_factors)

RNG = np.random.default_rng(0)


def test_zoom_factors_reference_voxels():
    assert zoom_factors(VoxelSize(0.8, 0.8, 1.75), 0.8) == pytest.approx((2.1875, 1.0, 1.0))
    assert zoom_factors(VoxelSize(0.4, 0.5, 2.0), 1.0) == pytest.approx((2.0, 0.5, 0.4))
    with pytest.raises(ConfigError, match="spacing_um"):
        zoom_factors(VoxelSize(1, 1, 1), 0)


def test_resampled_shape():
    assert resampled_shape((51, 120, 122), (2.1875, 1, 1)) == (112, 120, 122)
    assert resampled_shape((4, 10, 3), (0.5, 0.25, 0.01)) == (2, 2, 1)  # round(2.5) = 2 as scipy, never 0


def test_resample_shape_dtype_and_back():
    vol = RNG.integers(0, 4000, size=(51, 20, 22)).astype(np.uint16)
    out = resample(vol, (2.1875, 1, 1))
    assert out.shape == (112, 20, 22) and out.dtype == np.float32
    assert out.min() >= vol.min() and out.max() <= vol.max()  # linear interpolation does not overshoot
    assert resize_labels(out, vol.shape).shape == vol.shape


def test_resample_linear_hand_values():
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None], (4, 2, 3))
    up = resample(ramp, (2, 1, 1))
    # output i samples (i + 0.5) / 2 - 0.5, clamped to [0, 3]
    np.testing.assert_allclose(up[:, 0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
    line = np.arange(8, dtype=np.float32).reshape(1, 1, 8) ** 2
    down = resample(line, (1, 1, 0.5))  # samples x = 0.5, 2.5, 4.5, 6.5: means of neighbour pairs
    np.testing.assert_allclose(down[0, 0], [0.5, 6.5, 20.5, 42.5], atol=1e-5)


def test_resample_linear_matches_scipy_zoom():
    vol = RNG.random((9, 11, 13)).astype(np.float32)
    factors = (2.1875, 0.7, 1.5)
    ours = resample(vol, factors, order=1)
    ref = ndi.zoom(vol, factors, order=1, mode="nearest", grid_mode=True)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_resample_order0_repeats():
    vol = RNG.integers(0, 9, size=(3, 4, 5)).astype(np.uint8)
    np.testing.assert_array_equal(resample(vol, (2, 1, 3), order=0), vol.repeat(2, axis=0).repeat(3, axis=2))


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_keeps_unit_factor_axes(order):
    plane = RNG.random((7, 8)).astype(np.float32)
    vol = np.repeat(plane[None], 5, axis=0)  # constant along z: only z may change
    out = resample(vol, (2.1875, 1, 1), order=order)
    assert out.shape == (11, 7, 8)
    for z in range(out.shape[0]):
        np.testing.assert_array_equal(out[z], plane)
    np.testing.assert_array_equal(resample(vol, (1, 1, 1), order=order), vol)


def test_resample_rejects_order():
    with pytest.raises(ConfigError, match="order 2"):
        resample(np.zeros((2, 2, 2)), (2, 2, 2), order=2)


def test_resample_speed_reference_volume():
    vol = RNG.integers(0, 4000, size=(51, 120, 122)).astype(np.uint16)
    resample(vol, (2.1875, 1, 1))  # warm-up
    start = time.perf_counter()
    out = resample(vol, (2.1875, 1, 1))
    assert out.shape == (112, 120, 122)
    assert time.perf_counter() - start < 0.5


def test_resize_labels_hand_index():
    labels = np.array([1, 2, 3], np.uint16).reshape(3, 1, 1)
    up = resize_labels(labels, (7, 1, 1))
    assert up.dtype == np.uint16
    np.testing.assert_array_equal(up.ravel(), [1, 1, 2, 2, 2, 3, 3])  # floor((i + 0.5) * 3 / 7)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, bool])
def test_resize_labels_round_trip(dtype):
    labels = RNG.integers(0, 50, size=(51, 6, 5)).astype(dtype)
    up = resize_labels(labels, (112, 12, 15))  # z factor 2.1875 as the reference data, x2 and x3 in y, x
    assert up.shape == (112, 12, 15) and up.dtype == labels.dtype
    np.testing.assert_array_equal(up[:, ::2, ::3], resize_labels(labels, (112, 6, 5)))
    np.testing.assert_array_equal(resize_labels(up, labels.shape), labels)


def test_resize_labels_same_shape_is_a_copy():
    labels = np.ones((2, 3, 4), np.uint8)
    out = resize_labels(labels, labels.shape)
    out[0, 0, 0] = 5
    assert labels[0, 0, 0] == 1


def test_normalize():
    vol = np.array([2, 4, 6, 4], np.uint16).reshape(1, 2, 2)
    out = normalize(vol)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.ravel(), [0, 0.5, 1, 0.5])
    rand = normalize(RNG.normal(100, 30, size=(4, 5, 6)))
    assert rand.min() == 0 and rand.max() == 1


def test_normalize_constant_gives_zeros():
    out = normalize(np.full((3, 4, 5), 7, np.uint16))
    assert out.dtype == np.float32 and not np.isnan(out).any()
    np.testing.assert_array_equal(out, 0)


def test_mirror_pad_reflect_values():
    row = np.array([1, 2, 3, 4]).reshape(1, 1, 4)
    out = mirror_pad(row, ((0, 0), (0, 0), (2, 3)))
    np.testing.assert_array_equal(out.ravel(), [3, 2, 1, 2, 3, 4, 3, 2, 1])
    short = np.array([1, 2, 3]).reshape(1, 1, 3)
    out = mirror_pad(short, ((0, 0), (0, 0), (5, 5)))  # pad longer than the axis reflects again
    np.testing.assert_array_equal(out.ravel(), [2, 1, 2, 3, 2, 1, 2, 3, 2, 1, 2, 3, 2])


def test_mirror_pad_int_and_length_one_axis():
    vol = np.arange(4).reshape(1, 2, 2)
    out = mirror_pad(vol, 2)
    assert out.shape == (5, 6, 6)
    for z in range(5):  # the length-1 z axis repeats its only slice
        np.testing.assert_array_equal(out[z], out[2])
    np.testing.assert_array_equal(out[2, 2:4, 2:4], vol[0])
    np.testing.assert_array_equal(out[2, 2, :], [0, 1, 0, 1, 0, 1])


def test_pad_to_multiple():
    vol = RNG.random((5, 6, 8)).astype(np.float32)
    padded, crop = pad_to_multiple(vol, 4)
    assert padded.shape == (8, 8, 8)
    np.testing.assert_array_equal(padded[crop], vol)
    np.testing.assert_array_equal(padded[5, :6], vol[3])  # reflection at the end: 5 -> 3, 6 -> 2, 7 -> 1
    np.testing.assert_array_equal(padded[7, :6], vol[1])
    np.testing.assert_array_equal(padded[:5, 6], vol[:, 4])
    padded, crop = pad_to_multiple(vol, 4, min_shape=(10, 2, 2))
    assert padded.shape == (12, 8, 8)
    np.testing.assert_array_equal(padded[crop], vol)
    same, crop = pad_to_multiple(vol, 1)
    assert same.shape == vol.shape and crop == (slice(0, 5), slice(0, 6), slice(0, 8))
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(vol, 0)


def test_normalize_percentile_ignores_hot_pixels_and_brightness():
    rng = np.random.default_rng(3)
    vol = rng.normal(100, 10, size=(8, 16, 16)).astype(np.float32)
    vol[0, 0, 0] = 60000  # one hot pixel
    out = normalize(vol, "percentile", (1.0, 99.0))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.3 < float(np.median(out)) < 0.7  # min-max would squash everything to ~0
    assert float(np.median(normalize(vol))) < 0.01
    # a stack 2.5x brighter (and offset) normalises to the same values
    np.testing.assert_allclose(normalize(vol * 2.5 + 7, "percentile", (1.0, 99.0)), out, atol=1e-5)


def test_normalize_percentile_flat_falls_back_to_minmax_and_constant_gives_zeros():
    vol = np.zeros((4, 8, 8), np.float32)
    vol[0, 0, :3] = 5.0  # p1 == p99.8 == 0: min-max
    np.testing.assert_allclose(normalize(vol, "percentile"), vol / 5.0)
    assert not normalize(np.full((3, 4, 5), 7, np.uint16), "percentile").any()


def test_normalize_unknown_method():
    from qca_tf.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown normalization 'zscore'"):
        normalize(np.ones((2, 2, 2)), "zscore")


def test_to_network_grid_is_resample_then_normalize():
    from qca_tf.io import VoxelSize
    from qca_tf.preprocess import to_network_grid, zoom_factors

    raw = RNG.integers(0, 4000, size=(6, 20, 22)).astype(np.uint16)
    voxel = VoxelSize(0.8, 0.8, 1.75)
    out = to_network_grid(raw, voxel, 0.8, normalization="percentile")
    expected = normalize(resample(raw.astype(np.float32), zoom_factors(voxel, 0.8)), "percentile")
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (13, 20, 22)
