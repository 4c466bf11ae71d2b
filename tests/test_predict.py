"""`qca-tf predict` end to end, resume/shard, SavedModel input, evaluate, export, bad input."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from qca_tf import io, metrics
from cli_helpers import invoke, one_line_error

VOXEL = io.VoxelSize(0.8, 0.8, 1.75)


@pytest.fixture(scope="module")
def predicted(trained_bundle, synth_dataset, tmp_path_factory):
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    out = tmp_path_factory.mktemp("pred")
    res = invoke("predict", root / "images", "--model", bundle, "--out", out, "--save-masks")
    assert res.exit_code == 0, res.output
    return out, res.output


def test_predict_writes_every_output(predicted, synth_dataset):
    out, output = predicted
    root, series = synth_dataset
    assert "segmented 3 time point(s)" in output
    for name in ("t0000", "t0001", "t0002"):
        labels = io.read_stack(out / "labels" / f"{name}.tif")
        assert labels.dtype == np.uint16 and labels.shape == series[0].image.shape
        assert io.read_voxel_size(out / "labels" / f"{name}.tif") == VOXEL
        assert set(np.unique(labels)) == set(range(int(labels.max()) + 1))  # 0..N consecutive
        assert (out / "nsn" / f"{name}.tif").exists() and (out / "ndn" / f"{name}.tif").exists()
        assert (out / "plots" / "quicklook" / f"{name}.png").exists()
    summary = list(csv.DictReader(open(out / "criteria.csv")))
    nuclei = list(csv.DictReader(open(out / "nuclei.csv")))
    assert [r["name"] for r in summary] == ["t0000", "t0001", "t0002"]
    assert sum(int(r["count"]) for r in summary) == len(nuclei)
    assert all(float(r["volume_um3"]) > 0 and float(r["surface_um2"]) > 0 for r in nuclei)
    assert (out / "plots" / "timeseries.png").stat().st_size > 10_000
    run = json.loads((out / "run.json").read_text())
    assert run["processed"] == ["t0000", "t0001", "t0002"] and "networks" in run["timings_s"]


def test_predicted_instances_match_ground_truth(predicted, synth_dataset):
    """The tiny networks + watershed recover every nucleus as its own instance (IoU >= 0.5),
    the touching pair included, which NSN alone fuses."""
    out, _ = predicted
    _, series = synth_dataset
    recalls = []
    for i, tp in enumerate(series):
        pred = io.read_stack(out / "labels" / f"t{i:04d}.tif")
        scores = metrics.evaluate(pred, tp.labels, VOXEL.zyx, 3.0)
        assert scores["iou"] >= 0.7
        assert scores["det_f1"] >= 0.7
        recalls.append(scores["recall@0.5"])
        components = ndimage.label(io.read_stack(out / "nsn" / f"t{i:04d}.tif") > 0)[0]
        nsn_only = metrics.evaluate(components, tp.labels, VOXEL.zyx, 3.0)
        assert nsn_only["recall@0.5"] < 1.0  # connected components of the mask fuse the touching pair
    assert np.mean(recalls) >= 0.9


def test_min_volume_option(predicted, trained_bundle, synth_dataset, tmp_path):
    """--min-volume (um^3) drops the instances under it; the default (20 um^3) is recorded."""
    out, _ = predicted
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    recorded = json.loads((out / "run.json").read_text())["postprocess"]
    assert recorded["min_volume_um3"] == 20.0 and recorded["marker_gap_um"] == 0.8
    volumes = sorted(float(r["volume_um3"]) for r in csv.DictReader(open(out / "nuclei.csv")) if r["name"] == "t0000")
    assert len(volumes) >= 3 and volumes[0] >= 20.0
    gap = int(np.argmax(np.diff(volumes)))  # a threshold in the widest gap: resampling cannot move a nucleus across
    threshold = (volumes[gap] + volumes[gap + 1]) / 2
    res = invoke("predict", root / "images" / "t0000.tif", "--model", bundle, "--out", tmp_path / "o",
                 "--min-volume", threshold, "--no-quicklook")
    assert res.exit_code == 0, res.output
    kept = [float(r["volume_um3"]) for r in csv.DictReader(open(tmp_path / "o" / "nuclei.csv"))]
    assert sorted(kept) == pytest.approx(volumes[gap + 1:])
    assert json.loads((tmp_path / "o" / "run.json").read_text())["postprocess"]["min_volume_um3"] == threshold
    refused = invoke("predict", root / "images", "--model", bundle, "--out", tmp_path / "p", "--min-volume", -1)
    assert refused.exit_code == 2 and "Invalid value for '--min-volume'" in refused.output  # click's usage error
    assert not (tmp_path / "p").exists()


def test_rerun_skips_finished_and_overwrite_redoes(predicted, trained_bundle, synth_dataset, tmp_path):
    out, _ = predicted
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = (copy / "labels" / "t0001.tif").stat().st_mtime_ns
    res = invoke("predict", root / "images", "--model", bundle, "--out", copy)
    assert res.exit_code == 0 and "skipped 3 finished" in res.output
    assert (copy / "labels" / "t0001.tif").stat().st_mtime_ns == before
    (copy / "nuclei" / "t0001.csv").unlink()  # as if interrupted before t0001 finished
    res = invoke("predict", root / "images", "--model", bundle, "--out", copy, "--no-quicklook")
    assert "segmented 1 time point(s), skipped 2" in res.output
    np.testing.assert_array_equal(io.read_stack(copy / "labels" / "t0001.tif"),
                                  io.read_stack(out / "labels" / "t0001.tif"))
    res = invoke("predict", root / "images", "--model", bundle, "--out", copy, "--overwrite", "--no-quicklook")
    assert "segmented 3 time point(s)" in res.output


def test_shard_and_sequential_give_the_same_labels(predicted, trained_bundle, synth_dataset, tmp_path):
    out, _ = predicted
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    res = invoke("predict", root / "images", "--model", bundle, "--out", tmp_path / "s", "--shard", "1/2",
                 "--sequential", "--no-quicklook")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "s" / "labels").iterdir()) == ["t0001.tif"]
    np.testing.assert_array_equal(io.read_stack(tmp_path / "s" / "labels" / "t0001.tif"),
                                  io.read_stack(out / "labels" / "t0001.tif"))
    one_line_error(invoke("predict", root / "images", "--model", bundle, "--out", tmp_path / "x", "--shard", "2/2"),
                   "--shard")


def test_4d_input_and_tiling_give_the_same_labels(predicted, trained_bundle, synth_dataset, tmp_path):
    out, _ = predicted
    bundle, _ = trained_bundle
    _, series = synth_dataset
    stack = np.stack([tp.image for tp in series])  # (t, z, y, x)
    tifffile.imwrite(tmp_path / "movie.tif", stack, imagej=True, resolution=(1 / 0.8, 1 / 0.8),
                     metadata={"axes": "TZYX", "spacing": 1.75, "unit": "um"})
    res = invoke("predict", tmp_path / "movie.tif", "--model", bundle, "--out", tmp_path / "o", "--tile", 16, 32, 32,
                 "--no-quicklook")
    assert res.exit_code == 0, res.output
    for i in range(3):
        np.testing.assert_array_equal(io.read_stack(tmp_path / "o" / "labels" / f"movie_t{i:04d}.tif"),
                                      io.read_stack(out / "labels" / f"t{i:04d}.tif"))


def test_other_voxel_size_is_resampled_to_the_model_grid(trained_bundle, synth_dataset, tmp_path):
    """The same embryo imaged at 0.4 um in x/y: labels come back on its own grid, same nuclei."""
    from qca_tf import preprocess

    bundle, _ = trained_bundle
    _, series = synth_dataset
    tp = series[0]
    fine = preprocess.resample(tp.image.astype(np.float32), (1, 2, 2), order=1).astype(np.uint16)
    io.write_stack(tmp_path / "in" / "fine.tif", fine, io.VoxelSize(0.4, 0.4, 1.75))
    res = invoke("predict", tmp_path / "in", "--model", bundle, "--out", tmp_path / "o", "--no-quicklook")
    assert res.exit_code == 0, res.output
    labels = io.read_stack(tmp_path / "o" / "labels" / "fine.tif")
    assert labels.shape == fine.shape
    gt = preprocess.resize_labels(tp.labels, fine.shape)
    assert metrics.evaluate(labels, gt, (1.75, 0.4, 0.4), 3.0)["det_f1"] >= 0.7


def test_savedmodel_export_predicts_the_same(predicted, trained_bundle, synth_dataset, tmp_path):
    out, _ = predicted
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    for net in ("nsn", "ndn"):
        res = invoke("export", bundle / net, tmp_path / f"{net}_saved")
        assert res.exit_code == 0, res.output
        assert (tmp_path / f"{net}_saved" / "saved_model.pb").exists()
    one_line_error(invoke("export", bundle / "nsn", tmp_path / "nsn_saved"), "nsn_saved")
    res = invoke("predict", root / "images" / "t0002.tif", "--nsn", tmp_path / "nsn_saved", "--ndn",
                 tmp_path / "ndn_saved", "--out", tmp_path / "o", "--no-quicklook")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(io.read_stack(tmp_path / "o" / "labels" / "t0002.tif"),
                                  io.read_stack(out / "labels" / "t0002.tif"))


def test_evaluate_cli_table_and_json(predicted, synth_dataset, tmp_path):
    out, _ = predicted
    root, _ = synth_dataset
    res = invoke("evaluate", "--pred", root / "labels", "--gt", root / "labels", "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "m.json").read_text())
    for key in ("iou", "dice", "seg", "mucov", "det_precision", "det_recall", "det_f1", "ap@0.5", "f1@0.75"):
        assert data["mean"][key] == pytest.approx(1.0), key
    assert [r["name"] for r in data["per_timepoint"]] == ["t0000", "t0001", "t0002"]
    assert "mean (sd)" in res.output
    res = invoke("evaluate", "--pred", out / "labels", "--gt", root / "labels")
    assert res.exit_code == 0 and "t0002" in res.output


def test_evaluate_shape_mismatch_and_missing(synth_dataset, tmp_path):
    root, series = synth_dataset
    io.write_stack(tmp_path / "p" / "t0000.tif", series[0].labels[:, :32], VOXEL)
    one_line_error(invoke("evaluate", "--pred", tmp_path / "p" / "t0000.tif", "--gt", root / "labels" / "t0000.tif"),
                   "t0000.tif", "shape")
    one_line_error(invoke("evaluate", "--pred", tmp_path / "p", "--gt", root / "labels"), "t0001")


# ------------------------------------------------------------------ bad input


@pytest.fixture()
def case(tmp_path, trained_bundle):
    bundle, _ = trained_bundle

    def run(image_array=None, *, name="x.tif", extra=(), write=None, quiet=False):
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        if write is not None:
            write(path)
        elif image_array is not None:
            tifffile.imwrite(path, image_array, imagej=image_array.ndim <= 5 and image_array.dtype != np.float64,
                             resolution=(1 / 0.8, 1 / 0.8),
                             metadata={"spacing": 1.75, "unit": "um",
                                       **({"axes": "ZYX"} if image_array.ndim == 3 else {})})
        return invoke(*(("-q",) if quiet else ()), "predict", path, "--model", bundle, "--out", tmp_path / "out",
                      "--no-quicklook", *extra)

    return run


def test_2d_image(case):
    one_line_error(case(np.ones((32, 32), np.uint16)), "x.tif", "2D")


def test_5d_image(case):
    one_line_error(case(write=lambda p: tifffile.imwrite(p, np.ones((2, 2, 2, 8, 8), np.uint16))), "x.tif")


def test_nan_voxels(case):
    image = np.ones((8, 32, 32), np.float32)
    image[2, 3, 4] = np.nan
    # found when the pixels are read, after the models load: -q hides the loading line
    one_line_error(case(write=lambda p: tifffile.imwrite(p, image), extra=("--voxel-size", 0.8, 0.8, 1.75), quiet=True),
                   "x.tif", "NaN")


def test_constant_image_gives_zero_nuclei(case, tmp_path):
    res = case(np.full((10, 40, 40), 300, np.uint16))
    assert res.exit_code == 0, res.output
    assert io.read_stack(tmp_path / "out" / "labels" / "x.tif").max() == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "criteria.csv")))
    assert rows[0]["count"] == "0" and "nan" not in json.dumps(rows).lower()


def test_missing_voxel_size(case):
    one_line_error(case(write=lambda p: tifffile.imwrite(p, np.ones((8, 32, 32), np.uint16))), "x.tif",
                   "--voxel-size")


def test_missing_and_corrupt_model(tmp_path, synth_dataset):
    root, _ = synth_dataset
    one_line_error(invoke("predict", root / "images", "--nsn", tmp_path / "none", "--out", tmp_path / "o"), "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    (tmp_path / "bad" / "model.keras").write_bytes(b"garbage")
    one_line_error(invoke("predict", root / "images", "--nsn", tmp_path / "bad", "--out", tmp_path / "o"), "bad")


def test_model_with_other_input_channels(tmp_path, synth_dataset):
    from qca_tf.config import ModelConfig
    from qca_tf.models import build_unet
    from qca_tf.modelio import save_model_folder

    root, _ = synth_dataset
    cfg = ModelConfig(depth=1, init_channels=2, input_channels=2)
    save_model_folder(tmp_path / "m2", build_unet(cfg), task="nsn", model_cfg=cfg, spacing_um=0.8)
    one_line_error(invoke("predict", root / "images" / "t0000.tif", "--nsn", tmp_path / "m2", "--out", tmp_path / "o"),
                   "m2", "takes 2 channels", "--channel")


def test_unwritable_output(tmp_path, trained_bundle, synth_dataset):
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    (tmp_path / "file").write_text("not a folder")
    one_line_error(invoke("predict", root / "images", "--model", bundle, "--out", tmp_path / "file" / "out"), "file")
