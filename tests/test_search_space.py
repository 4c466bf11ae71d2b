"""The search space: defined once, conditional branches, narrowing with clear errors,
warm-start preset, trial -> configs, pre-training feasibility."""
from __future__ import annotations

import json

import optuna
import pytest

from qca_tf.config import DataConfig, ModelConfig, TrainConfig
from qca_tf.errors import ConfigError
from qca_tf.search.space import SPACE, SearchSpace, configs_for, infeasible_reason, preset_params

TEN = {"depth", "init_channels", "kernel_size", "weight_decay", "sgd_lr", "sgd_lr_decay", "adam_alpha",
       "adam_beta1", "adam_beta2", "adam_epsilon"}


def test_ten_parameters_plus_optimizer_branch_names():
    names = [p.name for p in SPACE]
    assert set(names) == TEN | {"optimizer"} and len(names) == len(set(names))
    for p in SPACE:
        if p.when is not None:
            assert p.when[0] == "optimizer" and p.name.startswith(p.when[1] + "_")


def test_optuna_suggestions_follow_the_optimizer_branch():
    space = SearchSpace()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1), direction="maximize")
    seen = set()
    for _ in range(30):
        t = study.ask()
        params = space.suggest_optuna(t)
        study.tell(t, 0.0)
        seen.add(params["optimizer"])
        branch = {k for k in params if k.startswith(("sgd_", "adam_"))}
        assert all(k.startswith(params["optimizer"] + "_") for k in branch)
        assert len(branch) == (2 if params["optimizer"] == "sgd" else 4)
        assert space.contains(params)
        assert 1 <= params["depth"] <= 4 and 2 <= params["init_channels"] <= 32
    assert seen == {"sgd", "adam"}


def test_narrowing_fixes_and_restricts(tmp_path):
    f = tmp_path / "space.json"
    f.write_text(json.dumps({"depth": [2, 3], "kernel_size": [3], "optimizer": "adam", "adam_beta1": 0.9,
                             "weight_decay": {"low": 1e-5, "high": 1e-3}}))
    space = SearchSpace.from_file(f)
    assert space.by_name["depth"].low == 2 and space.by_name["depth"].high == 3
    assert space.by_name["kernel_size"].choices == (3,) and space.by_name["optimizer"].choices == ("adam",)
    assert space.by_name["adam_beta1"].fixed
    assert space.signature() != SearchSpace().signature()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        t = study.ask()
        p = space.suggest_optuna(t)
        study.tell(t, 0.0)
        assert p["optimizer"] == "adam" and p["adam_beta1"] == 0.9 and p["kernel_size"] == 3
        assert 2 <= p["depth"] <= 3 and 1e-5 <= p["weight_decay"] <= 1e-3


@pytest.mark.parametrize("spec, fragment", [
    ({"depht": [1, 2]}, "unknown parameter 'depht'"),
    ({"depth": [3, 2]}, "depth: empty range (low 3 > high 2)"),
    ({"depth": [0, 2]}, "depth: [0, 2] is outside the allowed range [1, 4]"),
    ({"adam_alpha": 1.0}, "adam_alpha: [1.0, 1.0] is outside the allowed range"),
    ({"kernel_size": [7]}, "kernel_size: 7 is not one of 3, 5"),
    ({"optimizer": []}, "optimizer: empty choice list"),
    ({"depth": [1, 2, 3]}, "depth: a range is [low, high]"),
    ({"depth": 2.5}, "depth: 2.5 is not an integer"),
    ({"weight_decay": "small"}, "weight_decay: 'small' is not a number"),
])
def test_space_file_errors_name_the_parameter(tmp_path, spec, fragment):
    f = tmp_path / "space.json"
    f.write_text(json.dumps(spec))
    with pytest.raises(ConfigError) as err:
        SearchSpace.from_file(f)
    assert fragment in str(err.value) and str(f) in str(err.value)


def test_space_file_not_json(tmp_path):
    f = tmp_path / "space.json"
    f.write_text("{depth: [1,")
    with pytest.raises(ConfigError, match="not a readable JSON space file"):
        SearchSpace.from_file(f)


def test_warm_start_is_the_preset_with_reference_optimiser():
    p = preset_params("ndn", SearchSpace())
    assert p["depth"] == 4 and p["init_channels"] == 12 and p["kernel_size"] == 5
    assert p["optimizer"] == "adam" and p["adam_alpha"] == TrainConfig().adam_alpha
    assert preset_params("nsn", SearchSpace())["optimizer"] == "sgd"
    assert preset_params("ndn", SearchSpace().narrowed({"depth": [1, 2]})) is None  # preset excluded


def test_configs_for_maps_branch_names():
    base = TrainConfig(task="nsn", epochs=3)
    m, t = configs_for("ndn", {"depth": 3, "init_channels": 5, "kernel_size": 5, "weight_decay": 1e-4,
                               "optimizer": "sgd", "sgd_lr": 0.05, "sgd_lr_decay": 0.3}, base)
    assert (m.depth, m.init_channels, m.kernel_size, m.name) == (3, 5, 5, "ndn")
    assert (t.task, t.optimizer, t.sgd_lr, t.lr_decay, t.weight_decay, t.epochs) == ("ndn", "sgd", 0.05, 0.3, 1e-4, 3)


def test_infeasible_configs_have_a_reason():
    assert "2**depth = 16" in infeasible_reason(ModelConfig(depth=4), DataConfig(patch=(40, 40, 40)), None)
    assert infeasible_reason(ModelConfig(depth=3), DataConfig(patch=(40, 40, 40)), None) is None
    reason = infeasible_reason(ModelConfig(depth=4, init_channels=12, kernel_size=5), DataConfig(patch=(32,) * 3),
                               2_000_000)
    assert reason == "44,454,170 parameters > --max-params 2,000,000"


def test_keras_tuner_hyperparameters_from_the_same_space():
    hp = SearchSpace().narrowed({"optimizer": "adam"}).keras_tuner_hyperparameters()
    names = {p.name for p in hp.space}
    assert TEN | {"optimizer"} == names
    values = SearchSpace().narrowed({"optimizer": "adam"}).declare_keras_tuner(hp)
    assert values["optimizer"] == "adam" and "sgd_lr" not in values and "adam_alpha" in values


def test_too_big_is_pruned_before_training_but_the_warm_start_preset_runs(tmp_path):
    import search_objectives
    from qca_tf.search.settings import SearchSettings
    from qca_tf.search.worker import run_trial

    cfg = SearchSettings(network="ndn", out=str(tmp_path), data="unused", trials=2, study="s", max_params=1000)
    space = SearchSpace()
    preset = preset_params("ndn", space)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(preset, user_attrs={"warm_start": "ndn preset"})
    study.enqueue_trial(preset)
    first, second = study.ask(), study.ask()
    assert run_trial(first, cfg, space, search_objectives.quick, tmp_path).state == "COMPLETE"
    outcome = run_trial(second, cfg, space, search_objectives.quick, tmp_path)
    assert outcome.state == "PRUNED" and outcome.reason == "not run: 44,454,170 parameters > --max-params 1,000"
    assert not (tmp_path / "trials" / "0001").exists()  # nothing trained
