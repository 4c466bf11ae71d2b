"""Fine-tuning (`qca-tf train --init MODEL`): the training starts from the initial model's
weights, keeps its architecture, grid and normalisation, and refuses what contradicts them."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cli_helpers import invoke, one_line_error
from qca_tf import train as train_mod
from qca_tf.config import DataConfig, TrainConfig
from qca_tf.errors import ConfigError, ModelError
from qca_tf.finetune import check_architecture, initial_model, load_initial_weights, recipe_data_config
from qca_tf.modelio import load_model_folder

DATA = DataConfig(patch=(32, 32, 32), val_fraction=0.34)


def test_initial_weights_are_copied_exactly(trained_bundle):
    bundle, _ = trained_bundle
    init = initial_model(bundle, "nsn")  # a bundle gives its nsn/ for an nsn training
    assert init.folder == bundle / "nsn" and init.model_cfg.init_channels == 4 and init.spacing_um == pytest.approx(0.8)
    cfg = TrainConfig(task="nsn", optimizer="adam")
    fresh = train_mod.build_compiled(init.model_cfg, cfg, "float32")
    source = load_model_folder(bundle / "nsn").model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(fresh.get_weights(), source))
    load_initial_weights(fresh, init)
    got = fresh.get_weights()
    assert len(got) == len(source) and all(np.array_equal(a, b) for a, b in zip(got, source))
    assert initial_model(bundle / "ndn", "ndn").task == "ndn"


def test_finetune_starts_where_the_initial_model_ended(trained_bundle, synth_dataset, tmp_path):
    """One epoch at a tiny learning rate: from the trained tiny NSN the validation IoU is
    that model's (>= 0.7); from random weights the same epoch is far below it."""
    bundle, results = trained_bundle
    root, _ = synth_dataset
    init = initial_model(bundle, "nsn")
    data = recipe_data_config(init, DATA, set())
    cfg = TrainConfig(task="nsn", optimizer="adam", adam_alpha=1e-7, epochs=1, crops_per_volume=2, seed=0)
    tuned = train_mod.train(root, tmp_path / "ft", init.model_cfg, cfg, data, verbose=0, init=init)
    scratch = train_mod.train(root, tmp_path / "scratch", init.model_cfg, cfg, data, verbose=0)
    assert tuned.best_metric >= 0.7
    assert tuned.best_metric == pytest.approx(results["nsn"].best_metric, abs=0.05)
    assert scratch.best_metric < tuned.best_metric - 0.3
    record = json.loads((tmp_path / "ft" / "training.json").read_text())
    assert record["init"] == {"folder": str((bundle / "nsn").resolve()), "sha256": init.sha256}
    assert json.loads((tmp_path / "scratch" / "training.json").read_text())["init"] is None
    # the same folder with another starting point is another run: refused, naming --init
    with pytest.raises(ConfigError, match=r"--init: .*then, random weights now"):
        train_mod.train(root, tmp_path / "ft", init.model_cfg, cfg, data, verbose=0)
    again = train_mod.train(root, tmp_path / "ft", init.model_cfg, cfg, data, verbose=0, init=init)
    assert again.finished


def test_recipe_comes_from_the_initial_model(trained_bundle):
    init = initial_model(trained_bundle[0], "nsn")  # trained with percentile normalisation
    assert init.data_cfg.normalization == "percentile"
    keep = recipe_data_config(init, DataConfig(patch=(16, 16, 16), normalization="minmax", ndn_diameter=9.0), set())
    assert (keep.normalization, keep.ndn_diameter, keep.patch) == ("percentile", init.data_cfg.ndn_diameter, (16,) * 3)
    with pytest.raises(ConfigError, match=r"^--normalization 'minmax': the initial model .* normalization 'percentile'"):
        recipe_data_config(init, DataConfig(normalization="minmax"), {"normalization"})
    with pytest.raises(ConfigError, match=r"^--depth 3: the initial model .* has depth 2"):
        check_architecture(init, {"depth": 3, "init_channels": None})
    assert check_architecture(init, {"depth": 2, "kernel_size": None}) == init.model_cfg


def test_initial_model_mistakes_are_named(trained_bundle, tmp_path):
    bundle, _ = trained_bundle
    with pytest.raises(ModelError, match="is a ndn model; a nsn training needs a nsn model"):
        initial_model(bundle / "ndn", "nsn")
    with pytest.raises(ModelError, match="not a model folder nor a known model name"):
        initial_model("no-such-model", "nsn")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither a model folder"):
        initial_model(tmp_path / "empty", "nsn")
    exported = tmp_path / "exported"
    exported.mkdir()
    shutil.copy(bundle / "nsn" / "config.json", exported / "config.json")
    (exported / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ModelError, match="a SavedModel export cannot be fine-tuned"):
        initial_model(exported, "nsn")


def test_train_cli_init_flags(trained_bundle, synth_dataset, tmp_path):
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    base = ["train", "nsn", "--data", root, "--init", bundle, "--patch", "32", "--epochs", "1", "--seed", "0"]
    one_line_error(invoke(*base, "--out", tmp_path / "a", "--depth", "3"), "--depth 3", "has depth 2")
    one_line_error(invoke(*base, "--out", tmp_path / "b", "--normalization", "minmax"), "--normalization")
    one_line_error(invoke(*base, "--out", tmp_path / "c", "--params", tmp_path / "p.json"), "--init and --params")
    one_line_error(invoke("train", "ndn", *base[2:], "--out", tmp_path / "d", "--init", bundle / "nsn"),
                   "is a nsn model")
    # data at another voxel size are resampled to the initial model's 0.8 um grid
    res = invoke(*base, "--out", tmp_path / "ok", "--voxel-size", "0.4", "0.4", "1.75",
                 "--crops-per-volume", "1", "--min-crops-per-epoch", "1")
    assert res.exit_code == 0, res.output
    assert "network grid 0.8 um isotropic" in res.output and "starting from the weights of" in res.output
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["spacing_um"] == pytest.approx(0.8)
