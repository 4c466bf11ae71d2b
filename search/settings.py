"""The settings of one search (written to ``OUT/search.json``) and the Optuna sampler and
pruner they describe, with every behaviour set explicitly (Optuna 5.0 changed TPE's
defaults; a study must not change meaning with the installed release)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qca_tf.config import from_dict, read_json, write_json_atomic
from qca_tf.errors import ConfigError

NETWORKS = ("nsn", "ndn", "unet3d")
ENGINES = ("optuna", "keras-tuner")
SAMPLERS = ("tpe", "random", "gp")
PRUNERS = ("median", "wilcoxon", "none")
SETTINGS_NAME = "search.json"

#: TPE, stated in full (multivariate + group for the optimiser-conditional space,
#: constant liar so parallel workers do not propose the same point).
#: (consider_prior, prior_weight, consider_magic_clip, consider_endpoints are deprecated
#: in Optuna 4.3-4.9: left at their fixed behaviour.)
TPE_OPTIONS = {"n_startup_trials": 10, "n_ei_candidates": 24, "multivariate": True, "group": True,
               "constant_liar": True}
GP_OPTIONS = {"n_startup_trials": 10, "deterministic_objective": False}
#: keras-tuner's BayesianOptimizationOracle (--engine keras-tuner), stated in full: 10
#: random start-up trials like GP_OPTIONS (its default, 3 per parameter, would be 33),
#: its default GP noise (alpha) and UCB exploration (beta), no retries of a failed trial.
KT_OPTIONS = {"num_initial_points": 10, "alpha": 1e-4, "beta": 2.6, "max_retries_per_trial": 0}


@dataclass(frozen=True)
class SearchSettings:
    """Everything a worker needs to run trials of one study (JSON round trip)."""

    network: str
    out: str
    data: str
    trials: int
    study: str
    engine: str = "optuna"
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None  # redacted when written; workers read the real URL from the environment
    workers: int = 1
    epochs: int = 6
    patch: tuple[int, int, int] = (32, 32, 32)
    crops_per_volume: int = 4
    loss: str = "ce+dice"
    timeout_s: float | None = None
    seed: int = 0
    max_params: int | None = 2_000_000
    warm_start: bool = True
    keep: int = 5
    trials_per_process: int = 10
    space_file: str | None = None
    objective: str | None = None  # "module:function" replacing training (tests, custom objectives)
    deadline: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ConfigError(f"unknown network {self.network!r}; choose one of {', '.join(NETWORKS)}")
        for name, value, allowed in (("--engine", self.engine, ENGINES), ("--sampler", self.sampler, SAMPLERS),
                                     ("--pruner", self.pruner, PRUNERS)):
            if value not in allowed:
                raise ConfigError(f"{name} {value!r}: choose one of {', '.join(allowed)}")
        if not (isinstance(self.trials, int) and self.trials >= 1):
            raise ConfigError(f"--trials {self.trials!r}: need at least 1 trial")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers!r}: need at least 1")
        if self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs!r}: need at least 1")
        if self.max_params is not None and self.max_params < 1:
            raise ConfigError(f"--max-params {self.max_params!r}: must be positive")
        if self.engine == "keras-tuner" and self.sampler != "tpe":
            raise ConfigError("--sampler applies to --engine optuna (keras-tuner runs its BayesianOptimization)")
        if self.engine == "keras-tuner" and self.workers > 1:
            raise ConfigError(f"--workers {self.workers}: --engine keras-tuner runs its trials one at a time in one "
                              "process (its own distribution, with KERASTUNER_* chief/worker variables, is not "
                              "supported); use --engine optuna for parallel workers")
        if self.engine == "keras-tuner" and self.storage is not None:
            raise ConfigError("--storage applies to --engine optuna (keras-tuner keeps its state in OUT/keras_tuner/)")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> "SearchSettings":
        data = read_json(path)
        data.pop("recorded", None)
        return from_dict(cls, data, "search")

    @property
    def warmup_epochs(self) -> int:
        """Epochs before the pruner may stop a trial: a third of the budget, at least 1."""
        return max(1, self.epochs // 3)


def worker_seed(seed: int, worker: int, start_trials: int) -> int:
    """A distinct, reproducible sampler seed per worker process (same inputs, same seed)."""
    return int(np.random.SeedSequence([seed, worker, start_trials]).generate_state(1)[0])


def kt_seed(seed: int) -> int:
    """The keras-tuner oracle's seed for ``--seed`` (keras-tuner replaces a seed of 0 by a random one)."""
    return worker_seed(seed, 0, 0) % (2**31 - 2) + 1


def check_sampler_available(sampler: str) -> None:
    """``gp`` needs PyTorch: one clear line when it is missing."""
    if sampler == "gp":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ConfigError("--sampler gp needs PyTorch, which is not installed: pip install 'qca_tf[gp]' "
                              "(or use --sampler tpe)") from None


def route_optuna_logs() -> None:
    """Optuna's messages go through Python ``logging`` (the command's own format and
    verbosity) instead of its own stderr handler, and only from WARNING up: no
    "[I 2026-...] A new study created" lines on the terminal."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        import warnings

        with warnings.catch_warnings():  # "group" is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, **TPE_OPTIONS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    check_sampler_available(name)
    return optuna.samplers.GPSampler(seed=seed, **GP_OPTIONS)


def pruner_options(name: str, warmup: int) -> dict[str, Any]:
    if name == "median":
        return {"n_startup_trials": 5, "n_warmup_steps": warmup, "interval_steps": 1, "n_min_trials": 1}
    if name == "wilcoxon":
        return {"p_threshold": 0.1, "n_startup_steps": warmup}
    return {}


def make_pruner(name: str, warmup: int):
    import optuna

    opts = pruner_options(name, warmup)
    if name == "median":
        return optuna.pruners.MedianPruner(**opts)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(**opts)
    return optuna.pruners.NopPruner()
