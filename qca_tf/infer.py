"""Prediction of one volume: whole-volume or tiled, on an engine of :mod:`qca_tf.engines`.

Tiled prediction equals whole-volume prediction up to float rounding: the volume is
mirror-padded at the end of each axis to a multiple of M = 2**depth; cores (multiples
of M, starting on multiples of M) are extended by ``models.tile_margin`` on each side
and clipped to the padded volume, so every kept output voxel sees its whole receptive
field exactly as in the whole-volume pass (the network's own zero padding included).
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable
import numpy as np

from .config import InferenceConfig, ModelConfig
from .errors import ConfigError, InputError, ModelError
from .modelio import LoadedModel, SavedModelWrapper, load_model_folder
from .models import activation_bytes_per_voxel, tile_margin
from .preprocess import pad_to_multiple

log = logging.getLogger(__name__)

# Measured peak resident memory of a forward pass / activation_bytes_per_voxel estimate
# was 0.45-1.25 (TensorFlow 2.21 CPU, nsn/ndn/unet3d presets); 1.5 leaves headroom.
MEMORY_SAFETY = 1.5

Slices = tuple[slice, slice, slice]


def resolve_precision(requested: str) -> str:
    """The Keras dtype policy for ``requested`` (config.PRECISIONS): "auto" is
    mixed_float16 with a GPU, else float32; mixed_float16 without a GPU is an error."""
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if requested == "auto":
        return "mixed_float16" if has_gpu else "float32"
    if requested == "mixed_float16" and not has_gpu:
        raise ConfigError(
            "--precision mixed_float16 needs a GPU: TensorFlow has no float16 3D max-pooling kernel on CPU; "
            "use float32 (or mixed_bfloat16, which runs on CPU but slowly)"
        )
    if requested not in ("float32", "mixed_float16", "mixed_bfloat16"):
        raise ConfigError(f"unknown precision {requested!r}; choose auto, float32, mixed_float16 or mixed_bfloat16")
    return requested


def load_for_inference(folder: str | os.PathLike, cfg: InferenceConfig) -> LoadedModel:
    """Load a model folder under the precision ``cfg.precision`` resolves to on this machine."""
    policy = resolve_precision(cfg.precision)
    log.info("loading %s with precision %s", folder, policy)
    return load_model_folder(folder, dtype_policy=policy)


def estimate_memory_bytes(model_cfg: ModelConfig, shape_zyx: tuple[int, int, int], batch: int = 1,
                          itemsize: int = 4) -> float:
    """Estimated peak memory (bytes) of a forward pass on ``batch`` volumes of (z, y, x)."""
    voxels = float(np.prod(shape_zyx)) * batch
    return activation_bytes_per_voxel(model_cfg, itemsize) * voxels * MEMORY_SAFETY


def _itemsize(loaded: LoadedModel) -> int:
    if isinstance(loaded.model, SavedModelWrapper):
        return 4
    dtype = str(loaded.model.get_layer("enc0a_conv").compute_dtype)
    return 2 if "16" in dtype else 4


def forward(loaded: LoadedModel, cfg: InferenceConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The compiled forward pass that :func:`predict_probabilities` runs:
    (b, z, y, x, c) float32 -> (b, z, y, x) float32 foreground probability (softmax
    channel 1), for spatial sizes that are multiples of ``2**depth``. ``cfg.engine``
    picks the engine (:mod:`qca_tf.engines`; OpenVINO at ``cfg.precision``, TensorFlow
    with XLA when ``cfg.jit``); built once per model and setting, then cached."""
    from .engines import forward as engine_forward

    return engine_forward(loaded, cfg.engine, cfg.precision, cfg.jit)


def _axis_cores(size: int, core: int, multiple: int) -> tuple[list[int], int]:
    """(starts, length) of equal cores covering [0, size); starts and length are multiples of
    ``multiple``; the length is ``core`` shrunk to the smallest that covers with as many cores."""
    n = math.ceil(size / core)
    core = min(size, math.ceil(size / n / multiple) * multiple)
    starts = [i * core for i in range(n - 1)] + [size - core]
    return sorted(set(starts)), core


def plan_tiles(padded_shape: tuple[int, int, int], core: tuple[int, int, int], margin: int,
               multiple: int) -> list[tuple[Slices, Slices, Slices]]:
    """Tiles of a padded (z, y, x) volume: (input slices in the volume, core slices in the
    tile's output, core slices in the volume). Cores are ``core``-sized (shrunk to balance),
    extended by ``margin`` and clipped to the volume."""
    per_axis = []
    for size, c in zip(padded_shape, core):
        starts, c = _axis_cores(size, c, multiple)
        spans = []
        for s in starts:
            lo, hi = max(0, s - margin), min(size, s + c + margin)
            spans.append((slice(lo, hi), slice(s - lo, s - lo + c), slice(s, s + c)))
        per_axis.append(spans)
    return [tuple(zip(*combo)) for combo in itertools.product(*per_axis)]  # type: ignore[misc]


def _choose_core(model_cfg: ModelConfig, padded: tuple[int, int, int], cfg: InferenceConfig,
                 margin: int, itemsize: int) -> tuple[int, int, int] | None:
    """Core size (z, y, x) for tiling, or None to predict the whole padded volume at once."""
    m = model_cfg.multiple
    if cfg.tile is not None:
        rounded = (max(m, math.ceil(t / m) * m) for t in cfg.tile)
        return tuple(min(p, t) for p, t in zip(padded, rounded))  # type: ignore[return-value]
    budget = cfg.max_memory_gb * 2**30

    def need(core: list[int]) -> float:
        tile_in = [min(p, c + 2 * margin) for p, c in zip(padded, core)]
        return estimate_memory_bytes(model_cfg, tuple(tile_in), cfg.batch_size, itemsize)

    if estimate_memory_bytes(model_cfg, padded, 1, itemsize) <= budget:
        return None
    core = list(padded)
    while need(core) > budget and max(core) > m:
        axis = int(np.argmax(core))
        core[axis] -= m
    if need(core) > budget:
        core = [min(p, max(m, math.ceil(2 * margin / m) * m)) for p in padded]
        log.warning("no tile fits --max-memory-gb %.3g with the receptive-field margin of %d voxels; "
                    "using cores of %s (estimated %.2f GB)", cfg.max_memory_gb, margin, tuple(core),
                    need(core) / 2**30)
    return tuple(core)  # type: ignore[return-value]


def predict_probabilities(loaded: LoadedModel, volume: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """Foreground probability (softmax channel 1), (z, y, x) float32, for a (z, y, x)
    volume already normalised and on the network grid. Whole volume at once when it fits
    ``cfg.max_memory_gb`` (and ``cfg.tile`` is None), else tiles batched ``cfg.batch_size``."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise InputError(f"expected a 3D (z, y, x) volume, got shape {volume.shape}")
    if loaded.model_cfg.input_channels != 1:
        raise ModelError(f"{loaded.folder}: model expects {loaded.model_cfg.input_channels} input channels; "
                         "prediction feeds one")
    mc = loaded.model_cfg
    padded, crop = pad_to_multiple(volume.astype(np.float32, copy=False), mc.multiple)
    run = forward(loaded, cfg)
    margin = tile_margin(mc)
    core = _choose_core(mc, padded.shape, cfg, margin, _itemsize(loaded))
    if core is None:
        log.debug("predicting the whole volume %s", padded.shape)
        return np.ascontiguousarray(run(padded[None, ..., None])[0][crop])

    tiles = plan_tiles(padded.shape, core, margin, mc.multiple)
    log.debug("predicting %s in %d tiles (core %s, margin %d, batch %d)", padded.shape, len(tiles), core, margin,
             cfg.batch_size)
    groups: dict[tuple[int, ...], list] = {}
    for tile in tiles:
        groups.setdefault(tuple(s.stop - s.start for s in tile[0]), []).append(tile)
    out = np.empty(padded.shape, np.float32)
    for group in groups.values():
        for i in range(0, len(group), cfg.batch_size):
            batch = group[i:i + cfg.batch_size]
            probs = run(np.stack([padded[t[0]] for t in batch])[..., None])
            for (_, in_core, vol_core), p in zip(batch, probs):
                out[vol_core] = p[in_core]
    return out[crop]
