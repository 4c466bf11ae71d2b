"""Segmentation losses on softmax outputs, computed in float32.

``y_true``: integer class labels (batch, z, y, x) or (batch, z, y, x, 1).
``y_pred``: softmax probabilities (batch, z, y, x, n_classes). Each loss returns a
scalar (mean over the batch and all voxels).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import tensorflow as tf

from .config import LOSSES
from .errors import ConfigError

log = logging.getLogger(__name__)

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
_EPS = 1e-7


def _prepare(y_true: tf.Tensor, y_pred: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Labels as int32 (batch, z, y, x) and probabilities as float32 (batch, z, y, x, n)."""
    y_pred = tf.cast(y_pred, tf.float32)
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == y_pred.shape.rank:
        y_true = tf.squeeze(y_true, axis=-1)
    return tf.cast(y_true, tf.int32), y_pred


def cross_entropy(class_weights: Sequence[float] | None = None) -> LossFn:
    """Softmax cross-entropy: mean over voxels of w[y] * -log p[y] (w = 1 without
    ``class_weights``; like Chainer's weighted softmax_cross_entropy, normalised by the
    voxel count, not by the weight sum)."""
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def ce(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels, probs = _prepare(y_true, y_pred)
        p = tf.reduce_sum(probs * tf.one_hot(labels, tf.shape(probs)[-1], dtype=tf.float32), axis=-1)
        nll = -tf.math.log(tf.clip_by_value(p, _EPS, 1.0))
        if weights is not None:
            nll = nll * tf.gather(weights, labels)
        return tf.reduce_mean(nll)

    ce.__name__ = "cross_entropy"
    return ce


def soft_dice(smooth: float = 1.0) -> LossFn:
    """Soft Dice loss: mean over classes of 1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s),
    sums taken over the whole batch. A class absent from both truth and prediction scores 0."""

    def dice(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels, probs = _prepare(y_true, y_pred)
        onehot = tf.one_hot(labels, tf.shape(probs)[-1], dtype=tf.float32)
        axes = tf.range(tf.rank(probs) - 1)
        inter = tf.reduce_sum(probs * onehot, axis=axes)
        total = tf.reduce_sum(probs, axis=axes) + tf.reduce_sum(onehot, axis=axes)
        return tf.reduce_mean(1.0 - (2.0 * inter + smooth) / (total + smooth))

    dice.__name__ = "soft_dice"
    return dice


def ce_plus_dice(class_weights: Sequence[float] | None = None) -> LossFn:
    """Cross-entropy (optionally class-weighted) plus soft Dice."""
    ce, dice = cross_entropy(class_weights), soft_dice()

    def ce_dice(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return ce(y_true, y_pred) + dice(y_true, y_pred)

    ce_dice.__name__ = "ce_plus_dice"
    return ce_dice


def get_loss(name: str, class_weights: Sequence[float] | None = None) -> LossFn:
    """The loss called ``name`` (one of config.LOSSES: "ce", "dice", "ce+dice").
    ``class_weights`` weight the cross-entropy term; the Dice term ignores them."""
    if name == "ce":
        return cross_entropy(class_weights)
    if name == "dice":
        if class_weights is not None:
            log.info("class weights are ignored by the Dice loss")
        return soft_dice()
    if name == "ce+dice":
        return ce_plus_dice(class_weights)
    raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
