"""``qca-tf search NETWORK --engine keras-tuner``: keras-tuner's Bayesian optimisation
(``BayesianOptimizationOracle``: a Gaussian process with an upper-confidence-bound
acquisition) over the same space, objective, budget and outputs as the Optuna engine.

The trials run one at a time in this process (keras-tuner's own distribution, with its
``KERASTUNER_*`` chief/worker variables, is not supported). Each trial is run by
:func:`.worker.run_trial` through :class:`KtTrial`, the face of an ``optuna.Trial`` that
the worker and the objectives use, so training (``qca_tf.train.prepare_data`` once,
``qca_tf.train.fit`` per trial), the feasibility check, failure handling and the
per-trial record are the Optuna engine's code. keras-tuner has no pruner: every trial
that runs trains its full ``--epochs``.

Output folder, besides the common outputs (see :mod:`.run`)::

    OUT/keras_tuner/STUDY/           keras-tuner's own project (oracle.json, tuner0.json,
                                     trial_N/trial.json): rerunning resumes from it
    OUT/keras_tuner/STUDY/identity.json   network, space, epochs, crop of the search
    OUT/trials/NNNN/outcome.json     what the trial gave (state, value, parameters, reason)
    OUT/logs/keras-tuner.log         the trials' training log (per-epoch lines)

Budget: as with Optuna, ``--trials N`` counts complete and pruned (not run) trials;
failed ones (out of memory, NaN loss, crash) do not count.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from qca_tf.config import read_json, write_json_atomic
from qca_tf.errors import ConfigError, QcaError

from . import settings as st
from .space import Param, SearchSpace, preset_params

log = logging.getLogger(__name__)

PROJECT_DIR = "keras_tuner"
OUTCOME_NAME = "outcome.json"
COUNTED = ("COMPLETE", "PRUNED")
MAX_FAILED_IN_A_ROW = 10  # states that count towards --trials (Optuna engine: storage.FINISHED)


class KtTrial:
    """A keras-tuner trial seen as the ``optuna.Trial`` that :func:`.worker.run_trial` and
    the objectives use: ``suggest_*`` return the oracle's values (floats clipped to the
    range: keras-tuner's log scale may overshoot a bound by a rounding error),
    ``report`` keeps the epoch values, ``should_prune`` is always False."""

    def __init__(self, number: int, values: dict[str, Any], warm_start: str | None = None):
        self.number = number
        self.values = values
        self.params: dict[str, Any] = {}
        self.user_attrs: dict[str, Any] = {"warm_start": warm_start} if warm_start else {}
        self.reports: list[tuple[int, float]] = []

    def _value(self, name: str):
        if name not in self.values:
            raise RuntimeError(f"keras-tuner gave no value for the active parameter {name!r}: {self.values}")
        return self.values[name]

    def suggest_categorical(self, name: str, choices: list) -> Any:
        v = self._value(name)
        if v not in choices:
            raise RuntimeError(f"keras-tuner value {v!r} of {name!r} is not one of {choices}")
        self.params[name] = v
        return v

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        v = int(min(max(int(round(self._value(name))), low), high))
        self.params[name] = v
        return v

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        v = float(min(max(float(self._value(name)), low), high))
        self.params[name] = v
        return v

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


# ------------------------------------------------------------------ records -> an Optuna study


def _distribution(p: Param):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.kind == "categorical":
        return CategoricalDistribution(list(p.choices))
    log_ = p.log and p.low < p.high
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), log=log_)
    return FloatDistribution(float(p.low), float(p.high), log=log_)


def records_study(records: list[dict[str, Any]], space: SearchSpace) -> optuna.Study:
    """An in-memory Optuna study holding ``records`` (the ``outcome.json`` of trials 0..n-1,
    in order), so that the outputs, trial lines and weight pruning of the Optuna engine
    (``outputs.write_outputs``, ``run._trial_line``, ``worker.keep_best``) serve both engines."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory"
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(level)
    for r in records:
        state = TrialState[r["state"]]
        params = r["params"]
        t = optuna.trial.create_trial(
            state=state, value=r["value"] if state == TrialState.COMPLETE else None, params=params,
            distributions={k: _distribution(space.by_name[k]) for k in params}, user_attrs=r["user_attrs"])
        study.add_trial(t)
        if study.trials[-1].number != r["number"]:  # a bug: trial ids are 0..n-1 in order
            raise RuntimeError(f"trial records out of order: {r['number']} stored as {study.trials[-1].number}")
    return study


def _read_records(oracle, out: Path) -> list[dict[str, Any]]:
    """The record of every trial the oracle knows, by number; a trial without
    ``outcome.json`` was interrupted (it runs again at the next start): RUNNING."""
    records = []
    for trial_id in sorted(oracle.trials, key=int):
        number = int(trial_id)
        path = out / "trials" / f"{number:04d}" / OUTCOME_NAME
        if path.exists() and oracle.trials[trial_id].status != "RUNNING":
            records.append(read_json(path))
        else:
            records.append({"number": number, "state": "RUNNING", "value": None, "params": {},
                            "user_attrs": {"fail_reason": "interrupted; it runs again at the next start"}})
    return records


# ------------------------------------------------------------------ keras-tuner classes


def _classes():
    """The oracle and tuner subclasses (built on first use: keras_tuner imports Keras)."""
    import keras_tuner as kt
    import numpy as np
    from keras_tuner.engine.base_tuner import BaseTuner

    class Oracle(kt.oracles.BayesianOptimizationOracle):
        """keras-tuner's Gaussian-process oracle whose first trial is ``warm_values`` (the
        preset) when given; which trial that was is kept in the oracle's saved state."""

        def __init__(self, *args, warm_values: dict[str, Any] | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.warm_values = warm_values
            self.warm_trial: str | None = None

        def populate_space(self, trial_id):
            if self.warm_values is not None and not self.trials:
                self.warm_trial = trial_id
                return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": dict(self.warm_values)}
            response = super().populate_space(trial_id)
            if response.get("values") is not None and self._duplicate(response["values"]):
                # the GP's optimum is a point already tried (e.g. on a bound): a random one instead
                response = self._random_populate_space()
            return response

        def _vectorize_trials(self):
            # keras-tuner leaves failed trials (here also the configurations not run) out of
            # the GP, which then proposes them again and again; they enter it with the worst
            # value seen (the trial itself stays FAILED, with no value, in its records)
            x, y = super()._vectorize_trials()
            failed = [t for t in self.trials.values() if t.status in ("FAILED", "INVALID")]
            if not failed or len(y) == 0:
                return x, y
            worst = float(np.max(y))  # keras-tuner minimises: the largest is the worst
            rows = [[hp.value_to_prob(t.hyperparameters.values[hp.name]
                                      if t.hyperparameters.is_active(hp) and hp.name in t.hyperparameters.values
                                      else hp.default) for hp in self._nonfixed_space()] for t in failed]
            return np.vstack([x, np.array(rows)]), np.concatenate([y, np.full(len(rows), worst)])

        def get_state(self):
            return {**super().get_state(), "qca_warm_trial": self.warm_trial}

        def set_state(self, state):
            super().set_state(state)
            self.warm_trial = state.get("qca_warm_trial")

    class Tuner(BaseTuner):
        """Runs each trial with the Optuna engine's :func:`.worker.run_trial`."""

        def __init__(self, oracle, run: "_Run", **kwargs):
            self.run = run
            super().__init__(oracle, **kwargs)

        def pre_create_trial(self):
            # the budget: --trials counted trials, failed ones do not count (max_trials is
            # not part of the oracle's saved state); past --timeout no new trial starts
            failed = sum(r["state"] == "FAIL" for r in self.run.records.values())
            self.oracle.max_trials = self.run.cfg.trials + failed
            if self.run.failed_in_a_row >= MAX_FAILED_IN_A_ROW:  # in this run: a rerun tries again
                last = self.run.records[max(self.run.records)]
                raise _TooManyFailures(f"{self.run.failed_in_a_row} trials in a row failed (last: trial "
                                       f"{last['number']}, {last['user_attrs'].get('fail_reason')}); "
                                       f"see {self.run.out / 'trials.csv'}")
            if self.run.deadline is not None and time.time() >= self.run.deadline and not self.oracle.ongoing_trials:
                raise _Deadline()

        def run_trial(self, trial, *args, **kwargs):
            warm = f"{self.run.cfg.network} preset" if trial.trial_id == self.oracle.warm_trial else None
            result = self.run.trial(KtTrial(int(trial.trial_id), dict(trial.hyperparameters.values), warm))
            if result is None:
                raise kt.errors.FailedTrialError(f"not complete: see {OUTCOME_NAME}")
            return {self.oracle.objective.name: result}

        def on_trial_end(self, trial):
            super().on_trial_end(trial)  # the oracle records the trial; both save their state
            self.run.trial_ended(int(trial.trial_id))

    return Oracle, Tuner


class _Deadline(Exception):
    """--timeout has passed: start no more trials."""


class _TooManyFailures(ConfigError):
    """The search stops: failed trials do not count towards --trials, so it could go on forever."""


class _Run:
    """One keras-tuner search: the objective, the per-trial records and the console lines."""

    def __init__(self, cfg: st.SearchSettings, space: SearchSpace, echo: Callable[[str], None], progress: bool):
        from .worker import load_objective

        self.cfg, self.space, self.echo = cfg, space, echo
        self.out = Path(cfg.out)
        self.deadline = time.time() + cfg.timeout_s if cfg.timeout_s else None
        self.records: dict[int, dict[str, Any]] = {}
        self.fatal: QcaError | None = None
        self.failed_in_a_row = 0
        self.objective = load_objective(cfg)  # training: the data are prepared once, here
        self.progress = progress
        self.bar = None

    def trial(self, t: KtTrial) -> float | None:
        """Run one trial; its value when COMPLETE, else None (the record says why)."""
        from .worker import _record, run_trial

        t0 = time.time()
        try:
            outcome = run_trial(t, self.cfg, self.space, self.objective, self.out)
        except QcaError as exc:  # a configuration error stops the search (not a failed trial)
            import keras_tuner as kt

            self.fatal = exc
            raise kt.errors.FatalError(str(exc)) from exc
        _record(t, outcome, time.time() - t0)
        record = {"number": t.number, "state": outcome.state,
                  "value": outcome.value if outcome.state == "COMPLETE" else None,
                  "params": t.params, "user_attrs": t.user_attrs}
        folder = self.out / "trials" / f"{t.number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / OUTCOME_NAME, json.loads(json.dumps(record)))
        self.records[t.number] = record
        self.failed_in_a_row = self.failed_in_a_row + 1 if outcome.state == "FAIL" else 0
        return outcome.value if outcome.state == "COMPLETE" else None

    def study(self) -> optuna.Study:
        return records_study([self.records[n] for n in sorted(self.records)], self.space)

    def trial_ended(self, number: int) -> None:
        from .run import _trial_line
        from .worker import keep_best

        study = self.study()
        keep_best(study, self.out, self.cfg.keep)
        done = [t for t in study.trials if t.state == TrialState.COMPLETE]
        best = max((t.value for t in done), default=None)
        if self.bar is not None:
            self.bar.clear()
        self.echo(_trial_line(study.trials[number], best))
        if self.bar is not None and study.trials[number].state.name in COUNTED:
            self.bar.update(1)


@contextlib.contextmanager
def _training_log(out: Path):
    """The per-epoch lines of ``qca_tf.train`` go to ``OUT/logs/keras-tuner.log`` (as the
    Optuna engine's go to its worker logs); the console keeps one line per trial."""
    (out / "logs").mkdir(exist_ok=True)
    handler = logging.FileHandler(out / "logs" / "keras-tuner.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    train_log = logging.getLogger("qca_tf.train")
    saved = (train_log.propagate, train_log.level)
    train_log.addHandler(handler)
    train_log.propagate = False
    train_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        train_log.removeHandler(handler)
        handler.close()
        train_log.propagate, train_log.level = saved


@contextlib.contextmanager
def _quiet_failures():
    """keras-tuner prints the traceback of every failed trial to stderr (its ``config.DEBUG``);
    the trial lines and ``trials.csv`` give the reason, ``OUT/trials/NNNN/error.txt`` a crash's
    traceback. scikit-learn's convergence warnings of the GP fit are silenced too."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    try:
        from keras_tuner.src import config as kt_config
    except ImportError:  # another keras-tuner layout: its tracebacks stay
        kt_config = None
    saved = getattr(kt_config, "DEBUG", None)
    if kt_config is not None:
        kt_config.DEBUG = False
    try:
        with warnings.catch_warnings():  # the GP's kernel fit on few points warns about its bounds
            warnings.simplefilter("ignore", ConvergenceWarning)
            yield
    finally:
        if kt_config is not None:
            kt_config.DEBUG = saved


def _check_identity(cfg: st.SearchSettings, space: SearchSpace, project: Path) -> None:
    """Write the search's identity once; refuse a project made for another network/space/budget."""
    from .run import IDENTITY_KEYS, _identity

    ident = _identity(cfg, space)
    path = project / "identity.json"
    if not path.exists():
        project.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, ident)
        return
    found = read_json(path)
    for k in IDENTITY_KEYS:
        if found.get(k) != ident[k]:
            what = {"network": "network", "space_signature": "search space", "epochs": "--epochs",
                    "patch": "--patch"}[k]
            raise ConfigError(f"keras-tuner study {cfg.study!r} in {project} was created for another {what} "
                              f"({found.get(k)} vs {ident[k]}); use another --study or --out")


def search_keras_tuner(cfg: st.SearchSettings, space: SearchSpace, *, echo: Callable[[str], None] = print,
                       progress: bool = True, outputs: bool = True) -> optuna.Study:
    """Run (or resume) the search of ``cfg`` with keras-tuner; returns the trials as an
    in-memory Optuna study (see :func:`records_study`)."""
    import dataclasses

    from .run import _record_settings

    out = Path(cfg.out)
    if "KERASTUNER_ORACLE_IP" in os.environ:
        raise ConfigError("KERASTUNER_ORACLE_IP is set: keras-tuner's distributed mode is not supported by "
                          "qca-tf search (unset it; use --engine optuna with --workers/--storage for parallel trials)")
    if (out / "study.journal").exists():
        raise ConfigError(f"{out} holds an --engine optuna search; use another --out for --engine keras-tuner")
    try:
        import sklearn  # noqa: F401  (keras-tuner's Bayesian oracle needs scikit-learn)
    except ImportError:
        raise ConfigError("--engine keras-tuner needs scikit-learn, which is not installed: "
                          "pip install scikit-learn") from None
    project = out / PROJECT_DIR / cfg.study
    _check_identity(cfg, space, project)
    if cfg.pruner != "none":
        log.info("keras-tuner does not prune: every trial trains its %d epochs (--pruner %s not used)",
                 cfg.epochs, cfg.pruner)
        cfg = dataclasses.replace(cfg, pruner="none")
    if not cfg.objective:
        from qca_tf.runtime import init_tensorflow

        init_tensorflow()
    from .worker import _base_train

    warm_values = None
    if cfg.warm_start:
        warm_values = preset_params(cfg.network, space)
        if warm_values is None:
            log.warning("warm start skipped: the %s preset lies outside the search space", cfg.network)
    Oracle, Tuner = _classes()
    import keras_tuner as kt

    oracle = Oracle(objective=kt.Objective(_base_train(cfg).metric_name, direction="max"), max_trials=cfg.trials,
                    hyperparameters=space.keras_tuner_hyperparameters(), tune_new_entries=False,
                    allow_new_entries=False, seed=st.kt_seed(cfg.seed), max_consecutive_failed_trials=None,
                    warm_values=warm_values, **st.KT_OPTIONS)
    oracle.verbose = 0  # keras-tuner's own console table; the trial lines below replace it
    _record_settings(cfg, space, out)
    run = _Run(cfg, space, echo, progress)
    with contextlib.redirect_stdout(io.StringIO()) as said:  # keras-tuner prints "Reloading Tuner from ..."
        tuner = Tuner(oracle, run, directory=str(out / PROJECT_DIR), project_name=cfg.study, overwrite=False)
    if said.getvalue().strip():
        log.info("keras-tuner: %s", said.getvalue().strip())
    tuner.save()
    stopped = None
    run.records = {r["number"]: r for r in _read_records(oracle, out) if r["state"] != "RUNNING"}
    done = sum(r["state"] in COUNTED for r in run.records.values())
    if done >= cfg.trials:
        echo(f"study {cfg.study!r} already has {done} finished trial(s) (>= --trials {cfg.trials})")
    else:
        echo(f"study {cfg.study!r}: {done} of {cfg.trials} trial(s) finished; engine keras-tuner "
             f"(Bayesian optimisation, Gaussian process), no pruning, one process, state in {project}")
        if cfg.warm_start and warm_values is not None and not oracle.trials:
            log.info("warm start: trial 0 is the %s preset", cfg.network)
        from tqdm import tqdm

        run.bar = tqdm(total=cfg.trials, initial=min(done, cfg.trials), desc="trials", unit="trial",
                       disable=not progress, leave=False, file=sys.stderr)
        try:
            with _quiet_failures(), _training_log(out):
                tuner.search()
        except _Deadline:
            log.info("--timeout reached: no more trials started")
        except _TooManyFailures as exc:
            stopped = exc
        except kt.errors.FatalError:
            if run.fatal is not None:
                raise run.fatal from None
            raise
        finally:
            run.bar.close()
    study = records_study(_read_records(oracle, out), space)
    if outputs:
        from .outputs import write_outputs

        write_outputs(study, cfg, space, echo)
    if stopped is not None:
        raise stopped
    return study
