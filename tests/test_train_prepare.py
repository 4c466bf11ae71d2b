"""Training split for a search: data prepared once, many fits with extra callbacks;
config cross-checks are one-line ConfigErrors; the task's optimiser lives in the config."""
from __future__ import annotations

import keras
import pytest

from cli_helpers import invoke, one_line_error
from qca_tf import train as train_mod
from qca_tf.config import DataConfig, ModelConfig, TrainConfig, check_compatible, from_dict, to_dict
from qca_tf.errors import ConfigError

DATA = DataConfig(patch=(16, 16, 16), val_fraction=0.34)


def test_task_default_optimizer_is_in_the_config():
    assert TrainConfig(task="ndn").optimizer == "adam"
    assert TrainConfig(task="nsn").optimizer == "sgd"
    assert TrainConfig(task="ndn", optimizer="sgd").optimizer == "sgd"
    assert from_dict(TrainConfig, {"task": "ndn"}).optimizer == "adam"
    assert to_dict(TrainConfig(task="ndn"))["optimizer"] == "adam"


def test_crop_not_multiple_of_depth_is_a_config_error():
    with pytest.raises(ConfigError, match=r"--patch.*2\*\*depth = 32 \(--depth 5\)"):
        check_compatible(ModelConfig(depth=5), DataConfig(patch=(48, 48, 48)))
    check_compatible(ModelConfig(depth=4), DataConfig(patch=(48, 48, 48)))


def test_train_cli_patch_depth_mismatch_one_line(tmp_path, synth_dataset):
    root, _ = synth_dataset
    res = invoke("train", "ndn", "--data", root, "--out", tmp_path / "m", "--patch", 48, "--depth", 5)
    one_line_error(res, "--patch", "--depth 5")
    assert not (tmp_path / "m").exists()


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs or {}))


def test_prepare_once_fit_many_with_callbacks(synth_dataset, tmp_path, monkeypatch):
    root, _ = synth_dataset
    calls = []
    original = train_mod.collect_volumes
    monkeypatch.setattr(train_mod, "collect_volumes", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    prepared = train_mod.prepare_data(root, "nsn", DATA, seed=0)
    results = []
    for depth in (1, 2):
        rec = _Recorder()
        cfg = TrainConfig(task="nsn", epochs=2, crops_per_volume=1, seed=0)
        res = train_mod.fit(prepared, tmp_path / f"m{depth}", ModelConfig(depth=depth, init_channels=2), cfg,
                            callbacks=[rec], verbose=0)
        assert [r["val_iou"] for r in rec.logs] == pytest.approx([float(r["metric"]) for r in res.history], abs=1e-6)
        results.append(res)
    assert len(calls) == 1  # the volumes were collected once for both fits
    assert set(prepared._val_ds) == {2, 4}  # one validation pipeline per 2**depth, reused
    assert all((r.folder / "config.json").exists() for r in results)
    with pytest.raises(ConfigError, match="prepared for 'nsn'"):
        train_mod.fit(prepared, tmp_path / "x", ModelConfig(depth=1), TrainConfig(task="ndn"), verbose=0)
