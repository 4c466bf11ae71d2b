"""Helpers shared by the model tests."""
from __future__ import annotations

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras
import numpy as np


def randomize_bn(model: keras.Model, rng: np.random.Generator, affine: bool = True) -> None:
    """Non-trivial BN moving statistics (a fresh BN is the identity), and with ``affine``
    also non-trivial gamma and beta."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.uniform(-0.3, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            if not affine:
                continue
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.uniform(-0.2, 0.2, n).astype("float32"))
