"""tf.data pipelines for training (random crops) and validation (whole volumes).

Each piece of work is a stage of the pipeline, so tf.data runs it in parallel with
the network:

``paths -> load (+ spatial region) -> resample to the network grid -> normalise -> mirror pad
-> cache -> repeat -> random foreground crop -> mild scaling -> random flip (x, y, x+y)
-> 90-degree rotation in xy -> intensity (gamma, contrast, brightness, z-attenuation,
noise) -> batch -> prefetch``

Images travel as (z, y, x, c): c is 1, or the number of ``DataConfig.channels``
picked from multi-channel files (each resampled and normalised on its own).

Per-volume stages (load, resample, normalise, pad) run once: their results are
cached. Crops and every augmentation draw from stateless random numbers seeded by
``(seed, element index)``, so the stream is identical from run to run, whatever
the parallelism. Targets are (z, y, x); image batches are (batch, z, y, x, c).

Augmentations are what real stacks vary in: later stages are dimmer and bleached,
intensity falls with depth (z), contrast and noise differ from stack to stack, and
nuclei shrink as the embryo divides. z is never flipped or rotated (it is the optical
axis: intensity and resolution fall along it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import io, preprocess, targets
from .config import DataConfig
from .errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeSpec:
    """One training/validation volume: files and how to bring them to the network grid.

    ``target`` is a mask file (nsn or ndn), or an instance-label file when
    ``target_from_labels`` is set (NDN masks are then made from label centroids).
    ``factors`` are the (z, y, x) zoom factors to the isotropic network grid.
    """

    name: str
    image: Path
    target: Path
    target_from_labels: bool
    factors: tuple[float, float, float]
    voxel_size: io.VoxelSize
    region: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None

    def with_region(self, region: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
                    suffix: str) -> VolumeSpec:
        """The same volume restricted to ``region`` ((start, stop) per z, y, x, stored voxels)."""
        return VolumeSpec(f"{self.name}{suffix}", self.image, self.target, self.target_from_labels,
                          self.factors, self.voxel_size, region)


def check_volume(image_path: Path, target_path: Path, channels: tuple[int, ...] | None = None) -> None:
    """Fail fast with a one-line error naming the file: unreadable, not 3D, NaN,
    constant image, image/mask shapes differ, or no foreground in the target.
    ``channels``: the image channels to use (see :class:`qca_tf.config.DataConfig`)."""
    image = io.read_stack(image_path, channels)
    target = io.read_stack(target_path)
    if image.shape[:3] != target.shape:
        raise InputError(f"{target_path}: shape {target.shape} differs from its image {image_path} {image.shape[:3]}")
    if float(image.max()) == float(image.min()):
        raise InputError(f"{image_path}: constant image (every voxel is {image.flat[0]}); nothing to learn from")
    if not np.any(target > 0):
        raise InputError(f"{target_path}: empty mask (no foreground voxel); random crops need foreground")


def _load_resampled(spec_index: np.ndarray, specs: list[VolumeSpec], order: int, ndn_diameter_um: float,
                    channels: tuple[int, ...] | None = None):
    """Stage 1: read image + target and bring both to the network grid.

    Returns image float32 (Z, Y, X, c) and target uint8 0/1 (Z, Y, X).
    """
    spec = specs[int(spec_index)]
    image = io.read_stack(spec.image, channels).astype(np.float32)
    if image.ndim == 3:
        image = image[..., None]
    raw = io.read_stack(spec.target)
    if spec.target_from_labels:
        raw = targets.ndn_target(raw, spec.voxel_size.zyx, ndn_diameter_um)
    if spec.region is not None:
        box = tuple(slice(a, b) for a, b in spec.region)
        image, raw = image[box], raw[box]
    image = np.stack([preprocess.resample(image[..., c], spec.factors, order=order)
                      for c in range(image.shape[-1])], axis=-1)
    target = preprocess.resize_labels((raw > 0).astype(np.uint8), image.shape[:3])
    return image.astype(np.float32), target.astype(np.uint8)


def _pad_and_index(image: np.ndarray, target: np.ndarray, patch: np.ndarray):
    """Stage 3: mirror-pad to at least the patch size and list foreground voxels.

    Returns padded image, padded target and foreground coordinates (N, 3) int32.
    """
    pad = [(0, max(0, int(p) - n)) for p, n in zip(patch, image.shape[:3])]
    if any(after for _, after in pad):
        image = preprocess.mirror_pad(image, pad + [(0, 0)])
        target = preprocess.mirror_pad(target, pad)
    fg = np.argwhere(target > 0).astype(np.int32)
    return image.astype(np.float32), target.astype(np.uint8), fg


def _normalize(image: tf.Tensor, cfg: DataConfig) -> tf.Tensor:
    """Stage 2: normalisation to [0, 1] with :func:`preprocess.normalize` and the config's
    method, as prediction replays it."""
    def per_channel(a: np.ndarray) -> np.ndarray:
        return np.stack([preprocess.normalize(a[..., c], cfg.normalization, cfg.norm_percentiles)
                         for c in range(a.shape[-1])], axis=-1)

    out = tf.numpy_function(per_channel, [image], tf.float32, stateful=False)
    out.set_shape(image.shape)
    return out


def _volume_stages(specs: list[VolumeSpec], cfg: DataConfig, ndn_diameter_um: float) -> tf.data.Dataset:
    """load -> resample -> normalise, one element per volume (image, target)."""
    ds = tf.data.Dataset.range(len(specs))
    n_channels = len(cfg.channels) if cfg.channels else 1

    def load(i):
        image, target = tf.numpy_function(
            lambda j: _load_resampled(j, specs, cfg.resample_order, ndn_diameter_um, cfg.channels),
            [i], [tf.float32, tf.uint8], stateful=False,
        )
        image.set_shape([None, None, None, n_channels])
        target.set_shape([None, None, None])
        return image, target

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.map(lambda im, t: (_normalize(im, cfg), t), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _seed(s: tf.Tensor, k: int) -> tf.Tensor:
    return s + tf.constant([0, k], tf.int64)


def augment_scale(image: tf.Tensor, target: tf.Tensor, patch: tf.Tensor, s: tf.Tensor,
                  jitter: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Mild isotropic scaling: from an (E, E, E) crop, E = ceil(patch * (1 + jitter)), take
    the centred box of patch * f (f uniform in [1 - jitter, 1 + jitter]) and resize it to
    ``patch`` (image trilinear, target nearest). f > 1 shrinks the nuclei, f < 1 enlarges them."""
    f = tf.random.stateless_uniform([], seed=_seed(s, 3), minval=1.0 - jitter, maxval=1.0 + jitter)
    size = tf.cast(tf.round(tf.cast(patch, tf.float32) * f), tf.int32)
    size = tf.clip_by_value(size, 2, tf.shape(target))
    start = (tf.shape(target) - size) // 2
    channels = image.shape.rank == 4
    image = tf.slice(image, tf.concat([start, [0]], 0), tf.concat([size, [-1]], 0)) if channels else \
        tf.slice(image, start, size)
    target = tf.slice(target, start, size)

    def resize(v, method):
        # (z, y, x, c) -> resize y, x with z as batch -> resize z, x with y as batch
        v = tf.image.resize(v, patch[1:], method=method)                      # (z', py, px, c)
        v = tf.transpose(v, [1, 0, 2, 3])                                    # (py, z', px, c)
        v = tf.image.resize(v, tf.stack([patch[0], patch[2]]), method=method)  # (py, pz, px, c)
        return tf.transpose(v, [1, 0, 2, 3])

    image = resize(image if channels else image[..., None], "bilinear")
    image = image if channels else image[..., 0]
    target = tf.cast(resize(tf.cast(target, tf.float32)[..., None], "nearest")[..., 0], tf.uint8)
    return image, target


def augment_flip(image: tf.Tensor, target: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """0: none, 1: flip x, 2: flip y, 3: flip x and y (never z: intensity falls along z)."""
    mode = tf.random.stateless_uniform([], seed=_seed(s, 2), minval=0, maxval=4, dtype=tf.int32)
    flip_x = tf.logical_or(tf.equal(mode, 1), tf.equal(mode, 3))
    flip_y = mode >= 2
    image = tf.cond(flip_x, lambda: tf.reverse(image, [2]), lambda: image)
    target = tf.cond(flip_x, lambda: tf.reverse(target, [2]), lambda: target)
    image = tf.cond(flip_y, lambda: tf.reverse(image, [1]), lambda: image)
    target = tf.cond(flip_y, lambda: tf.reverse(target, [1]), lambda: target)
    return image, target


def augment_rot90(image: tf.Tensor, target: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotate by k * 90 degrees in the xy plane (k uniform in 0..3; y and x sizes must match)."""
    k = tf.random.stateless_uniform([], seed=_seed(s, 4), minval=0, maxval=4, dtype=tf.int32)

    def rot(v):  # one 90-degree turn in (y, x): transpose then flip x (a channel axis stays last)
        return tf.reverse(tf.transpose(v, [0, 2, 1, *range(3, v.shape.rank)]), [2])

    # the target turns as float32 (exact for 0..255): TensorFlow's oneDNN transpose writes an
    # "oneDNN supports DT_UINT8 only on platforms with AVX-512" error line to the terminal
    # for integer tensors on some CPUs (seen on an AVX-512 EPYC)
    dtype = target.dtype
    target = tf.cast(target, tf.float32)
    for i in range(1, 4):
        image = tf.cond(k >= i, lambda v=image: rot(v), lambda v=image: v)
        target = tf.cond(k >= i, lambda v=target: rot(v), lambda v=target: v)
    return image, tf.cast(target, dtype)


#: Intensity augmentation ranges (image in [0, 1] after normalisation).
GAMMA_RANGE = (0.6, 1.6)
CONTRAST_RANGE = (0.6, 1.3)
BRIGHTNESS_RANGE = (-0.1, 0.1)
Z_ATTENUATION_MAX = 0.5   # fraction of intensity lost from the top to the bottom of a crop
NOISE_MAX = 0.06          # standard deviation of additive Gaussian noise


def augment_intensity(image: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
    """Gamma, contrast, brightness, a linear z-attenuation ramp and Gaussian noise, each
    drawn per crop; the result is clipped to [0, 1]. (Z, Y, X) or (Z, Y, X, c) float32 in and out."""
    u = tf.random.stateless_uniform([5], seed=_seed(s, 5))

    def between(x, bounds):
        return bounds[0] + x * (bounds[1] - bounds[0])

    gamma = tf.exp(between(u[0], (np.log(GAMMA_RANGE[0]), np.log(GAMMA_RANGE[1]))))
    image = tf.pow(tf.clip_by_value(image, 0.0, 1.0), gamma)
    image = image * between(u[1], CONTRAST_RANGE) + between(u[2], BRIGHTNESS_RANGE)
    nz = tf.shape(image)[0]
    ramp = tf.cast(tf.range(nz), tf.float32) / tf.cast(tf.maximum(nz - 1, 1), tf.float32)
    ramp = tf.reshape(ramp, [-1] + [1] * (image.shape.rank - 1))  # along z, for (Z, Y, X) or (Z, Y, X, c)
    image = image * (1.0 - u[3] * Z_ATTENUATION_MAX * ramp)
    noise = tf.random.stateless_normal(tf.shape(image), seed=_seed(s, 6)) * (u[4] * NOISE_MAX)
    return tf.clip_by_value(image + noise, 0.0, 1.0)


def training_dataset(specs: list[VolumeSpec], cfg: DataConfig, *, batch_size: int, seed: int,
                     ndn_diameter_um: float) -> tf.data.Dataset:
    """Endless stream of random crops: ((batch, pz, py, px, c) float32, (batch, pz, py, px) uint8).

    Augmentations follow ``cfg``: ``scale_jitter`` (mild scaling), ``flips`` (x/y),
    ``rot90`` (xy, only when the patch's y and x sizes are equal) and ``intensity_augment``.
    """
    out_patch = tf.constant(cfg.patch, tf.int32)
    n_channels = len(cfg.channels) if cfg.channels else 1
    scaling = cfg.scale_jitter > 0
    crop_size = tuple(int(np.ceil(p * (1 + cfg.scale_jitter))) for p in cfg.patch) if scaling else cfg.patch
    patch = tf.constant(crop_size, tf.int32)
    patch_np = np.asarray(crop_size, np.int32)
    inner = [max(1, int(np.floor(p * (1 - cfg.scale_jitter))) - 1) if scaling else p for p in cfg.patch]
    keep_lo = tf.constant([(e - i) // 2 for e, i in zip(crop_size, inner)], tf.int32)
    keep_hi = keep_lo + tf.constant(inner, tf.int32) - 1
    rotate = cfg.turns_xy
    if cfg.rot90 and not rotate:
        log.info("no 90-degree rotations: the patch's y and x sizes differ (%s)", cfg.patch)

    def pad(image, target):
        im, tg, fg = tf.numpy_function(_pad_and_index, [image, target, patch_np],
                                       [tf.float32, tf.uint8, tf.int32], stateful=False)
        im.set_shape(image.shape)
        tg.set_shape([None, None, None])
        fg.set_shape([None, 3])
        return im, tg, fg

    ds = _volume_stages(specs, cfg, ndn_diameter_um)
    ds = ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache().repeat()
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter()))

    def crop(element, index):
        image, target, fg = element
        s = tf.stack([tf.constant(seed, tf.int64), index])
        shape = tf.shape(image)[:3]
        n_fg = tf.shape(fg, out_type=tf.int64)[0]
        pick = tf.random.stateless_uniform([], seed=s, minval=0, maxval=n_fg, dtype=tf.int64)
        centre = tf.gather(fg, pick)
        # origin o with o + a <= c <= o + b and 0 <= o <= n - p, [a, b] the part of the crop
        # that every scaled sub-box keeps (the whole crop without scaling)
        lo = tf.minimum(tf.maximum(0, centre - keep_hi), shape - patch)
        hi = tf.maximum(tf.minimum(centre - keep_lo, shape - patch), lo)
        u = tf.random.stateless_uniform([3], seed=s + [0, 1], dtype=tf.float32)
        origin = lo + tf.cast(tf.floor(u * tf.cast(hi - lo + 1, tf.float32)), tf.int32)
        origin = tf.minimum(origin, hi)
        image = tf.slice(image, tf.concat([origin, [0]], 0), tf.concat([patch, [-1]], 0))
        target = tf.slice(target, origin, patch)
        if scaling:
            image, target = augment_scale(image, target, out_patch, s, cfg.scale_jitter)
        if cfg.flips:
            image, target = augment_flip(image, target, s)
        if rotate:
            image, target = augment_rot90(image, target, s)
        if cfg.intensity_augment:
            image = augment_intensity(image, s)
        image = tf.ensure_shape(image, [*cfg.patch, n_channels])
        target = tf.ensure_shape(target, cfg.patch)
        return image, target

    ds = ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def validation_dataset(specs: list[VolumeSpec], cfg: DataConfig, *, multiple: int,
                       ndn_diameter_um: float) -> tf.data.Dataset:
    """Whole volumes, mirror-padded at the end of each axis to a multiple of ``multiple``:
    ((1, Z', Y', X', c) float32, (Z, Y, X) uint8 unpadded target). Cached after the first pass."""

    def pad(image, target):
        im = tf.numpy_function(
            lambda a: preprocess.pad_to_multiple(a, int(multiple), channels_last=True)[0].astype(np.float32),
            [image], tf.float32, stateful=False)
        im.set_shape(image.shape)
        return im[None], target

    ds = _volume_stages(specs, cfg, ndn_diameter_um)
    return ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache().prefetch(tf.data.AUTOTUNE)
