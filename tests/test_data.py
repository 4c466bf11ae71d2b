"""tf.data pipelines: determinism, crop/flip consistency, foreground guarantee, grid geometry."""
from __future__ import annotations

import numpy as np
import pytest

from qca_tf import io, preprocess
from qca_tf.config import DataConfig
from qca_tf.data import VolumeSpec, check_volume, training_dataset, validation_dataset
from qca_tf.errors import InputError

VOXEL = io.VoxelSize(1.0, 1.0, 2.0)
#: No augmentation beyond flips and min-max scaling: crops whose values are exactly known.
PLAIN = dict(normalization="minmax", rot90=False, scale_jitter=0.0, intensity_augment=False)


def _spec(tmp_path, image, target, name="v", voxel=VOXEL) -> VolumeSpec:
    io.write_stack(tmp_path / f"{name}_im.tif", image, voxel)
    io.write_stack(tmp_path / f"{name}_mask.tif", target, voxel)
    return VolumeSpec(name, tmp_path / f"{name}_im.tif", tmp_path / f"{name}_mask.tif", False,
                      preprocess.zoom_factors(voxel, 1.0), voxel)


def _ramp_volume():
    """Image encoding its own coordinates: value = 1000*z + 30*y + x (monotone along each axis)."""
    z, y, x = np.meshgrid(np.arange(10), np.arange(24), np.arange(26), indexing="ij")
    image = (1000 * z + 30 * y + x).astype(np.uint16)
    target = (x > 12).astype(np.uint8) * 255
    return image, target


def _take(ds, n):
    return [(x.numpy(), t.numpy()) for x, t in ds.take(n)]


def test_pipeline_is_deterministic_by_seed(tmp_path):
    spec = _spec(tmp_path, *_ramp_volume())
    cfg = DataConfig(patch=(8, 8, 8))  # every augmentation on
    a = _take(training_dataset([spec], cfg, batch_size=2, seed=3, ndn_diameter_um=5.0), 6)
    b = _take(training_dataset([spec], cfg, batch_size=2, seed=3, ndn_diameter_um=5.0), 6)
    c = _take(training_dataset([spec], cfg, batch_size=2, seed=4, ndn_diameter_um=5.0), 6)
    for (xa, ta), (xb, tb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ta, tb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    x, t = a[0]
    assert x.shape == (2, 8, 8, 8, 1) and x.dtype == np.float32
    assert t.shape == (2, 8, 8, 8)


def test_resampling_stage_makes_isotropic_grid(tmp_path):
    image, target = _ramp_volume()
    spec = _spec(tmp_path, image, target)  # z voxel 2 um -> factor 2 on a 1 um grid
    x, t = next(iter(validation_dataset([spec], DataConfig(**PLAIN), multiple=4, ndn_diameter_um=5.0)))
    assert t.shape == (20, 24, 26)              # z resampled 10 -> 20
    assert x.shape == (1, 20, 24, 28, 1)        # mirror-padded to a multiple of 4
    assert float(x.numpy().min()) == 0.0 and float(x.numpy().max()) == pytest.approx(1.0)
    np.testing.assert_array_equal(t.numpy(), preprocess.resize_labels((target > 0).astype(np.uint8), (20, 24, 26)))


def test_flips_apply_to_image_and_mask_alike_and_never_in_z(tmp_path):
    image, target = _ramp_volume()
    spec = _spec(tmp_path, image, target, voxel=io.VoxelSize(1.0, 1.0, 1.0))  # no resampling: exact values
    ds = training_dataset([spec], DataConfig(patch=(6, 8, 8), **PLAIN), batch_size=1, seed=0, ndn_diameter_um=5.0)
    seen = set()
    for x, t in _take(ds, 60):
        x, t = x[0, ..., 0], t[0]
        dz = np.diff(x, axis=0).mean()
        dy = np.diff(x, axis=1).mean()
        dx = np.diff(x, axis=2).mean()
        assert dz > 0  # never flipped in z
        seen.add((dy > 0, dx > 0))
        # the mask is x > 12 in the source: it must follow the image through the flip
        # (mask voxels are exactly those whose image x-coordinate exceeds 12)
        src_x = np.rint(x * (image.max() - image.min()) + image.min()).astype(int) % 1000 % 30
        np.testing.assert_array_equal(t > 0, src_x > 12)
    assert seen == {(True, True), (True, False), (False, True), (False, False)}


def test_every_crop_holds_foreground_even_when_it_is_tiny(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(100, 200, size=(12, 40, 40)).astype(np.uint16)
    target = np.zeros_like(image, dtype=np.uint8)
    target[3, 30:32, 5:7] = 255  # 4 voxels
    spec = _spec(tmp_path, image, target)
    ds = training_dataset([spec], DataConfig(patch=(8, 8, 8)), batch_size=4, seed=1, ndn_diameter_um=5.0)
    for _, t in _take(ds, 10):
        assert all(t[i].sum() > 0 for i in range(len(t)))


def test_volume_smaller_than_patch_is_mirror_padded(tmp_path):
    image, target = _ramp_volume()
    spec = _spec(tmp_path, image[:3, :10, :10], (np.ones((3, 10, 10)) * 255).astype(np.uint8))
    x, t = _take(training_dataset([spec], DataConfig(patch=(16, 16, 16)), batch_size=1, seed=0,
                                  ndn_diameter_um=5.0), 1)[0]
    assert x.shape == (1, 16, 16, 16, 1) and t.shape == (1, 16, 16, 16)


def test_check_volume_names_the_file(tmp_path):
    image, target = _ramp_volume()
    with pytest.raises(InputError, match=r"empty_mask\.tif: empty mask"):
        io.write_stack(tmp_path / "empty_mask.tif", np.zeros_like(target), VOXEL)
        io.write_stack(tmp_path / "im.tif", image, VOXEL)
        check_volume(tmp_path / "im.tif", tmp_path / "empty_mask.tif")
    io.write_stack(tmp_path / "small.tif", target[:, :10], VOXEL)
    with pytest.raises(InputError, match=r"small\.tif: shape \(10, 10, 26\) differs"):
        check_volume(tmp_path / "im.tif", tmp_path / "small.tif")
    io.write_stack(tmp_path / "const.tif", np.full_like(image, 7), VOXEL)
    with pytest.raises(InputError, match=r"const\.tif: constant image"):
        check_volume(tmp_path / "const.tif", tmp_path / "im.tif")


def _coords_volume(n=(12, 24, 24)):
    """Image whose value encodes the voxel (y, x); target marks x > 12 (so it has a side)."""
    z, y, x = np.meshgrid(*(np.arange(k) for k in n), indexing="ij")
    return (1 + 100 * y + x).astype(np.uint16), ((x > 12) | (y < 3)).astype(np.uint8) * 255


def test_rot90_turns_image_and_mask_together_in_xy_only(tmp_path):
    image, target = _coords_volume()
    spec = _spec(tmp_path, image, target, voxel=io.VoxelSize(1.0, 1.0, 1.0))
    cfg = DataConfig(patch=(6, 8, 8), **{**PLAIN, "rot90": True})
    src = {}
    for iz, iy, ix in np.argwhere(np.ones_like(image, bool)):
        src.setdefault((int(image[iz, iy, ix])), target[iz, iy, ix] > 0)
    grads = set()
    for x, t in _take(training_dataset([spec], cfg, batch_size=1, seed=0, ndn_diameter_um=5.0), 60):
        x, t = x[0, ..., 0], t[0]
        raw = np.rint(x * (image.max() - image.min()) + image.min()).astype(int)
        # each crop voxel still carries its own source voxel's mask value
        np.testing.assert_array_equal(t > 0, np.vectorize(src.get)(raw))
        np.testing.assert_array_equal(raw[0], raw[-1])  # z untouched (the image is constant in z)
        gy, gx = np.diff(raw, axis=1).mean(), np.diff(raw, axis=2).mean()
        grads.add((int(np.sign(round(gy))), int(np.sign(round(gx))), abs(gy) > abs(gx)))
    # with flips and rotations, the source y axis (step 100) appears along both crop axes
    assert {g[2] for g in grads} == {True, False}


def test_rot90_of_the_uint8_target_writes_nothing_to_the_terminal(tmp_path):
    """TensorFlow's oneDNN transpose writes "oneDNN supports DT_UINT8 only on platforms with
    AVX-512" straight to fd 2 for integer tensors on some CPUs (an AVX-512 EPYC did, during
    every `qca-tf train`): the rotation must not transpose the uint8 target. Elsewhere the
    line never appears and this checks only that the rotation runs silently."""
    import subprocess
    import sys

    code = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\n"
            "from qca_tf.runtime import init_tensorflow; tf = init_tensorflow()\n"
            "from qca_tf.data import augment_rot90\n"
            "image = tf.zeros((4, 8, 8)); target = tf.ones((4, 8, 8), tf.uint8)\n"
            "for s in range(8):\n"
            "    im, t = augment_rot90(image, target, tf.constant([s, 1], tf.int64))\n"
            "    assert t.dtype == tf.uint8 and int(tf.reduce_sum(tf.cast(t, tf.int32))) == 256\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    assert "oneDNN supports" not in res.stderr, res.stderr


def test_scale_jitter_resizes_crop_and_keeps_mask_aligned(tmp_path):
    z, y, x = np.meshgrid(np.arange(20), np.arange(40), np.arange(40), indexing="ij")
    ball = ((z - 10) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) <= 36
    image = (100 + 1000 * ball).astype(np.uint16)
    spec = _spec(tmp_path, image, ball.astype(np.uint8) * 255, voxel=io.VoxelSize(1.0, 1.0, 1.0))
    cfg = DataConfig(patch=(16, 16, 16), **{**PLAIN, "scale_jitter": 0.3, "flips": False})
    volumes = []
    for xb, t in _take(training_dataset([spec], cfg, batch_size=1, seed=2, ndn_diameter_um=5.0), 30):
        xb, t = xb[0, ..., 0], t[0]
        assert xb.shape == (16, 16, 16) and t.shape == (16, 16, 16)
        bright = xb > 0.5
        inner = ~(t > 0) ^ True
        assert (bright == inner).mean() > 0.97  # the mask follows the resized image
        if not (t[0].any() or t[-1].any() or t[:, 0].any() or t[:, -1].any() or t[:, :, 0].any() or t[:, :, -1].any()):
            volumes.append(int(t.sum()))
    assert volumes and max(volumes) > 1.3 * min(volumes)  # the ball's size varies from crop to crop


def test_intensity_augmentation_is_seeded_bounded_and_varied(tmp_path):
    image, target = _ramp_volume()
    spec = _spec(tmp_path, image, target, voxel=io.VoxelSize(1.0, 1.0, 1.0))
    plain = DataConfig(patch=(6, 8, 8), **{**PLAIN, "flips": False})
    aug = DataConfig(patch=(6, 8, 8), **{**PLAIN, "flips": False, "intensity_augment": True})
    a = _take(training_dataset([spec], plain, batch_size=1, seed=0, ndn_diameter_um=5.0), 20)
    b = _take(training_dataset([spec], aug, batch_size=1, seed=0, ndn_diameter_um=5.0), 20)
    b2 = _take(training_dataset([spec], aug, batch_size=1, seed=0, ndn_diameter_um=5.0), 20)
    means = []
    for (xa, ta), (xb, tb), (xc, _) in zip(a, b, b2):
        np.testing.assert_array_equal(ta, tb)      # same crops: targets untouched
        np.testing.assert_array_equal(xb, xc)      # seeded
        assert xb.min() >= 0.0 and xb.max() <= 1.0
        assert not np.allclose(xa, xb)
        means.append(xb.mean() / max(xa.mean(), 1e-6))
    assert max(means) / min(means) > 1.3  # brightness/contrast/gamma vary between crops


def test_region_restricts_the_volume(tmp_path):
    image, target = _ramp_volume()
    spec = _spec(tmp_path, image, target, voxel=io.VoxelSize(1.0, 1.0, 1.0)).with_region(((0, 10), (0, 24), (13, 26)), "[r]")
    x, t = next(iter(validation_dataset([spec], DataConfig(**PLAIN), multiple=1, ndn_diameter_um=5.0)))
    assert t.shape == (10, 24, 13) and np.all(t.numpy() > 0)  # only the x > 12 side
