"""Losses: known values on hand-made cases, perfect predictions, class weights, float32."""
from __future__ import annotations

import math

import numpy as np
import pytest

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras
import tensorflow as tf

from qca_tf.errors import ConfigError
from qca_tf.losses import ce_plus_dice, cross_entropy, get_loss, soft_dice


def _probs(p_fg: np.ndarray) -> np.ndarray:
    """(batch, z, y, x) foreground probabilities -> (batch, z, y, x, 2) softmax output."""
    p_fg = np.asarray(p_fg, np.float32)
    return np.stack([1 - p_fg, p_fg], axis=-1)


# a 1 x 1 x 2 x 2 volume: labels [[1, 0], [1, 0]], predicted foreground [[0.8, 0.4], [0.5, 0.1]]
LABELS = np.array([[[[1, 0], [1, 0]]]])
P_FG = np.array([[[[0.8, 0.4], [0.5, 0.1]]]])
P_TRUE = np.array([0.8, 0.6, 0.5, 0.9])  # probability of the true class, same voxel order


def test_cross_entropy_known_value():
    expected = -np.mean(np.log(P_TRUE))
    assert float(cross_entropy()(LABELS, _probs(P_FG))) == pytest.approx(expected, rel=1e-5)
    # (batch, z, y, x, 1) labels, as float (tf.data often yields floats), give the same
    as_float = LABELS[..., None].astype(np.float32)
    assert float(cross_entropy()(as_float, _probs(P_FG))) == pytest.approx(expected, rel=1e-5)


def test_class_weights():
    w = (0.5, 3.0)
    weights = np.array([3.0, 0.5, 3.0, 0.5])  # by the true class of each voxel
    expected = -np.mean(weights * np.log(P_TRUE))
    assert float(cross_entropy(w)(LABELS, _probs(P_FG))) == pytest.approx(expected, rel=1e-5)
    # up-weighting the foreground raises the loss here (foreground voxels are the worse ones)
    assert float(cross_entropy((1.0, 2.0))(LABELS, _probs(P_FG))) > float(cross_entropy()(LABELS, _probs(P_FG)))


def test_soft_dice_known_value():
    # foreground: inter 1.3, sum p 1.8, sum t 2; background: inter 0.6 + 0.9 = 1.5, sum p 2.2, sum t 2
    fg = 1 - (2 * 1.3 + 1) / (1.8 + 2 + 1)
    bg = 1 - (2 * 1.5 + 1) / (2.2 + 2 + 1)
    assert float(soft_dice()(LABELS, _probs(P_FG))) == pytest.approx((fg + bg) / 2, rel=1e-5)
    assert float(ce_plus_dice()(LABELS, _probs(P_FG))) == pytest.approx(
        -np.mean(np.log(P_TRUE)) + (fg + bg) / 2, rel=1e-5)


def test_perfect_prediction():
    rng = np.random.default_rng(0)
    labels = (rng.random((2, 4, 5, 6)) > 0.6).astype(np.int32)
    perfect = _probs(labels.astype(np.float32))
    assert float(soft_dice()(labels, perfect)) == pytest.approx(0.0, abs=1e-6)
    assert 0 <= float(cross_entropy()(labels, perfect)) < 1e-6
    assert float(get_loss("ce+dice")(labels, perfect)) < 1e-5
    # an all-background crop predicted as background costs nothing either
    empty = np.zeros((1, 4, 4, 4), np.int32)
    assert float(soft_dice()(empty, _probs(np.zeros((1, 4, 4, 4))))) == pytest.approx(0.0, abs=1e-6)
    wrong = _probs(1.0 - labels)
    assert float(soft_dice()(labels, wrong)) > 0.9
    assert float(cross_entropy()(labels, wrong)) > 10  # clipped log(0)


def test_float16_inputs_computed_in_float32():
    p = tf.constant(_probs(P_FG), tf.float16)
    for name in ("ce", "dice", "ce+dice"):
        out = get_loss(name)(LABELS, p)
        assert out.dtype == tf.float32 and out.shape == ()
    assert float(get_loss("ce")(LABELS, p)) == pytest.approx(-np.mean(np.log(P_TRUE)), rel=1e-3)


def test_get_loss_names_and_keras_fit():
    with pytest.raises(ConfigError, match="unknown loss 'bce'"):
        get_loss("bce")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 4, 1))
    model = keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=get_loss("ce+dice", class_weights=(1.0, 2.0)))
    x = np.random.default_rng(1).random((2, 4, 4, 4, 1), dtype=np.float32)
    y = (x[..., 0] > 0.5).astype(np.int32)
    history = model.fit(x, y, epochs=15, verbose=0).history["loss"]
    assert math.isfinite(history[-1]) and history[-1] < history[0]
