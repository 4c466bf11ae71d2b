"""`qca-tf search --engine keras-tuner`: keras-tuner's Gaussian-process Bayesian
optimisation over the same space, objective and outputs as the Optuna engine.

A tiny real training search through the CLI (Keras 3, resumed from 3 to exactly 4
trials); the budget, warm start, failures and seeding with a cheap deterministic
objective in-process; bad combinations give one line."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import invoke, one_line_error
from qca_tf.config import ModelConfig, TrainConfig, from_dict
from qca_tf.errors import ConfigError
from qca_tf.search import run as run_mod
from qca_tf.search.settings import SearchSettings
from qca_tf.search.space import SearchSpace, preset_params
from qca_tf.search.worker import Outcome
from qca_tf.train import read_epochs
import search_objectives

TESTS = str(Path(__file__).parent)


def _rows(out):
    return list(csv.DictReader(open(out / "trials.csv")))


def test_cli_training_search_end_to_end_and_resume(synth_dataset, tmp_path):
    import keras

    root, _ = synth_dataset
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"depth": [1, 2], "init_channels": [2, 3], "kernel_size": [3],
                                 "optimizer": "adam", "adam_alpha": [1e-3, 5e-3]}))
    out = tmp_path / "s"
    args = ["search", "nsn", "--engine", "keras-tuner", "--data", root, "--out", out, "--epochs", 2,
            "--patch", 16, "--space", space, "--seed", 1]
    res = invoke(*args, "--trials", 3)
    assert res.exit_code == 0, res.output
    assert "engine keras-tuner" in res.output and "0 of 3 trial(s) finished" in res.output
    rows = _rows(out)
    assert [r["number"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert sum(ln.startswith("trial ") for ln in res.output.splitlines()) == 3
    assert "rank trial" in res.output
    for r in rows:  # the value is the trial's best validation IoU of qca_tf.train.fit (its epochs.csv)
        epochs = read_epochs(out / "trials" / f"{int(r['number']):04d}" / "epochs.csv")
        assert len(epochs) == 2
        assert float(r["value"]) == pytest.approx(max(float(e["metric"]) for e in epochs), abs=1e-5)
        assert r["optimizer"] == "adam" and 1e-3 <= float(r["adam_alpha"]) <= 5e-3 and r["sgd_lr"] == ""
    best = json.loads((out / "best_params.json").read_text())
    assert best["metric"] == "val_iou" and 0 <= best["value"] <= 1
    assert max(float(r["value"]) for r in rows) == pytest.approx(best["value"], abs=1e-5)
    assert (out / "best" / "config.json").exists() and (out / "best" / "savedmodel" / "saved_model.pb").exists()
    assert (out / "plots" / "history.png").exists()
    assert (out / "keras_tuner" / "nsn" / "oracle.json").exists()
    rec = json.loads((out / "search.json").read_text())["recorded"]
    assert rec["sampler_options"]["oracle"].endswith("BayesianOptimizationOracle")
    assert rec["versions"]["keras"] == keras.__version__ and keras.__version__.startswith("3.")
    # a larger budget continues the same search: one new trial, the first three untouched
    res = invoke(*args, "--trials", 4)
    assert res.exit_code == 0, res.output
    assert "3 of 4 trial(s) finished" in res.output
    assert [ln.split()[1] for ln in res.output.splitlines() if ln.startswith("trial ")] == ["3"]
    rows4 = _rows(out)
    assert len(rows4) == 4 and rows4[:3] == rows and rows4[3]["state"] == "COMPLETE"
    # best_params.json is what `qca-tf train --params` reads (its model and train sections;
    # the retraining itself is tested with the Optuna engine, same writer)
    best = json.loads((out / "best_params.json").read_text())
    assert best["network"] == "nsn" and best["trial"] in (0, 1, 2, 3)
    model = from_dict(ModelConfig, best["model"], "model")
    train = from_dict(TrainConfig, best["train"], "train")
    won = rows4[best["trial"]]
    assert model.depth == int(won["depth"]) and train.adam_alpha == pytest.approx(float(won["adam_alpha"]))
    assert train.optimizer == "adam" and train.epochs == 2


def fails_at_depth_3(trial, params, trial_dir) -> Outcome:
    """The cheap objective, except that depth-3 networks fail (as an out-of-memory would)."""
    if params["depth"] == 3:
        return Outcome("FAIL", reason="out of memory (test)")
    return search_objectives.quick(trial, params, trial_dir)


def _kt(out, trials, **kw) -> SearchSettings:
    base = dict(network="ndn", out=str(out), data="unused", trials=trials, study="ndn", engine="keras-tuner",
                max_params=None, objective="test_search_kt:fails_at_depth_3", seed=3)
    return SearchSettings(**{**base, **kw})


def _search(cfg, lines=None):
    return run_mod.search(cfg, echo=(lines.append if lines is not None else lambda s: None), progress=False,
                          outputs=False)


def test_budget_warm_start_failures_and_seed(tmp_path):
    """12 counted trials (the Gaussian process proposes from trial 10 on): failed trials do
    not count, trial 0 is the preset, the same --seed repeats the search, another does not."""
    study = _search(_kt(tmp_path / "a", 12))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 12 and "RUNNING" not in states
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed and all(t.params["depth"] == 3 and t.user_attrs["fail_reason"] == "out of memory (test)"
                          for t in failed)
    assert all(t.params["depth"] != 3 for t in study.trials if t.state.name == "COMPLETE")
    # keras-tuner alone leaves failed trials out of its GP and proposes them again (forever,
    # as failures do not count): here they enter it with the worst value, none repeats
    assert len({json.dumps(t.params, sort_keys=True) for t in failed}) == len(failed)
    t0 = study.trials[0]
    assert t0.params == preset_params("ndn", SearchSpace()) and t0.user_attrs["warm_start"] == "ndn preset"
    assert t0.state.name == "COMPLETE" and t0.value == pytest.approx(search_objectives.score(t0.params))
    space = SearchSpace()
    assert all(space.contains(t.params) for t in study.trials)
    same = _search(_kt(tmp_path / "b", 12))
    assert [t.params for t in same.trials] == [t.params for t in study.trials]
    other = _search(_kt(tmp_path / "c", 12, seed=4))
    assert [t.params for t in other.trials][1:] != [t.params for t in study.trials][1:]
    lines = []
    _search(_kt(tmp_path / "a", 12), lines)
    assert lines == ["study 'ndn' already has 12 finished trial(s) (>= --trials 12)"]


def always_fails(trial, params, trial_dir) -> Outcome:
    return Outcome("FAIL", reason="crash: RuntimeError: test")


def test_a_search_that_only_fails_stops_with_one_error(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(ConfigError, match="10 trials in a row failed .*crash: RuntimeError: test"):
        run_mod.search(_kt(out, 5, objective="test_search_kt:always_fails"), echo=lambda s: None, progress=False)
    rows = _rows(out)
    assert len(rows) == 10 and {r["state"] for r in rows} == {"FAIL"}


def test_killed_mid_trial_the_rerun_finishes_that_trial(tmp_path, monkeypatch):
    """kill -9 during trial 1: rerunning runs trial 1 again (same parameters) and stops at 3."""
    out = tmp_path / "s"
    code = ("from qca_tf.search import run; from qca_tf.search.settings import SearchSettings; "
            f"run.search(SearchSettings(network='ndn', out={str(out)!r}, data='unused', trials=3, study='ndn', "
            "engine='keras-tuner', max_params=None, objective='search_objectives:quick', seed=3), "
            "progress=False, outputs=False)")
    env = {**os.environ, "QCA_TEST_HANG_TRIAL": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH", "")) if p)}
    # cwd: not the source checkout, whose qca_tf/ would shadow a regular install's qca_tf.search
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    hanging = out / "trials" / "0001" / "hanging"
    end = time.time() + 180
    while not hanging.exists() and time.time() < end and proc.poll() is None:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert hanging.exists()
    monkeypatch.delenv("QCA_TEST_HANG_TRIAL", raising=False)
    killed = json.loads((out / "keras_tuner" / "ndn" / "trial_1" / "trial.json").read_text())
    study = _search(_kt(out, 3, objective="search_objectives:quick"))
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert len(list((out / "trials" / "0001").glob("ran-*"))) == 2  # the killed run and the rerun
    assert study.trials[1].params == killed["hyperparameters"]["values"]


def test_no_warm_start_and_timeout(tmp_path):
    study = _search(_kt(tmp_path / "a", 3, warm_start=False))
    assert "warm_start" not in study.trials[0].user_attrs
    assert study.trials[0].params != preset_params("ndn", SearchSpace())
    stopped = _search(_kt(tmp_path / "b", 50, timeout_s=1e-6))
    assert len(stopped.trials) == 0


def test_other_budget_or_engine_in_the_same_folder_refused(tmp_path):
    out = tmp_path / "s"
    _search(_kt(out, 2))
    with pytest.raises(ConfigError, match="another --epochs"):
        _search(_kt(out, 3, epochs=3))
    with pytest.raises(ConfigError, match="holds an --engine keras-tuner search"):
        _search(SearchSettings(network="ndn", out=str(out), data="unused", trials=3, study="ndn",
                               objective="search_objectives:quick"))


@pytest.mark.parametrize("args, fragments", [
    (["--sampler", "random"], ["--sampler applies to --engine optuna"]),
    (["--workers", 2], ["--workers 2", "--engine keras-tuner", "--engine optuna"]),
    (["--storage", "postgresql+psycopg://u:pw123@127.0.0.1:1/db"], ["--storage applies to --engine optuna"]),
])
def test_bad_combinations_one_line_nothing_written(tmp_path, args, fragments):
    out = tmp_path / "out"
    res = invoke("search", "nsn", "--engine", "keras-tuner", "--out", out, "--trials", 2, *args)
    one_line_error(res, *fragments)
    assert "pw123" not in res.output
    assert not out.exists()
