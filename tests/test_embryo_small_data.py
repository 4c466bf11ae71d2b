"""The real-nucleus mosaics of ``benchmarks/embryo_small_data.py`` (embryo-small's
validation, and training with ``--mosaics``), built here from a synthetic embryo whose
nuclei, centres and background are known."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import embryo_small_data as esd  # noqa: E402

from qca_tf import synthetic  # noqa: E402


@pytest.fixture(scope="module")
def source():
    cfg = synthetic.SynthConfig(shape=(24, 64, 64), n_nuclei=4, radius_um=(5.0, 6.0), touching_pairs=0,
                                polar_bodies=0, division_interval=0, seed=4)
    frame = synthetic.make_series(cfg)[0]
    return frame.image, frame.labels, frame.ndn


def test_mosaic_packs_scaled_nuclei_each_with_one_centre(source):
    image, labels, ndn = source
    sizes = np.bincount(labels.ravel())[1:]
    img, lab, cen = esd.real_mosaic(image, labels, ndn, seed=3, n_nuclei=8, scale=(0.6, 0.9), shape=(32, 96, 96))
    assert img.dtype == np.uint16 and img.shape == lab.shape == cen.shape == (32, 96, 96)
    n = int(lab.max())
    assert 6 <= n <= 8 and set(np.unique(lab)) == set(range(n + 1))
    volumes = np.bincount(lab.ravel())[1:]
    # every nucleus is a source nucleus scaled by 0.6-0.9 in each axis (volume 0.22-0.73x, zoom rounding aside)
    assert volumes.min() >= 0.18 * sizes.min() and volumes.max() <= 0.8 * sizes.max()
    # no two masks share a face (the gap keeps a voxel of background; a binary mask of the
    # mosaic splits into the same nuclei, as the real annotation's 6-connected components),
    # but packed: each has a neighbour within 3 voxels
    for k in range(1, n + 1):
        own = lab == k
        ring1 = ndimage.binary_dilation(own) & ~own
        assert not (lab[ring1] > 0).any(), f"nucleus {k} touches another"
    near = [set(np.unique(lab[ndimage.binary_dilation(lab == k, iterations=3)])) - {0, k} for k in range(1, n + 1)]
    assert all(near), "a nucleus stands alone"
    assert ndimage.label(lab > 0)[1] == n
    # one centre blob per nucleus, inside it, of the annotated blob's own size
    blobs, nb = ndimage.label(cen > 0)
    assert nb == n and not (cen[lab == 0] > 0).any()
    assert sorted(set(np.unique(lab[blobs > 0]))) == list(range(1, n + 1))
    blob_size = np.bincount(ndimage.label(ndn > 0)[0].ravel())[1:].max()
    assert np.bincount(blobs.ravel())[1:].max() <= blob_size


def test_mosaic_background_is_the_sources_background_and_the_seed_repeats(source):
    image, labels, ndn = source
    img, lab, _ = esd.real_mosaic(image, labels, ndn, seed=5, n_nuclei=5, shape=(32, 96, 96))
    far_src = image[~ndimage.binary_dilation(labels > 0, iterations=4)]
    far_out = img[~ndimage.binary_dilation(lab > 0, iterations=8)]
    assert set(np.unique(far_out)) <= set(np.unique(far_src))
    # nuclei keep their signal: brighter inside than the background
    assert np.median(img[lab > 0]) > np.percentile(far_src, 99)
    again = esd.real_mosaic(image, labels, ndn, seed=5, n_nuclei=5, shape=(32, 96, 96))
    assert np.array_equal(again[0], img) and np.array_equal(again[1], lab)


def test_polar_bodies_sit_beside_the_nuclei_unlabelled_bright_and_seeded(source):
    image, labels, ndn = source
    img, lab, cen = esd.real_mosaic(image, labels, ndn, seed=5, n_nuclei=5, shape=(32, 96, 96))
    out, centres = esd.add_polar_bodies(img, lab, image, labels, 3, seed=5)
    assert out.dtype == np.uint16 and out.shape == img.shape and centres.shape == (3, 3)
    spacing = np.array([esd.VOXEL.z, esd.VOXEL.y, esd.VOXEL.x])
    dist = ndimage.distance_transform_edt(lab == 0, sampling=spacing)
    idx = np.rint(centres / spacing).astype(int)
    # not nuclei: in the background, 2.4-6 um beyond their own semi-axis (1.4-2.8 um) from the nearest nucleus
    assert (lab[tuple(idx.T)] == 0).all() and (cen[tuple(idx.T)] == 0).all()
    d = dist[tuple(idx.T)]
    assert (d >= 1.4 + 2.4 - 0.5).all() and (d <= 2.8 + 6.0 + 0.5).all()
    # apart from each other, brighter than the nuclei's typical signal, and only there
    pair = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(3, 1)]
    assert (pair > 4.0).all()
    assert (out[tuple(idx.T)] > np.percentile(img[lab > 0], 90)).all()
    far = np.ones(lab.shape, bool)
    far[tuple(idx.T)] = False
    far = ndimage.distance_transform_edt(far, sampling=spacing) > 6.0
    assert np.array_equal(out[far], img[far])
    again, c2 = esd.add_polar_bodies(img, lab, image, labels, 3, seed=5)
    assert np.array_equal(again, out) and np.array_equal(c2, centres)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A stand-in for the real 8-cell stack (51 x 120 x 122 voxels, z, y, x): 3 nuclei left
    of the cut at x = 52 and 5 right of it, each a bright ellipsoid with a centre sphere."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices((51, 120, 122))
    centres = [(25, 30, 20), (20, 75, 28), (30, 95, 38),
               (25, 25, 70), (22, 60, 75), (28, 95, 80), (20, 40, 105), (30, 80, 105)]
    nsn = np.zeros((51, 120, 122), np.uint8)
    ndn = np.zeros_like(nsn)
    for cz, cy, cx in centres:
        r2 = ((z - cz) / 5.0) ** 2 + ((y - cy) / 10.0) ** 2 + ((x - cx) / 10.0) ** 2
        nsn[r2 <= 1] = 255
        ndn[r2 <= 0.1] = 255
    image = (100 + 500 * (nsn > 0) + rng.normal(0, 10, nsn.shape)).clip(0, 65535).astype(np.uint16)
    real = tmp_path_factory.mktemp("real")
    for name, a in (("image.tif", image), ("nsn_gt.tif", nsn), ("ndn_gt.tif", ndn)):
        esd.io.write_stack(real / name, a, esd.VOXEL)
    return real, image


@pytest.mark.parametrize("part, train_x, test_x, nuclei", [("left", slice(0, 52), slice(52, None), (3, 5)),
                                                            ("right", slice(52, None), slice(0, 52), (5, 3)),
                                                            ("all", slice(None), None, (8, 0))])
def test_each_fold_trains_on_its_part_and_tests_on_the_other(stand_in, tmp_path, part, train_x, test_x, nuclei):
    """The cross-validation's folds: the training, validation and choice folders are made
    from the training part alone (each volume rebuilt here from that part with the same
    seeds); the test holds only the other part (none for 'all')."""
    real, image = stand_in
    assert esd.main([str(tmp_path), "--real", str(real), "--train-part", part, "--mosaics", "1",
                     "--mosaic-polar", "1"]) == 0
    read = esd.io.read_stack
    labels = ndimage.label(read(real / "nsn_gt.tif") > 0)[0][:, :, train_x]
    im, cen = image[:, :, train_x], read(real / "ndn_gt.tif")[:, :, train_x]
    train = read(tmp_path / "train_real" / "images" / f"real_{part}.tif")
    assert np.array_equal(train, im)
    assert np.array_equal(read(tmp_path / "train" / "images" / f"real_{part}.tif"), train)
    assert len(np.unique(read(tmp_path / "train_real" / "labels" / f"real_{part}.tif"))) - 1 == nuclei[0]
    mosaic = esd.add_polar_bodies(*esd.real_mosaic(im, labels, cen, seed=40)[:2], im, labels, 1, seed=40)[0]
    assert np.array_equal(read(tmp_path / "train" / "images" / "mosaic40.tif"), mosaic)
    dim = esd.dimmed(im, 5)
    for split in ("val", "val_finetune", "val_real"):
        assert np.array_equal(read(tmp_path / split / "images" / f"real_{part}_dim.tif"), dim)
    assert np.array_equal(read(tmp_path / "val_real" / "images" / f"real_{part}_late.tif"),
                          esd.later_stage(im, labels, seed=8)[0])
    assert np.array_equal(read(tmp_path / "val_real" / "images" / "mosaic60.tif"),
                          esd.real_mosaic(im, labels, cen, seed=60)[0])
    polar = esd.add_polar_bodies(*esd.real_mosaic(im, labels, cen, seed=62)[:2], im, labels, 3, seed=62)[0]
    assert np.array_equal(read(tmp_path / "val_polar" / "images" / "mosaic62_polar.tif"), polar)
    if test_x is None:
        assert not (tmp_path / "test").exists()
        return
    name = {"left": "right", "right": "left"}[part]
    assert sorted(p.name for p in (tmp_path / "test" / "images").iterdir()) == [f"real_{name}.tif",
                                                                                f"real_{name}_late.tif"]
    assert np.array_equal(read(tmp_path / "test" / "images" / f"real_{name}.tif"), image[:, :, test_x])
    assert len(np.unique(read(tmp_path / "test" / "labels" / f"real_{name}.tif"))) - 1 == nuclei[1]
    late = read(tmp_path / "test" / "labels" / f"real_{name}_late.tif")
    assert len(np.unique(late)) - 1 == nuclei[1]


def test_a_rebuild_for_another_part_leaves_nothing_of_the_first(stand_in, tmp_path):
    """Building the second fold where the first was built must not leave the first fold's
    files: its training part is the second fold's test."""
    real, _ = stand_in
    assert esd.main([str(tmp_path), "--real", str(real), "--train-part", "left"]) == 0
    (tmp_path / "notes.txt").write_text("mine")  # not the script's: kept
    assert esd.main([str(tmp_path), "--real", str(real), "--train-part", "all"]) == 0
    names = {p.name for p in tmp_path.rglob("*.tif")}
    assert not {n for n in names if "left" in n or "right" in n}
    assert not (tmp_path / "test").exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_align_annotation_moves_the_training_part_onto_its_annotation(tmp_path):
    """A stand-in whose image lies one voxel down in y and one up in x from its annotation
    (annotation offset (0, -0.8, +0.8) um): --align-annotation measures that on the
    training part, records it, and moves only that part's image onto the annotation; the
    test stays as recorded; a rebuild without the flag drops the record."""
    rng = np.random.default_rng(1)
    z, y, x = np.indices((51, 120, 122))
    nsn = np.zeros((51, 120, 122), np.uint8)
    signal = np.zeros((51, 120, 122), np.float32)
    for cz, cy, cx in [(25, 30, 20), (20, 75, 28), (30, 95, 38), (25, 25, 70), (22, 60, 75)]:
        nsn[((z - cz) / 5.0) ** 2 + ((y - cy) / 10.0) ** 2 + ((x - cx) / 10.0) ** 2 <= 1] = 255
        signal += np.exp(-(((z - cz) / 5.0) ** 2 + ((y - cy - 1) / 10.0) ** 2 + ((x - cx + 1) / 10.0) ** 2) ** 2)
    image = (100 + 500 * signal + rng.normal(0, 5, nsn.shape)).clip(0, 65535).astype(np.uint16)
    real = tmp_path / "real"
    for name, a in (("image.tif", image), ("nsn_gt.tif", nsn), ("ndn_gt.tif", np.zeros_like(nsn))):
        esd.io.write_stack(real / name, a, esd.VOXEL)
    out = tmp_path / "out"
    assert esd.main([str(out), "--real", str(real), "--align-annotation"]) == 0
    offset = esd.annotation_offset_of(out)
    np.testing.assert_allclose(offset, (0.0, -0.8, 0.8), atol=0.1)
    read = esd.io.read_stack
    train = read(out / "train_real" / "images" / "real_left.tif")
    assert np.array_equal(train, esd.moved(image[:, :, :52], offset))
    assert np.array_equal(read(out / "train" / "images" / "real_left.tif"), train)
    assert np.array_equal(read(out / "val_real" / "images" / "real_left_dim.tif"), esd.dimmed(train, 5))
    labels = read(out / "train_real" / "labels" / "real_left.tif")
    np.testing.assert_allclose(esd.annotation_offset(train, labels, esd.VOXEL.zyx), (0, 0, 0), atol=0.1)
    assert np.array_equal(read(out / "test" / "images" / "real_right.tif"), image[:, :, 52:])
    assert esd.main([str(out), "--real", str(real)]) == 0
    assert esd.annotation_offset_of(out) is None
    assert np.array_equal(read(out / "train_real" / "images" / "real_left.tif"), image[:, :, :52])
