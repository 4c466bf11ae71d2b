"""`qca-tf search`: bad input gives one line and writes nothing; a real (tiny) training
search writes best/, best_params.json (accepted by `qca-tf train --params`), trials.csv, plots."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import stat

import pytest

from cli_helpers import invoke, one_line_error
from qca_tf.search.worker import pruning_callback


@pytest.mark.parametrize("args, fragments", [
    (["--trials", 0], ["--trials 0"]),
    (["--trials", 2, "--sampler", "cmaes"], ["--sampler 'cmaes'", "tpe, random, gp"]),
    (["--trials", 2, "--pruner", "hyperband"], ["--pruner 'hyperband'"]),
    (["--trials", 2, "--engine", "sigopt"], ["--engine 'sigopt'"]),
    (["--trials", 2, "--storage", "postgresql+psycopg://u:pw123@127.0.0.1:1/db"], ["u:***@", "cannot open"]),
    (["--trials", 2, "--storage", "::nonsense::"], ["not a database URL"]),
])
def test_bad_options_one_line_nothing_written(tmp_path, args, fragments):
    out = tmp_path / "out"
    res = invoke("search", "ndn", "--out", out, *args)
    one_line_error(res, *fragments)
    assert "pw123" not in res.output
    assert not out.exists() or not any(out.iterdir())


def test_gp_without_torch_one_line(tmp_path):
    try:
        import torch  # noqa: F401
        pytest.skip("PyTorch is installed here")
    except ImportError:
        pass
    one_line_error(invoke("search", "ndn", "--out", tmp_path / "o", "--trials", 2, "--sampler", "gp"),
                   "--sampler gp needs PyTorch", "qca_tf[gp]")
    assert not (tmp_path / "o").exists()


def test_space_file_error_one_line(tmp_path):
    space = tmp_path / "space.json"
    space.write_text('{"depth": [4, 2]}')
    one_line_error(invoke("search", "nsn", "--out", tmp_path / "o", "--trials", 2, "--space", space),
                   "depth: empty range")
    assert not (tmp_path / "o").exists()


def test_data_without_volumes_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("search", "nsn", "--out", tmp_path / "o", "--trials", 2, "--data", tmp_path / "empty"),
                   "--data")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    one_line_error(invoke("search", "nsn", "--out", ro, "--trials", 2), "not writable")


class _FakeTrial:
    def __init__(self):
        self.reports = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return False


def test_pruner_watches_a_key_that_is_in_the_keras_logs(synth_dataset, tmp_path):
    """The value reported to the pruner each epoch is the validation metric that fit puts in the logs."""
    from qca_tf import train as train_mod
    from qca_tf.config import DataConfig, ModelConfig, TrainConfig

    root, _ = synth_dataset
    prepared = train_mod.prepare_data(root, "ndn", DataConfig(patch=(16, 16, 16), val_fraction=0.34), seed=0)
    trial = _FakeTrial()
    cfg = TrainConfig(task="ndn", epochs=2, crops_per_volume=1, seed=0)
    res = train_mod.fit(prepared, tmp_path / "m", ModelConfig(depth=1, init_channels=2), cfg,
                        callbacks=[pruning_callback(trial, cfg.metric_name)], verbose=0)
    assert [s for s, _ in trial.reports] == [0, 1]
    assert [v for _, v in trial.reports] == pytest.approx([float(r["metric"]) for r in res.history], abs=1e-6)
    with pytest.raises(RuntimeError, match="missing from the Keras logs"):
        train_mod.fit(prepared, tmp_path / "m2", ModelConfig(depth=1, init_channels=2), cfg,
                      callbacks=[pruning_callback(_FakeTrial(), "val_typo")], verbose=0)


def test_tiny_training_search_end_to_end(synth_dataset, tmp_path):
    root, _ = synth_dataset
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"depth": [1, 2], "init_channels": [2, 3], "kernel_size": [3],
                                 "optimizer": "adam", "adam_alpha": [1e-3, 5e-3]}))
    out = tmp_path / "s"
    args = ["search", "nsn", "--data", root, "--out", out, "--trials", 3, "--epochs", 2, "--patch", 16,
            "--space", space, "--seed", 1, "--keep", 1]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert len(rows) == 3 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    # --keep 1: only the best trial keeps its weights on disk; every trial keeps its epoch log
    assert [p.parent.name for p in (out / "trials").glob("*/weights.h5")] == [
        f"{json.loads((out / 'best_params.json').read_text())['trial']:04d}"]
    assert len(list((out / "trials").glob("*/epochs.csv"))) == 3
    assert sum(ln.startswith("trial ") for ln in res.output.splitlines()) == 3
    assert "rank trial" in res.output
    best = json.loads((out / "best_params.json").read_text())
    assert best["metric"] == "val_iou" and 0 <= best["value"] <= 1
    assert max(float(r["value"]) for r in rows if r["value"]) == pytest.approx(best["value"], abs=1e-5)
    assert (out / "best" / "config.json").exists() and (out / "best" / "savedmodel" / "saved_model.pb").exists()
    assert (out / "plots" / "history.png").exists()
    settings = json.loads((out / "search.json").read_text())
    assert settings["recorded"]["sampler_options"]["multivariate"] is True
    # retyping the command resumes: nothing more to do
    again = invoke(*args)
    assert again.exit_code == 0 and "already has 3 finished" in again.output
    # the best configuration retrains with `qca-tf train --params`
    res = invoke("train", "nsn", "--data", root, "--out", tmp_path / "re", "--params", out / "best_params.json",
                 "--epochs", 1, "--patch", 16, "--crops-per-volume", 1)
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "re" / "config.json").read_text())
    assert cfg["model"]["depth"] == best["model"]["depth"] and cfg["train"]["adam_alpha"] == best["train"]["adam_alpha"]


def test_optuna_messages_go_through_logging_not_the_terminal(tmp_path):
    """Optuna's own "[I 2026-...] A new study created" lines never reach the terminal; its
    warnings reach the command's logging once, in its format (a fresh process: optuna's
    handler holds the stderr of the moment it was made)."""
    import subprocess
    import sys

    code = ("import logging, optuna\n"
            "from qca_tf.search import settings as st\n"
            "logging.basicConfig(format='LOG %(levelname)s %(message)s')\n"
            "st.route_optuna_logs()\n"
            "optuna.create_study(study_name='quiet')\n"
            "optuna.logging.get_logger('optuna.test').warning('a warning from optuna')\n")
    # run outside the checkout: there `import qca_tf` would find the source folder, which
    # lacks the qca_tf.search subpackage that installing maps from search/
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    err = res.stderr
    assert "A new study created" not in err
    assert [ln for ln in err.splitlines() if "a warning from optuna" in ln] == ["LOG WARNING a warning from optuna"]


def test_ties_of_the_value_are_broken_by_the_recorded_tiebreak(tmp_path):
    """NDN trials often tie at detection F 1.0 on small validation sets: the best trial (best/,
    best_params.json, the top table, the weights kept on disk) is then the one whose best
    epoch matched the centre masks best, not simply the first to reach 1.0."""
    import optuna

    from qca_tf.search.outputs import top_table
    from qca_tf.search.worker import keep_best, ranked_complete

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = {"depth": optuna.distributions.IntDistribution(1, 3)}
    for value, attrs in ((1.0, {"tiebreak": 0.3}), (1.0, {"tiebreak": 0.7}), (0.9, {"tiebreak": 0.95}),
                         (1.0, {})):
        study.add_trial(optuna.trial.create_trial(value=value, params={"depth": 1}, distributions=dist,
                                                  user_attrs=attrs))
    assert [t.number for t in ranked_complete(study)] == [1, 0, 3, 2]
    rows = [ln.split() for ln in top_table(study).splitlines()[1:]]
    assert [r[1] for r in rows] == ["1", "0", "3", "2"] and rows[0][3] == "0.7000"
    for n in range(4):
        (tmp_path / "trials" / f"{n:04d}").mkdir(parents=True)
        for name in ("weights.h5", "epochs.csv"):
            (tmp_path / "trials" / f"{n:04d}" / name).write_text("")
    keep_best(study, tmp_path, keep=1)
    assert [(tmp_path / "trials" / f"{n:04d}" / "weights.h5").exists() for n in range(4)] == [False, True, False, False]
    assert all((tmp_path / "trials" / f"{n:04d}" / "epochs.csv").exists() for n in range(4))


def test_ndn_trial_records_the_best_epochs_tiebreak(synth_dataset, tmp_path):
    """The training objective of an NDN search returns the centre-mask Dice of the epoch it
    reports as best (the tie-break of qca_tf.train.best_row), read back from epochs.csv."""
    from qca_tf.search import settings as st
    from qca_tf.search.worker import TrainingObjective
    from qca_tf.train import best_row

    root, _ = synth_dataset
    cfg = st.SearchSettings(network="ndn", out=str(tmp_path), data=str(root), trials=1, study="t", epochs=2,
                            patch=(16, 16, 16), crops_per_volume=1, seed=3)
    params = {"depth": 1, "init_channels": 2, "kernel_size": 3, "weight_decay": 0.0, "optimizer": "adam",
              "adam_alpha": 1e-3, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8}
    outcome = TrainingObjective(cfg)(_FakeTrial(), params, tmp_path / "trial")
    rows = list(csv.DictReader(open(tmp_path / "trial" / "epochs.csv")))
    saved = json.loads((tmp_path / "trial" / "config.json").read_text())["metrics"]["best_epoch"]  # weights kept
    best = rows[best_row(rows)]
    assert int(best["epoch"]) == saved
    assert outcome.state == "COMPLETE" and outcome.value == pytest.approx(float(best["metric"]), abs=1e-6)
    assert outcome.tiebreak == pytest.approx(float(best["tiebreak"]), abs=1e-6)
    assert 0.0 <= outcome.tiebreak <= 1.0
    # NSN and unet3d have no tie-break: nothing is recorded, and the top table shows no such column
    nsn = TrainingObjective(dataclasses.replace(cfg, network="nsn"))(_FakeTrial(), params, tmp_path / "nsn")
    assert nsn.state == "COMPLETE" and nsn.tiebreak is None
