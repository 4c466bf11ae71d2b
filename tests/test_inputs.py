"""Inputs through the CLI: multi-channel hyperstacks (--channel), a model on several
channels end to end, evaluate without voxel sizes, one-line errors for odd TIFFs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile

from cli_helpers import invoke, one_line_error
from conftest import TINY, VOXEL
from qca_tf import io
from qca_tf.preprocess import pad_to_multiple


def _imagej_zcyx(path, channels: list[np.ndarray], names=None, voxel=VOXEL) -> None:
    """Write (z, y, x) arrays as one ImageJ ZCYX hyperstack with the voxel size."""
    data = np.stack(channels, axis=1)
    metadata = {"axes": "ZCYX", "spacing": voxel.z, "unit": "um"}
    if names:
        metadata["Labels"] = list(names) * data.shape[0]
    tifffile.imwrite(path, data, imagej=True, metadata=metadata, resolution=(1 / voxel.x, 1 / voxel.y))


def _noise_like(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, int(image.max()) + 1, image.shape).astype(image.dtype)


# --------------------------------------------------------------------------- evaluate


def _write_plain(path, labels):
    tifffile.imwrite(path, labels.astype(np.uint16), photometric="minisblack")  # no voxel size


def test_evaluate_without_voxel_size(synth_dataset, tmp_path):
    _, series = synth_dataset
    gt = series[0].labels
    pred = gt.copy()
    pred[pred == 1] = 0  # one nucleus missed
    n = int(gt.max())
    _write_plain(tmp_path / "gt.tif", gt)
    _write_plain(tmp_path / "pred.tif", pred)
    out = tmp_path / "e.json"
    result = invoke("evaluate", "--pred", tmp_path / "pred.tif", "--gt", tmp_path / "gt.tif", "--json", out)
    assert result.exit_code == 0, result.output
    assert "detection P/R/F not computed" in result.output and "--voxel-size" in result.output
    payload = json.loads(out.read_text())
    row = payload["per_timepoint"][0]
    assert row["voxel_size_um"] is None and row["det_f1"] is None
    assert row["tp@0.5"] == n - 1 and row["fn@0.5"] == 1 and row["fp@0.5"] == 0
    assert row["mucov"] == pytest.approx(1.0) and row["seg"] == pytest.approx((n - 1) / n)
    assert payload["detection"].startswith("detection P/R/F not computed")
    assert "det_f1" not in payload["summary"] and payload["mean"]["seg"] == pytest.approx((n - 1) / n)

    out2 = tmp_path / "e2.json"
    result = invoke("evaluate", "--pred", tmp_path / "pred.tif", "--gt", tmp_path / "gt.tif", "--json", out2,
                    "--voxel-size", VOXEL.x, VOXEL.y, VOXEL.z)
    assert result.exit_code == 0 and "not computed" not in result.output
    payload = json.loads(out2.read_text())
    assert payload["detection"] == "computed"
    assert payload["per_timepoint"][0]["det_recall"] == pytest.approx((n - 1) / n)
    assert payload["per_timepoint"][0]["voxel_size_um"] == [VOXEL.x, VOXEL.y, VOXEL.z]


def test_evaluation_json_same_shape_from_cli_and_demo_writer(tmp_path):
    from qca_tf.evaluate import evaluate_series

    labels = np.zeros((4, 8, 8), np.uint16)
    labels[1:3, 2:5, 2:5] = 1
    io.write_stack(tmp_path / "a.tif", labels, VOXEL)
    invoke("evaluate", "--pred", tmp_path / "a.tif", "--gt", tmp_path / "a.tif", "--json", tmp_path / "cli.json")
    evaluate_series(tmp_path / "a.tif", tmp_path / "a.tif").write_json(tmp_path / "lib.json")  # what the demo calls
    cli, lib = (json.loads((tmp_path / f).read_text()) for f in ("cli.json", "lib.json"))
    assert cli == lib and cli["format"] == "qca_tf.evaluation/1" and cli["mean"]["det_f1"] == 1.0


def test_evaluate_float_labels_error_names_file(tmp_path):
    io.write_stack(tmp_path / "gt.tif", np.ones((4, 8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "p.tif", np.full((4, 8, 8), 0.5, np.float32), photometric="minisblack")
    one_line_error(invoke("evaluate", "--pred", tmp_path / "p.tif", "--gt", tmp_path / "gt.tif"),
                   "p.tif: a label image must hold integers")


def test_tiff_header_without_pages_is_one_error_line(tmp_path):
    hollow = tmp_path / "hollow.tif"
    hollow.write_bytes(b"II*\x00\x00\x00\x00\x00")
    result = invoke("evaluate", "--pred", hollow, "--gt", hollow)
    one_line_error(result, "hollow.tif: TIFF file holds no images")
    assert "list index" not in result.output and "contains no pages" not in result.output


def test_axes_without_z_refused_on_the_command_line(tmp_path):
    tifffile.imwrite(tmp_path / "tyx.tif", np.zeros((4, 8, 8), np.uint8), imagej=True, metadata={"axes": "TYX"})
    one_line_error(invoke("evaluate", "--pred", tmp_path / "tyx.tif", "--gt", tmp_path / "tyx.tif"),
                   "tyx.tif: axes TYX", "no z axis")


# --------------------------------------------------------------------------- --channel with a one-channel model


def test_predict_channel_of_hyperstack_equals_single_channel(trained_bundle, synth_dataset, tmp_path):
    bundle, _ = trained_bundle
    root, series = synth_dataset
    image = io.read_stack(root / "images" / "t0000.tif")
    _imagej_zcyx(tmp_path / "two.tif", [_noise_like(image, 1), image], names=["membrane", "H2B"])
    one_line_error(invoke("predict", tmp_path / "two.tif", "--model", bundle, "--out", tmp_path / "x"),
                   "two.tif: has 2 channels (0: membrane, 1: H2B); choose the nuclear channel with --channel N")
    one_line_error(invoke("predict", tmp_path / "two.tif", "--model", bundle, "--out", tmp_path / "x",
                          "--channel", 0, "--channel", 1), "--channel: the model takes 1 channel(s); got 2")
    single = invoke("predict", root / "images" / "t0000.tif", "--model", bundle, "--out", tmp_path / "one",
                    "--no-quicklook")
    assert single.exit_code == 0, single.output
    picked = invoke("predict", tmp_path / "two.tif", "--model", bundle, "--out", tmp_path / "ch1", "--channel", 1,
                    "--no-quicklook")
    assert picked.exit_code == 0, picked.output
    expected = io.read_stack(tmp_path / "one" / "labels" / "t0000.tif")
    assert expected.max() >= 3
    np.testing.assert_array_equal(io.read_stack(tmp_path / "ch1" / "labels" / "two.tif"), expected)
    run = json.loads((tmp_path / "ch1" / "run.json").read_text())
    assert run["options"]["channels"] == [1]


def test_one_channel_model_replays_its_training_channel(trained_bundle, synth_dataset, tmp_path):
    """A one-channel model trained with --channel 1 records it (data.channels); prediction on a
    multi-channel file without --channel reads channel 1, a one-channel file is read as it is,
    and --channel still overrides."""
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    image = io.read_stack(root / "images" / "t0000.tif")
    _imagej_zcyx(tmp_path / "two.tif", [_noise_like(image, 1), image], names=["membrane", "H2B"])
    recorded = tmp_path / "bundle_ch1"
    shutil.copytree(bundle, recorded)
    cfg_path = recorded / "nsn" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["data"]["channels"] = [1]  # what `qca-tf train nsn --channel 1` writes
    cfg_path.write_text(json.dumps(cfg))

    reference = invoke("predict", tmp_path / "two.tif", "--model", bundle, "--out", tmp_path / "ref", "--channel", 1,
                       "--no-quicklook")
    assert reference.exit_code == 0, reference.output
    replayed = invoke("predict", tmp_path / "two.tif", "--model", recorded, "--out", tmp_path / "rep", "--no-quicklook")
    assert replayed.exit_code == 0, replayed.output
    expected = io.read_stack(tmp_path / "ref" / "labels" / "two.tif")
    assert expected.max() >= 3
    np.testing.assert_array_equal(io.read_stack(tmp_path / "rep" / "labels" / "two.tif"), expected)
    run = json.loads((tmp_path / "rep" / "run.json").read_text())
    assert run["options"]["channels"] is None and run["options"]["default_channels"] == [1]

    single = invoke("predict", root / "images" / "t0000.tif", "--model", recorded, "--out", tmp_path / "one",
                    "--no-quicklook")
    assert single.exit_code == 0, single.output
    noise = invoke("predict", tmp_path / "two.tif", "--model", recorded, "--out", tmp_path / "ch0", "--channel", 0,
                   "--no-quicklook")
    assert noise.exit_code == 0, noise.output
    assert not np.array_equal(io.read_stack(tmp_path / "ch0" / "labels" / "two.tif"), expected)


# --------------------------------------------------------------------------- a model on two channels


def test_two_channel_model_train_predict_export(synth_dataset, tmp_path):
    """Channel 0 holds the nuclei at half brightness, channel 1 noise: the (0, 1) model learns,
    its folder records the channels, predict replays them, export keeps two input channels."""
    root, series = synth_dataset
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    shutil.copytree(root / "nsn", data / "nsn")
    for i, f in enumerate(sorted((root / "images").glob("*.tif"))):
        image = io.read_stack(f)
        _imagej_zcyx(data / "images" / f.name, [image // 2, _noise_like(image, i)])
    model = tmp_path / "nsn2"
    result = invoke("train", "nsn", "--data", data, "--out", model, "--epochs", 8, "--patch", 32,
                    "--depth", TINY["depth"], "--init-channels", TINY["init_channels"], "--optimizer", "adam",
                    "--adam-alpha", 3e-3, "--loss", "ce+dice", "--crops-per-volume", 8,
                    "--channel", 0, "--channel", 1)
    assert result.exit_code == 0, result.output
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["data"]["channels"] == [0, 1] and cfg["model"]["input_channels"] == 2
    assert cfg["metrics"]["val_iou"] > 0.5

    out = tmp_path / "pred"
    result = invoke("predict", data / "images" / "t0000.tif", "--nsn", model, "--out", out, "--no-quicklook")
    assert result.exit_code == 0, result.output
    labels = io.read_stack(out / "labels" / "t0000.tif")
    from qca_tf.metrics import iou
    assert iou(labels > 0, series[0].labels > 0) > 0.5

    exported = tmp_path / "nsn2_saved"
    assert invoke("export", model, exported).exit_code == 0
    result = invoke("predict", data / "images" / "t0000.tif", "--nsn", exported, "--out", tmp_path / "pred_sm",
                    "--no-quicklook")
    assert result.exit_code == 0, result.output
    from_saved = io.read_stack(tmp_path / "pred_sm" / "labels" / "t0000.tif")
    assert np.mean((from_saved > 0) == (labels > 0)) > 0.999  # same network, float rounding aside

    one_line_error(invoke("predict", data / "images" / "t0000.tif", "--nsn", model, "--out", tmp_path / "bad",
                          "--channel", 0), "--channel: the model takes 2 channel(s); got 1")


def test_train_channel_missing_from_file_is_one_error(synth_dataset, tmp_path):
    root, _ = synth_dataset
    one_line_error(invoke("train", "nsn", "--data", root, "--out", tmp_path / "m", "--epochs", 1, "--channel", 1),
                   "t0000.tif: has 1 channel(s) (0); no channel 1")


# --------------------------------------------------------------------------- big volumes


@pytest.mark.parametrize("channels,shape,tta", [(1, (13, 21, 35), 1), (2, (9, 16, 17), 1), (2, (9, 16, 17), 8)])
def test_tiled_prediction_on_disk_equals_in_memory(monkeypatch, channels, shape, tta):
    """Above SCRATCH_FRACTION of the budget the padded input and the output live in memory-mapped
    temp files; the probabilities are the same (mirror padding included). With test-time
    augmentation the sum of the transforms' predictions is a scratch file too."""
    import keras

    from qca_tf import infer
    from qca_tf.config import InferenceConfig, ModelConfig
    from qca_tf.modelio import LoadedModel
    from qca_tf.models import build_unet

    cfg = ModelConfig(depth=2, init_channels=2, kernel_size=3, input_channels=channels)
    keras.utils.set_random_seed(0)
    loaded = LoadedModel(build_unet(cfg), cfg, "nsn", 0.8, folder=None)  # type: ignore[arg-type]
    volume = np.random.default_rng(1).random((*shape, channels), dtype=np.float32)
    infer_cfg = InferenceConfig(max_memory_gb=2e-4, tta=tta)  # forces tiles
    in_memory = infer.predict_probabilities(loaded, volume, infer_cfg)
    made = []
    real = infer.scratch_array
    monkeypatch.setattr(infer, "scratch_array", lambda *a, **k: made.append(a) or real(*a, **k))
    monkeypatch.setattr(infer, "SCRATCH_FRACTION", 0.0)
    on_disk = infer.predict_probabilities(loaded, volume, infer_cfg)
    # padded input and output per transform, and with tta the sum
    assert len(made) == (2 if tta == 1 else 1 + 2 * tta) and isinstance(on_disk, np.memmap)
    assert on_disk.shape == in_memory.shape == shape
    np.testing.assert_array_equal(np.asarray(on_disk), in_memory)
    padded, crop = infer._pad_into_scratch(volume, 8)
    expected, _ = pad_to_multiple(volume, 8, channels_last=True)
    np.testing.assert_array_equal(np.asarray(padded), expected)
