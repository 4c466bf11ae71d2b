"""Model folders: round trip, precision-independent weights, atomic writes, named errors."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras

from qca_tf.config import DataConfig, ModelConfig, TrainConfig, read_json
from qca_tf.errors import ConfigError, ModelError
from qca_tf.modelio import FORMAT, LoadedModel, load_model_folder, save_model_folder
from qca_tf.models import build_unet

CFG = ModelConfig(name="tiny", depth=2, init_channels=2)


def _trained_model(seed: int = 0) -> keras.Model:
    """A tiny model with weights and BN statistics moved away from their initial values."""
    keras.utils.set_random_seed(seed)
    model = build_unet(CFG, weight_decay=1e-4)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(seed)
    x = rng.random((2, 8, 8, 8, 1), dtype=np.float32)
    model.fit(x, rng.random((2, 8, 8, 8, 2), dtype=np.float32), epochs=2, verbose=0)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "nsn"
    model = _trained_model()
    save_model_folder(folder, model, task="nsn", model_cfg=CFG, spacing_um=0.8,
                      train_cfg=TrainConfig(optimizer="adam", epochs=3), data_cfg=DataConfig(patch=(16, 16, 16)),
                      metrics={"best_epoch": 2, "val_iou": 0.5})
    return folder, model


def test_round_trip_identical_predictions(saved):
    folder, model = saved
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.keras"]  # no temp files left
    loaded = load_model_folder(folder)
    assert isinstance(loaded, LoadedModel)
    assert loaded.model_cfg == CFG and loaded.task == "nsn" and loaded.spacing_um == 0.8 and loaded.folder == folder
    assert loaded.info["metrics"] == {"best_epoch": 2, "val_iou": 0.5}
    assert loaded.info["train"]["optimizer"] == "adam" and loaded.info["data"]["patch"] == [16, 16, 16]
    x = np.random.default_rng(3).random((1, 12, 16, 20, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict_batch(x), model(x, training=False).numpy(), atol=1e-6)
    bn = model.get_layer("enc1b_bn")
    assert np.abs(bn.moving_mean.numpy()).max() > 0  # the BN statistics really travelled
    np.testing.assert_array_equal(loaded.model.get_layer("enc1b_bn").moving_mean.numpy(), bn.moving_mean.numpy())


def test_config_json_contents(saved):
    folder, _ = saved
    info = read_json(folder / "config.json")
    assert info["format"] == FORMAT == "qca_tf.model/1"
    assert set(info) == {"format", "task", "model", "train", "data", "spacing_um", "metrics", "qca_tf_version"}
    assert info["model"]["depth"] == 2 and info["qca_tf_version"] == qca_tf.__version__


def test_weights_load_across_precisions(saved, tmp_path):
    folder, model = saved
    mixed = load_model_folder(folder, dtype_policy="mixed_float16")
    assert mixed.model.get_layer("enc0a_conv").compute_dtype == "float16"
    for a, b in zip(mixed.model.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # and back: weights saved from a mixed-precision model load into float32
    save_model_folder(tmp_path / "m16", mixed.model, task="ndn", model_cfg=CFG, spacing_um=1.0)
    back = load_model_folder(tmp_path / "m16")
    assert back.task == "ndn" and back.model.get_layer("enc0a_conv").compute_dtype == "float32"
    x = np.random.default_rng(4).random((1, 8, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(back.predict_batch(x), model(x, training=False).numpy(), atol=1e-6)


def test_overwrite_is_atomic_on_failure(saved, tmp_path, monkeypatch):
    """A crash while writing leaves the previous model.keras untouched and no temp files."""
    folder, model = saved
    target = tmp_path / "m"
    save_model_folder(target, model, task="nsn", model_cfg=CFG, spacing_um=0.8)
    before = (target / "model.keras").read_bytes()

    def crash(self, path, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model_folder(target, model, task="nsn", model_cfg=CFG, spacing_um=0.8)
    assert (target / "model.keras").read_bytes() == before
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.keras"]


def _copy(folder, dest):
    dest.mkdir()
    for p in folder.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_errors_name_the_folder(saved, tmp_path):
    folder, _ = saved
    with pytest.raises(ModelError, match=f"{tmp_path / 'nope'}: model folder not found"):
        load_model_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model_folder(empty)
    no_weights = _copy(folder, tmp_path / "no_weights")
    (no_weights / "model.keras").unlink()
    with pytest.raises(ModelError, match="no model.keras or saved_model.pb"):
        load_model_folder(no_weights)

    garbage = _copy(folder, tmp_path / "garbage")
    (garbage / "model.keras").write_bytes(b"not a zip file at all")
    with pytest.raises(ModelError, match=f"{garbage}: cannot load model.keras"):
        load_model_folder(garbage)
    truncated = _copy(folder, tmp_path / "truncated")
    data = (truncated / "model.keras").read_bytes()
    (truncated / "model.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot load model.keras"):
        load_model_folder(truncated)


def test_corrupt_weights_inside_valid_zip(saved, tmp_path):
    folder, _ = saved
    bad = _copy(folder, tmp_path / "bad")
    with zipfile.ZipFile(folder / "model.keras") as src, zipfile.ZipFile(bad / "model.keras", "w") as dst:
        for name in src.namelist():
            payload = src.read(name)
            dst.writestr(name, payload[: len(payload) // 3] if name.endswith(".h5") else payload)
    with pytest.raises(ModelError, match="cannot load model.keras"):
        load_model_folder(bad)


@pytest.mark.parametrize("change,pattern", [
    ({"init_channels": 3}, "cannot load model.keras"),
    ({"depth": 1}, "cannot load model.keras"),
    ({"batch_norm": False}, "model.keras holds 66 weight arrays but the architecture in config.json has 26"), # Keras alone loads it
])
def test_architecture_mismatch(saved, tmp_path, change, pattern):
    folder, _ = saved
    other = _copy(folder, tmp_path / "other")
    info = json.loads((other / "config.json").read_text())
    info["model"].update(change)
    (other / "config.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match=f"{other}: {pattern}"):
        load_model_folder(other)


@pytest.mark.parametrize("edit,error,pattern", [
    (lambda i: i["model"].update(depht=2), ConfigError, r"config.json: unknown key model\.depht"),
    (lambda i: i.update(extra=1), ConfigError, "unknown key 'extra'"),
    (lambda i: i.update(format="other/9"), ModelError, "format 'other/9'"),
    (lambda i: i.update(task="seg"), ModelError, "task 'seg'"),
    (lambda i: i.update(spacing_um=-1), ModelError, "spacing_um -1"),
    (lambda i: i["train"].update(optimizer="rmsprop"), ConfigError, "train.optimizer"),
])
def test_bad_config(saved, tmp_path, edit, error, pattern):
    folder, _ = saved
    bad = _copy(folder, tmp_path / "bad")
    info = json.loads((bad / "config.json").read_text())
    edit(info)
    (bad / "config.json").write_text(json.dumps(info))
    with pytest.raises(error, match=pattern):
        load_model_folder(bad)


def test_save_rejects_bad_arguments(saved, tmp_path):
    _, model = saved
    with pytest.raises(ConfigError, match="task"):
        save_model_folder(tmp_path / "x", model, task="seg", model_cfg=CFG, spacing_um=0.8)
    with pytest.raises(ConfigError, match="spacing_um"):
        save_model_folder(tmp_path / "x", model, task="nsn", model_cfg=CFG, spacing_um=0.0)
