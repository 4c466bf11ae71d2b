"""SavedModel export: dynamic-shape serving signature equal to Keras, config copied, atomic, errors."""
from __future__ import annotations

import numpy as np
import pytest

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras
import tensorflow as tf

from qca_tf import infer
from qca_tf.config import InferenceConfig, ModelConfig, read_json
from qca_tf.errors import ModelError, OutputError
from qca_tf.export import export_savedmodel
from qca_tf.modelio import SavedModelWrapper, load_model_folder, save_model_folder
from qca_tf.models import build_unet

CFG = ModelConfig(depth=2, init_channels=2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(0)
    model = build_unet(CFG)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial BN statistics must survive the export
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.uniform(-0.3, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
    save_model_folder(root / "keras", model, task="ndn", model_cfg=CFG, spacing_um=0.8, metrics={"val_f1": 0.9})
    out = export_savedmodel(root / "keras", root / "saved")
    return root, model, out


def test_savedmodel_matches_keras_on_new_shapes(exported):
    root, model, out = exported
    assert out == root / "saved"
    assert (out / "saved_model.pb").is_file()
    assert read_json(out / "config.json") == read_json(root / "keras" / "config.json")
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left
    rng = np.random.default_rng(1)
    # sizes (and batch) different from anything traced before: the signature is dynamic
    for shape in [(1, 12, 20, 8, 1), (3, 4, 8, 28, 1)]:
        x = rng.random(shape, dtype=np.float32)
        expected = model(x, training=False).numpy()
        direct = tf.saved_model.load(str(out))
        np.testing.assert_allclose(direct.serve(tf.constant(x)).numpy(), expected, atol=1e-5)
        signature = direct.signatures["serving_default"]
        (result,) = signature(image=tf.constant(x)).values()
        np.testing.assert_allclose(result.numpy(), expected, atol=1e-5)
        loaded = load_model_folder(out)
        assert isinstance(loaded.model, SavedModelWrapper)
        np.testing.assert_allclose(loaded.predict_batch(x), expected, atol=1e-5)


def test_loaded_savedmodel_drives_inference(exported):
    root, _, out = exported
    loaded = load_model_folder(out)
    assert loaded.task == "ndn" and loaded.spacing_um == 0.8 and loaded.model_cfg == CFG
    vol = np.random.default_rng(2).random((13, 9, 18), dtype=np.float32)
    reference = infer.predict_probabilities(load_model_folder(root / "keras"), vol, InferenceConfig())
    tiled = infer.predict_probabilities(loaded, vol, InferenceConfig(tile=(8, 8, 8)))
    np.testing.assert_allclose(tiled, reference, atol=1e-5)


def test_existing_output(exported, tmp_path):
    root, model, out = exported
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(OutputError, match=f"{target}: exists and is not empty"):
        export_savedmodel(root / "keras", target)
    assert (target / "keep.txt").read_text() == "user data"
    export_savedmodel(root / "keras", target, overwrite=True)
    assert (target / "saved_model.pb").is_file() and not (target / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_savedmodel(root / "keras", empty) / "saved_model.pb").is_file()


def test_bad_model_folder(exported, tmp_path):
    root, _, out = exported
    with pytest.raises(ModelError, match="model folder not found"):
        export_savedmodel(tmp_path / "missing", tmp_path / "o")
    with pytest.raises(ModelError, match="already a SavedModel"):
        export_savedmodel(out, tmp_path / "o")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((root / "keras" / "config.json").read_bytes())
    (bad / "model.keras").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot load model.keras"):
        export_savedmodel(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_corrupt_savedmodel(exported, tmp_path):
    root, _, out = exported
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((out / "config.json").read_bytes())
    (broken / "saved_model.pb").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match=f"{broken}: cannot load the SavedModel"):
        load_model_folder(broken)
