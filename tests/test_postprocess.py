"""Post-processing on hand-built masks with known answers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qca_tf.config import PostprocessConfig
from qca_tf.errors import InputError
from qca_tf.postprocess import (instances_from_probabilities, markers_from_ndn, relabel_consecutive,
                                watershed_instances)


def _distance(shape, centre, spacing=(1.0, 1.0, 1.0)):
    """Physical distance (um) of every voxel centre of a (z, y, x) grid to ``centre`` (um)."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))


def _two_touching_spheres():
    shape = (21, 21, 34)
    da, db = _distance(shape, (10, 10, 10)), _distance(shape, (10, 10, 22))
    mask = (da <= 7) | (db <= 7)  # centres 12 apart, radius 7: fused with a neck at x = 16
    markers = np.zeros(shape, np.int32)
    markers[da <= 1.5] = 1
    markers[db <= 1.5] = 2
    return mask, markers


def test_touching_spheres_split_at_neck():
    mask, markers = _two_touching_spheres()
    assert ndimage.label(mask)[1] == 1  # really fused
    labels = watershed_instances(mask, markers)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels > 0, mask)
    left, right = labels[10, 10, 10], labels[10, 10, 22]
    assert {left, right} == {1, 2}
    x = np.arange(mask.shape[2])[None, None, :]
    assert np.all(labels[mask & (x < 16)] == left)
    assert np.all(labels[mask & (x > 16)] == right)
    # mirror-symmetric halves: sizes differ by at most the neck plane x = 16
    n_left, n_right = int((labels == left).sum()), int((labels == right).sum())
    assert abs(n_left - n_right) <= int((mask & (x == 16)).sum())


def test_region_without_marker_vanishes():
    mask, markers = _two_touching_spheres()
    polar_body = _distance(mask.shape, (10, 3, 30)) <= 2.5
    assert not (polar_body & mask).any()
    labels = watershed_instances(mask | polar_body, markers)
    assert labels.max() == 2
    assert not labels[polar_body].any()


def test_markers_outside_mask_are_ignored():
    mask, markers = _two_touching_spheres()
    markers[0, 0, 0] = 7  # outside the mask
    labels = watershed_instances(mask, markers)
    assert labels.max() == 2 and labels[0, 0, 0] == 0


def test_no_markers_gives_connected_components():
    shape = (12, 12, 30)
    mask = (_distance(shape, (6, 6, 6)) <= 4) | (_distance(shape, (6, 6, 20)) <= 3)
    mask[0, 0, 29] = True  # a one-voxel component, diagonal neighbours are not 6-connected
    mask[1, 1, 28] = True
    labels = watershed_instances(mask, np.zeros(shape, np.int32))
    assert labels.max() == 4
    np.testing.assert_array_equal(labels > 0, mask)
    assert labels[6, 6, 6] != labels[6, 6, 20]
    assert labels[0, 0, 29] != labels[1, 1, 28]


def test_markers_from_ndn_min_size():
    ndn = np.zeros((10, 10, 10), bool)
    ndn[1:4, 1:4, 1:4] = True  # 27 voxels
    ndn[7, 7, 7] = True  # 1 voxel
    ndn[7, 8, 8] = True  # touches the previous one only by an edge: separate in 6-connectivity
    all_markers = markers_from_ndn(ndn)
    assert all_markers.dtype == np.int32 and all_markers.max() == 3
    big_only = markers_from_ndn(ndn, min_size=2)
    assert big_only.max() == 1
    np.testing.assert_array_equal(big_only > 0, np.pad(np.ones((3, 3, 3), bool), ((1, 6), (1, 6), (1, 6))))
    assert markers_from_ndn(ndn, min_size=28).max() == 0


def test_min_size_drops_tiny_marker_in_pipeline():
    mask, markers = _two_touching_spheres()
    ndn = markers > 0
    ndn[markers == 2] = False
    ndn[10, 10, 22] = True  # second marker reduced to one voxel
    cfg_keep = PostprocessConfig(min_marker_size=0)
    cfg_drop = PostprocessConfig(min_marker_size=5)
    nsn_prob, ndn_prob = mask.astype(np.float32) * 0.9, ndn.astype(np.float32) * 0.8
    assert instances_from_probabilities(nsn_prob, ndn_prob, cfg_keep).max() == 2
    one = instances_from_probabilities(nsn_prob, ndn_prob, cfg_drop)
    assert one.max() == 1
    np.testing.assert_array_equal(one > 0, mask)


def test_probability_thresholds_are_strict():
    nsn = np.zeros((6, 6, 6), np.float32)
    nsn[1:5, 1:5, 1:5] = 0.5  # exactly at the threshold: not foreground
    nsn[2:4, 2:4, 2:4] = 0.6
    ndn = np.zeros_like(nsn)
    ndn[2:4, 2:4, 2:4] = 0.7
    labels = instances_from_probabilities(nsn, ndn, PostprocessConfig(), (1, 1, 1))
    assert labels.sum() == 8


def test_anisotropic_spacing_splits_at_physical_intersection():
    """Spheres of radius 7 and 5 um whose centres are 8 um apart along z, on a
    2.0 x 0.5 x 0.5 um (z, y, x) grid: the split must follow the physical
    intersection plane; ignoring the spacing puts hundreds of voxels on the wrong side."""
    spacing = (2.0, 0.5, 0.5)
    shape = (20, 48, 48)
    c1, c2 = (12.0, 12.0, 12.0), (20.0, 12.0, 12.0)
    d1, d2 = _distance(shape, c1, spacing), _distance(shape, c2, spacing)
    mask = (d1 <= 7) | (d2 <= 5)
    markers = np.zeros(shape, np.int32)
    markers[d1 <= 1.5] = 1
    markers[d2 <= 1.5] = 2
    plane = c1[0] + (8**2 + 7**2 - 5**2) / (2 * 8)  # 17.5 um
    z = np.arange(shape[0])[:, None, None] * spacing[0]

    def misplaced(labels):
        first = labels == labels[6, 24, 24]
        return int((first & (z > plane + 1)).sum() + (~first & mask & (z < plane - 1)).sum())

    good = watershed_instances(mask, markers, spacing)
    assert good.max() == 2
    assert misplaced(good) == 0
    assert misplaced(watershed_instances(mask, markers, (1, 1, 1))) > 100


def test_relabel_consecutive():
    labels = np.array([[[0, 17, 17, 3, 200, 0]]])
    out = relabel_consecutive(labels)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[[0, 2, 2, 1, 3, 0]]])


def test_bad_inputs():
    with pytest.raises(InputError, match="markers"):
        watershed_instances(np.ones((4, 4, 4)), np.ones((4, 4, 5)))
    with pytest.raises(InputError, match="3D"):
        markers_from_ndn(np.ones((4, 4)))
    with pytest.raises(InputError, match="spacing"):
        watershed_instances(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1.0, 0.0, 1.0))
