"""Configuration: small frozen dataclasses grouped by concern, with a JSON round trip.

Every dataclass validates itself on construction and raises :class:`ConfigError`
naming the offending key. ``from_dict`` rejects unknown keys by name. Spatial
tuples are (z, y, x) unless the name says otherwise; voxel sizes are (x, y, z) um
because that is how microscopists quote them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

TASKS = ("nsn", "ndn")
OPTIMIZERS = ("sgd", "adam")
LOSSES = ("ce", "dice", "ce+dice")
#: Default loss per task (TrainConfig.loss "auto"): the NDN centre class is ~0.04% of the
#: voxels; plain cross-entropy never lifts it above 0.5 (DESIGN section 10).
DEFAULT_LOSS = {"nsn": "ce", "ndn": "ce+dice"}
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
NORMALIZATIONS = ("minmax", "percentile")
#: Distance (um) within which a predicted nucleus centre matches a true one: the one value of
#: the detection scores (qca-tf evaluate's default, the NDN validation F-measure, the demo).
MATCH_DISTANCE_UM = 3.0
#: The reference's optimiser per task (DESIGN section 2): NSN SGD, NDN Adam.
TASK_OPTIMIZERS = {"nsn": "sgd", "ndn": "adam"}


def check(cond: bool, section: str, key: str, msg: str) -> None:
    """Raise ConfigError ``invalid SECTION.KEY: MSG`` unless ``cond`` (the validators' one check)."""
    if not cond:
        raise ConfigError(f"invalid {section}.{key}: {msg}")


_check = check  # the short name the validators below use

#: Config keys whose command-line flag is not ``--`` + the key with dashes (see :func:`flag_for`).
CONFIG_FLAGS = {"train.sgd_lr": "--lr", "train.sgd_momentum": "--momentum", "train.task": "NETWORK",
                "model.name": "NETWORK", "model.input_channels": "--channel", "data.channels": "--channel",
                "data.rot90": "--no-rot90", "data.intensity_augment": "--no-intensity-augment",
                "postprocess.min_volume_um3": "--min-volume",
                "postprocess.marker_gap_um": "--marker-gap", "postprocess.annotation_offset_um": "--annotation-offset",
                "inference.max_memory_gb": "--max-memory"}


def flag_for(section: str, key: str) -> str:
    """The command-line flag that sets config key ``section.key`` (e.g. train.sgd_lr -> --lr)."""
    return CONFIG_FLAGS.get(f"{section}.{key}", "--" + key.replace("_", "-"))


@dataclass(frozen=True)
class ModelConfig:
    """U-Net family architecture (DESIGN section 2).

    depth: number of down/up samplings (1..5); init_channels: channels c of the
    first conv; kernel_size: 3, 5 or 7; n_classes: softmax classes of the head.
    """

    name: str = "nsn"
    depth: int = 2
    init_channels: int = 16
    kernel_size: int = 3
    n_classes: int = 2
    input_channels: int = 1
    batch_norm: bool = True

    def __post_init__(self) -> None:
        s = "model"
        _check(isinstance(self.depth, int) and 1 <= self.depth <= 5, s, "depth", f"{self.depth!r} is not an integer in 1..5")
        _check(isinstance(self.init_channels, int) and self.init_channels >= 1, s, "init_channels",
               f"{self.init_channels!r} is not a positive integer")
        _check(self.kernel_size in (3, 5, 7), s, "kernel_size", f"{self.kernel_size!r} is not one of 3, 5, 7")
        _check(isinstance(self.n_classes, int) and self.n_classes >= 2, s, "n_classes", f"{self.n_classes!r} < 2")
        _check(isinstance(self.input_channels, int) and self.input_channels >= 1, s, "input_channels",
               f"{self.input_channels!r} is not a positive integer")

    @property
    def multiple(self) -> int:
        """Spatial sizes fed to the network must be multiples of this (2**depth)."""
        return 2**self.depth


PRESETS: dict[str, ModelConfig] = {
    "nsn": ModelConfig(name="nsn", depth=2, init_channels=16, kernel_size=3),
    "ndn": ModelConfig(name="ndn", depth=4, init_channels=12, kernel_size=5),
    "unet3d": ModelConfig(name="unet3d", depth=3, init_channels=32, kernel_size=3),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The preset architecture ``name`` (nsn, ndn, unet3d) with optional overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **overrides)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``task`` decides the target (nsn mask or ndn centre mask) and the
    validation metric (nsn: IoU, ndn: detection F-measure). The learning rate is
    multiplied by ``lr_decay`` when the validation metric has not improved on its best
    for ``lr_patience`` epochs (noise-tolerant decay on drop). ``loss`` "auto" is
    ``DEFAULT_LOSS[task]`` (ce for nsn, ce+dice for ndn).
    ``precision``: the Keras dtype policy (auto: mixed_float16 with loss scaling on a GPU,
    float32 on a CPU).
    ``optimizer`` None means the task's reference optimiser (:data:`TASK_OPTIMIZERS`: nsn SGD,
    ndn Adam)."""

    task: str = "nsn"
    optimizer: str | None = None
    sgd_lr: float = 0.01
    sgd_momentum: float = 0.9
    lr_decay: float = 0.5
    adam_alpha: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-5
    epochs: int = 50
    batch_size: int = 1
    crops_per_volume: int = 4
    min_crops_per_epoch: int = 16
    lr_patience: int = 3
    loss: str = "auto"
    class_weights: tuple[float, float] | None = None
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        s = "train"
        _check(self.task in TASKS, s, "task", f"{self.task!r} is not one of {', '.join(TASKS)}")
        if self.optimizer is None:
            object.__setattr__(self, "optimizer", TASK_OPTIMIZERS[self.task])
        _check(self.optimizer in OPTIMIZERS, s, "optimizer", f"{self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        _check(self.loss in LOSSES + ("auto",), s, "loss", f"{self.loss!r} is not one of auto, {', '.join(LOSSES)}")
        for key in ("sgd_lr", "adam_alpha", "adam_epsilon"):
            _check(float(getattr(self, key)) > 0, s, key, "must be > 0")
        _check(0 < self.lr_decay <= 1, s, "lr_decay", f"{self.lr_decay!r} is not in (0, 1]")
        _check(0 <= self.sgd_momentum < 1, s, "sgd_momentum", f"{self.sgd_momentum!r} is not in [0, 1)")
        for key in ("adam_beta1", "adam_beta2"):
            _check(0 <= float(getattr(self, key)) < 1, s, key, "must be in [0, 1)")
        _check(self.weight_decay >= 0, s, "weight_decay", "must be >= 0")
        for key in ("epochs", "batch_size", "crops_per_volume", "min_crops_per_epoch", "lr_patience"):
            v = getattr(self, key)
            _check(isinstance(v, int) and v >= 1, s, key, f"{v!r} is not a positive integer")
        _check(self.precision in PRECISIONS, s, "precision",
               f"{self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.class_weights is not None:
            _check(len(self.class_weights) == 2 and all(w > 0 for w in self.class_weights), s, "class_weights",
                   "must be two positive numbers")

    @property
    def resolved_loss(self) -> str:
        """The loss to train with: ``loss``, or the task's default when it is "auto"."""
        return DEFAULT_LOSS[self.task] if self.loss == "auto" else self.loss

    def steps_per_epoch(self, n_volumes: int) -> int:
        """Steps of one epoch: ``crops_per_volume`` crops per training volume, but at least
        ``min_crops_per_epoch`` crops (one small dataset must not make 4-step epochs)."""
        crops = max(n_volumes * self.crops_per_volume, self.min_crops_per_epoch)
        return max(1, crops // self.batch_size)

    @property
    def metric_name(self) -> str:
        """Name of the validation reference metric in the Keras logs."""
        return "val_iou" if self.task == "nsn" else "val_f1"


@dataclass(frozen=True)
class DataConfig:
    """Data preparation. ``voxel_size`` (x, y, z um) overrides file metadata; the
    network grid is isotropic at the xy voxel size. ``patch`` is (z, y, x) on that grid.
    ``ndn_diameter`` is the NDN target sphere diameter in isotropic-grid voxels.
    ``normalization``: "minmax" (the reference: [min, max] -> [0, 1]) or "percentile"
    ([p_low, p_high] of ``norm_percentiles`` -> [0, 1], clipped): what training used
    and prediction replays (see :func:`qca_tf.preprocess.to_network_grid`).
    ``channels``: the file channels (counted from 0) fed to the network, in order, for
    multi-channel files (None: one-channel files); as many as the model's input channels.
    Training augmentations (see :mod:`qca_tf.data`): ``flips`` (x, y), ``rot90`` (90-degree
    turns in xy), ``scale_jitter`` (crops scaled by a factor in [1 - j, 1 + j]; 0 = off),
    ``intensity_augment`` (gamma, contrast, brightness, z-attenuation, noise)."""

    voxel_size: tuple[float, float, float] | None = None
    resample_order: int = 1
    patch: tuple[int, int, int] = (96, 96, 96)
    flips: bool = True
    ndn_diameter: float = 5.0
    val_fraction: float = 0.2
    normalization: str = "percentile"
    norm_percentiles: tuple[float, float] = (1.0, 99.8)
    channels: tuple[int, ...] | None = None
    rot90: bool = True
    scale_jitter: float = 0.15
    intensity_augment: bool = True

    @property
    def turns_xy(self) -> bool:
        """Whether training turns crops in xy: ``rot90`` and square xy patches."""
        return self.rot90 and self.patch[1] == self.patch[2]

    def __post_init__(self) -> None:
        s = "data"
        if self.channels is not None:
            _check(len(self.channels) >= 1 and len(set(self.channels)) == len(self.channels)
                   and all(isinstance(c, int) and c >= 0 for c in self.channels), s, "channels",
                   f"{self.channels!r} is not distinct channel numbers >= 0")
        if self.voxel_size is not None:
            _check(len(self.voxel_size) == 3 and all(float(v) > 0 for v in self.voxel_size), s, "voxel_size",
                   f"{self.voxel_size!r} is not three positive numbers (x, y, z)")
        _check(self.resample_order in (0, 1, 3), s, "resample_order", f"{self.resample_order!r} is not 0, 1 or 3")
        _check(len(self.patch) == 3 and all(isinstance(p, int) and p >= 2 for p in self.patch), s, "patch",
               f"{self.patch!r} is not three integers >= 2 (z, y, x)")
        _check(self.ndn_diameter > 0, s, "ndn_diameter", "must be > 0")
        _check(0 <= self.val_fraction < 1, s, "val_fraction", f"{self.val_fraction!r} is not in [0, 1)")
        _check(self.normalization in NORMALIZATIONS, s, "normalization",
               f"{self.normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
        _check(len(self.norm_percentiles) == 2 and 0 <= self.norm_percentiles[0] < self.norm_percentiles[1] <= 100,
               s, "norm_percentiles", f"{self.norm_percentiles!r} is not two percentiles 0 <= low < high <= 100")
        _check(0 <= self.scale_jitter < 0.5, s, "scale_jitter", f"{self.scale_jitter!r} is not in [0, 0.5)")


def check_compatible(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
    """Cross-checks between configs (ConfigError naming the CLI flags): every crop side
    must be a multiple of 2**depth, or the down-sampling path does not fit the crop; the
    chosen file channels must be as many as the model's input channels."""
    bad = [p for p in data_cfg.patch if p % model_cfg.multiple]
    if bad:
        raise ConfigError(
            f"invalid data.patch: crop {'x'.join(map(str, data_cfg.patch))} (--patch) is not a multiple of "
            f"2**depth = {model_cfg.multiple} (--depth {model_cfg.depth}); use a crop divisible by "
            f"{model_cfg.multiple} or a smaller depth")
    n_channels = len(data_cfg.channels) if data_cfg.channels else 1
    if n_channels != model_cfg.input_channels:
        raise ConfigError(f"--channel: the model takes {model_cfg.input_channels} input channel(s) but "
                          f"{n_channels} file channel(s) are chosen (data.channels {data_cfg.channels})")


@dataclass(frozen=True)
class PostprocessConfig:
    """Watershed parameters (reference defaults, plus ``marker_gap_um``). NDN components
    separated by at most ``marker_gap_um`` (um of background between them) are one marker:
    the fragments a threshold cuts from one nuclear centre (0.8 um = 1 voxel of the default
    0.8 um grid; on a coarser grid it joins nothing unless raised to one voxel). Centres of
    touching nuclei over 2.8 um in radius, drawn as the NDN's 4 um spheres, are more than
    0.8 um of background voxels apart wherever they lie on the 0.8 um grid; 0 keeps every
    component apart (the reference).
    ``min_marker_size`` is in voxels of the network grid; markers smaller than it are
    dropped. ``min_volume_um3``:
    instances smaller than this (um^3, after the watershed) are fragments, not nuclei,
    and are dropped (20 um^3 is a sphere of 3.4 um diameter; the smallest mouse
    embryo nuclei, late blastocyst, are about 100 um^3); 0 keeps everything.
    ``annotation_offset_um`` (z, y, x): where the training annotation lies relative to
    its image (:func:`qca_tf.labels.annotation_offset`); the probabilities are moved by it
    before the thresholds, so that the labels follow the annotation's frame (networks
    trained with flips cannot learn such an offset); (0, 0, 0) leaves them on the image."""

    nsn_threshold: float = 0.5
    ndn_threshold: float = 0.5
    min_marker_size: int = 0
    min_volume_um3: float = 20.0
    marker_gap_um: float = 0.8
    annotation_offset_um: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        s = "postprocess"
        offset = self.annotation_offset_um
        _check(isinstance(offset, (tuple, list)) and len(offset) == 3
               and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                       for v in offset),
               s, "annotation_offset_um", f"{offset!r} is not three numbers (z, y, x um)")
        object.__setattr__(self, "annotation_offset_um", tuple(float(v) for v in offset))  # JSON lists, numpy scalars
        for key in ("nsn_threshold", "ndn_threshold"):
            _check(0 < float(getattr(self, key)) < 1, s, key, "must be in (0, 1)")
        _check(isinstance(self.min_marker_size, int) and self.min_marker_size >= 0, s, "min_marker_size",
               "must be an integer >= 0")
        _check(isinstance(self.min_volume_um3, (int, float)) and not isinstance(self.min_volume_um3, bool)
               and math.isfinite(self.min_volume_um3)
               and self.min_volume_um3 >= 0, s, "min_volume_um3", f"{self.min_volume_um3!r} must be a number >= 0")
        _check(isinstance(self.marker_gap_um, (int, float)) and not isinstance(self.marker_gap_um, bool)
               and math.isfinite(self.marker_gap_um)
               and self.marker_gap_um >= 0, s, "marker_gap_um", f"{self.marker_gap_um!r} must be a number >= 0")


#: Test-time augmentation: how many xy transforms prediction averages (qca_tf.infer.TTA_TRANSFORMS).
TTA_CHOICES = (1, 4, 8)


def valid_tta(value: Any) -> bool:
    """Whether ``value`` is one of TTA_CHOICES (a bool is not)."""
    return not isinstance(value, bool) and value in TTA_CHOICES


@dataclass(frozen=True)
class InferenceConfig:
    """Prediction. ``tile`` (z, y, x) forces tiling; otherwise the whole volume is
    predicted when it fits ``max_memory_gb``, else tiles sized from that budget."""

    precision: str = "auto"
    tile: tuple[int, int, int] | None = None
    max_memory_gb: float = 4.0
    jit: bool = False
    batch_size: int = 1
    engine: str = "tensorflow"   # tensorflow, openvino or auto (qca_tf.engines)
    tta: int = 1                 # test-time augmentation: 1 (none), 4 (xy flips) or 8 (+ xy quarter turns)

    def __post_init__(self) -> None:
        s = "inference"
        _check(self.precision in PRECISIONS, s, "precision",
               f"{self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.tile is not None:
            _check(len(self.tile) == 3 and all(isinstance(t, int) and t >= 1 for t in self.tile), s, "tile",
                   f"{self.tile!r} is not three positive integers (z, y, x)")
        _check(self.max_memory_gb > 0, s, "max_memory_gb", "must be > 0")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, s, "batch_size", "must be >= 1")
        _check(self.engine in ("auto", "tensorflow", "openvino"), s, "engine",
               f"{self.engine!r} is not one of auto, tensorflow, openvino")
        _check(valid_tta(self.tta), s, "tta",
               f"{self.tta!r} is not one of {', '.join(map(str, TTA_CHOICES))} (xy transforms averaged)")


# --------------------------------------------------------------------------- JSON


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if origin is tuple or tp is tuple:
        return tuple(value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value) if non_none else value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], section: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError naming them."""
    section = section or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {section}.{unknown[0]} (valid keys: {', '.join(sorted(names))})")
    try:
        kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
        return cls(**kwargs)
    except TypeError as exc:  # wrong types that the validators trip over
        raise ConfigError(f"{section}: {exc}") from None


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (temp file in the same folder, then rename)."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object; a missing or malformed file raises ConfigError naming it."""
    path = Path(path)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data
