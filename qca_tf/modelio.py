"""Model folders: ``config.json`` (architecture, task, grid spacing, training record)
next to ``model.keras`` (weights), or next to a TensorFlow SavedModel (``saved_model.pb``,
written by :mod:`qca_tf.export`). The network is rebuilt from the config, so the same
weights load under any precision policy.
"""
from __future__ import annotations

import logging
import os
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

log = logging.getLogger(__name__)

FORMAT = "qca_tf.model/1"
CONFIG_NAME = "config.json"
KERAS_NAME = "model.keras"
SAVEDMODEL_NAME = "saved_model.pb"
_KEYS = {"format", "task", "model", "train", "data", "spacing_um", "metrics", "qca_tf_version"}


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
    (float32) for an exported folder; ``info`` is the whole config.json."""

    model: Any
    model_cfg: ModelConfig
    task: str
    spacing_um: float
    folder: Path
    info: dict = field(default_factory=dict)
    forward_cache: dict = field(default_factory=dict, repr=False, compare=False)  # compiled passes, see infer

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """x (b, z, y, x, c) float32 -> class probabilities (b, z, y, x, n_classes) float32."""
        if isinstance(self.model, SavedModelWrapper):
            return self.model.predict_batch(x)
        return np.asarray(self.model(np.asarray(x, np.float32), training=False), np.float32)


def _count_stored_weights(path: Path) -> int:
    """Number of layer weight arrays in a .keras file (optimizer state excluded)."""
    import h5py

    names: list[str] = []
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as fh, h5py.File(fh, "r") as h5:
        h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sum(name.startswith("layers/") for name in names)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


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
) -> None:
    """Write ``model.keras`` then ``config.json`` into ``folder`` (created if needed), each
    atomically (temp file in the folder, then os.replace)."""
    folder = Path(folder)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not float(spacing_um) > 0:
        raise ConfigError(f"spacing_um must be > 0, got {spacing_um!r}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the model folder ({exc.strerror})") from None
    with atomic_path(folder / KERAS_NAME, suffix=".keras") as tmp:
        model.save(tmp, overwrite=True)
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
    log.debug("saved model folder %s", folder)


def read_model_config(folder: str | os.PathLike) -> tuple[dict, ModelConfig]:
    """Read and validate ``folder/config.json``: (the whole dict, its ModelConfig)."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    if not path.is_file():
        raise ModelError(f"{folder}: not a model folder (no {CONFIG_NAME})")
    info = read_json(path)
    unknown = sorted(set(info) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(_KEYS))})")
    if info.get("format") != FORMAT:
        raise ModelError(f"{path}: format {info.get('format')!r} is not {FORMAT!r}")
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


def load_model_folder(folder: str | os.PathLike, *, dtype_policy: str | None = None) -> LoadedModel:
    """Load a model folder: rebuild the network of its config.json under ``dtype_policy``
    (None: float32) and load the weights of ``model.keras``; or, for a folder holding
    ``saved_model.pb``, wrap the SavedModel (always float32; ``dtype_policy`` is ignored)."""
    from .models import build_unet

    folder = Path(folder)
    info, model_cfg = read_model_config(folder)
    if (folder / SAVEDMODEL_NAME).is_file():
        if dtype_policy not in (None, "float32"):
            log.warning("%s is a float32 SavedModel; precision %s is ignored", folder, dtype_policy)
        model: Any = SavedModelWrapper(folder)
    elif (folder / KERAS_NAME).is_file():
        model = build_unet(model_cfg, dtype_policy=dtype_policy)
        try:
            stored = _count_stored_weights(folder / KERAS_NAME)
            with warnings.catch_warnings():  # a mismatch is reported below as one ModelError
                warnings.filterwarnings("ignore", message="Skipping nested container")
                model.load_weights(str(folder / KERAS_NAME))
        except Exception as exc:  # truncated zip, garbage, other architecture: all mean "unusable weights"
            raise ModelError(
                f"{folder}: cannot load {KERAS_NAME} ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        if stored != len(model.weights):  # Keras silently ignores extra layers in the file
            raise ModelError(f"{folder}: {KERAS_NAME} holds {stored} weight arrays but the architecture in "
                             f"{CONFIG_NAME} has {len(model.weights)}")
    else:
        raise ModelError(f"{folder}: no {KERAS_NAME} or {SAVEDMODEL_NAME} in the model folder")
    return LoadedModel(model, model_cfg, info["task"], float(info["spacing_um"]), folder, info)
