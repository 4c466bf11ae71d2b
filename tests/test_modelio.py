"""Model folders: round trip, weights only, precision-independent weights, atomic writes,
format-1 folders migrated, newer formats refused, recorded preprocessing, named errors."""
from __future__ import annotations

import json
import zipfile

import h5py

import numpy as np
import pytest

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras

from qca_tf.config import DataConfig, ModelConfig, TrainConfig, read_json, to_dict
from qca_tf.errors import ConfigError, ModelError
from qca_tf.modelio import FORMAT, LoadedModel, copy_model_folder, load_model_folder, save_model_folder
from qca_tf.preprocess import GridRecipe
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
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.h5"]  # no temp files left
    loaded = load_model_folder(folder)
    assert isinstance(loaded, LoadedModel) and loaded.precision == "float32"
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
    assert info["format"] == FORMAT == "qca_tf.model/2"
    assert set(info) == {"format", "task", "model", "train", "data", "spacing_um", "metrics", "qca_tf_version"}
    assert info["model"]["depth"] == 2 and info["qca_tf_version"] == qca_tf.__version__
    assert info["data"] == json.loads(json.dumps(to_dict(DataConfig(patch=(16, 16, 16)))))  # the whole DataConfig


def test_weights_file_holds_the_network_only(saved):
    """No optimiser state: one float32 dataset per network variable, named by its path."""
    folder, model = saved
    names = {}
    with h5py.File(folder / "weights.h5", "r") as h5:
        h5["weights"].visititems(lambda n, o: names.__setitem__(n, o.dtype) if isinstance(o, h5py.Dataset) else None)
    assert set(names) == {v.path for v in model.weights} and len(names) == len(model.weights) == 66
    assert set(names.values()) == {np.dtype("float32")}
    assert model.optimizer.variables  # the model had optimiser state, and it was not saved


def test_weights_load_across_precisions(saved, tmp_path):
    folder, model = saved
    mixed = load_model_folder(folder, dtype_policy="mixed_float16")
    assert mixed.model.get_layer("enc0a_conv").compute_dtype == "float16" and mixed.precision == "mixed_float16"
    for a, b in zip(mixed.model.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # and back: weights saved from a mixed-precision model load into float32
    save_model_folder(tmp_path / "m16", mixed.model, task="ndn", model_cfg=CFG, spacing_um=1.0)
    back = load_model_folder(tmp_path / "m16")
    assert back.task == "ndn" and back.model.get_layer("enc0a_conv").compute_dtype == "float32"
    x = np.random.default_rng(4).random((1, 8, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(back.predict_batch(x), model(x, training=False).numpy(), atol=1e-6)


def test_overwrite_is_atomic_on_failure(saved, tmp_path, monkeypatch):
    """A crash while writing leaves the previous weights.h5 untouched and no temp files."""
    folder, model = saved
    target = tmp_path / "m"
    save_model_folder(target, model, task="nsn", model_cfg=CFG, spacing_um=0.8)
    before = (target / "weights.h5").read_bytes()
    original = h5py.Group.create_dataset
    calls = []

    def crash(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model_folder(target, model, task="nsn", model_cfg=CFG, spacing_um=0.8)
    assert (target / "weights.h5").read_bytes() == before
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.h5"]


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
    (no_weights / "weights.h5").unlink()
    with pytest.raises(ModelError, match="no weights.h5, model.keras or saved_model.pb"):
        load_model_folder(no_weights)

    garbage = _copy(folder, tmp_path / "garbage")
    (garbage / "weights.h5").write_bytes(b"not an HDF5 file at all")
    with pytest.raises(ModelError, match=f"{garbage}: cannot load weights.h5"):
        load_model_folder(garbage)
    truncated = _copy(folder, tmp_path / "truncated")
    data = (truncated / "weights.h5").read_bytes()
    (truncated / "weights.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot load weights.h5"):
        load_model_folder(truncated)


def test_weights_that_do_not_fit(saved, tmp_path):
    folder, _ = saved
    missing = _copy(folder, tmp_path / "missing")
    with h5py.File(missing / "weights.h5", "a") as h5:
        del h5["weights/enc1b_bn/moving_mean"]
    with pytest.raises(ModelError, match=f"{missing}: weights.h5 does not match.*lacks 'enc1b_bn/moving_mean'"):
        load_model_folder(missing)
    shape = _copy(folder, tmp_path / "shape")
    with h5py.File(shape / "weights.h5", "a") as h5:
        del h5["weights/head_conv/bias"]
        h5["weights/head_conv/bias"] = np.zeros(3, np.float32)
    with pytest.raises(ModelError, match=r"head_conv/bias has shape \(3,\), the architecture in config.json needs \(2,\)"):
        load_model_folder(shape)


@pytest.mark.parametrize("change,pattern", [
    ({"init_channels": 3}, r"enc0a_conv/kernel has shape \(3, 3, 3, 1, 2\).*needs \(3, 3, 3, 1, 3\)"),
    ({"depth": 1}, "weights.h5 does not match the architecture in config.json"),
    ({"batch_norm": False}, r"\(66 stored variables, 26 in the network"),
])
def test_architecture_mismatch(saved, tmp_path, change, pattern):
    folder, _ = saved
    other = _copy(folder, tmp_path / "other")
    info = json.loads((other / "config.json").read_text())
    info["model"].update(change)
    (other / "config.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match=f"{other}: .*{pattern}"):
        load_model_folder(other)


@pytest.mark.parametrize("edit,error,pattern", [
    (lambda i: i["model"].update(depht=2), ConfigError, r"config.json: unknown key model\.depht"),
    (lambda i: i.update(extra=1), ConfigError, "unknown key 'extra'"),
    (lambda i: i.update(format="other/9"), ModelError, "format 'other/9' is not a qca_tf.model format"),
    (lambda i: i.update(format="qca_tf.model/3"), ModelError,
     "written in qca_tf.model format 3 by a newer qca_tf; .* reads up to format 2: upgrade qca_tf"),
    (lambda i: i["data"].update(normalization="zscore"), ConfigError, "data.normalization"),
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


def test_recorded_preprocessing_is_the_grid_recipe(saved, tmp_path):
    _, model = saved
    data = DataConfig(resample_order=3, normalization="percentile", norm_percentiles=(0.5, 99.0))
    save_model_folder(tmp_path / "p", model, task="nsn", model_cfg=CFG, spacing_um=0.5, data_cfg=data)
    loaded = load_model_folder(tmp_path / "p")
    assert loaded.data_cfg == data
    assert loaded.grid_recipe == GridRecipe(0.5, order=3, normalization="percentile", percentiles=(0.5, 99.0))
    save_model_folder(tmp_path / "none", model, task="nsn", model_cfg=CFG, spacing_um=0.5)
    bare = load_model_folder(tmp_path / "none")
    assert bare.data_cfg is None
    assert bare.grid_recipe == GridRecipe(0.5, order=1, normalization="minmax")  # the reference defaults


def test_half_weights_are_half_the_size_and_close(saved, tmp_path):
    folder, model = saved
    save_model_folder(tmp_path / "h", model, task="nsn", model_cfg=CFG, spacing_um=0.8, half=True)
    with h5py.File(tmp_path / "h" / "weights.h5", "r") as h5:
        assert h5["weights/enc0a_conv/kernel"].dtype == np.float16
    loaded = load_model_folder(tmp_path / "h")
    assert loaded.model.get_layer("enc0a_conv").kernel.dtype == "float32"
    x = np.random.default_rng(5).random((1, 12, 16, 20, 1), dtype=np.float32)
    full = model(x, training=False).numpy()
    half = loaded.predict_batch(x)
    np.testing.assert_allclose(half, full, atol=5e-3)
    assert np.abs(half - full).max() > 0  # really rounded
    assert (tmp_path / "h" / "weights.h5").stat().st_size < 0.75 * (folder / "weights.h5").stat().st_size


# ------------------------------------------------------------------ format 1 (model.keras)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """A folder exactly as format 1 wrote it: the whole Keras archive (optimiser state
    included) and a config.json with format qca_tf.model/1 and a data section from before
    normalisation was recorded."""
    folder = tmp_path_factory.mktemp("legacy") / "nsn"
    folder.mkdir()
    model = _trained_model(seed=1)
    model.save(folder / "model.keras")
    info = {"format": "qca_tf.model/1", "task": "nsn", "model": to_dict(CFG),
            "train": {"task": "nsn", "optimizer": "adam", "epochs": 3},
            "data": {"voxel_size": None, "resample_order": 3, "patch": [16, 16, 16], "flips": True,
                     "ndn_diameter": 5.0, "val_fraction": 0.2},
            "spacing_um": 0.8, "metrics": {"best_epoch": 2}, "qca_tf_version": "0.1.0"}
    (folder / "config.json").write_text(json.dumps(info))
    return folder, model


def test_format_1_folder_loads(legacy):
    folder, model = legacy
    loaded = load_model_folder(folder)
    assert loaded.info["format"] == FORMAT  # migrated in memory
    assert json.loads((folder / "config.json").read_text())["format"] == "qca_tf.model/1"  # the folder is untouched
    assert loaded.grid_recipe == GridRecipe(0.8, order=3, normalization="minmax")  # recorded order, min-max then
    x = np.random.default_rng(6).random((1, 8, 12, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict_batch(x), model(x, training=False).numpy(), atol=1e-6)


def test_format_1_folder_is_copied_as_weights_only(legacy, tmp_path):
    folder, model = legacy
    copy_model_folder(folder, tmp_path / "v2")
    assert sorted(p.name for p in (tmp_path / "v2").iterdir()) == ["config.json", "weights.h5"]
    info = read_json(tmp_path / "v2" / "config.json")
    assert info["format"] == FORMAT and info["metrics"] == {"best_epoch": 2} and info["data"]["resample_order"] == 3
    assert (tmp_path / "v2" / "weights.h5").stat().st_size < 0.5 * (folder / "model.keras").stat().st_size
    x = np.random.default_rng(7).random((1, 8, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(load_model_folder(tmp_path / "v2").predict_batch(x), model(x, training=False).numpy(),
                               atol=1e-6)


def test_format_1_errors(legacy, tmp_path):
    folder, _ = legacy
    garbage = _copy(folder, tmp_path / "garbage")
    (garbage / "model.keras").write_bytes(b"not a zip file at all")
    with pytest.raises(ModelError, match=f"{garbage}: cannot load model.keras"):
        load_model_folder(garbage)
    bad = _copy(folder, tmp_path / "bad")
    with zipfile.ZipFile(folder / "model.keras") as src, zipfile.ZipFile(bad / "model.keras", "w") as dst:
        for name in src.namelist():
            payload = src.read(name)
            dst.writestr(name, payload[: len(payload) // 3] if name.endswith(".h5") else payload)
    with pytest.raises(ModelError, match="cannot load model.keras"):
        load_model_folder(bad)
    other = _copy(folder, tmp_path / "other")
    info = json.loads((other / "config.json").read_text())
    info["model"]["batch_norm"] = False  # Keras alone would load it, silently
    (other / "config.json").write_text(json.dumps(info))
    with pytest.raises(ModelError, match="model.keras holds 66 weight arrays but the architecture in config.json has 26"):
        load_model_folder(other)


def test_saving_into_a_format_1_folder_replaces_it(legacy, tmp_path):
    folder, model = legacy
    target = _copy(folder, tmp_path / "t")
    save_model_folder(target, model, task="nsn", model_cfg=CFG, spacing_um=0.8)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.h5"]
