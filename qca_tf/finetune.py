"""Fine-tuning: start a training from a trained model's weights (``qca-tf train --init``).

A user with a few annotated stacks of their own microscope starts from a shipped or
earlier model (a model folder, a bundle folder or a registered name such as
``embryo-small``) instead of random weights. The new training keeps what the weights
depend on, taken from the initial model and never guessed:

* the architecture (``ModelConfig``: depth, channels, kernel size, classes, inputs);
* the input recipe: network-grid spacing (data are resampled to the initial model's
  grid), resampling order, normalisation and its percentiles, the number of input
  channels, and for NDN the centre-target diameter.

Explicit flags that contradict the initial model are one ConfigError naming the flag.
Optimiser, loss, epochs, crops and augmentation are the new run's own choice.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DataConfig, ModelConfig
from .errors import ConfigError, ModelError

log = logging.getLogger(__name__)

#: DataConfig fields that decide what the weights expect as input (and their flags).
#: (The file channels belong to the new data; only their count must match the network's inputs.)
RECIPE_FLAGS = {"normalization": "--normalization", "norm_percentiles": "norm_percentiles",
                "resample_order": "resample_order", "ndn_diameter": "ndn_diameter"}
#: ModelConfig fields a user may give as flags.
ARCH_FLAGS = {"depth": "--depth", "init_channels": "--init-channels", "kernel_size": "--kernel-size",
              "input_channels": "--channel (its count)"}


@dataclass(frozen=True)
class InitialModel:
    """A model folder whose weights start a training.

    ``folder``: the model folder (config.json + weights); ``task``: nsn or ndn;
    ``spacing_um``: its isotropic grid spacing; ``data_cfg``: the recipe it recorded
    (None for old folders: the reference recipe, linear resampling and min-max);
    ``weights``: its network file (weights.h5 or a format-1 model.keras); ``sha256``: hash
    of its config and weights (recorded with the new run)."""

    folder: Path
    task: str
    model_cfg: ModelConfig
    spacing_um: float
    data_cfg: DataConfig | None
    weights: Path
    sha256: str

    def record(self) -> dict[str, Any]:
        """What training.json keeps of it: a resume with another initial model is refused."""
        return {"folder": str(self.folder.resolve()), "sha256": self.sha256}


def initial_model(source: str | os.PathLike, task: str) -> InitialModel:
    """The ``task`` network of ``source``: a model folder, a bundle folder (its nsn/ or
    ndn/) or a registered model name. ModelError when it is none of these, is another
    task's network, or is a SavedModel export (which holds no trainable weights)."""
    from .bundle import BUNDLE_FILE, read_bundle
    from .modelio import CONFIG_NAME, SAVEDMODEL_NAME, read_data_config, read_model_config, weights_file
    from .registry import resolve
    from .resume import model_hash

    path = Path(source)
    if not (path / CONFIG_NAME).is_file():
        path = resolve(source)
        if (path / BUNDLE_FILE).is_file():
            path = getattr(read_bundle(path), task)  # the bundle's nsn/ or ndn/
        elif not (path / CONFIG_NAME).is_file():
            raise ModelError(f"{source}: neither a model folder (config.json) nor a bundle ({BUNDLE_FILE})")
    info, model_cfg = read_model_config(path)
    if info["task"] != task:
        raise ModelError(f"{path}: is a {info['task']} model; a {task} training needs a {task} model to start from")
    weights = weights_file(path)
    if weights is None:
        raise ModelError(f"{path}: no weights in the model folder")
    if weights.name == SAVEDMODEL_NAME:
        raise ModelError(f"{path}: a SavedModel export cannot be fine-tuned; give the model folder it was exported from")
    return InitialModel(path, task, model_cfg, float(info["spacing_um"]), read_data_config(info), weights,
                        model_hash(path))


def check_architecture(init: InitialModel, given: dict[str, Any]) -> ModelConfig:
    """The initial model's architecture; ``given`` (field -> value, None = not given)
    must agree with it (ConfigError naming the flag)."""
    for key, value in given.items():
        if value is not None and value != getattr(init.model_cfg, key):
            raise ConfigError(f"{ARCH_FLAGS.get(key, key)} {value}: the initial model {init.folder} has "
                              f"{key} {getattr(init.model_cfg, key)}; fine-tuning keeps its architecture")
    return init.model_cfg


def recipe_data_config(init: InitialModel, data_cfg: DataConfig, given: set[str]) -> DataConfig:
    """``data_cfg`` with the initial model's input recipe. Fields in ``given`` (set by the
    user) that differ from the recorded recipe are a ConfigError naming the flag."""
    recorded = init.data_cfg
    if recorded is None:  # before the data section existed: the reference recipe
        recorded = dataclasses.replace(DataConfig(), normalization="minmax", resample_order=1)
    changes = {}
    for key, flag in RECIPE_FLAGS.items():
        old, new = getattr(recorded, key), getattr(data_cfg, key)
        if key in given and new != old:
            raise ConfigError(f"{flag} {new!r}: the initial model {init.folder} was trained with {key} {old!r}; "
                              "fine-tuning feeds its weights the same input")
        changes[key] = old
    return dataclasses.replace(data_cfg, **changes)


def load_initial_weights(model: Any, init: InitialModel) -> None:
    """Load the initial model's weights (batch-norm statistics included) into ``model``, a
    freshly built network of the same architecture (a mismatch is a ModelError naming it)."""
    from .modelio import load_weights_into

    load_weights_into(model, init.folder, init.weights)
    log.info("starting from the weights of %s (sha256 %s...)", init.folder, init.sha256[:12])
