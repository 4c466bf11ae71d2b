"""The searched hyperparameters, defined once (DESIGN section 3), and their translations:
Optuna suggestions, keras-tuner ``HyperParameters``, and the qca_tf configs of a trial.

The optimiser is a categorical choice; SGD-only and Adam-only parameters are active only
on their branch and carry its prefix (``sgd_*``, ``adam_*``), so no name is shared.
A space file (JSON) narrows ranges or fixes values::

    {"depth": [2, 3], "kernel_size": [3], "optimizer": "adam", "adam_beta1": 0.9,
     "weight_decay": {"low": 1e-5, "high": 1e-3}}

A number range is ``[low, high]`` or ``{"low": .., "high": ..}``; a single value fixes
the parameter; a categorical parameter takes a list of allowed choices or one value.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qca_tf.config import DataConfig, ModelConfig, TrainConfig, check_compatible, preset
from qca_tf.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter. ``kind``: "int", "float" or "categorical"; ``log``:
    log-uniform; ``when``: (parent, value) for a conditional parameter."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    when: tuple[str, str] | None = None

    @property
    def fixed(self) -> bool:
        return (self.kind == "categorical" and len(self.choices) == 1) or (
            self.kind != "categorical" and self.low == self.high)

    def to_json(self) -> dict[str, Any]:
        d = {"kind": self.kind, "when": list(self.when) if self.when else None}
        d.update({"choices": list(self.choices)} if self.kind == "categorical" else
                 {"low": self.low, "high": self.high, "log": self.log})
        return d


#: The ten hyperparameters of the paper (plus the optimiser choice that gates them).
SPACE: tuple[Param, ...] = (
    Param("depth", "int", 1, 4),
    Param("init_channels", "int", 2, 32, log=True),
    Param("kernel_size", "categorical", choices=(3, 5)),
    Param("weight_decay", "float", 1e-6, 1e-2, log=True),
    Param("optimizer", "categorical", choices=("sgd", "adam")),
    Param("sgd_lr", "float", 1e-4, 1.0, log=True, when=("optimizer", "sgd")),
    Param("sgd_lr_decay", "float", 0.1, 0.9, when=("optimizer", "sgd")),
    Param("adam_alpha", "float", 1e-5, 1e-2, log=True, when=("optimizer", "adam")),
    Param("adam_beta1", "float", 0.8, 0.99, when=("optimizer", "adam")),
    Param("adam_beta2", "float", 0.9, 0.9999, when=("optimizer", "adam")),
    Param("adam_epsilon", "float", 1e-10, 1e-6, log=True, when=("optimizer", "adam")),
)


class SearchSpace:
    """An ordered set of :class:`Param` (parents before their conditional children)."""

    def __init__(self, params: tuple[Param, ...] = SPACE) -> None:
        self.params = tuple(params)
        self.by_name = {p.name: p for p in self.params}

    # ---------------------------------------------------------------- narrowing

    @classmethod
    def from_file(cls, path: str | os.PathLike | None) -> "SearchSpace":
        """The default space narrowed by a JSON space file (None: the default space)."""
        if path is None:
            return cls()
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: space file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON space file ({exc})") from None
        return cls().narrowed(data, source=str(path))

    def narrowed(self, spec: dict[str, Any], source: str = "space") -> "SearchSpace":
        """A copy with the ranges/choices of ``spec`` (see the module docstring)."""
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: expected a JSON object of parameter names")
        unknown = sorted(set(spec) - set(self.by_name))
        if unknown:
            raise ConfigError(f"{source}: unknown parameter {unknown[0]!r} (known: {', '.join(self.by_name)})")
        out = []
        for p in self.params:
            out.append(_narrow(p, spec[p.name], source) if p.name in spec else p)
        return SearchSpace(tuple(out))

    # ---------------------------------------------------------------- identity

    def to_json(self) -> dict[str, Any]:
        return {p.name: p.to_json() for p in self.params}

    def signature(self) -> str:
        """Short hash of the space: a study is tied to one space."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def active(self, params: dict[str, Any]) -> list[Param]:
        """The parameters active given the values of their parents in ``params``."""
        return [p for p in self.params if p.when is None or params.get(p.when[0]) == p.when[1]]

    def contains(self, params: dict[str, Any]) -> bool:
        """Whether a full set of values lies in this space (its active parameters)."""
        for p in self.active(params):
            v = params.get(p.name)
            if v is None:
                return False
            if p.kind == "categorical":
                if v not in p.choices:
                    return False
            elif not (p.low <= v <= p.high):
                return False
        return True

    # ---------------------------------------------------------------- engines

    def suggest_optuna(self, trial) -> dict[str, Any]:
        """Draw the active parameters from an ``optuna.Trial``."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.when is not None and values.get(p.when[0]) != p.when[1]:
                continue
            if p.kind == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.kind == "int":
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log and p.low < p.high)
            else:
                values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high),
                                                     log=p.log and p.low < p.high)
        return values

    def keras_tuner_hyperparameters(self):
        """The same space as keras-tuner ``HyperParameters`` (conditional scopes for the branches)."""
        import keras_tuner as kt

        hp = kt.HyperParameters()
        self.declare_keras_tuner(hp)
        return hp

    def declare_keras_tuner(self, hp) -> dict[str, Any]:
        """Declare (or read) every parameter on ``hp``; returns the active values."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.when is None:
                values[p.name] = _kt_declare(hp, p)
            else:
                with hp.conditional_scope(p.when[0], [p.when[1]]):
                    v = _kt_declare(hp, p)
                if values.get(p.when[0]) == p.when[1]:
                    values[p.name] = v
        return values


def _kt_declare(hp, p: Param):
    if p.kind == "categorical":
        return hp.Choice(p.name, list(p.choices))
    if p.fixed:
        return hp.Fixed(p.name, int(p.low) if p.kind == "int" else float(p.low))
    if p.kind == "int":
        return hp.Int(p.name, int(p.low), int(p.high), sampling="log" if p.log else "linear")
    return hp.Float(p.name, float(p.low), float(p.high), sampling="log" if p.log else "linear")


def _narrow(p: Param, value: Any, source: str) -> Param:
    where = f"{source}: {p.name}"
    if p.kind == "categorical":
        choices = value if isinstance(value, list) else [value]
        if not choices:
            raise ConfigError(f"{where}: empty choice list")
        bad = [c for c in choices if c not in p.choices]
        if bad:
            raise ConfigError(f"{where}: {bad[0]!r} is not one of {', '.join(map(str, p.choices))}")
        return dataclasses.replace(p, choices=tuple(c for c in p.choices if c in choices))
    if isinstance(value, dict):
        extra = sorted(set(value) - {"low", "high"})
        if extra or not {"low", "high"} <= set(value):
            raise ConfigError(f"{where}: a range is {{\"low\": .., \"high\": ..}} or [low, high]")
        low, high = value["low"], value["high"]
    elif isinstance(value, list):
        if len(value) != 2:
            raise ConfigError(f"{where}: a range is [low, high], got {len(value)} value(s)")
        low, high = value
    else:
        low = high = value
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where}: {v!r} is not a number")
        if p.kind == "int" and int(v) != v:
            raise ConfigError(f"{where}: {v!r} is not an integer")
    if low > high:
        raise ConfigError(f"{where}: empty range (low {low} > high {high})")
    if low < p.low or high > p.high:
        raise ConfigError(f"{where}: [{low}, {high}] is outside the allowed range [{p.low}, {p.high}]")
    cast = int if p.kind == "int" else float
    return dataclasses.replace(p, low=cast(low), high=cast(high))


# -------------------------------------------------------------------- trial -> configs


def task_of(network: str) -> str:
    """The training task of a searched network (ndn: ndn; nsn and unet3d: nsn)."""
    return "ndn" if network == "ndn" else "nsn"


def preset_params(network: str, space: SearchSpace) -> dict[str, Any] | None:
    """The published preset of ``network`` with the reference optimiser settings as a
    point of the space (for warm start), or None when the space excludes it."""
    m = preset(network)
    t = TrainConfig(task=task_of(network))
    values: dict[str, Any] = {"depth": m.depth, "init_channels": m.init_channels, "kernel_size": m.kernel_size,
                              "weight_decay": t.weight_decay, "optimizer": t.optimizer}
    if t.optimizer == "sgd":
        values.update(sgd_lr=t.sgd_lr, sgd_lr_decay=t.lr_decay)
    else:
        values.update(adam_alpha=t.adam_alpha, adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2,
                      adam_epsilon=t.adam_epsilon)
    return values if space.contains(values) else None


def configs_for(network: str, params: dict[str, Any], base_train: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of one trial: ``base_train`` (epochs, loss, seed...)
    with the searched values of ``params``."""
    model_cfg = preset(network, depth=int(params["depth"]), init_channels=int(params["init_channels"]),
                       kernel_size=int(params["kernel_size"]))
    keys = {"weight_decay": "weight_decay", "optimizer": "optimizer", "sgd_lr": "sgd_lr",
            "sgd_lr_decay": "lr_decay", "adam_alpha": "adam_alpha", "adam_beta1": "adam_beta1",
            "adam_beta2": "adam_beta2", "adam_epsilon": "adam_epsilon"}
    train_kw = {keys[k]: (float(v) if k != "optimizer" else v) for k, v in params.items() if k in keys}
    return model_cfg, dataclasses.replace(base_train, task=task_of(network), **train_kw)


def infeasible_reason(model_cfg: ModelConfig, data_cfg: DataConfig, max_params: int | None) -> str | None:
    """Why a configuration cannot run (crop vs depth, too many parameters), or None."""
    try:
        check_compatible(model_cfg, data_cfg)
    except ConfigError as exc:
        return str(exc)
    if max_params is not None:
        from qca_tf.models import parameter_count

        n = parameter_count(model_cfg)
        if n > max_params:
            return f"{n:,} parameters > --max-params {max_params:,}"
    return None
