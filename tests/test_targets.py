"""Tests of qca_tf.targets: centroids and NDN centre spheres on hand-built labels."""
from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.ndimage as ndi

from qca_tf.errors import InputError
from qca_tf.targets import centre_spheres, centroids, ndn_target

RNG = np.random.default_rng(0)


def _brute_force(shape, centre, spacing, diameter) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= (diameter / 2) ** 2


def test_centroid_of_boxes():
    labels = np.zeros((6, 8, 10), np.uint16)
    labels[1:4, 2:6, 3:8] = 5
    labels[0, 0, 0] = 2
    ids, centres = centroids(labels)
    np.testing.assert_array_equal(ids, [2, 5])
    assert centres.dtype == np.float64 and centres.shape == (2, 3)
    np.testing.assert_allclose(centres, [[0, 0, 0], [2, 3.5, 5]])


def test_centroids_match_scipy():
    labels = RNG.integers(0, 7, size=(5, 9, 11)).astype(np.int32)
    labels[labels == 3] = 0  # an id gap
    ids, centres = centroids(labels)
    np.testing.assert_array_equal(ids, [1, 2, 4, 5, 6])
    expected = ndi.center_of_mass(np.ones_like(labels), labels, ids)
    np.testing.assert_allclose(centres, expected, atol=1e-12)


def test_centroids_empty_and_invalid():
    ids, centres = centroids(np.zeros((2, 3, 4), np.uint8))
    assert ids.shape == (0,) and centres.shape == (0, 3)
    with pytest.raises(InputError, match="negative"):
        centroids(np.full((2, 2, 2), -1, np.int16))
    with pytest.raises(InputError, match="dtype float"):
        centroids(np.zeros((2, 2, 2), np.float32))


def test_sphere_diameter_5_has_81_voxels():
    mask = centre_spheres((11, 11, 11), np.array([[5.0, 5.0, 5.0]]), (1, 1, 1), 5.0)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    # lattice points with x^2 + y^2 + z^2 <= 6.25: 1 + 6 + 12 + 8 + 6 + 24 + 24 for squared norms 0..6
    assert mask.sum() == 81
    np.testing.assert_array_equal(mask, _brute_force((11, 11, 11), (5, 5, 5), (1, 1, 1), 5.0))


@pytest.mark.parametrize("centre,spacing,diameter", [
    ((5.3, 4.7, 5.5), (1, 1, 1), 5.0),
    ((4.2, 6.0, 3.9), (1.75, 0.8, 0.8), 4.0),
    ((0.0, 0.0, 10.6), (1, 1, 1), 5.0),  # cut by the volume border
])
def test_sphere_matches_brute_force(centre, spacing, diameter):
    shape = (9, 12, 11)
    mask = centre_spheres(shape, np.array([centre]), spacing, diameter)
    np.testing.assert_array_equal(mask, _brute_force(shape, centre, spacing, diameter))


def test_anisotropic_spacing_gives_fewer_z_slices():
    centre = np.array([[6.0, 6.0, 6.0]])
    iso = centre_spheres((13, 13, 13), centre, (1, 1, 1), 5.0)
    aniso = centre_spheres((13, 13, 13), centre, (2, 1, 1), 5.0)
    assert np.flatnonzero(iso.any(axis=(1, 2))).tolist() == [4, 5, 6, 7, 8]
    assert np.flatnonzero(aniso.any(axis=(1, 2))).tolist() == [5, 6, 7]  # |dz| * 2 <= 2.5
    np.testing.assert_array_equal(aniso[6], iso[6])


def test_tiny_sphere_keeps_nearest_voxel():
    mask = centre_spheres((5, 6, 7), np.array([[2.4, 3.6, 1.5], [40.0, 1.0, 1.0]]), (1, 1, 1), 0.1)
    assert mask.sum() == 1 and mask[2, 4, 2] == 1  # the centre far outside the volume adds nothing


def test_many_centres_touch_only_boxes():
    shape = (64, 256, 256)
    centres = RNG.uniform(0, 1, size=(500, 3)) * np.array(shape)
    start = time.perf_counter()
    mask = centre_spheres(shape, centres, (1, 1, 1), 5.0)
    assert time.perf_counter() - start < 1.0
    assert mask.sum() > 0


def test_ndn_target_spheres_at_centroids():
    labels = np.zeros((20, 20, 20), np.uint16)
    labels[2:9, 3:10, 4:11] = 1  # centre (5, 6, 7)
    labels[11:18, 11:16, 12:19] = 4  # centre (14, 13, 15)
    target = ndn_target(labels, (1, 1, 1), 5.0)
    assert target.dtype == np.uint8
    comps, n = ndi.label(target)
    assert n == 2 and target.sum() == 2 * 81
    assert target[5, 6, 7] == 1 and target[14, 13, 15] == 1
    np.testing.assert_allclose(ndi.center_of_mass(target, comps, [1, 2]), [(5, 6, 7), (14, 13, 15)])
