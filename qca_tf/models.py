"""The QCANet 3D U-Net family (DESIGN section 2): builder, receptive field, FLOPs.

Tensors are (batch, z, y, x, channels). ``depth`` down/up samplings by 2, so the
spatial size fed to a network must be a multiple of ``2**depth`` on every axis.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .config import ModelConfig
from .errors import ConfigError

if TYPE_CHECKING:  # keras (and TensorFlow) load only when a network is built
    import keras

log = logging.getLogger(__name__)

#: Batch-norm moving-average momentum; 0.9 as Chainer's default decay in the reference code
#: (Keras' 0.99 leaves the inference statistics far from the data after a short training).
BN_MOMENTUM = 0.9


class _Conv(NamedTuple):
    """One convolution of the architecture: kernel edge, channels in/out, level (0 = full resolution)."""

    kind: str  # "conv", "up" (transposed 2x2x2 stride 2, output at ``level``) or "head"
    kernel: int
    c_in: int
    c_out: int
    level: int


def _conv_plan(cfg: ModelConfig) -> Iterator[_Conv]:
    """The convolutions of ``build_unet(cfg)`` in execution order (single source of truth
    for the builder, FLOPs and memory estimates)."""
    c, k = cfg.init_channels, cfg.kernel_size
    ch = cfg.input_channels
    for i in range(cfg.depth):
        yield _Conv("conv", k, ch, c * 2**i, i)
        yield _Conv("conv", k, c * 2**i, c * 2 ** (i + 1), i)
        ch = c * 2 ** (i + 1)
    yield _Conv("conv", k, ch, c * 2**cfg.depth, cfg.depth)
    yield _Conv("conv", k, c * 2**cfg.depth, c * 2 ** (cfg.depth + 1), cfg.depth)
    ch = c * 2 ** (cfg.depth + 1)
    for i in reversed(range(cfg.depth)):
        yield _Conv("up", 2, ch, ch, i)
        skip = c * 2 ** (i + 1)
        yield _Conv("conv", k, ch + skip, skip, i)
        yield _Conv("conv", k, skip, skip, i)
        ch = skip
    yield _Conv("head", 1, ch, cfg.n_classes, 0)


def check_spatial_shape(shape_zyx: tuple[int, ...], depth: int) -> None:
    """Raise ConfigError unless every (z, y, x) size is a positive multiple of 2**depth."""
    m = 2**depth
    if len(shape_zyx) != 3 or any(int(s) <= 0 or int(s) % m for s in shape_zyx):
        raise ConfigError(
            f"spatial size {tuple(int(s) for s in shape_zyx)} is not divisible by 2**depth = {m} "
            f"(depth {depth}); pad or crop to a multiple of {m}"
        )


def build_unet(
    cfg: ModelConfig,
    *,
    input_shape: tuple[int, int, int] | None = None,
    weight_decay: float = 0.0,
    dtype_policy: str | None = None,
    name: str | None = None,
    kernel_initializer: str = "he_normal",
) -> keras.Model:
    """Build the U-Net of ``cfg``: input (batch, z, y, x, input_channels) float32,
    output (batch, z, y, x, n_classes) float32 softmax probabilities.

    ``input_shape`` (z, y, x) fixes the spatial size (checked against 2**depth); None
    leaves it dynamic. ``weight_decay`` > 0 adds an L2 penalty on every conv kernel.
    ``dtype_policy`` (e.g. "mixed_float16") is given to every layer; the softmax stays
    float32. Layer names are deterministic so weights load across precisions.
    ``kernel_initializer``: "zeros" when the weights are loaded right after (skips drawing
    tens of millions of random numbers: a large share of the NDN preset's load time).
    """
    import keras

    if input_shape is not None:
        check_spatial_shape(input_shape, cfg.depth)
    spatial = tuple(input_shape) if input_shape is not None else (None, None, None)
    policy = dtype_policy or "float32"
    reg = keras.regularizers.L2(weight_decay) if weight_decay > 0 else None
    common = dict(kernel_initializer=kernel_initializer, kernel_regularizer=reg, dtype=policy)
    plan = iter(_conv_plan(cfg))

    def conv_bn_relu(x, tag: str):
        spec = next(plan)
        x = keras.layers.Conv3D(spec.c_out, spec.kernel, padding="same", name=f"{tag}_conv", **common)(x)
        if cfg.batch_norm:
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{tag}_bn", dtype=policy)(x)
        return keras.layers.Activation("relu", name=f"{tag}_relu", dtype=policy)(x)

    inputs = keras.Input(shape=(*spatial, cfg.input_channels), name="image", dtype="float32")
    x = inputs
    skips = []
    for i in range(cfg.depth):
        x = conv_bn_relu(x, f"enc{i}a")
        x = conv_bn_relu(x, f"enc{i}b")
        skips.append(x)
        x = keras.layers.MaxPooling3D(2, name=f"enc{i}_pool", dtype=policy)(x)
    x = conv_bn_relu(x, "bottom_a")
    x = conv_bn_relu(x, "bottom_b")
    for i in reversed(range(cfg.depth)):
        spec = next(plan)
        x = keras.layers.Conv3DTranspose(spec.c_out, 2, strides=2, padding="valid", name=f"dec{i}_up", **common)(x)
        x = keras.layers.Concatenate(axis=-1, name=f"dec{i}_concat", dtype=policy)([x, skips[i]])
        x = conv_bn_relu(x, f"dec{i}a")
        x = conv_bn_relu(x, f"dec{i}b")
    spec = next(plan)
    x = keras.layers.Conv3D(spec.c_out, 1, name="head_conv", **common)(x)
    outputs = keras.layers.Activation("softmax", name="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name or cfg.name)


def receptive_field_radius(cfg: ModelConfig) -> int:
    """A one-sided bound r (voxels): an output voxel depends on no input voxel farther
    than r along any axis.

    The receptive field of a feature voxel with jump J (input voxels per feature voxel)
    is tracked relative to its own block [pJ, pJ + J - 1]: a conv adds (k-1)/2 * J on
    each side, a 2x max-pool adds nothing (its window is exactly the coarse block), a
    2x2x2 stride-2 transposed conv adds the fine jump J/2 on the side depending on the
    output's parity (added to both sides here, so the bound holds for every position).
    The deepest path is the widest; skips only add narrower fields.
    """
    radius, jump = 0, 1
    for spec in _conv_plan(cfg):
        if spec.kind == "up":
            jump //= 2
            radius += jump
        else:
            while jump < 2**spec.level:  # the max-pools before this encoder level
                jump *= 2
            radius += (spec.kernel - 1) // 2 * jump
    return radius


def tile_margin(cfg: ModelConfig) -> int:
    """Context added around each tile: the receptive-field radius rounded up to a multiple of 2**depth."""
    m = cfg.multiple
    return -(-receptive_field_radius(cfg) // m) * m


def flops(cfg: ModelConfig, shape_zyx: tuple[int, int, int]) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass on a (z, y, x) volume: convs,
    transposed convs and the 1x1x1 head (biases, BN, ReLU, pooling and softmax ignored).
    Sizes are rounded up to multiples of 2**depth, as prediction pads them."""
    m = cfg.multiple
    voxels = float(np.prod([-(-int(s) // m) * m for s in shape_zyx]))
    total = 0.0
    for spec in _conv_plan(cfg):
        out_voxels = voxels / 8**spec.level
        taps = spec.kernel**3 if spec.kind != "up" else 1  # each transposed-conv output sees one tap
        total += 2.0 * taps * spec.c_in * spec.c_out * out_voxels
    return total


def activation_bytes_per_voxel(cfg: ModelConfig, itemsize: int = 4) -> float:
    """Rough peak bytes of live activations per input voxel (batch 1): the skip tensors
    held for the decoder plus the largest conv's input + output + its BN/ReLU copy,
    each scaled by the resolution of its level. An estimate for choosing tile sizes."""
    skips = sum(cfg.init_channels * 2 ** (i + 1) / 8**i for i in range(cfg.depth))
    work = max((s.c_in + 2 * s.c_out) / 8**s.level for s in _conv_plan(cfg))
    return (skips + work + cfg.input_channels + cfg.n_classes) * itemsize


def parameter_count(cfg: ModelConfig) -> int:
    """Number of weights of ``build_unet(cfg)`` (trainable and BN statistics), computed
    from the architecture without building it (a search prunes too-big networks with it)."""
    total = 0
    for spec in _conv_plan(cfg):
        total += spec.kernel**3 * spec.c_in * spec.c_out + spec.c_out  # kernel + bias
        if spec.kind == "conv" and cfg.batch_norm:
            total += 4 * spec.c_out  # gamma, beta, moving mean, moving variance
    return int(total)
