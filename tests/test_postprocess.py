"""Post-processing on hand-built masks with known answers."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from scipy import ndimage

from qca_tf.config import PostprocessConfig
from qca_tf.errors import InputError
from qca_tf.postprocess import (drop_small_instances, instances_from_probabilities, markers_from_ndn,
                                relabel_consecutive, watershed_instances)


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
    labels = instances_from_probabilities(nsn, ndn, PostprocessConfig(min_volume_um3=0), (1, 1, 1))
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


def test_drop_small_instances_in_physical_units():
    """Volumes on a 2.0 x 0.5 x 0.5 um grid (0.5 um^3 per voxel): 40 voxels = 20 um^3."""
    labels = np.zeros((6, 20, 20), np.int32)
    labels[0:2, 0:4, 0:5] = 3      # 40 voxels = 20.0 um^3: kept (not below the minimum)
    labels[3:5, 0:3, 0:6] = 9      # 36 voxels = 18.0 um^3: dropped
    labels[0:6, 10:20, 10:20] = 4  # 600 voxels = 300 um^3: kept
    labels[5, 0, 19] = 12          # 1 voxel: dropped
    out = drop_small_instances(labels, 20.0, (2.0, 0.5, 0.5))
    assert out.dtype == np.int32 and out.max() == 2
    np.testing.assert_array_equal(out == 1, labels == 3)  # ids keep their order: 3 -> 1, 4 -> 2
    np.testing.assert_array_equal(out == 2, labels == 4)
    assert not out[labels == 9].any() and out[5, 0, 19] == 0
    # isotropic 1 um grid: 36 and 40 um^3 both stay; 0 keeps everything
    assert drop_small_instances(labels, 20.0).max() == 3
    np.testing.assert_array_equal(drop_small_instances(labels, 0.0), relabel_consecutive(labels))
    with pytest.raises(InputError, match="min_volume"):
        drop_small_instances(labels, -1.0)


def test_min_volume_after_watershed():
    """Fragments of the NSN mask that catch a marker (a weak network's specks) are not nuclei."""
    mask, markers = _two_touching_spheres()  # two spheres of radius 7 (about 1400 voxels each)
    nsn = mask.astype(np.float32) * 0.9
    ndn = (markers > 0).astype(np.float32) * 0.9
    rng = np.random.default_rng(3)
    specks = np.zeros(mask.shape, bool)
    for z, y, x in zip(*(rng.integers(0, n, 40) for n in mask.shape)):
        if not mask[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any():
            specks[z, y, x] = True  # isolated single voxels, each with its own centre
    assert specks.sum() > 20
    nsn[specks], ndn[specks] = 0.9, 0.9
    spacing = (0.8, 0.8, 0.8)  # 0.512 um^3 per voxel: a speck is 0.5 um^3, a sphere ~180 um^3
    all_kept = instances_from_probabilities(nsn, ndn, PostprocessConfig(min_volume_um3=0), spacing)
    assert all_kept.max() == 2 + specks.sum()
    cleaned = instances_from_probabilities(nsn, ndn, PostprocessConfig(), spacing)  # default 20 um^3
    assert cleaned.max() == 2
    np.testing.assert_array_equal(cleaned > 0, mask)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_warns_when_ndn_gives_no_marker(caplog):
    mask, _ = _two_touching_spheres()
    nsn = mask.astype(np.float32) * 0.9
    with caplog.at_level(logging.WARNING, logger="qca_tf"):
        labels = instances_from_probabilities(nsn, np.zeros_like(nsn), PostprocessConfig(), name="t0007")
    assert labels.max() == 1  # the fused pair stays one component
    (message,) = _warnings(caplog)
    assert message.startswith("t0007: NDN found no nuclear centre") and "1 connected components" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qca_tf"):  # NSN only (no NDN given): no warning
        instances_from_probabilities(nsn, None, PostprocessConfig())
    assert _warnings(caplog) == []


def _blobs(n, spacing_um=4):
    """n separate 3 x 3 x 3 cubes on a line (27 um^3 each at 1 um voxels) and their centres."""
    mask = np.zeros((5, 5, n * spacing_um + 2), bool)
    centres = np.zeros(mask.shape, bool)
    for i in range(n):
        mask[1:4, 1:4, 1 + i * spacing_um:4 + i * spacing_um] = True
        centres[2, 2, 2 + i * spacing_um] = True
    return mask, centres


@pytest.mark.parametrize("n_components, n_centres, warn", [
    (10, 10, False), (10, 5, False),  # half of the components found: no warning
    (10, 4, True), (10, 1, True),     # far fewer centres than components
    (3, 1, False), (4, 2, False),     # a zygote or 2-cell with polar bodies: up to 2 unmarked is normal
    (4, 1, True), (5, 1, True)])
def test_warns_when_ndn_gives_far_fewer_markers(caplog, n_components, n_centres, warn):
    mask, centres = _blobs(n_components)
    x = np.arange(mask.shape[2])
    centres[:, :, x > 2 + (n_centres - 1) * 4] = False  # keep the first n_centres centres
    nsn, ndn = mask.astype(np.float32) * 0.9, centres.astype(np.float32) * 0.9
    with caplog.at_level(logging.WARNING, logger="qca_tf"):
        labels = instances_from_probabilities(nsn, ndn, PostprocessConfig(), (1, 1, 1), name="tp")
    assert labels.max() == n_centres
    messages = _warnings(caplog)
    if warn:
        assert messages == [f"tp: NDN found only {n_centres} nuclear centres for {n_components} NSN components of "
                            "at least 20 um^3: the components without a centre are dropped; check the NDN model "
                            "or lower --ndn-threshold"]
    else:
        assert messages == []


def test_fragments_do_not_count_as_components_for_the_warning(caplog):
    mask, centres = _blobs(2)
    mask[4, 4, 0::2] = True  # separate one-voxel specks: under the minimum volume, not nuclei
    nsn, ndn = mask.astype(np.float32) * 0.9, centres.astype(np.float32) * 0.9
    with caplog.at_level(logging.WARNING, logger="qca_tf"):
        assert instances_from_probabilities(nsn, ndn, PostprocessConfig(), (1, 1, 1)).max() == 2
    assert _warnings(caplog) == []


@pytest.mark.parametrize("empty, gap_um, joined", [(1, 1.6, True), (2, 1.6, True), (3, 1.6, False),
                                                   (1, 0.0, False), (4, 3.2, True), (1, 0.8, True), (1, 1.2, True),
                                                   (2, 1.2, False), (3, 2.4, True), (4, 2.4, False)])
def test_marker_gap_joins_fragments_up_to_the_gap(empty, gap_um, joined):
    """Two NDN fragments with ``empty`` background voxels (0.8 um each) between them along
    x are one marker exactly when that gap (empty * 0.8 um) is at most ``gap_um``, odd
    voxel counts included (1.2 um joins one voxel, 2.4 um three)."""
    ndn = np.zeros((7, 7, 20), bool)
    ndn[2:5, 2:5, 2:5] = True
    ndn[2:5, 2:5, 5 + empty:8 + empty] = True
    markers = markers_from_ndn(ndn, gap_um=gap_um, spacing_zyx=(0.8, 0.8, 0.8))
    assert markers.max() == (1 if joined else 2)
    np.testing.assert_array_equal(markers > 0, ndn)  # joining never paints the gap


def test_marker_gap_is_physical_on_anisotropic_grids():
    """Along z at 2 um per voxel a one-voxel gap is 2 um: kept apart by 1.6 um, joined by 4 um."""
    ndn = np.zeros((7, 5, 5), bool)
    ndn[1:3, 1:4, 1:4] = True
    ndn[4:6, 1:4, 1:4] = True
    spacing = (2.0, 0.5, 0.5)
    assert markers_from_ndn(ndn, gap_um=1.6, spacing_zyx=spacing).max() == 2
    assert markers_from_ndn(ndn, gap_um=4.0, spacing_zyx=spacing).max() == 1
    assert markers_from_ndn(ndn, gap_um=2.0, spacing_zyx=spacing).max() == 1  # exactly the one 2 um voxel
    with pytest.raises(InputError, match="gap_um"):
        markers_from_ndn(ndn, gap_um=-1.0)


def test_marker_gap_is_physical_across_grids():
    """The default gap (0.8 um) joins fragments one voxel apart on the 0.8 um grid, not two;
    on a 1 um grid (a model trained on 1 um data) a one-voxel gap is 1 um: joined by a gap of
    1 um, not by the default."""
    for spacing, gap, empty, joined in ((0.8, PostprocessConfig().marker_gap_um, 1, True),
                                        (0.8, PostprocessConfig().marker_gap_um, 2, False),
                                        (1.0, PostprocessConfig().marker_gap_um, 1, False),
                                        (1.0, 1.0, 1, True), (1.0, 1.0, 2, False)):
        ndn = np.zeros((7, 7, 20), bool)
        ndn[2:5, 2:5, 2:5] = True
        ndn[2:5, 2:5, 5 + empty:8 + empty] = True
        markers = markers_from_ndn(ndn, gap_um=gap, spacing_zyx=(spacing,) * 3)
        assert markers.max() == (1 if joined else 2), (spacing, gap, empty)


def test_default_marker_gap_mends_a_cut_centre_and_keeps_touching_nuclei_apart():
    """On the 0.8 um grid: a nucleus whose NDN centre the threshold cuts in two (a dip of
    one voxel) is one nucleus with the default gap and two without it (the reference
    rule). Two touching nuclei with the NDN's 4 um centre spheres stay two wherever they
    lie on the grid when their radius is over 2.8 um ((4 + 0.8 + 0.8) / 2: the spheres'
    voxels are then more than 0.8 um of background apart); at 2.5 um some positions join
    them, and a gap of 1.6 um joins some pairs of 3 um."""
    sp = (0.8, 0.8, 0.8)
    shape = (16, 16, 30)
    one = _distance(shape, (6.0, 6.0, 10.0), sp) <= 5.0
    centre = np.zeros(shape, np.float32)
    centre[(_distance(shape, (6.0, 6.0, 8.4), sp) <= 1.2) | (_distance(shape, (6.0, 6.0, 10.8), sp) <= 1.2)] = 0.9
    centre[7:9, 7:9, 12] = 0.4  # the dip (x = 9.6 um, one voxel) between the two halves of the centre
    assert ndimage.label(centre > 0.5)[1] == 2
    nsn = one.astype(np.float32) * 0.95
    gapless = dataclasses.replace(PostprocessConfig(), marker_gap_um=0.0)
    assert PostprocessConfig().marker_gap_um == 0.8
    assert instances_from_probabilities(nsn, centre, gapless, sp).max() == 2
    assert instances_from_probabilities(nsn, centre, PostprocessConfig(), sp).max() == 1

    def touching(radius, shift, gap=PostprocessConfig().marker_gap_um):
        da = _distance(shape, (6.0, 6.0, 4.0 + shift), sp)
        db = _distance(shape, (6.0, 6.0, 4.0 + shift + 2 * radius), sp)
        pair = ((da <= radius + 0.5) | (db <= radius + 0.5)).astype(np.float32) * 0.95  # touching: one NSN blob
        centres = ((da <= 2.0) | (db <= 2.0)).astype(np.float32) * 0.9  # the NDN target: 4 um spheres
        assert ndimage.label(pair > 0.5)[1] == 1
        post = PostprocessConfig(min_volume_um3=0, marker_gap_um=gap)
        return instances_from_probabilities(pair, centres, post, sp).max()

    shifts = np.arange(8) * 0.1  # every position of the pair on the 0.8 um grid, in 0.1 um steps
    assert [touching(2.85, t) for t in shifts] == [2] * 8
    assert 1 in [touching(2.5, t) for t in shifts]
    assert 1 in [touching(3.0, t, gap=1.6) for t in shifts]


def test_marker_gap_never_joins_across_nsn_components():
    """Two centre fragments 1 voxel apart, each in its own NSN component (the gap between
    them is background in the NSN mask): two markers, two nuclei, each connected."""
    sp = (0.8, 0.8, 0.8)
    nsn = np.zeros((9, 9, 20), np.float32)
    nsn[1:8, 1:8, 1:9] = 0.9
    nsn[1:8, 1:8, 10:18] = 0.9  # x = 9 is background: two NSN components
    ndn = np.zeros_like(nsn)
    ndn[3:6, 3:6, 6:9] = 0.9
    ndn[3:6, 3:6, 10:13] = 0.9
    joined = markers_from_ndn(ndn > 0.5, gap_um=1.6, spacing_zyx=sp)
    assert joined.max() == 1  # without the NSN mask the fragments are one marker
    assert markers_from_ndn(ndn > 0.5, gap_um=1.6, spacing_zyx=sp, within=nsn > 0.5).max() == 2
    labels = instances_from_probabilities(nsn, ndn, PostprocessConfig(min_volume_um3=0), sp)
    assert labels.max() == 2
    for i in (1, 2):
        assert ndimage.label(labels == i)[1] == 1


# ------------------------------------------------------------------ annotation offset


def _blob(shape, centre_um, spacing, radius_um=4.0):
    """A smooth (z, y, x) probability ball at ``centre_um`` (1 inside, 0 outside, linear edge 1 um wide)."""
    return np.clip(radius_um + 0.5 - _distance(shape, centre_um, spacing), 0, 1).astype(np.float32)


def test_annotation_offset_moves_the_labels_by_that_many_micrometres():
    """Probabilities of two balls on an anisotropic grid: with annotation_offset_um the
    labels are the same nuclei, each centre moved by the offset (um, z y x), sub-voxel
    parts included; (0, 0, 0) gives exactly the labels without it."""
    spacing, shape = (1.5, 0.8, 0.8), (16, 40, 48)
    centres = [(10.5, 12.0, 12.0), (12.0, 18.4, 24.8)]
    nsn = np.maximum(*[_blob(shape, c, spacing) for c in centres])
    ndn = np.maximum(*[_blob(shape, c, spacing, radius_um=1.5) for c in centres])
    plain = instances_from_probabilities(nsn, ndn, PostprocessConfig(min_volume_um3=0), spacing)
    zero = instances_from_probabilities(nsn, ndn, PostprocessConfig(min_volume_um3=0, annotation_offset_um=(0, 0, 0)),
                                        spacing)
    np.testing.assert_array_equal(zero, plain)
    offset = (-0.75, 1.2, -2.0)  # half a voxel in z, 1.5 in y, 2.5 in x
    moved = instances_from_probabilities(nsn, ndn, PostprocessConfig(min_volume_um3=0, annotation_offset_um=offset),
                                         spacing)
    assert plain.max() == moved.max() == 2
    for k in (1, 2):
        before = np.array(ndimage.center_of_mass(plain == k)) * spacing
        after = np.array(ndimage.center_of_mass(moved == k)) * spacing
        np.testing.assert_allclose(after - before, offset, atol=0.15)
        assert abs(int((moved == k).sum()) - int((plain == k).sum())) <= 0.1 * (plain == k).sum()


def test_annotation_offset_is_measured_from_image_and_annotation():
    """An image of three nuclei and their masks drawn (-1.5, 0.4, 0) um from them (z, y, x,
    voxels 1.5 x 0.8 x 0.8 um): annotation_offset finds that offset to a tenth of a voxel;
    masks drawn on the image give (0, 0, 0); a bad pair is a one-line InputError."""
    from qca_tf.labels import annotation_offset

    spacing, shape = (1.5, 0.8, 0.8), (20, 48, 48)
    rng = np.random.default_rng(0)
    centres = [(12.0, 10.0, 10.0), (15.0, 26.0, 14.0), (16.5, 18.0, 28.0)]
    image = 100 + sum(1000 * np.exp(-(_distance(shape, c, spacing) / 3.5) ** 4) for c in centres)
    image = image + rng.normal(0, 5, shape)
    drawn = np.zeros(shape, np.int32)
    for k, c in enumerate(centres, start=1):
        drawn[_distance(shape, c, spacing) <= 3.5] = k
    np.testing.assert_allclose(annotation_offset(image, drawn, spacing), (0, 0, 0), atol=0.1 * 0.8)
    offset = (-1.5, 0.4, 0.0)  # one voxel up in z, half a voxel down in y
    moved = np.zeros(shape, np.int32)
    for k, c in enumerate(centres, start=1):
        moved[_distance(shape, np.add(c, offset), spacing) <= 3.5] = k
    np.testing.assert_allclose(annotation_offset(image, moved, spacing), offset, atol=0.1 * 1.5)
    with pytest.raises(InputError, match="differs from the labels' shape"):
        annotation_offset(image[:-1], moved, spacing)
    with pytest.raises(InputError, match="no annotated instance with signal"):
        annotation_offset(np.zeros(shape), moved, spacing)
