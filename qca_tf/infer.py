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
import tempfile
from collections.abc import Callable
import numpy as np

from .config import PRECISIONS, TTA_CHOICES, InferenceConfig, ModelConfig
from .errors import ConfigError, InputError
from .modelio import LoadedModel, SavedModelWrapper, check_input_channels, load_model_folder
from .models import activation_bytes_per_voxel, tile_margin
from .preprocess import pad_to_multiple

log = logging.getLogger(__name__)

# Measured peak resident memory of a forward pass / activation_bytes_per_voxel estimate
# was 0.45-1.25 (TensorFlow 2.21 CPU, nsn/ndn/unet3d presets); 1.5 leaves headroom.
MEMORY_SAFETY = 1.5

Slices = tuple[slice, slice, slice]


def resolve_precision(requested: str) -> str:
    """The Keras dtype policy for ``requested`` (one of config.PRECISIONS): "auto" is
    mixed_float16 with a GPU, else float32; mixed_float16 without a GPU is an error.
    Resolved once per job (by :func:`qca_tf.bundle.load_networks`, :func:`load_for_inference`
    or training) and recorded on what it made (``LoadedModel.precision``)."""
    import tensorflow as tf

    if requested not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if requested == "auto":
        return "mixed_float16" if has_gpu else "float32"
    if requested == "mixed_float16" and not has_gpu:
        raise ConfigError(
            "--precision mixed_float16 needs a GPU: TensorFlow has no float16 3D max-pooling kernel on CPU; "
            "use float32 (or mixed_bfloat16, which runs on CPU but slowly)"
        )
    return requested


def load_for_inference(folder: str | os.PathLike, cfg: InferenceConfig) -> LoadedModel:
    """Load one model folder under the precision ``cfg.precision`` resolves to on this
    machine (recorded as ``LoadedModel.precision``)."""
    policy = resolve_precision(cfg.precision)
    log.info("loading %s with precision %s", folder, policy)
    return load_model_folder(folder, dtype_policy=policy)


def estimate_memory_bytes(model_cfg: ModelConfig, shape_zyx: tuple[int, int, int], batch: int = 1,
                          itemsize: int = 4) -> float:
    """Estimated peak memory (bytes) of a forward pass on ``batch`` volumes of (z, y, x)."""
    voxels = float(np.prod(shape_zyx)) * batch
    return activation_bytes_per_voxel(model_cfg, itemsize) * voxels * MEMORY_SAFETY


def _itemsize(loaded: LoadedModel) -> int:
    if loaded.model is None or isinstance(loaded.model, SavedModelWrapper):  # OpenVINO-only, SavedModel: float32
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


#: Tiled prediction keeps its padded input and its output in files (np.memmap on unlinked
#: temp files in this folder; None: the system's temp folder) when the padded volume takes
#: more than this fraction of --max-memory, so a volume above the budget is not held in RAM
#: several times over.
SCRATCH_FRACTION = 0.25
SCRATCH_DIR: str | None = None


def scratch_array(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A zero-filled array backed by an unlinked temporary file (freed with the array)."""
    with tempfile.TemporaryFile(prefix="qca-tf-", dir=SCRATCH_DIR) as fh:
        fh.truncate(max(1, math.prod(shape)) * np.dtype(dtype).itemsize)
        return np.memmap(fh, dtype=dtype, mode="w+", shape=shape)  # the map keeps its own descriptor


def _pad_into_scratch(volume: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    """:func:`pad_to_multiple` (channels last) into a scratch array: the same values,
    mirrored one axis at a time from thin slabs, without a second copy in memory."""
    spatial = volume.shape[:3]
    target = tuple(-(-n // multiple) * multiple for n in spatial)
    out = scratch_array((*target, volume.shape[3]))
    core = tuple(slice(0, n) for n in spatial)
    out[core] = volume
    for axis, (n, t) in enumerate(zip(spatial, target)):
        if t == n:
            continue
        index = [slice(0, s) for s in (*target[:axis], n, *spatial[axis + 1:])]
        slab_index = list(index)
        slab_index[axis] = slice(max(0, n - (t - n) - 1), n)  # enough of the end to reflect t - n voxels
        slab = np.asarray(out[tuple(slab_index)])
        pads = [(0, 0)] * 4
        pads[axis] = (0, t - n)
        padded_slab = np.pad(slab, pads, mode="reflect") if slab.shape[axis] > 1 else np.pad(slab, pads, mode="edge")
        tail = [slice(None)] * 4
        tail[axis] = slice(slab.shape[axis], None)
        dest = list(index)
        dest[axis] = slice(n, t)
        out[tuple(dest)] = padded_slab[tuple(tail)]
    return out, core


#: Test-time augmentation: the xy transforms (quarter turns k, flip of x) averaged for
#: ``InferenceConfig.tta`` = 1, 4 or 8. They are the symmetries training augments with
#: (x/y flips, xy 90-degree rotations; the network grid is isotropic); z is never flipped
#: (real stacks dim with depth). 4 = the flips (identity, x, y, both = half turn); 8 = D4.
TTA_TRANSFORMS: dict[int, tuple[tuple[int, bool], ...]] = {
    1: ((0, False),),
    4: ((0, False), (0, True), (2, True), (2, False)),
    8: ((0, False), (0, True), (2, True), (2, False), (1, False), (1, True), (3, False), (3, True)),
}
assert tuple(TTA_TRANSFORMS) == TTA_CHOICES


def _transform(volume: np.ndarray, turns: int, flip_x: bool) -> np.ndarray:
    """(z, y, x, ...) turned ``turns`` quarter turns in the yx plane, then x flipped."""
    out = np.rot90(volume, turns, axes=(1, 2))
    return out[:, :, ::-1] if flip_x else out


def _untransform(prob: np.ndarray, turns: int, flip_x: bool) -> np.ndarray:
    """The inverse of :func:`_transform` on (z, y, x, ...)."""
    prob = prob[:, :, ::-1] if flip_x else prob
    return np.rot90(prob, -turns, axes=(1, 2))


def predict_probabilities(loaded: LoadedModel, volume: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """Foreground probability (softmax channel 1), (z, y, x) float32, for a (z, y, x)
    volume (or (z, y, x, c) for a model with c input channels) already normalised and on
    the network grid. Whole volume at once when it fits ``cfg.max_memory_gb`` (and
    ``cfg.tile`` is None), else tiles batched ``cfg.batch_size``. With ``cfg.tta`` > 1,
    the mean over the :data:`TTA_TRANSFORMS` of the volume, each prediction turned back."""
    volume = np.asarray(volume)
    if volume.ndim == 3:
        volume = volume[..., None]
    if volume.ndim != 4 or min(volume.shape) < 1:
        raise InputError(f"expected a 3D (z, y, x) volume, got shape {volume.shape}")
    check_input_channels(loaded, volume.shape[-1], "the image")
    transforms = TTA_TRANSFORMS[cfg.tta]
    if len(transforms) == 1:
        return _predict_once(loaded, volume, cfg)
    # the sum lives where one prediction would (a scratch file for a volume far above the budget)
    total = (scratch_array(volume.shape[:3]) if _on_disk(loaded.model_cfg, volume.shape, cfg)
             else np.zeros(volume.shape[:3], np.float32))
    for turns, flip_x in transforms:
        # a view: the padding in _predict_once makes the one copy of the turned volume
        total += _untransform(_predict_once(loaded, _transform(volume, turns, flip_x), cfg), turns, flip_x)
    total /= np.float32(len(transforms))
    return total


def _on_disk(mc: ModelConfig, shape_zyxc: tuple[int, ...], cfg: InferenceConfig) -> bool:
    """Whether the padded (z, y, x, c) input goes to a scratch file (more than
    SCRATCH_FRACTION of the budget, and no forced tiles)."""
    padded = math.prod(-(-n // mc.multiple) * mc.multiple for n in shape_zyxc[:3]) * shape_zyxc[3]
    return padded * 4 > SCRATCH_FRACTION * cfg.max_memory_gb * 2**30 and cfg.tile is None


def _predict_once(loaded: LoadedModel, volume: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """:func:`predict_probabilities` of one (z, y, x, c) volume without test-time augmentation."""
    mc = loaded.model_cfg
    on_disk = _on_disk(mc, volume.shape, cfg)
    if on_disk:  # only reached by volumes far above whole-volume size: they are tiled below
        padded, crop = _pad_into_scratch(volume.astype(np.float32, copy=False), mc.multiple)
    else:
        padded, crop = pad_to_multiple(volume.astype(np.float32, copy=False), mc.multiple, channels_last=True)
    run = forward(loaded, cfg)
    margin = tile_margin(mc)
    core = _choose_core(mc, padded.shape[:3], cfg, margin, _itemsize(loaded))
    if core is None:
        log.debug("predicting the whole volume %s", padded.shape)
        return np.ascontiguousarray(run(np.ascontiguousarray(padded[None]))[0][crop])

    tiles = plan_tiles(padded.shape[:3], core, margin, mc.multiple)
    log.debug("predicting %s in %d tiles (core %s, margin %d, batch %d)", padded.shape, len(tiles), core, margin,
             cfg.batch_size)
    groups: dict[tuple[int, ...], list] = {}
    for tile in tiles:
        groups.setdefault(tuple(s.stop - s.start for s in tile[0]), []).append(tile)
    out = scratch_array(padded.shape[:3]) if on_disk else np.empty(padded.shape[:3], np.float32)
    for group in groups.values():
        for i in range(0, len(group), cfg.batch_size):
            batch = group[i:i + cfg.batch_size]
            probs = run(np.stack([padded[t[0]] for t in batch]))
            for (_, in_core, vol_core), p in zip(batch, probs):
                out[vol_core] = p[in_core]
    return out[crop]
