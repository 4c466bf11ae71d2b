"""TensorFlow SavedModel export of a Keras model folder.

The SavedModel has one endpoint, ``serve`` (also the default serving signature):
float32 [batch, z, y, x, channels], every dimension dynamic (spatial sizes multiples
of 2**depth) -> float32 class probabilities [batch, z, y, x, n_classes]. The model
folder's ``config.json`` is copied next to ``saved_model.pb``, so
:func:`qca_tf.modelio.load_model_folder` and prediction can use the exported folder.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import ModelError, OutputError
from .modelio import CONFIG_NAME, KERAS_NAME, SAVEDMODEL_NAME, load_model_folder

log = logging.getLogger(__name__)


def export_savedmodel(model_folder: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Export the Keras model folder ``model_folder`` (loaded as float32) to a SavedModel
    folder ``out_dir``, written atomically (built in a temp folder beside it, then renamed).
    An existing non-empty ``out_dir`` raises OutputError unless ``overwrite``."""
    model_folder, out_dir = Path(model_folder), Path(out_dir)
    if (model_folder / SAVEDMODEL_NAME).is_file():
        raise ModelError(f"{model_folder}: already a SavedModel; export needs a folder with {KERAS_NAME}")
    loaded = load_model_folder(model_folder, dtype_policy="float32")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise OutputError(f"{out_dir}: exists and is not empty (use overwrite to replace it)")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the export folder ({exc.strerror})") from None

    try:
        write_savedmodel(loaded.model, loaded.model_cfg.input_channels, tmp)
        shutil.copy2(model_folder / CONFIG_NAME, tmp / CONFIG_NAME)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to SavedModel %s", model_folder, out_dir)
    return out_dir


def write_savedmodel(model: Any, channels: int, out_dir: str | os.PathLike) -> None:
    """Write the float32 Keras ``model`` as a SavedModel into ``out_dir`` (the ``serve``
    endpoint of the module docstring, ``channels`` input channels). The one export recipe:
    ``qca-tf export`` and the OpenVINO engine (:mod:`qca_tf.engines`) both use it."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, None, None, None, channels], tf.float32, name="image")],
    )
    archive.write_out(str(out_dir), verbose=False)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``; an existing ``dst`` is set aside first and removed after."""
    old = None
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".old"))
        os.replace(dst, old / "x")
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
