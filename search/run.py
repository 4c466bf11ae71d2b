"""``qca-tf search NETWORK``: check everything, open or create the study, start the
worker processes, follow the trials (progress bar, one line per trial), write outputs.

Output folder::

    OUT/search.json        the settings (storage URL without password), versions, seeds,
                           sampler and pruner options
    OUT/study.journal      the embedded study storage (without --storage)
    OUT/keras_tuner/STUDY/ keras-tuner's project (--engine keras-tuner, see kt_engine)
    OUT/data/              the built-in synthetic embryo (without --data)
    OUT/trials/NNNN/       per trial: model folder + epochs.csv (weights of the best --keep only)
    OUT/logs/              worker logs
    OUT/trials.csv, OUT/best_params.json, OUT/best/ (+ best/savedmodel/), OUT/plots/*.png
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from qca_tf import __version__
from qca_tf.atomic import writable_folder
from qca_tf.errors import ConfigError, InputError

from . import settings as st
from .space import SearchSpace, preset_params, task_of
from .storage import counts, open_storage, recover_dead, redact
from .worker import EXIT_CONFIG, EXIT_DONE, EXIT_RECYCLE, STORAGE_ENV

log = logging.getLogger(__name__)

#: The built-in synthetic embryo series (made once in OUT/data without --data).
BUILTIN = {"shape": (16, 64, 64), "n_nuclei": 6, "timepoints": 4}
IDENTITY_KEYS = ("network", "space_signature", "epochs", "patch")




def builtin_data(out: Path, seed: int) -> Path:
    """The built-in synthetic embryo series in ``out/data`` (made once; reused after)."""
    from qca_tf import synthetic
    from qca_tf.io import VoxelSize

    root = out / "data"
    if (root / ".complete").exists():
        log.info("no --data: searching on the built-in synthetic embryo in %s", root)
        return root
    log.info("no --data: making the built-in synthetic embryo (%d time points of %s) in %s",
             BUILTIN["timepoints"], "x".join(map(str, BUILTIN["shape"])), root)
    cfg = synthetic.SynthConfig(shape=BUILTIN["shape"], voxel_size=(0.8, 0.8, 1.75), n_nuclei=BUILTIN["n_nuclei"],
                                radius_um=(4.0, 5.0), touching_pairs=1, polar_bodies=1,
                                timepoints=BUILTIN["timepoints"], division_interval=0, seed=seed)
    synthetic.write_dataset(root, synthetic.make_series(cfg), VoxelSize(0.8, 0.8, 1.75))
    (root / ".complete").write_text("")
    return root


def _check_data(cfg: st.SearchSettings) -> None:
    """--data holds usable training volumes for the task (one clear line otherwise)."""
    from qca_tf.config import DataConfig
    from qca_tf.runtime import init_tensorflow

    init_tensorflow()
    from qca_tf.train import collect_volumes

    try:
        collect_volumes(cfg.data, task_of(cfg.network), DataConfig(patch=tuple(cfg.patch)))
    except InputError as exc:
        raise InputError(f"--data {cfg.data}: {exc}") from None


def _identity(cfg: st.SearchSettings, space: SearchSpace) -> dict[str, Any]:
    return {"network": cfg.network, "space_signature": space.signature(), "epochs": cfg.epochs,
            "patch": list(cfg.patch)}


def open_study(cfg: st.SearchSettings, space: SearchSpace, storage) -> optuna.Study:
    """Create the study, or load it and refuse one made for another network/space/budget."""
    ident = _identity(cfg, space)
    study = optuna.create_study(study_name=cfg.study, storage=storage, direction="maximize", load_if_exists=True)
    attrs = study.user_attrs
    if not attrs:
        for k, v in ident.items():
            study.set_user_attr(k, v)
        study.set_user_attr("space", space.to_json())
        return study
    for k in IDENTITY_KEYS:
        if attrs.get(k) != ident[k]:
            what = {"network": "network", "space_signature": "search space", "epochs": "--epochs",
                    "patch": "--patch"}[k]
            raise ConfigError(f"study {cfg.study!r} in {redact(cfg.storage) if cfg.storage else cfg.out} was "
                              f"created for another {what} ({attrs.get(k)} vs {ident[k]}); use another --study "
                              f"or --out")
    return study


def _record_settings(cfg: st.SearchSettings, space: SearchSpace, out: Path) -> None:
    from importlib.metadata import version

    info = cfg.to_json()
    info["storage"] = redact(cfg.storage)
    info["recorded"] = {
        "versions": {"qca_tf": __version__, "optuna": optuna.__version__, "keras": version("keras"),
                     "tensorflow": version("tensorflow"), "numpy": version("numpy"), "python": sys.version.split()[0]},
        "sampler_options": st.TPE_OPTIONS if cfg.sampler == "tpe" else (st.GP_OPTIONS if cfg.sampler == "gp" else {}),
        "pruner_options": st.pruner_options(cfg.pruner, cfg.warmup_epochs),
        "worker_seeds": "SeedSequence([seed, worker index, trials in the study when the worker started])",
        "space": space.to_json(),
        "host": socket.gethostname(),
    }
    if cfg.engine == "keras-tuner":  # keras-tuner's oracle replaces the Optuna sampler and pruner
        info["recorded"]["versions"].update(keras_tuner=version("keras-tuner"), scikit_learn=version("scikit-learn"))
        info["recorded"].update(sampler_options={"oracle": "keras_tuner BayesianOptimizationOracle", **st.KT_OPTIONS},
                                pruner_options={}, worker_seeds=f"oracle seed {st.kt_seed(cfg.seed)} (from --seed)")
    from qca_tf.config import write_json_atomic

    write_json_atomic(out / st.SETTINGS_NAME, info)


# ------------------------------------------------------------------ following the workers


def _trial_line(t, best: float | None) -> str:
    value = "-" if t.value is None else f"{t.value:.4f}"
    if t.state == TrialState.PRUNED and "best_value" in t.user_attrs:
        value = f"{t.user_attrs['best_value']:.4f}"
    reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason") or ""
    best_s = "-" if best is None else f"{best:.4f}"
    secs = t.user_attrs.get("seconds", 0.0)
    return (f"trial {t.number:3d}  {t.state.name:<8}  value {value:>6}  best {best_s:>6}  {secs:7.1f} s"
            + (f"  ({reason})" if reason else ""))


class _Follower:
    """Prints one line per newly finished trial and moves the progress bar."""

    def __init__(self, study: optuna.Study, total: int, echo: Callable[[str], None], progress: bool):
        from tqdm import tqdm

        self.study, self.echo = study, echo
        old = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        self.seen = {t.number for t in old}
        self.best = max((t.value for t in old if t.state == TrialState.COMPLETE), default=None)
        done = counts(study)["finished"]
        self.bar = tqdm(total=total, initial=min(done, total), desc="trials", unit="trial", disable=not progress,
                        leave=False, file=sys.stderr)

    def poll(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.state.is_finished() and t.number not in self.seen:
                self.seen.add(t.number)
                if t.state == TrialState.COMPLETE and (self.best is None or t.value > self.best):
                    self.best = t.value
                self.bar.clear()
                self.echo(_trial_line(t, self.best))
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                    self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def worker_command(settings_path: Path, index: int, storage_url: str | None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one worker process."""
    env = dict(os.environ)
    if "PYTHONPATH" in env:  # an empty entry (``export PYTHONPATH=$PYTHONPATH:/x``) means the current folder
        env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep) if p)
    if storage_url:
        env[STORAGE_ENV] = storage_url
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # the current folder is taken off sys.path (what ``-P`` does on Python 3.11+): run from a source
    # checkout with a regular install, the checkout's qca_tf/ (no search/ inside) would shadow the installed one
    code = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
            "from qca_tf.search.worker import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, str(settings_path), str(index)], env


def _spawn(settings_path: Path, index: int, storage_url: str | None, out: Path) -> subprocess.Popen:
    argv, env = worker_command(settings_path, index, storage_url)
    (out / "logs").mkdir(exist_ok=True)
    logf = open(out / "logs" / f"worker-{index}.log", "a")
    return subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env)


def run_workers(cfg: st.SearchSettings, study: optuna.Study, storage_url: str | None, echo: Callable[[str], None],
                progress: bool = True) -> None:
    """Start ``cfg.workers`` worker processes and restart recycled ones until the budget is met."""
    out = Path(cfg.out)
    settings_path = out / st.SETTINGS_NAME
    follower = _Follower(study, cfg.trials, echo, progress)
    procs = {i: _spawn(settings_path, i, storage_url, out) for i in range(cfg.workers)}
    crashes = 0
    try:
        while procs:
            time.sleep(1.0)
            follower.poll()
            for i, p in list(procs.items()):
                code = p.poll()
                if code is None:
                    continue
                del procs[i]
                if code == EXIT_CONFIG:
                    msg = (out / "logs" / f"worker-{i}.error").read_text().strip()
                    raise ConfigError(msg)
                if code not in (EXIT_DONE, EXIT_RECYCLE):  # killed or crashed outside a trial
                    crashes += 1
                    recover_dead(study)
                    if crashes > 3 * cfg.workers:
                        raise ConfigError(f"workers keep dying (last exit code {code}); see {out / 'logs'}")
                budget_left = counts(study)["finished"] < cfg.trials
                in_time = cfg.deadline is None or time.time() < cfg.deadline
                if code != EXIT_DONE and budget_left and in_time:
                    procs[i] = _spawn(settings_path, i, storage_url, out)
        follower.poll()
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait()
        follower.close()


def search(cfg: st.SearchSettings, *, storage_url: str | None = None, echo: Callable[[str], None] = print,
           progress: bool = True, outputs: bool = True) -> optuna.Study:
    """Run (or resume) the search described by ``cfg``; returns the study.

    ``storage_url`` is the real URL (with password); ``cfg.storage`` its redacted form.
    """
    out = Path(cfg.out)
    st.route_optuna_logs()
    st.check_sampler_available(cfg.sampler)
    space = SearchSpace.from_file(cfg.space_file)
    if cfg.data and not cfg.objective:
        _check_data(cfg)  # before anything is written
    writable_folder(out)
    if cfg.engine == "keras-tuner":  # its own oracle and loop; the same space, objective and outputs
        from .kt_engine import search_keras_tuner

        if cfg.data == "":
            cfg = dataclasses.replace(cfg, data=str(builtin_data(out, cfg.seed)))
        return search_keras_tuner(cfg, space, echo=echo, progress=progress, outputs=outputs)
    if (out / "keras_tuner").exists():
        raise ConfigError(f"{out} holds an --engine keras-tuner search; use another --out for --engine optuna")
    storage = open_storage(storage_url, out)
    if cfg.data == "":
        cfg = dataclasses.replace(cfg, data=str(builtin_data(out, cfg.seed)))
    study = open_study(cfg, space, storage)
    recover_dead(study)
    if cfg.warm_start and not study.get_trials(deepcopy=False):
        params = preset_params(cfg.network, space)
        if params is None:
            log.warning("warm start skipped: the %s preset lies outside the search space", cfg.network)
        else:
            study.enqueue_trial(params, user_attrs={"warm_start": f"{cfg.network} preset"})
    if cfg.timeout_s:
        cfg = dataclasses.replace(cfg, deadline=time.time() + cfg.timeout_s)
    _record_settings(cfg, space, out)
    done = counts(study)["finished"]
    if done >= cfg.trials:
        echo(f"study {cfg.study!r} already has {done} finished trial(s) (>= --trials {cfg.trials})")
    else:
        echo(f"study {cfg.study!r}: {done} of {cfg.trials} trial(s) finished; {cfg.workers} worker(s), "
             f"sampler {cfg.sampler}, pruner {cfg.pruner}, storage {redact(cfg.storage)}")
        run_workers(cfg, study, storage_url, echo, progress)
    if outputs:
        from .outputs import write_outputs

        write_outputs(study, cfg, space, echo)
    return study
