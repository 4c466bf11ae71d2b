"""tf.data pipelines for training (random crops) and validation (whole volumes).

Each piece of work is a stage of the pipeline, so tf.data runs it in parallel with
the network:

``paths -> load -> resample to the network grid -> normalise -> mirror pad -> cache
-> repeat -> random foreground crop -> random flip (x, y, x+y) -> batch -> prefetch``

Images travel as (z, y, x, c): c is 1, or the number of ``DataConfig.channels``
picked from multi-channel files (each resampled and normalised on its own).

Per-volume stages (load, resample, normalise, pad) run once: their results are
cached. Crops and flips draw from stateless random numbers seeded by
``(seed, element index)``, so the stream is identical from run to run, whatever
the parallelism. Targets are (z, y, x); image batches are (batch, z, y, x, c).
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


def training_dataset(specs: list[VolumeSpec], cfg: DataConfig, *, batch_size: int, seed: int,
                     ndn_diameter_um: float) -> tf.data.Dataset:
    """Endless stream of random crops: ((batch, pz, py, px, c) float32, (batch, pz, py, px) uint8)."""
    patch = tf.constant(cfg.patch, tf.int32)
    patch_np = np.asarray(cfg.patch, np.int32)

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
        # origin o with o <= c <= o + p - 1 and 0 <= o <= n - p
        lo = tf.maximum(0, centre - patch + 1)
        hi = tf.minimum(centre, shape - patch)
        u = tf.random.stateless_uniform([3], seed=s + [0, 1], dtype=tf.float32)
        origin = lo + tf.cast(tf.floor(u * tf.cast(hi - lo + 1, tf.float32)), tf.int32)
        origin = tf.minimum(origin, hi)
        image = tf.slice(image, tf.concat([origin, [0]], 0), tf.concat([patch, [-1]], 0))
        target = tf.slice(target, origin, patch)
        if cfg.flips:
            # 0: none, 1: flip x, 2: flip y, 3: flip x and y (never z: intensity falls along z)
            mode = tf.random.stateless_uniform([], seed=s + [0, 2], minval=0, maxval=4, dtype=tf.int32)
            flip_x = tf.logical_or(tf.equal(mode, 1), tf.equal(mode, 3))
            flip_y = mode >= 2
            image = tf.cond(flip_x, lambda: tf.reverse(image, [2]), lambda: image)
            target = tf.cond(flip_x, lambda: tf.reverse(target, [2]), lambda: target)
            image = tf.cond(flip_y, lambda: tf.reverse(image, [1]), lambda: image)
            target = tf.cond(flip_y, lambda: tf.reverse(target, [1]), lambda: target)
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
