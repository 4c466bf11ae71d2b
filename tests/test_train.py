"""Training: tiny networks learn the synthetic embryo; schedule, best-epoch folder, resume."""
from __future__ import annotations

import csv
import json

import pytest

from qca_tf import train as train_mod
from qca_tf.config import DataConfig, ModelConfig, TrainConfig
from qca_tf.modelio import load_model_folder

DATA = DataConfig(patch=(32, 32, 32), val_fraction=0.34)


def test_tiny_nsn_learns_synthetic_embryo(trained_bundle):
    bundle, results = trained_bundle
    res = results["nsn"]
    assert res.metric_name == "val_iou"
    assert res.best_metric >= 0.7
    loaded = load_model_folder(bundle / "nsn")
    info = json.loads((bundle / "nsn" / "config.json").read_text())
    assert info["task"] == "nsn" and info["spacing_um"] == pytest.approx(0.8)
    assert loaded.model_cfg.init_channels == 4
    rows = train_mod.read_epochs(bundle / "nsn" / "epochs.csv")
    assert rows == list(csv.DictReader(open(bundle / "nsn" / "epochs.csv")))
    # the best epoch is a weights-only folder that records what prediction replays
    assert {"config.json", "weights.h5", "epochs.csv"} <= {p.name for p in (bundle / "nsn").iterdir()}
    assert not (bundle / "nsn" / "model.keras").exists()
    assert loaded.data_cfg == DATA and loaded.grid_recipe.order == DATA.resample_order
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert max(float(r["metric"]) for r in rows) == pytest.approx(res.best_metric, abs=1e-6)
    assert info["metrics"]["best_epoch"] == res.best_epoch
    assert not (bundle / "nsn" / ".resume").exists()  # finished: no resume state left


def test_tiny_ndn_finds_most_centres_from_labels(trained_bundle):
    """NDN trained on targets made from labels/ (no ndn/ folder): F-measure >= 0.7."""
    _, results = trained_bundle
    assert results["ndn"].metric_name == "val_f1"
    assert results["ndn"].best_metric >= 0.7


def test_ndn_best_epoch_breaks_ties_of_f_by_centre_dice(trained_bundle):
    """Every NDN epoch logs the centre-mask Dice; the saved epoch is the best by (F, Dice),
    not merely the first to reach the best F (which saturates at 1.0 on a few volumes)."""
    bundle, results = trained_bundle
    rows = train_mod.read_epochs(bundle / "ndn" / "epochs.csv")
    ties = [float(r["tiebreak"]) for r in rows]
    assert all(0.0 <= t <= 1.0 for t in ties) and max(ties) > 0.3
    top = train_mod.best_row(rows)
    saved = json.loads((bundle / "ndn" / "config.json").read_text())["metrics"]["best_epoch"]
    assert saved == int(rows[top]["epoch"]) == results["ndn"].best_epoch
    best_f = max(float(r["metric"]) for r in rows)
    assert float(rows[top]["tiebreak"]) == max(t for r, t in zip(rows, ties) if float(r["metric"]) == best_f)


def test_best_row_orders_by_metric_then_tiebreak_then_epoch():
    rows = [{"epoch": "1", "metric": "0.9", "tiebreak": "0.8"}, {"epoch": "2", "metric": "1.0", "tiebreak": "0.4"},
            {"epoch": "3", "metric": "1.0", "tiebreak": "0.6"}, {"epoch": "4", "metric": "1.0", "tiebreak": "0.6"},
            {"epoch": "5", "metric": "0.95", "tiebreak": "0.9"}]
    assert train_mod.best_row(rows) == 2  # epoch 3: F 1.0 with the best Dice, the earlier of two equal
    old = [{"epoch": "1", "metric": "0.5"}, {"epoch": "2", "metric": "0.7"}, {"epoch": "3", "metric": "0.7"}]
    assert train_mod.best_row(old) == 1  # epochs.csv from before the column: the first best metric


def test_decay_waits_for_patience_epochs_without_a_new_best():
    metrics = [0.5, 0.4, 0.45, 0.6, 0.3, 0.2, 0.1, 0.7]
    # patience 2: epochs 2-3 do not beat 0.5 -> decay after epoch 3; 0.6 is a new best;
    # 0.3, 0.2 -> decay after epoch 6; 0.1 waits (1 of 2); 0.7 is a new best
    assert train_mod.scheduled_lrs(metrics, 0.1, 0.5, 2) == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025])
    # patience 1 decays after every epoch that is not a new best
    assert train_mod.scheduled_lrs([0.5, 0.4, 0.6, 0.3], 0.1, 0.5, 1) == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025])
    rows = [{"lr": 0.1, "metric": m} for m in metrics]
    assert train_mod._decayed_lr(rows, 0.1, 0.5, 2) == pytest.approx(0.025)
    assert train_mod._decayed_lr([], 0.1, 0.5, 2) == pytest.approx(0.1)


def test_sgd_optimizer_and_schedule_in_fit(synth_dataset, tmp_path):
    root, _ = synth_dataset
    cfg = TrainConfig(task="nsn", optimizer="sgd", sgd_lr=0.05, lr_decay=0.5, lr_patience=1, epochs=3,
                      crops_per_volume=2, min_crops_per_epoch=1, seed=0)
    res = train_mod.train(root, tmp_path / "m", ModelConfig(name="nsn", depth=1, init_channels=2), cfg, DATA,
                          verbose=0)
    lrs = [float(r["lr"]) for r in res.history]
    metrics = [float(r["metric"]) for r in res.history]
    assert lrs[0] == pytest.approx(0.05)
    # the lr of epoch i follows the decision after epoch i-1
    assert lrs == pytest.approx(train_mod.scheduled_lrs(metrics, 0.05, 0.5, 1)[:3])


def test_steps_per_epoch_has_a_floor():
    cfg = TrainConfig(crops_per_volume=4, min_crops_per_epoch=16, batch_size=2)
    assert cfg.steps_per_epoch(1) == 8      # one volume: 16 crops, not 4
    assert cfg.steps_per_epoch(10) == 20    # many volumes: crops_per_volume each


def test_one_volume_holds_out_a_spatial_part(synth_dataset, caplog):
    root, _ = synth_dataset
    specs, _ = train_mod.collect_volumes(root, "nsn", DATA)
    with caplog.at_level("WARNING"):
        train, val = train_mod.split_volumes(specs[:1], 0.25, seed=0)
    assert train[0].region == ((0, 16), (0, 64), (0, 48)) and val[0].region == ((0, 16), (0, 64), (48, 64))
    assert "validating on its held-out part x >= 48" in caplog.text
    with caplog.at_level("WARNING"):
        caplog.clear()
        train, val = train_mod.split_volumes(specs, 0.0, seed=0)
    assert train == val and "validation equals training" in caplog.text


def test_val_data_folder_validates_and_all_of_data_trains(synth_dataset, tmp_path, caplog):
    import shutil

    root, _ = synth_dataset
    val_root = tmp_path / "val"
    for sub in ("images", "nsn"):
        (val_root / sub).mkdir(parents=True)
        shutil.copy(root / sub / "t0002.tif", val_root / sub / "v.tif")
    cfg = TrainConfig(task="nsn", optimizer="adam", epochs=1, crops_per_volume=1, min_crops_per_epoch=1, seed=0)
    with caplog.at_level("INFO"):
        train_mod.train(root, tmp_path / "m", ModelConfig(name="nsn", depth=1, init_channels=2), cfg, DATA,
                        verbose=0, val_data=val_root)
    assert "3 training and 1 validation volume(s)" in caplog.text


def test_interrupted_training_resumes(synth_dataset, tmp_path, monkeypatch):
    root, _ = synth_dataset
    cfg = TrainConfig(task="nsn", optimizer="adam", epochs=3, crops_per_volume=1, min_crops_per_epoch=1, seed=0)
    model_cfg = ModelConfig(name="nsn", depth=1, init_channels=2)
    original = train_mod.EpochCallback.on_epoch_end
    calls = []

    def crash_at_second_epoch(self, epoch, logs=None):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch, logs)

    monkeypatch.setattr(train_mod.EpochCallback, "on_epoch_end", crash_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(root, tmp_path / "m", model_cfg, cfg, DATA, verbose=0)
    assert (tmp_path / "m" / ".resume").exists()
    monkeypatch.setattr(train_mod.EpochCallback, "on_epoch_end",
                        lambda self, epoch, logs=None: (calls.append(epoch), original(self, epoch, logs))[1])
    res = train_mod.train(root, tmp_path / "m", model_cfg, cfg, DATA, verbose=0)
    assert calls == [0, 1, 1, 2]  # the second run started at the interrupted epoch
    assert [int(r["epoch"]) for r in res.history] == [1, 2, 3]
    assert not (tmp_path / "m" / ".resume").exists()


def test_read_epochs_of_a_folder_without_training():
    assert train_mod.read_epochs("/nonexistent/epochs.csv") == []


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mixed_float16_wraps_the_optimizer_for_loss_scaling(optimizer):
    """The builder sets the policy per layer, so Keras would not add loss scaling itself:
    the training build wraps the optimiser explicitly (build and compile only: CPU has no
    float16 3D max-pooling kernel to run a step)."""
    import keras

    cfg = TrainConfig(task="nsn", optimizer=optimizer)
    mixed = train_mod.build_compiled(ModelConfig(name="nsn", depth=1, init_channels=2), cfg, "mixed_float16")
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    inner = keras.optimizers.SGD if optimizer == "sgd" else keras.optimizers.Adam
    assert isinstance(mixed.optimizer.inner_optimizer, inner)
    assert mixed.get_layer("enc0a_conv").compute_dtype == "float16"
    assert mixed.get_layer("enc0a_conv").kernel.dtype == "float32"  # variables stay float32
    mixed.optimizer.learning_rate.assign(0.125)  # what the decay-on-drop callback does
    assert float(mixed.optimizer.inner_optimizer.learning_rate.numpy()) == 0.125
    plain = train_mod.build_compiled(ModelConfig(name="nsn", depth=1, init_channels=2), cfg, "float32")
    assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)
    assert plain.get_layer("enc0a_conv").compute_dtype == "float32"


def test_training_precision_comes_from_the_config(synth_dataset, tmp_path):
    from qca_tf.errors import ConfigError

    root, _ = synth_dataset
    cfg = TrainConfig(task="nsn", epochs=1, crops_per_volume=1, precision="mixed_float16")
    with pytest.raises(ConfigError, match="mixed_float16 needs a GPU"):
        train_mod.train(root, tmp_path / "m", ModelConfig(name="nsn", depth=1, init_channels=2), cfg, DATA, verbose=0)
    assert not (tmp_path / "m").exists()  # refused before any work


def _count_epochs(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = train_mod.EpochCallback.on_epoch_end
    monkeypatch.setattr(train_mod.EpochCallback, "on_epoch_end",
                        lambda self, epoch, logs=None: (calls.append(epoch), original(self, epoch, logs))[1])
    return calls


def test_finished_training_is_reported_not_retrained(synth_dataset, tmp_path, monkeypatch):
    from qca_tf.errors import ConfigError

    root, _ = synth_dataset
    cfg = TrainConfig(task="nsn", optimizer="adam", epochs=2, crops_per_volume=1, min_crops_per_epoch=1, seed=0)
    model_cfg = ModelConfig(name="nsn", depth=1, init_channels=2)
    first = train_mod.train(root, tmp_path / "m", model_cfg, cfg, DATA, verbose=0)
    csv_before = (tmp_path / "m" / "epochs.csv").read_text()
    weights_before = (tmp_path / "m" / "weights.h5").stat().st_mtime_ns
    calls = _count_epochs(monkeypatch)
    again = train_mod.train(root, tmp_path / "m", model_cfg, cfg, DATA, verbose=0)
    assert calls == [] and again.finished
    assert (again.best_epoch, again.best_metric) == (first.best_epoch, pytest.approx(first.best_metric, abs=1e-6))
    assert (tmp_path / "m" / "epochs.csv").read_text() == csv_before
    assert (tmp_path / "m" / "weights.h5").stat().st_mtime_ns == weights_before
    # other options: one message naming the flag, for a finished and for an unfinished run
    with pytest.raises(ConfigError, match=r"finished \(2 epochs\) training with other options: --init-channels"):
        train_mod.train(root, tmp_path / "m", ModelConfig(name="nsn", depth=1, init_channels=3), cfg, DATA, verbose=0)
    with pytest.raises(ConfigError, match=r"--epochs \(train.epochs\): 2 then, 3 now"):
        train_mod.train(root, tmp_path / "m", model_cfg, TrainConfig(**{**cfg.__dict__, "epochs": 3}), DATA, verbose=0)
    (tmp_path / "m" / ".resume").mkdir()
    with pytest.raises(ConfigError, match=r"unfinished training with other options: --adam-alpha"):
        train_mod.train(root, tmp_path / "m", model_cfg, TrainConfig(**{**cfg.__dict__, "adam_alpha": 0.01}), DATA,
                        verbose=0)
    with pytest.raises(ConfigError, match=r"--patch \(data.patch\)"):
        train_mod.train(root, tmp_path / "m", model_cfg, cfg, DataConfig(patch=(16, 16, 16), val_fraction=0.34),
                        verbose=0)
    # --overwrite trains again from epoch 1
    res = train_mod.train(root, tmp_path / "m", model_cfg, cfg, DATA, verbose=0, overwrite=True)
    assert calls == [0, 1] and not res.finished
    assert [int(r["epoch"]) for r in res.history] == [1, 2]


def test_crop_larger_than_the_volumes_is_clamped_with_a_warning(synth_dataset, tmp_path, monkeypatch, caplog):
    root, _ = synth_dataset  # 16 x 64 x 64 voxels of 1.75 x 0.8 x 0.8 um: 35 x 64 x 64 on the 0.8 um grid
    seen = []
    monkeypatch.setattr(train_mod, "fit", lambda prepared, *a, **k: seen.append(prepared.data_cfg.patch))
    cfg = TrainConfig(task="nsn", epochs=1)
    model_cfg = ModelConfig(name="nsn", depth=2, init_channels=2)
    with caplog.at_level("WARNING"):
        train_mod.train(root, tmp_path / "m", model_cfg, cfg, DataConfig(patch=(400, 400, 400), val_fraction=0.34))
        assert "--patch 400x400x400 is larger than the training volumes (35x64x64" in caplog.text
        caplog.clear()
        train_mod.train(root, tmp_path / "m2", model_cfg, cfg, DataConfig(patch=(32, 48, 48), val_fraction=0.34))
        assert "larger than" not in caplog.text
    assert seen == [(36, 64, 64), (32, 48, 48)]  # clamped to the extent rounded up to 2**depth = 4; a fitting crop kept
