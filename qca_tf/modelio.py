"""Model folders: what a network is and what prediction must replay.

A model folder (format ``qca_tf.model/2``) holds::

    config.json   format, task, architecture (ModelConfig), grid spacing, the whole
                  DataConfig (resample order, normalisation, ...), the TrainConfig and
                  the best-epoch metrics, and the qca_tf version that wrote it
    weights.h5    the network's variables only (no optimiser state), one HDF5 dataset
                  per variable named by its Keras path (``enc0a_conv/kernel``), float32
                  or float16 (``half=True``)

or ``config.json`` next to a TensorFlow SavedModel (``saved_model.pb``, written by
:mod:`qca_tf.export`). The network is rebuilt from the config, so the same weights load
under any precision policy. Format 1 folders (``model.keras``, optimiser state
included) keep loading: their config is migrated in memory on load. A format newer
than this code's is refused with a ModelError that says to upgrade qca_tf.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from . import __version__
from .config import DataConfig, ModelConfig, TASKS, TrainConfig, from_dict, read_json, to_dict, write_json_atomic
from .errors import ConfigError, ModelError, OutputError
from .preprocess import GridRecipe

log = logging.getLogger(__name__)

FORMAT_NAME = "qca_tf.model"
FORMAT_VERSION = 2
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.h5"
KERAS_NAME = "model.keras"          # format 1: a whole Keras archive (weights + optimiser state)
SAVEDMODEL_NAME = "saved_model.pb"
WEIGHTS_GROUP = "weights"
WEIGHT_DTYPES = ("float32", "float16")
_KEYS = {"format", "task", "model", "train", "data", "spacing_um", "metrics", "qca_tf_version"}


def format_version(value: Any, name: str, current: int, where: Path) -> int:
    """The version N of a stored ``"<name>/N"`` format string; ModelError if it is not
    one, or if N is newer than ``current`` (this code cannot know what it means)."""
    match = re.fullmatch(re.escape(name) + r"/(\d+)", value) if isinstance(value, str) else None
    if match is None:
        raise ModelError(f"{where}: format {value!r} is not a {name} format")
    version = int(match.group(1))
    if version > current:
        raise ModelError(f"{where}: written in {name} format {version} by a newer qca_tf; this qca_tf "
                         f"{__version__} reads up to format {current}: upgrade qca_tf (pip install -U qca_tf)")
    if version < 1:
        raise ModelError(f"{where}: format {value!r} is not a {name} format")
    return version


class SavedModelWrapper:
    """A loaded TensorFlow SavedModel exported by :func:`qca_tf.export.export_savedmodel`."""

    def __init__(self, folder: Path) -> None:
        import tensorflow as tf

        self.folder = folder
        try:
            self._obj = tf.saved_model.load(str(folder))
            self._serve = self._obj.serve
        except Exception as exc:  # corrupt protobuf, missing variables, no "serve" endpoint
            raise ModelError(
                f"{folder}: cannot load the SavedModel ({type(exc).__name__}: {_first_line(exc)})"
            ) from None

    def __call__(self, x: Any) -> Any:
        """Class probabilities (b, z, y, x, n_classes) as a float32 tensor for x (b, z, y, x, c)."""
        return self._serve(x)

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """x (b, z, y, x, c) float32 -> class probabilities (b, z, y, x, n_classes) float32."""
        return np.asarray(self._serve(np.asarray(x, np.float32)))


@dataclass
class LoadedModel:
    """A model ready for prediction. ``model`` is a keras.Model, or a SavedModelWrapper
    (float32) for an exported folder; ``info`` is the whole config.json (migrated to the
    current format); ``data_cfg`` the DataConfig it recorded (None when it recorded none);
    ``precision`` the Keras dtype policy the network runs under; ``weights_path`` the
    weights file ``model`` was loaded from (None for a SavedModel or a network built in
    memory). ``model`` is None for a network that only runs as a cached OpenVINO model
    (:func:`qca_tf.engines.cached_openvino_model`: no TensorFlow needed)."""

    model: Any
    model_cfg: ModelConfig
    task: str
    spacing_um: float
    folder: Path
    info: dict = field(default_factory=dict)
    data_cfg: DataConfig | None = None
    precision: str = "float32"
    forward_cache: dict = field(default_factory=dict, repr=False, compare=False)  # compiled passes, see infer
    weights_path: Path | None = None

    @property
    def grid_recipe(self) -> GridRecipe:
        """How a raw stack is brought to this network's grid: the recorded resample order
        and normalisation, or the reference defaults (order 1, min-max) when none is recorded."""
        return GridRecipe.from_data_config(self.spacing_um, self.data_cfg)

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """x (b, z, y, x, c) float32 -> class probabilities (b, z, y, x, n_classes) float32."""
        if isinstance(self.model, SavedModelWrapper):
            return self.model.predict_batch(x)
        return np.asarray(self.model(np.asarray(x, np.float32), training=False), np.float32)


def check_input_channels(loaded: LoadedModel, channels: int, source: str = "the input") -> None:
    """ModelError unless ``loaded`` takes ``channels`` input channels, the number ``source``
    has (the one input-channel check of loading and inference)."""
    expected = loaded.model_cfg.input_channels
    if expected != channels:
        raise ModelError(f"{loaded.folder}: model expects {expected} input channel{'s' * (expected != 1)}, "
                         f"{source} has {channels}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


# ------------------------------------------------------------------ weights file


def write_weights(path: str | os.PathLike, model: Any, *, half: bool = False) -> None:
    """Write every variable of ``model`` (no optimiser state) to the HDF5 file ``path``
    atomically: dataset ``weights/<variable path>``, float16 when ``half`` else float32."""
    import h5py

    dtype = np.float16 if half else np.float32
    names = [v.path for v in model.weights]
    if len(set(names)) != len(names):  # deterministic, unique layer names are what makes this format work
        raise ModelError(f"{model.name}: variable paths are not unique; cannot save by name")
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["format"] = "qca_tf.weights/1"
            group = h5.create_group(WEIGHTS_GROUP)
            for v in model.weights:
                group.create_dataset(v.path, data=np.asarray(v.numpy(), dtype=dtype))


def read_weights(path: Path, model: Any, folder: Path) -> None:
    """Assign the variables of ``model`` from the HDF5 file ``path``; every variable must be
    there with its shape, and nothing else (ModelError naming the first difference)."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            group = h5[WEIGHTS_GROUP]
            stored: dict[str, Any] = {}
            group.visititems(lambda name, obj: stored.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
            wanted = {v.path: v for v in model.weights}
            missing = sorted(set(wanted) - set(stored))
            extra = sorted(set(stored) - set(wanted))
            if missing or extra:
                detail = f"lacks {missing[0]!r}" if missing else f"holds {extra[0]!r}, which it has not"
                raise ModelError(f"{folder}: {path.name} does not match the architecture in {CONFIG_NAME} "
                                 f"({len(stored)} stored variables, {len(wanted)} in the network; the file {detail})")
            for name, var in wanted.items():
                ds = stored[name]
                if tuple(ds.shape) != tuple(var.shape):
                    raise ModelError(f"{folder}: {path.name}: {name} has shape {tuple(ds.shape)}, the architecture "
                                     f"in {CONFIG_NAME} needs {tuple(var.shape)}")
                var.assign(np.asarray(ds[()], dtype=np.float32))
    except ModelError:
        raise
    except Exception as exc:  # truncated or garbage file, missing group: all mean "unusable weights"
        raise ModelError(f"{folder}: cannot load {path.name} ({type(exc).__name__}: {_first_line(exc)})") from None


def _count_stored_weights(path: Path) -> int:
    """Number of layer weight arrays in a format-1 .keras file (optimizer state excluded)."""
    import h5py

    names: list[str] = []
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as fh, h5py.File(fh, "r") as h5:
        h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sum(name.startswith("layers/") for name in names)


def _read_keras_archive(path: Path, model: Any, folder: Path) -> None:
    """Format 1: load the weights of a whole-model ``.keras`` archive into ``model``."""
    try:
        stored = _count_stored_weights(path)
        with warnings.catch_warnings():  # a mismatch is reported below as one ModelError
            warnings.filterwarnings("ignore", message="Skipping nested container")
            model.load_weights(str(path))
    except Exception as exc:  # truncated zip, garbage, other architecture: all mean "unusable weights"
        raise ModelError(f"{folder}: cannot load {path.name} ({type(exc).__name__}: {_first_line(exc)})") from None
    if stored != len(model.weights):  # Keras silently ignores extra layers in the file
        raise ModelError(f"{folder}: {path.name} holds {stored} weight arrays but the architecture in "
                         f"{CONFIG_NAME} has {len(model.weights)}")


# ------------------------------------------------------------------ folders


def save_model_folder(
    folder: str | os.PathLike,
    model: Any,
    *,
    task: str,
    model_cfg: ModelConfig,
    spacing_um: float,
    train_cfg: TrainConfig | None = None,
    data_cfg: DataConfig | None = None,
    metrics: dict | None = None,
    half: bool = False,
) -> None:
    """Write ``weights.h5`` (the network's variables, float16 with ``half``, never the
    optimiser) then ``config.json`` into ``folder`` (created if needed), each atomically.
    ``data_cfg`` is what prediction replays (resample order, normalisation); without it
    prediction uses the reference defaults. A format-1 ``model.keras`` left in the folder
    is removed (it would be stale)."""
    folder = Path(folder)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not float(spacing_um) > 0:
        raise ConfigError(f"spacing_um must be > 0, got {spacing_um!r}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the model folder ({exc.strerror})") from None
    write_weights(folder / WEIGHTS_NAME, model, half=half)
    payload = {
        "format": FORMAT,
        "task": task,
        "model": to_dict(model_cfg),
        "train": None if train_cfg is None else to_dict(train_cfg),
        "data": None if data_cfg is None else to_dict(data_cfg),
        "spacing_um": float(spacing_um),
        "metrics": dict(metrics or {}),
        "qca_tf_version": __version__,
    }
    write_json_atomic(folder / CONFIG_NAME, payload)
    (folder / KERAS_NAME).unlink(missing_ok=True)
    log.debug("saved model folder %s", folder)


def _migrate(info: dict, version: int, path: Path) -> dict:
    """``info`` of a format-``version`` config.json brought to the current format (in memory)."""
    info = dict(info)
    if version == 1:  # 1 -> 2: same keys; weights moved from model.keras to weights.h5 (found by file)
        log.debug("%s: migrating model format 1 to %d", path, FORMAT_VERSION)
        info["format"] = FORMAT
    data = info.get("data")
    if isinstance(data, dict) and "normalization" not in data:
        # written before the key existed: those models were trained with min-max scaling
        # (the DataConfig default is now percentile, so it must not be filled in silently)
        info["data"] = {**data, "normalization": "minmax"}
    return info


def read_model_config(folder: str | os.PathLike) -> tuple[dict, ModelConfig]:
    """Read, migrate and validate ``folder/config.json``: (the whole dict, its ModelConfig)."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    if not path.is_file():
        raise ModelError(f"{folder}: not a model folder (no {CONFIG_NAME})")
    info = read_json(path)
    info = _migrate(info, format_version(info.get("format"), FORMAT_NAME, FORMAT_VERSION, path), path)
    unknown = sorted(set(info) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(_KEYS))})")
    if info.get("task") not in TASKS:
        raise ModelError(f"{path}: task {info.get('task')!r} is not one of {', '.join(TASKS)}")
    spacing = info.get("spacing_um")
    if not isinstance(spacing, (int, float)) or isinstance(spacing, bool) or not spacing > 0:
        raise ModelError(f"{path}: spacing_um {spacing!r} is not a positive number")
    try:
        model_cfg = from_dict(ModelConfig, info.get("model"), "model")
        for key, cls in (("train", TrainConfig), ("data", DataConfig)):
            if info.get(key) is not None:
                from_dict(cls, info[key], key)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return info, model_cfg


def read_data_config(info: dict) -> DataConfig | None:
    """The DataConfig a (validated) config.json recorded, or None."""
    return None if info.get("data") is None else from_dict(DataConfig, info["data"], "data")


def weights_file(folder: Path) -> Path | None:
    """The file holding a model folder's network: weights.h5, a format-1 model.keras or
    saved_model.pb; None when there is none."""
    for name in (WEIGHTS_NAME, KERAS_NAME, SAVEDMODEL_NAME):
        if (folder / name).is_file():
            return folder / name
    return None


def load_model_folder(folder: str | os.PathLike, *, dtype_policy: str | None = None) -> LoadedModel:
    """Load a model folder: rebuild the network of its config.json under the (resolved)
    Keras ``dtype_policy`` (None: float32) and load ``weights.h5`` (or a format-1
    ``model.keras``); or, for a folder holding ``saved_model.pb``, wrap the SavedModel
    (always float32; another ``dtype_policy`` is ignored with a warning). The policy is
    recorded as ``LoadedModel.precision``. To load under an InferenceConfig's precision
    use :func:`qca_tf.infer.load_for_inference` or :func:`qca_tf.bundle.load_networks`."""
    from .models import build_unet

    folder = Path(folder)
    info, model_cfg = read_model_config(folder)
    data_cfg = read_data_config(info)
    if data_cfg is None:
        log.debug("%s records no data section: prediction uses the reference preprocessing "
                  "(linear resampling, min-max)", folder)
    source = weights_file(folder)
    precision = dtype_policy or "float32"
    if source is None:
        raise ModelError(f"{folder}: no {WEIGHTS_NAME}, {KERAS_NAME} or {SAVEDMODEL_NAME} in the model folder")
    if source.name == SAVEDMODEL_NAME:
        if precision != "float32":
            log.warning("%s is a float32 SavedModel; precision %s is ignored", folder, precision)
        precision = "float32"
        model: Any = SavedModelWrapper(folder)
    else:
        model = build_unet(model_cfg, dtype_policy=dtype_policy, kernel_initializer="zeros")  # weights follow
        load_weights_into(model, folder, source)
    return LoadedModel(model, model_cfg, info["task"], float(info["spacing_um"]), folder, info,
                       data_cfg=data_cfg, precision=precision,
                       weights_path=None if source.name == SAVEDMODEL_NAME else source)


def load_weights_into(model: Any, folder: Path, source: Path) -> None:
    """Assign the variables of ``model`` (a network of ``folder``'s architecture) from its
    network file ``source``: ``weights.h5``, or a format-1 ``model.keras``."""
    if source.name == WEIGHTS_NAME:
        read_weights(source, model, folder)
    else:
        log.debug("%s: format-1 model folder (model.keras); `qca-tf bundle` or saving it again writes the "
                  "weights-only format, which loads faster", folder)
        _read_keras_archive(source, model, folder)


def copy_model_folder(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy model folder ``src`` to ``dst`` in the current format: config.json and
    weights.h5 (a format-1 folder is loaded and saved again, dropping its optimiser
    state; a SavedModel folder is copied whole). Training files (epochs.csv, .resume/)
    are not copied."""
    import shutil

    src, dst = Path(src), Path(dst)
    info, model_cfg = read_model_config(src)
    source = weights_file(src)
    if source is None:
        raise ModelError(f"{src}: no {WEIGHTS_NAME}, {KERAS_NAME} or {SAVEDMODEL_NAME} in the model folder")
    if source.name == SAVEDMODEL_NAME:
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".resume", "epochs.csv"))
        return
    if source.name == KERAS_NAME:
        loaded = load_model_folder(src)
        save_model_folder(dst, loaded.model, task=info["task"], model_cfg=model_cfg, spacing_um=info["spacing_um"],
                          train_cfg=None if info.get("train") is None else from_dict(TrainConfig, info["train"]),
                          data_cfg=loaded.data_cfg, metrics=info.get("metrics"))
        return
    try:
        dst.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst / WEIGHTS_NAME, suffix=".h5") as tmp:
            shutil.copyfile(source, tmp)
    except OSError as exc:
        raise OutputError(f"{dst}: cannot write the model folder ({exc.strerror})") from None
    write_json_atomic(dst / CONFIG_NAME, info)
