"""Bundles, named models and what prediction replays: recorded preprocessing per network,
one precision, bundle format versions, the registry and `qca-tf models`."""
from __future__ import annotations

import json

import numpy as np
import pytest

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras

from qca_tf import infer, io, predict, preprocess, registry, synthetic
from qca_tf.bundle import BUNDLE_FORMAT, load_networks, make_bundle, read_bundle, save_bundle
from qca_tf.config import DataConfig, InferenceConfig, ModelConfig, PostprocessConfig, read_json
from qca_tf.errors import ConfigError, ModelError
from qca_tf.modelio import save_model_folder
from qca_tf.models import build_unet
from qca_tf.preprocess import GridRecipe

from cli_helpers import invoke, one_line_error
from conftest import VOXEL, small_embryo
from model_helpers import randomize_bn

CFG = ModelConfig(depth=2, init_channels=4)
PERCENTILE_3 = DataConfig(resample_order=3, normalization="percentile", norm_percentiles=(2.0, 98.0))
LINEAR_MINMAX = DataConfig(resample_order=1, normalization="minmax")  # the reference tool's recipe
F32 = InferenceConfig(precision="float32")


def _model_folder(folder, task: str, data_cfg: DataConfig | None, seed: int) -> None:
    keras.utils.set_random_seed(seed)
    model = build_unet(CFG)
    randomize_bn(model, np.random.default_rng(seed))
    save_model_folder(folder, model, task=task, model_cfg=CFG, spacing_um=0.8, data_cfg=data_cfg)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """'mixed': NSN recorded percentile + cubic, NDN linear + min-max; 'same': both percentile + cubic.
    And one synthetic time point with hot pixels (so min-max and percentile differ)."""
    root = tmp_path_factory.mktemp("bundles")
    _model_folder(root / "mixed" / "nsn", "nsn", PERCENTILE_3, 1)
    _model_folder(root / "mixed" / "ndn", "ndn", LINEAR_MINMAX, 2)
    save_bundle(root / "mixed", PostprocessConfig())
    _model_folder(root / "same" / "nsn", "nsn", PERCENTILE_3, 1)
    _model_folder(root / "same" / "ndn", "ndn", PERCENTILE_3, 2)
    save_bundle(root / "same", PostprocessConfig())
    image = synthetic.make_series(small_embryo(seed=3, timepoints=1))[0].image.copy()
    image[3, 10, 10] = image.max() * 4  # a hot pixel: min-max squashes the nuclei, percentiles do not
    io.write_stack(root / "images" / "t0000.tif", image, VOXEL)
    return root, image


def test_prediction_replays_each_networks_recorded_preprocessing(bundles):
    """NSN recorded cubic + percentile, NDN linear + min-max: each is fed its own volume,
    equal to the manual pipeline with its parameters."""
    root, raw = bundles
    nets = load_networks(bundle=root / "mixed", infer_cfg=F32)
    assert nets.recipes == [GridRecipe(0.8, 3, "percentile", (2.0, 98.0)), GridRecipe(0.8, 1, "minmax")]
    prep = predict.prepare(io.read_series(root / "images")[0], None, nets.recipes)
    manual_nsn = preprocess.to_network_grid(raw, VOXEL, 0.8, order=3, normalization="percentile",
                                            percentiles=(2.0, 98.0))
    manual_ndn = preprocess.to_network_grid(raw, VOXEL, 0.8, order=1, normalization="minmax")
    np.testing.assert_array_equal(prep.volumes[nets.nsn.grid_recipe], manual_nsn)
    np.testing.assert_array_equal(prep.volumes[nets.ndn.grid_recipe], manual_ndn)
    nsn_prob, ndn_prob = predict.segment(nets, prep.volumes, F32)
    np.testing.assert_allclose(nsn_prob, infer.predict_probabilities(nets.nsn, manual_nsn, F32), atol=1e-6)
    np.testing.assert_allclose(ndn_prob, infer.predict_probabilities(nets.ndn, manual_ndn, F32), atol=1e-6)
    # the recipe matters: the old fixed pipeline (linear, min-max) gives other NSN probabilities
    assert np.abs(infer.predict_probabilities(nets.nsn, manual_ndn, F32) - nsn_prob).max() > 0.05


@pytest.mark.parametrize("name,calls", [("mixed", 2), ("same", 1)])
def test_one_grid_volume_per_distinct_recipe(bundles, tmp_path, monkeypatch, name, calls):
    """predict_series brings each time point to the grid once per distinct recipe, with the
    recorded parameters, and says which in run.json."""
    root, _ = bundles
    seen = []
    original = preprocess.to_network_grid

    def spy(raw, voxel, spacing, **kwargs):
        seen.append(kwargs)
        return original(raw, voxel, spacing, **kwargs)

    monkeypatch.setattr(preprocess, "to_network_grid", spy)
    nets = load_networks(bundle=root / name, infer_cfg=F32)
    opts = predict.PredictOptions(quicklook=False, progress=False, pipelined=False)
    predict.predict_series([root / "images"], tmp_path / "out", nets, F32, opts)
    assert len(seen) == calls
    assert seen[0] == {"order": 3, "normalization": "percentile", "percentiles": (2.0, 98.0)}
    run = read_json(tmp_path / "out" / "run.json")
    assert run["models"]["preprocessing"]["nsn"] == {"spacing_um": 0.8, "order": 3, "normalization": "percentile",
                                                     "percentiles": [2.0, 98.0]}
    assert run["models"]["precision"] == "float32" and run["models"]["bundle"] == str(root / name)


def test_models_without_recorded_data_use_the_reference_recipe(bundles, tmp_path):
    _model_folder(tmp_path / "bare", "nsn", None, 4)
    nets = load_networks(nsn=tmp_path / "bare", infer_cfg=F32)
    assert nets.recipes == [GridRecipe(0.8, order=1, normalization="minmax")]


def test_precision_is_resolved_once_and_recorded(bundles):
    root, _ = bundles
    nets = load_networks(bundle=root / "same", infer_cfg=InferenceConfig(precision="mixed_bfloat16"))
    assert nets.precision == nets.nsn.precision == nets.ndn.precision == "mixed_bfloat16"
    assert nets.ndn.model.get_layer("enc0a_conv").compute_dtype == "bfloat16"
    auto = load_networks(bundle=root / "same")  # auto: float32 on this CPU-only machine
    assert auto.precision == "float32" and auto.nsn.model.get_layer("enc0a_conv").compute_dtype == "float32"
    with pytest.raises(ConfigError, match="mixed_float16 needs a GPU"):
        load_networks(bundle=root / "same", infer_cfg=InferenceConfig(precision="mixed_float16"))


# ------------------------------------------------------------------ bundle format


def _meta(folder, payload: dict) -> None:
    (folder / "qcanet.json").write_text(json.dumps(payload))


def test_bundle_round_trip_and_format_1_2_3_migration(bundles, tmp_path):
    root, _ = bundles
    post = PostprocessConfig(nsn_threshold=0.4, min_marker_size=3, annotation_offset_um=(-0.35, -0.4, 0.25))
    out = make_bundle(tmp_path / "b", root / "mixed" / "nsn", root / "mixed" / "ndn", post,
                      description="two test networks", voxel_size_um=(0.8, 0.8, 1.75), tta=8)
    meta = read_json(out / "qcanet.json")
    assert meta["format"] == BUNDLE_FORMAT == "qca_tf.bundle/4" and meta["tta"] == 8
    assert meta["postprocess"]["annotation_offset_um"] == [-0.35, -0.4, 0.25]
    b = read_bundle(out)
    assert b.postprocess == post
    assert b.description == "two test networks" and b.voxel_size_um == (0.8, 0.8, 1.75) and b.tta == 8
    _meta(out, {"format": "qca_tf.bundle/1", "postprocess": {"nsn_threshold": 0.3, "ndn_threshold": 0.6,
                                                              "min_marker_size": 2}})
    old = read_bundle(out)
    assert old.postprocess == PostprocessConfig(nsn_threshold=0.3, ndn_threshold=0.6, min_marker_size=2)
    assert old.description == "" and old.voxel_size_um is None and old.info["format"] == BUNDLE_FORMAT
    assert old.tta == 1
    assert load_networks(bundle=out, infer_cfg=F32).postprocess.nsn_threshold == 0.3
    _meta(out, {"format": "qca_tf.bundle/2", "postprocess": {}, "description": "d", "voxel_size_um": None})
    two = read_bundle(out)
    assert two.tta == 1 and two.description == "d"  # format 2 predicted without test-time augmentation
    _meta(out, {"format": "qca_tf.bundle/3", "postprocess": {"nsn_threshold": 0.6}, "tta": 8})
    three = read_bundle(out)  # format 3 left the labels on the image
    assert three.postprocess == PostprocessConfig(nsn_threshold=0.6) and three.postprocess.annotation_offset_um == (0, 0, 0)


@pytest.mark.parametrize("payload,error,pattern", [
    ({"format": "qca_tf.bundle/5", "postprocess": {}}, ModelError,
     "written in qca_tf.bundle format 5 by a newer qca_tf; .*upgrade qca_tf"),
    ({"format": "qca_tf.bundle/3", "postprocess": {"annotation_offset_um": [0, 0.4, 0]}}, ConfigError,
     "key 'postprocess.annotation_offset_um' came with format 4"),
    ({"format": "qca_tf.bundle/4", "postprocess": {"annotation_offset_um": [0, 0.4]}}, ConfigError,
     r"invalid postprocess.annotation_offset_um: \(0, 0.4\) is not three numbers"),
    ({"format": "qca_tf.bundle/4", "postprocess": {"annotation_offset_um": [0, "x", 0]}}, ConfigError,
     "invalid postprocess.annotation_offset_um"),
    ({"format": "qca_tf.bundle/4", "postprocess": {"annotation_offset_um": 0.4}}, ConfigError,
     "postprocess: 'float' object is not iterable"),
    ({"format": "qca_tf.bundle/3", "postprocess": 0.5}, ConfigError, "postprocess: expected a JSON object"),
    ({"format": "qca_tf.bundle/3", "postprocess": {}, "tta": 2}, ConfigError, "tta 2 is not one of 1, 4, 8"),
    ({"format": "qca_tf.bundle/2", "postprocess": {}, "tta": 8}, ConfigError, "key 'tta' came with format 3"),
    ({"format": "qca_tf.bundle/3", "postprocess": {}, "tta": True}, ConfigError, "tta true is not one of"),
    ({"format": "qcanet", "postprocess": {}}, ModelError, "format 'qcanet' is not a qca_tf.bundle format"),
    ({"format": "qca_tf.bundle/2", "postprocess": {}, "thresholds": 1}, ConfigError, "unknown key 'thresholds'"),
    ({"format": "qca_tf.bundle/2", "postprocess": {"nsn_threshold": 2}}, ConfigError,
     "invalid postprocess.nsn_threshold"),
    ({"format": "qca_tf.bundle/2", "postprocess": {}, "voxel_size_um": [0.8, 0]}, ConfigError,
     r"voxel_size_um \[0.8, 0\] is not three"),
])
def test_bad_bundle_files(bundles, tmp_path, payload, error, pattern):
    root, _ = bundles
    out = make_bundle(tmp_path / "b", root / "mixed" / "nsn", root / "mixed" / "ndn", PostprocessConfig())
    _meta(out, payload)
    with pytest.raises(error, match=f"{out / 'qcanet.json'}: {pattern}"):
        read_bundle(out)


def test_bundle_errors(bundles, tmp_path):
    root, _ = bundles
    with pytest.raises(ModelError, match="no qcanet.json.*single model folder: give it with --nsn"):
        read_bundle(root / "mixed" / "nsn")
    with pytest.raises(ModelError, match="is a ndn model, not an NSN"):
        make_bundle(tmp_path / "b", root / "mixed" / "ndn", root / "mixed" / "ndn", PostprocessConfig())
    with pytest.raises(ModelError, match="model folder not found"):
        make_bundle(tmp_path / "c", tmp_path / "missing", root / "mixed" / "ndn", PostprocessConfig())
    assert not (tmp_path / "c").exists()


def test_bundle_cli_copies_weights_only(bundles, tmp_path):
    root, _ = bundles
    src = tmp_path / "trained"
    for task in ("nsn", "ndn"):
        _model_folder(src / task, task, DataConfig(), 5)
        (src / task / "epochs.csv").write_text("epoch,loss,metric,lr,best\n")
        (src / task / ".resume").mkdir()
    res = invoke("bundle", "--nsn", src / "nsn", "--ndn", src / "ndn", "--out", tmp_path / "b",
                 "--description", "test embryos", "--voxel-size", 0.8, 0.8, 1.75, "--nsn-threshold", 0.45,
                 "--tta", 4, "--annotation-offset", -0.35, -0.4, 0)
    assert res.exit_code == 0, res.output
    for task in ("nsn", "ndn"):
        assert sorted(p.name for p in (tmp_path / "b" / task).iterdir()) == ["config.json", "weights.h5"]
    b = read_bundle(tmp_path / "b")
    assert b.description == "test embryos" and b.voxel_size_um == (0.8, 0.8, 1.75)
    assert b.postprocess.nsn_threshold == 0.45 and b.tta == 4 and b.postprocess.annotation_offset_um == (-0.35, -0.4, 0)
    res = invoke("bundle", "--nsn", src / "nsn", "--ndn", src / "ndn", "--out", tmp_path / "c",
                 "--annotation-offset", 0, "nan", 0)
    assert res.exit_code != 0 and "z=0, y=nan" not in res.output and "y=nan must be a finite number" in res.output
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ named models


@pytest.fixture()
def registered(bundles, tmp_path, monkeypatch):
    """A model root holding 'tiny-embryo' (and a folder that is no bundle); the package's own
    pretrained folder replaced by an empty one, so the test sees only what it made."""
    root, _ = bundles
    models = tmp_path / "models"
    make_bundle(models / "tiny-embryo", root / "mixed" / "nsn", root / "mixed" / "ndn",
                PostprocessConfig(nsn_threshold=0.4), description="synthetic embryo, 5 nuclei",
                voxel_size_um=(0.8, 0.8, 1.75))
    (models / "notes").mkdir()
    monkeypatch.setattr(registry, "PACKAGE_ROOT", tmp_path / "package_pretrained")
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    return models


def test_lookup_by_name(registered, monkeypatch):
    assert registry.available([registered]) == {"tiny-embryo": registered / "tiny-embryo"}
    assert registry.resolve("tiny-embryo", [registered]) == registered / "tiny-embryo"
    monkeypatch.setenv(registry.ENV_VAR, str(registered))
    nets = load_networks(bundle="tiny-embryo", infer_cfg=F32)
    assert nets.bundle.folder == registered / "tiny-embryo" and nets.postprocess.nsn_threshold == 0.4
    assert registry.resolve(str(registered / "tiny-embryo")) == registered / "tiny-embryo"  # a path stays a path


def test_first_root_wins(registered, tmp_path, bundles):
    root, _ = bundles
    other = tmp_path / "other"
    make_bundle(other / "tiny-embryo", root / "same" / "nsn", root / "same" / "ndn", PostprocessConfig())
    assert registry.resolve("tiny-embryo", [other, registered]) == other / "tiny-embryo"


def test_listing(registered, monkeypatch):
    (entry,) = registry.list_models([registered])
    size = registry.folder_size(registered / "tiny-embryo")
    assert entry.size_bytes == size > 0
    assert entry.line() == (f"tiny-embryo: synthetic embryo, 5 nuclei; voxels 0.8 x 0.8 x 1.75 um (x y z), "
                            f"grid 0.8 um; {size / 1000:.1f} KB")
    monkeypatch.setenv(registry.ENV_VAR, str(registered))
    res = invoke("models")
    assert res.exit_code == 0 and res.output.strip() == entry.line()


def test_listing_says_when_a_model_predicts_with_tta(bundles, tmp_path):
    root, _ = bundles
    make_bundle(tmp_path / "r" / "tta-embryo", root / "same" / "nsn", root / "same" / "ndn", PostprocessConfig(),
                description="d", tta=8)
    (entry,) = [e for e in registry.list_models([tmp_path / "r"]) if e.name == "tta-embryo"]
    assert entry.tta == 8 and "grid 0.8 um; predicts with --tta 8; " in entry.line()


def test_unknown_names(registered, monkeypatch, bundles, tmp_path):
    with pytest.raises(ModelError, match="^nope: not a model folder nor a known model name; known names: tiny-embryo"):
        registry.resolve("nope", [registered])
    with pytest.raises(ModelError, match="^nope: .*no named models are installed"):
        registry.resolve("nope")
    with pytest.raises(ModelError, match="model folder not found"):
        registry.resolve(str(tmp_path / "a" / "b"))
    res = invoke("models")
    assert res.exit_code == 0 and res.output.startswith("no named models installed")
    monkeypatch.setenv(registry.ENV_VAR, str(registered))
    root, _ = bundles
    one_line_error(invoke("predict", root / "images", "--model", "nope", "--out", tmp_path / "o"),
                   "nope", "known names: tiny-embryo")


def test_predict_cli_with_a_name_equals_the_folder(registered, monkeypatch, bundles, tmp_path):
    root, _ = bundles
    monkeypatch.setenv(registry.ENV_VAR, str(registered))
    by_name = invoke("predict", root / "images", "--model", "tiny-embryo", "--out", tmp_path / "a", "--no-quicklook")
    by_folder = invoke("predict", root / "images", "--model", registered / "tiny-embryo", "--out", tmp_path / "b",
                       "--no-quicklook")
    assert by_name.exit_code == 0 and by_folder.exit_code == 0, by_name.output + by_folder.output
    np.testing.assert_array_equal(io.read_stack(tmp_path / "a" / "labels" / "t0000.tif"),
                                  io.read_stack(tmp_path / "b" / "labels" / "t0000.tif"))
    assert read_json(tmp_path / "a" / "run.json")["postprocess"]["nsn_threshold"] == 0.4


def test_package_data_covers_every_file_of_a_bundle(bundles, tmp_path):
    """A bundle copied into qca_tf/pretrained/<name>/ would go into the wheel whole:
    setup.cfg's package_data patterns match every file make_bundle writes."""
    import configparser
    import fnmatch
    from pathlib import Path

    root, _ = bundles
    out = make_bundle(tmp_path / "pretrained" / "embryo", root / "mixed" / "nsn", root / "mixed" / "ndn",
                      PostprocessConfig())
    parser = configparser.ConfigParser()
    parser.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    patterns = [p.strip() for p in parser["options.package_data"]["qca_tf"].splitlines() if p.strip()]
    files = [p.relative_to(tmp_path).as_posix() for p in out.rglob("*") if p.is_file()]
    assert len(files) == 5
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) for pat in patterns), f
