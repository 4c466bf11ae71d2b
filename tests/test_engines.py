"""Prediction engines: OpenVINO equals TensorFlow float32, tiles with it, caches its
conversion, chooses bf16 only on bf16 hardware, and is refused cleanly where missing."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras

from qca_tf import engines, infer, io, predict
from qca_tf.config import InferenceConfig, ModelConfig
from qca_tf.errors import ConfigError, ModelError
from qca_tf.modelio import LoadedModel
from qca_tf.models import build_unet

from cli_helpers import invoke, one_line_error
from model_helpers import randomize_bn


OV = InferenceConfig(engine="openvino", precision="float32")
TF = InferenceConfig(engine="tensorflow", precision="float32")


def _random(cfg: ModelConfig, seed: int) -> LoadedModel:
    keras.utils.set_random_seed(seed)
    model = build_unet(cfg)
    randomize_bn(model, np.random.default_rng(seed))
    return LoadedModel(model, cfg, "nsn", 0.8, folder=None)  # type: ignore[arg-type]


def _volume(shape, seed):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_openvino_equals_tensorflow_whole_and_tiled():
    loaded = _random(ModelConfig(depth=2, init_channels=4, kernel_size=3), seed=11)
    vol = _volume((21, 30, 27), seed=12)
    ref = infer.predict_probabilities(loaded, vol, TF)
    whole = infer.predict_probabilities(loaded, vol, OV)
    tiled = infer.predict_probabilities(loaded, vol, InferenceConfig(engine="openvino", precision="float32",
                                                                      tile=(8, 8, 8), batch_size=2))
    assert whole.shape == tiled.shape == vol.shape and whole.dtype == tiled.dtype == np.float32
    assert ref.std() > 0.03  # a non-trivial map, so equality means something
    np.testing.assert_allclose(whole, ref, atol=1e-5)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert ("openvino", "float32") in loaded.forward_cache


def test_openvino_labels_equal_tensorflow_on_trained_networks(trained_bundle, synth_dataset):
    """Trained tiny NSN + NDN on the synthetic test volumes: masks agree on >= 99.99% of
    voxels and the instance labels are identical."""
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    nets = predict.load_networks(bundle=bundle, infer_cfg=InferenceConfig(precision="float32"))
    for tp in io.read_series(root / "images"):
        prep = predict.prepare(tp, None, nets.recipes)
        results = {}
        for cfg in (TF, OV):
            nsn, ndn = predict.segment(nets, prep.volumes, cfg)
            results[cfg.engine] = (nsn, ndn, predict.to_labels(nets, prep.raw.shape, nsn, ndn)[0])
        (t_nsn, t_ndn, t_lab), (o_nsn, o_ndn, o_lab) = results["tensorflow"], results["openvino"]
        assert np.mean((t_nsn > 0.5) == (o_nsn > 0.5)) >= 0.9999
        assert np.mean((t_ndn > 0.5) == (o_ndn > 0.5)) >= 0.9999
        assert t_lab.max() >= 3  # nuclei were found, so equal labels mean something
        np.testing.assert_array_equal(o_lab, t_lab)


def test_cli_engines_give_the_same_labels(trained_bundle, synth_dataset, tmp_path):
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    image = root / "images" / "t0002.tif"
    labels = {}
    for name, engine, precision in (("tensorflow", "tensorflow", "float32"), ("openvino", "openvino", "float32"),
                                    ("openvino_auto", "openvino", "auto")):
        res = invoke("predict", image, "--model", bundle, "--out", tmp_path / name, "--engine", engine,
                     "--precision", precision, "--no-quicklook")
        assert res.exit_code == 0, res.output
        labels[name] = io.read_stack(tmp_path / name / "labels" / "t0002.tif")
    assert labels["tensorflow"].max() >= 3
    np.testing.assert_array_equal(labels["openvino"], labels["tensorflow"])
    # auto is bf16 on a CPU with bf16 units (AMX / AVX512_BF16), float32 elsewhere: the same
    # nuclei, and masks equal on >= 99.99 % of voxels (on an AVX-512 BF16 EPYC 5 of 65,536 differ)
    auto, ref = labels["openvino_auto"], labels["tensorflow"]
    assert auto.max() == ref.max()
    assert np.mean((auto > 0) == (ref > 0)) >= 0.9999
    if engines.openvino_precision("auto") == "float32":
        np.testing.assert_array_equal(auto, ref)


def test_conversion_is_cached_by_weights(monkeypatch):
    cfg = ModelConfig(depth=1, init_channels=2)
    first = _random(cfg, seed=21)
    vol = _volume((8, 12, 10), seed=22)
    expected = infer.predict_probabilities(first, vol, OV)
    calls = []
    real_convert = engines._convert
    monkeypatch.setattr(engines, "_convert", lambda loaded, xml: (calls.append(xml), real_convert(loaded, xml)))
    same = _random(cfg, seed=21)  # a fresh model with the same weights: the cached IR, no conversion
    np.testing.assert_array_equal(infer.predict_probabilities(same, vol, OV), expected)
    assert calls == []
    other = _random(cfg, seed=21)
    kernel = other.model.get_layer("head_conv").kernel
    kernel.assign(kernel.numpy() * 2)  # other weights: another key, converted again
    assert engines.model_key(other) != engines.model_key(same)
    out = infer.predict_probabilities(other, vol, OV)
    assert len(calls) == 1 and np.abs(out - expected).max() > 1e-3


def test_openvino_needs_a_float32_network():
    cfg = ModelConfig(depth=1, init_channels=2)
    model = build_unet(cfg, dtype_policy="mixed_bfloat16")
    loaded = LoadedModel(model, cfg, "nsn", 0.8, folder=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="float32"):
        infer.predict_probabilities(loaded, _volume((4, 4, 4), 0), OV)


def test_bf16_only_where_the_cpu_has_bf16_units():
    assert engines.has_bf16_units(capabilities=frozenset({"FP32", "BF16", "INT8"}))
    assert not engines.has_bf16_units(capabilities=frozenset({"FP32", "INT8", "BIN"}))
    assert engines.openvino_precision("auto", bf16_units=True) == "mixed_bfloat16"
    assert engines.openvino_precision("auto", bf16_units=False) == "float32"
    assert engines.openvino_precision("float32", bf16_units=True) == "float32"
    assert engines.openvino_precision("mixed_bfloat16", bf16_units=True) == "mixed_bfloat16"
    assert engines.openvino_precision("mixed_bfloat16", bf16_units=False) == "float32"
    with pytest.raises(ConfigError, match="mixed_float16"):
        engines.openvino_precision("mixed_float16", bf16_units=True)
    # this machine: the choice follows OpenVINO's own report of the CPU
    assert engines.openvino_precision("auto") == (
        "mixed_bfloat16" if "BF16" in engines.openvino_capabilities() else "float32")


def test_bf16_from_cpu_flags_without_openvino(monkeypatch, tmp_path):
    monkeypatch.setattr(engines, "openvino_capabilities", lambda: (_ for _ in ()).throw(ImportError("no")))
    assert engines.has_bf16_units(flags=frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert engines.has_bf16_units(flags=frozenset({"avx512f", "avx512_bf16"}))
    assert not engines.has_bf16_units(flags=frozenset({"avx2", "fma", "avx512f"}))
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert engines.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}


def test_bf16_engine_runs_close_to_float32():
    """On a CPU with bf16 units this runs bf16 (differences up to a few 1e-2); elsewhere float32."""
    loaded = _random(ModelConfig(depth=1, init_channels=4), seed=31)
    vol = _volume((12, 16, 14), seed=32)
    f32 = infer.predict_probabilities(loaded, vol, OV)
    b16 = infer.predict_probabilities(loaded, vol, InferenceConfig(engine="openvino", precision="mixed_bfloat16"))
    np.testing.assert_allclose(b16, f32, atol=3e-2)


def test_engine_auto_and_unavailable(monkeypatch):
    assert engines.resolve_engine("auto", gpu=True, openvino_error=None) == "tensorflow"
    assert engines.resolve_engine("auto", gpu=False, openvino_error=None) == "openvino"
    assert engines.resolve_engine("auto", gpu=False, openvino_error="ImportError: x") == "tensorflow"
    assert engines.resolve_engine("tensorflow", gpu=False, openvino_error=None) == "tensorflow"
    assert engines.resolve_engine("openvino", gpu=True, openvino_error=None) == "openvino"

    def missing():
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(engines, "_import_openvino", missing)
    assert engines.openvino_import_error() == "ImportError: No module named 'openvino'"
    assert engines.resolve_engine("auto", gpu=False) == "tensorflow"
    with pytest.raises(ConfigError, match="pip install openvino"):
        engines.resolve_engine("openvino")


def test_cli_openvino_missing_is_one_line(monkeypatch, trained_bundle, synth_dataset, tmp_path):
    bundle, _ = trained_bundle
    root, _ = synth_dataset

    def missing():
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(engines, "_import_openvino", missing)
    res = invoke("predict", root / "images" / "t0000.tif", "--model", bundle, "--out", tmp_path / "o",
                 "--engine", "openvino")
    one_line_error(res, "--engine openvino", "OpenVINO is not available", "pip install openvino")


def test_jit_dropped_on_cpu_with_a_reason(caplog):
    with caplog.at_level(logging.WARNING, logger="qca_tf.engines"):
        assert engines.use_jit(True, "tensorflow", gpu=False) is False
    assert "ignored on a CPU" in caplog.text and "10x slower" in caplog.text
    assert engines.use_jit(True, "tensorflow", gpu=True) is True
    assert engines.use_jit(False, "tensorflow", gpu=True) is False
    assert engines.use_jit(True, "openvino", gpu=False) is False


_NO_TF_RUN = """
import sys
from qca_tf.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("TENSORFLOW_LOADED", "tensorflow" in sys.modules, file=sys.stderr)
"""


def test_cached_openvino_model_runs_without_tensorflow(trained_bundle, synth_dataset, tmp_path):
    """With the openvino engine and both networks already converted, `qca-tf predict` never
    imports TensorFlow (seconds of start-up) and writes the same labels; other weights in
    the folder are never served the old conversion."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    if not any(os.path.exists(p) for p in engines.GPU_DEVICE_FILES):
        bundle, _ = trained_bundle
        root, _ = synth_dataset
        image = root / "images" / "t0002.tif"
        env = {**os.environ, "QCA_TF_CACHE": str(tmp_path / "cache")}
        loaded = []
        for run in ("first", "second"):
            res = subprocess.run([sys.executable, "-c", _NO_TF_RUN, "predict", str(image), "--model", str(bundle),
                                  "--out", str(tmp_path / run), "--engine", "openvino", "--no-quicklook"],
                                 capture_output=True, text=True, env=env, cwd=tmp_path)
            assert res.returncode == 0, res.stderr
            loaded.append("TENSORFLOW_LOADED True" in res.stderr)
        assert loaded == [True, False]  # the first run converts (Keras), the second reads the cache only
        np.testing.assert_array_equal(io.read_stack(tmp_path / "second" / "labels" / "t0002.tif"),
                                      io.read_stack(tmp_path / "first" / "labels" / "t0002.tif"))
        run_json = json.loads((tmp_path / "second" / "run.json").read_text())
        assert run_json["device"] == ["CPU (OpenVINO; TensorFlow not loaded)"]
        assert run_json["versions"]["tensorflow"]  # still recorded, from the installed package
    # the cache is keyed by the weights file's bytes: changed weights are not served the old model
    folder = tmp_path / "nsn"
    shutil.copytree(trained_bundle[0] / "nsn", folder)
    os.environ["QCA_TF_CACHE"], saved = str(tmp_path / "cache2"), os.environ.get("QCA_TF_CACHE")
    try:
        assert engines.cached_openvino_model(folder) is None  # not converted yet
        loaded_model = infer.load_for_inference(folder, OV)
        engines.converted_model(loaded_model)
        cached = engines.cached_openvino_model(folder)
        assert cached is not None and cached.model is None and cached.task == "nsn"
        with pytest.raises(ModelError, match="openvino engine only"):
            infer.predict_probabilities(cached, _volume((16, 24, 24), seed=5), TF)
        vol = _volume((16, 24, 24), seed=5)
        np.testing.assert_array_equal(infer.predict_probabilities(cached, vol, OV),
                                      infer.predict_probabilities(loaded_model, vol, OV))
        weights = folder / "weights.h5"
        blob = bytearray(weights.read_bytes())
        blob[-1] ^= 1
        weights.write_bytes(bytes(blob))
        assert engines.cached_openvino_model(folder) is None
    finally:
        if saved is None:
            os.environ.pop("QCA_TF_CACHE", None)
        else:
            os.environ["QCA_TF_CACHE"] = saved


def test_no_gpu_device_file_means_no_gpu_without_tensorflow(monkeypatch):
    """On Linux without /dev/nvidia* or /dev/kfd, TensorFlow is not asked (nor imported)."""
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("the device-file check is Linux only")
    engines.has_gpu.cache_clear()
    monkeypatch.setattr(engines.os.path, "exists", lambda p: False)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # importing it now would raise ImportError
    try:
        assert engines.has_gpu() is False
    finally:
        engines.has_gpu.cache_clear()


def test_run_json_versions_without_tensorflow_package_metadata(monkeypatch):
    """run.json's TensorFlow version: the loaded module's own, even when no distribution is
    named "tensorflow" (tensorflow-cpu installs); from the package when it is not loaded."""
    import importlib.metadata
    import sys
    import types

    from qca_tf import predict

    def version(name):
        if name == "tensorflow-cpu":
            return "9.9.9"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setitem(sys.modules, "tensorflow", types.SimpleNamespace(__version__="9.9.8"))
    assert predict.library_versions()["tensorflow"] == "9.9.8"
    monkeypatch.delitem(sys.modules, "tensorflow")
    assert predict.library_versions()["tensorflow"] == "9.9.9"


def test_no_gpu_check_asks_tensorflow_on_wsl2_and_jetson(monkeypatch):
    """A GPU TensorFlow can use under WSL2 shows as /dev/dxg, on a Jetson as /dev/nvhost-*,
    not /dev/nvidia*: there TensorFlow is asked, not "no GPU" assumed (which would run
    --engine auto on the CPU and drop --jit)."""
    import sys
    import types

    if not sys.platform.startswith("linux"):
        pytest.skip("the device-file check is Linux only")
    fake_tf = types.SimpleNamespace(config=types.SimpleNamespace(list_physical_devices=lambda kind: ["GPU:0"]))
    monkeypatch.setitem(sys.modules, "tensorflow", fake_tf)
    for device in ("/dev/dxg", "/dev/nvhost-ctrl-gpu"):
        engines.has_gpu.cache_clear()
        monkeypatch.setattr(engines.os.path, "exists", lambda p, device=device: p == device)
        try:
            assert engines.has_gpu() is True, device
        finally:
            engines.has_gpu.cache_clear()


def test_model_key_hashes_a_weights_file_once_until_it_changes(tmp_path, monkeypatch):
    """A cache hit looks the key up twice (cached_openvino_model, then the engine): the file
    is read once; a rewritten file (new content, same size) gets its own key."""
    import types

    cfg = ModelConfig(depth=1, init_channels=2)
    weights = tmp_path / "weights.h5"
    weights.write_bytes(b"a" * 4096)
    loaded = types.SimpleNamespace(model_cfg=cfg, weights_path=weights, model=None)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (reads.append(str(p)), real_open(p, *a, **k))[1])
    first = engines.model_key(loaded)
    assert engines.model_key(loaded) == first and reads.count(str(weights)) == 1
    tmp = tmp_path / "new.h5"
    tmp.write_bytes(b"b" * 4096)
    tmp.replace(weights)  # how weights are written: a new file renamed over the old one
    assert engines.model_key(loaded) != first and reads.count(str(weights)) == 2
