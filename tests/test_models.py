"""U-Net builder: shapes, presets' parameter counts, receptive field, FLOPs, precision."""
from __future__ import annotations

import numpy as np
import pytest

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras
import tensorflow as tf

from qca_tf.config import PRESETS, ModelConfig
from qca_tf.errors import ConfigError
from qca_tf.models import build_unet, check_spatial_shape, flops, receptive_field_radius, tile_margin

from model_helpers import randomize_bn


def _trainable(model: keras.Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@pytest.mark.parametrize("name,reference", [("nsn", 1.15e6), ("ndn", 44.4e6), ("unet3d", 19e6)])
def test_preset_parameter_counts(name, reference):
    model = build_unet(PRESETS[name])
    # the reference (Chainer) counts conv weights + biases + BN gamma/beta = Keras' trainable weights
    assert abs(_trainable(model) - reference) / reference < 0.02
    assert abs(model.count_params() - reference) / reference < 0.02  # + BN moving statistics


def test_nsn_parameter_count_exact():
    """Hand count of the NSN preset (c=16, k=3, depth 2): convs with bias, BN gamma/beta."""
    conv = lambda k, i, o: k**3 * i * o + o  # noqa: E731
    convs = (conv(3, 1, 16) + conv(3, 16, 32) + conv(3, 32, 32) + conv(3, 32, 64)  # encoder
             + conv(3, 64, 64) + conv(3, 64, 128)  # bottom
             + conv(2, 128, 128) + conv(3, 192, 64) + conv(3, 64, 64)  # decoder level 1
             + conv(2, 64, 64) + conv(3, 96, 32) + conv(3, 32, 32)  # decoder level 0
             + conv(1, 32, 2))  # head
    bn = 2 * (16 + 32 + 32 + 64 + 64 + 128 + 64 + 64 + 32 + 32)
    assert _trainable(build_unet(PRESETS["nsn"])) == convs + bn == 1147618


def test_output_shape_and_softmax():
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(depth=2, init_channels=2, n_classes=3)
    model = build_unet(cfg)
    x = np.random.default_rng(0).random((2, 8, 12, 20, 1), dtype=np.float32)
    y = model(x, training=False).numpy()
    assert y.shape == (2, 8, 12, 20, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    assert model.input_shape == (None, None, None, None, 1)


def test_fixed_input_shape_checked():
    model = build_unet(ModelConfig(depth=2, init_channels=2), input_shape=(8, 16, 12))
    assert model.input_shape == (None, 8, 16, 12, 1)
    message = r"spatial size \(30, 64, 64\) is not divisible by 2\*\*depth = 4 \(depth 2\); pad or crop to a multiple of 4"
    with pytest.raises(ConfigError, match=message):
        build_unet(ModelConfig(depth=2, init_channels=2), input_shape=(30, 64, 64))
    check_spatial_shape((8, 8, 8), 3)
    with pytest.raises(ConfigError, match="multiple of 8"):
        check_spatial_shape((8, 8, 12), 3)


def test_weight_decay_and_init():
    model = build_unet(ModelConfig(depth=1, init_channels=2), weight_decay=1e-3)
    convs = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv3D, keras.layers.Conv3DTranspose))]
    assert len(convs) == 2 + 2 + 1 + 2 + 1  # encoder, bottom, up, decoder, head
    assert len(model.losses) == len(convs)
    expected = sum(1e-3 * float(np.sum(np.square(c.kernel.numpy()))) for c in convs)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)
    assert not build_unet(ModelConfig(depth=1, init_channels=2)).losses
    assert all(c.kernel_initializer.__class__.__name__ == "HeNormal" for c in convs)


def test_mixed_precision_policy_and_names():
    cfg = ModelConfig(depth=2, init_channels=2)
    f32 = build_unet(cfg)
    mixed = build_unet(cfg, dtype_policy="mixed_float16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is untouched
    assert [layer.name for layer in f32.layers] == [layer.name for layer in mixed.layers]
    assert mixed.get_layer("enc0a_conv").compute_dtype == "float16"
    assert mixed.get_layer("enc0a_conv").variable_dtype == "float32"
    assert mixed.get_layer("softmax").compute_dtype == "float32"
    # bfloat16 runs on CPU; the output stays float32
    y = build_unet(cfg, dtype_policy="mixed_bfloat16")(np.zeros((1, 4, 4, 4, 1), np.float32))
    assert y.dtype == tf.float32


def test_receptive_field_values():
    # depth 1, k 3: enc 1+1, bottom 2+2, up 1, dec 1+1
    assert receptive_field_radius(ModelConfig(depth=1, kernel_size=3)) == 9
    # depth 2, k 3: 2 + 2*2 + 2*4 + (2 + 2*2) + (1 + 2)
    assert receptive_field_radius(ModelConfig(depth=2, kernel_size=3)) == 23
    assert receptive_field_radius(ModelConfig(depth=1, kernel_size=5)) == 17
    assert tile_margin(ModelConfig(depth=2, kernel_size=3)) == 24
    assert tile_margin(ModelConfig(depth=1, kernel_size=3)) == 10


@pytest.mark.parametrize("cfg,length", [(ModelConfig(depth=1, init_channels=3, kernel_size=3), 24),
                                        (ModelConfig(depth=2, init_channels=2, kernel_size=3), 52)])
def test_receptive_field_empirical(cfg, length):
    """Perturb each input voxel along z (one batch item each) and record which outputs change:
    nothing beyond r changes (beyond float32 rounding noise), and the measured radius is r (the bound is tight)."""
    keras.utils.set_random_seed(1)
    model = build_unet(cfg)
    randomize_bn(model, np.random.default_rng(1), affine=False)
    r = receptive_field_radius(cfg)
    x = np.random.default_rng(2).random((1, length, 4, 4, 1), dtype=np.float32)
    batch = np.repeat(x, length + 1, axis=0)
    for q in range(length):
        batch[q + 1, q, 2, 2, 0] += 5.0
    out = tf.function(lambda t: model(t, training=False))(batch).numpy()
    # [perturbed z, output z]; 1e-6 and not 0: on some CPUs oneDNN's convolution algorithms
    # (AVX2 without AVX-512) change far-away outputs by float32 rounding noise (~1e-8)
    changed = np.abs(out[1:] - out[:1]).max(axis=(2, 3, 4)) > 1e-6
    q, p = np.nonzero(changed)
    distance = np.abs(q - p)
    assert distance.max() <= r
    assert distance.max() >= r / 2  # not absurdly loose; in fact it is exact:
    assert distance.max() == r


def test_flops_hand_count():
    """Depth 1, c=2, k=3, 2 classes, on 4 x 4 x 6 (96 voxels, 12 at level 1)."""
    cfg = ModelConfig(depth=1, init_channels=2, kernel_size=3)
    v0, v1 = 96, 12
    macs = (27 * 1 * 2 * v0 + 27 * 2 * 4 * v0  # encoder level 0
            + 27 * 4 * 4 * v1 + 27 * 4 * 8 * v1  # bottom
            + 8 * 8 * v0  # transposed conv 8 -> 8, one tap per output voxel
            + 27 * 12 * 4 * v0 + 27 * 4 * 4 * v0  # decoder (8 + 4 skip channels in)
            + 4 * 2 * v0)  # head
    assert flops(cfg, (4, 4, 6)) == 2 * macs
    assert flops(cfg, (8, 8, 12)) == 8 * flops(cfg, (4, 4, 6))
    assert flops(cfg, (3, 4, 5)) == flops(cfg, (4, 4, 6))  # padded to multiples of 2 as prediction does


@pytest.mark.parametrize("cfg,shape", [
    (ModelConfig(depth=1, init_channels=2, kernel_size=7), (6, 10, 14)),   # odd multiples of 2
    (ModelConfig(depth=3, init_channels=2, kernel_size=5), (8, 24, 40)),
    (ModelConfig(depth=5, init_channels=1, kernel_size=3), (32, 32, 64)),
])
def test_every_trainable_weight_gets_a_finite_gradient(cfg, shape):
    """Odd depths/kernels/sizes build, run, and train: each trainable weight has a finite,
    non-zero gradient through the cross-entropy loss."""
    from qca_tf.losses import get_loss

    keras.utils.set_random_seed(1)
    model = build_unet(cfg, weight_decay=1e-4)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.random((1, *shape, 1), dtype=np.float32))
    y = tf.constant((rng.random((1, *shape)) > 0.7).astype(np.int32))
    with tf.GradientTape() as tape:
        loss = get_loss("ce+dice")(y, model(x, training=True)) + tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(grads) == len(model.trainable_weights)
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.path
        g = grad.numpy()
        assert np.all(np.isfinite(g)), weight.path
        assert np.any(g != 0), weight.path
