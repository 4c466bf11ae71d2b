"""One worker process of a search: prepares the data once, then asks the study for
trials and runs them until the study holds the requested number of finished trials.

Run as ``python -m qca_tf.search.worker OUT/search.json INDEX`` by :mod:`.run` (the real
storage URL comes from the ``QCA_TF_STORAGE`` environment variable, never from a file).
Exit codes: 0 budget reached or deadline passed; 3 recycle me (the process ran
``trials_per_process`` trials: TensorFlow's memory grows across models in one process);
2 configuration error (its one-line message in ``OUT/logs/worker-INDEX.error``).
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import logging
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from qca_tf.errors import QcaError
from qca_tf.modelio import KERAS_NAME, WEIGHTS_NAME

from . import settings as st
from .outputs import trial_dir
from .space import SearchSpace, configs_for, infeasible_reason
from .storage import FINISHED, open_storage, worker_identity

log = logging.getLogger(__name__)

EXIT_DONE, EXIT_CONFIG, EXIT_RECYCLE = 0, 2, 3
STORAGE_ENV = "QCA_TF_STORAGE"


@dataclass
class Outcome:
    """What one trial gave: ``state`` COMPLETE/PRUNED/FAIL, the value (best validation
    metric), per-epoch values, and the reason for a prune or failure."""

    state: str
    value: float | None = None
    epochs: list[float] | None = None
    reason: str | None = None
    tiebreak: float | None = None  # the best epoch's tie-break score (NDN: centre-mask Dice)


class TrialPruned(Exception):
    """Raised by an objective when the pruner stops a trial; ``args[0]`` is the reason."""


# ------------------------------------------------------------------ the training objective


def pruning_callback(trial, metric_name: str):
    """A Keras callback reporting ``logs[metric_name]`` to the Optuna trial every epoch,
    stopping training when the pruner says so or when the loss is NaN."""
    import keras

    class _Report(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values: list[float] = []
            self.pruned_at: int | None = None
            self.nan_at: int | None = None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if metric_name not in logs:  # a bug, not a user error: the epoch callback must run first
                raise RuntimeError(f"validation metric {metric_name!r} missing from the Keras logs {sorted(logs)}")
            value = float(logs[metric_name])
            self.values.append(value)
            if not math.isfinite(float(logs.get("loss", 0.0))):
                self.nan_at = epoch + 1
                self.model.stop_training = True
                return
            trial.report(value, epoch)
            if trial.should_prune():
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    return _Report()


class TrainingObjective:
    """Trains one configuration with :func:`qca_tf.train.fit` on data prepared once."""

    def __init__(self, cfg: st.SearchSettings):
        from qca_tf.config import DataConfig, TrainConfig
        from qca_tf.train import prepare_data
        from .space import task_of

        self.cfg = cfg
        self.data_cfg = DataConfig(patch=tuple(cfg.patch))
        self.base = TrainConfig(task=task_of(cfg.network), epochs=cfg.epochs, crops_per_volume=cfg.crops_per_volume,
                                loss=cfg.loss, seed=cfg.seed)
        self.prepared = prepare_data(cfg.data, self.base.task, self.data_cfg, cfg.seed)

    def __call__(self, trial, params: dict[str, Any], trial_dir: Path) -> Outcome:
        import gc

        import keras
        import tensorflow as tf

        from qca_tf.train import fit

        model_cfg, train_cfg = configs_for(self.cfg.network, params, self.base)
        report = pruning_callback(trial, train_cfg.metric_name)
        try:
            res = fit(self.prepared, trial_dir, model_cfg, train_cfg, callbacks=[report], verbose=0)
        except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
            return Outcome("FAIL", epochs=report.values, reason=f"out of memory ({type(exc).__name__})")
        finally:
            keras.backend.clear_session()
            gc.collect()
        if report.nan_at is not None:
            return Outcome("FAIL", epochs=report.values, reason=f"NaN loss at epoch {report.nan_at}")
        # the tie-break ranks trials whose values tie (NDN: F 1.0 is common); NSN and unet3d have none
        tie = res.best_tiebreak if self.cfg.network == "ndn" and res.history else None
        if report.pruned_at is not None:
            return Outcome("PRUNED", value=res.best_metric, epochs=report.values,
                           reason=f"{self.cfg.pruner} pruner at epoch {report.pruned_at}", tiebreak=tie)
        return Outcome("COMPLETE", value=res.best_metric, epochs=report.values, tiebreak=tie)


def load_objective(cfg: st.SearchSettings) -> Callable:
    """The objective of a worker: training, or ``cfg.objective`` ("module:function",
    called as ``function(trial, params, trial_dir) -> Outcome``)."""
    if cfg.objective:
        module, _, name = cfg.objective.partition(":")
        return getattr(importlib.import_module(module), name)
    return TrainingObjective(cfg)


# ------------------------------------------------------------------ the loop


@contextlib.contextmanager
def budget_lock(out: Path, embedded: bool):
    """Serialise "count, then ask" between the workers of one machine (embedded store)."""
    if not embedded:
        yield
        return
    with open(out / ".search.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _claim(study: optuna.Study, cfg: st.SearchSettings, out: Path, embedded: bool):
    """A new trial while fewer than ``cfg.trials`` are finished or running, else None."""
    with budget_lock(out, embedded):
        trials = study.get_trials(deepcopy=False)
        taken = sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials)
        if taken >= cfg.trials:
            return None
        trial = study.ask()
        trial.set_user_attr("worker", worker_identity())
    if not embedded:  # several machines: the count above may race; give back a surplus trial
        before = [t for t in study.get_trials(deepcopy=False)
                  if t.number < trial.number and t.state in (*FINISHED, TrialState.RUNNING)]
        if len(before) >= cfg.trials:
            trial.set_user_attr("fail_reason", "surplus: the trial budget was already taken")
            study.tell(trial, state=TrialState.FAIL)
            return None
    return trial


def rss_mb() -> float | None:
    """Resident memory of this process in MB (Linux), recorded after each trial."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _record(trial, outcome: Outcome, seconds: float) -> None:
    trial.set_user_attr("seconds", round(seconds, 2))
    trial.set_user_attr("rss_mb", rss_mb())
    if outcome.epochs is not None:
        trial.set_user_attr("epoch_values", [round(v, 6) for v in outcome.epochs])
    if outcome.reason:
        trial.set_user_attr("fail_reason" if outcome.state == "FAIL" else "prune_reason", outcome.reason)
    if outcome.value is not None:
        trial.set_user_attr("best_value", outcome.value)
    if outcome.tiebreak is not None:
        trial.set_user_attr("tiebreak", outcome.tiebreak)


def run_trial(trial, cfg: st.SearchSettings, space: SearchSpace, objective: Callable, out: Path) -> Outcome:
    """Suggest, check feasibility, run the objective in isolation; never raises except
    for configuration errors (a bug in the settings stops the search)."""
    params = space.suggest_optuna(trial)
    model_cfg, _ = configs_for(cfg.network, params, _base_train(cfg))
    from qca_tf.config import DataConfig

    # the warm-start preset is the reference point: run it even above --max-params
    max_params = None if trial.user_attrs.get("warm_start") else cfg.max_params
    reason = infeasible_reason(model_cfg, DataConfig(patch=tuple(cfg.patch)), max_params)
    if reason:
        return Outcome("PRUNED", reason=f"not run: {reason}")
    folder = trial_dir(out, trial.number)
    try:
        return objective(trial, params, folder)
    except QcaError:
        raise
    except Exception as exc:  # a crash of one configuration must not end the search
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text(traceback.format_exc())
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return Outcome("FAIL", reason=f"crash: {type(exc).__name__}: {first}")


def _base_train(cfg: st.SearchSettings):
    from qca_tf.config import TrainConfig
    from .space import task_of

    return TrainConfig(task=task_of(cfg.network), epochs=cfg.epochs, crops_per_volume=cfg.crops_per_volume,
                       loss=cfg.loss, seed=cfg.seed)


def tell(study: optuna.Study, trial, outcome: Outcome) -> None:
    if outcome.state == "COMPLETE":
        study.tell(trial, outcome.value)
    elif outcome.state == "PRUNED":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def rank_key(t: optuna.trial.FrozenTrial) -> tuple[float, float, int]:
    """Order of finished trials, best first when sorted descending: the value, then its
    tie-break (NDN: the best epoch's centre-mask Dice, so that among trials at detection F
    1.0 the one whose centres match best wins; 0 when not recorded), then the earlier trial."""
    return t.value, tiebreak(t), -t.number


def tiebreak(t: optuna.trial.FrozenTrial) -> float:
    """The trial's recorded tie-break score (NDN trials), 0 when none was recorded."""
    return float(t.user_attrs.get("tiebreak") or 0.0)


def ranked_complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials, best first (:func:`rank_key`)."""
    return sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
                  key=rank_key, reverse=True)


def keep_best(study: optuna.Study, out: Path, keep: int) -> None:
    """Delete the weights of finished trials outside the best ``keep`` (their epoch log and
    config stay)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    ranked = ranked_complete(study)
    keepers = {t.number for t in ranked[:keep]}
    for t in done:
        if t.number in keepers:
            continue
        for name in (WEIGHTS_NAME, KERAS_NAME, ".resume"):  # weights (format 2, or 1) and resume state
            p = trial_dir(out, t.number) / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def run_worker(cfg: st.SearchSettings, index: int, storage_url: str | None,
               objective: Callable | None = None) -> int:
    """The worker loop (see the module docstring); returns the exit code."""
    out = Path(cfg.out)
    space = SearchSpace.from_file(cfg.space_file)
    storage = open_storage(storage_url, out)
    study0 = optuna.load_study(study_name=cfg.study, storage=storage)
    seed = st.worker_seed(cfg.seed, index, len(study0.get_trials(deepcopy=False)))
    study = optuna.load_study(study_name=cfg.study, storage=storage, sampler=st.make_sampler(cfg.sampler, seed),
                              pruner=st.make_pruner(cfg.pruner, cfg.warmup_epochs))
    objective = objective or load_objective(cfg)
    ran = 0
    while True:
        if cfg.deadline is not None and time.time() >= cfg.deadline:
            return EXIT_DONE
        trial = _claim(study, cfg, out, storage_url is None)
        if trial is None:
            return EXIT_DONE
        t0 = time.time()
        outcome = run_trial(trial, cfg, space, objective, out)
        _record(trial, outcome, time.time() - t0)
        tell(study, trial, outcome)
        keep_best(study, out, cfg.keep)
        ran += 1
        if ran >= cfg.trials_per_process:
            return EXIT_RECYCLE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings_path, index = Path(argv[0]), int(argv[1])
    from qca_tf.runtime import init_tensorflow  # noqa: F401  (quiet TF start-up when it is used)

    logging.basicConfig(level=logging.INFO, format=f"[worker {index}] %(message)s")
    st.route_optuna_logs()
    cfg = None
    try:
        cfg = st.SearchSettings.read(settings_path)
        if not cfg.objective:
            init_tensorflow()
        return run_worker(cfg, index, os.environ.get(STORAGE_ENV) or None)
    except QcaError as exc:
        (settings_path.parent / "logs" / f"worker-{index}.error").write_text(str(exc))
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
