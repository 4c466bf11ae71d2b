"""`qca-tf search qcanet`: the post-processing search on a case whose right answer is known.

The networks are replaced (at ``qca_tf.predict.segment``, the one place prediction runs
them) by fixed probability maps made from the ground truth on the network grid:

- NSN: 0.8 inside each nucleus, 0.6 on a 2-voxel halo around the nuclei, 0 elsewhere, so
  only NSN thresholds in [0.6, 0.8) give the true masks (below: too big; above: empty);
- NDN: 0.9 on the centre sphere of each nucleus plus one stray voxel of 0.7 at the far
  edge of each nucleus, which splits it unless the NDN threshold is >= 0.7 or markers of
  one voxel (or the fragments it makes) are dropped.

The bundle's settings (0.5, 0.5, marker size 0, no minimum volume) take the halo and split
every nucleus.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

import qca_tf  # noqa: F401  (sets the Keras backend)
import keras

from qca_tf import predict, preprocess, synthetic, targets
from qca_tf.bundle import load_networks, read_bundle, save_bundle
from qca_tf.config import DataConfig, InferenceConfig, ModelConfig, PostprocessConfig
from qca_tf.modelio import save_model_folder
from qca_tf.models import build_unet
from qca_tf.preprocess import GridRecipe

from cli_helpers import invoke, one_line_error
from conftest import VOXEL, small_embryo

SHIPPED = PostprocessConfig(nsn_threshold=0.5, ndn_threshold=0.5, min_marker_size=0, min_volume_um3=0.0)
GOOD_NSN = (0.6, 0.8)
GT_NUCLEI = 5  # per volume of small_embryo(seed=4)


def _known_maps(gt_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NSN and NDN probabilities (float32, grid shape) described in the module docstring."""
    fg = gt_grid > 0
    halo = ndimage.binary_dilation(fg, iterations=2) & ~fg
    nsn = np.where(fg, 0.8, np.where(halo, 0.6, 0.0)).astype(np.float32)
    ndn = targets.ndn_target(gt_grid, (1.0, 1.0, 1.0), 5.0).astype(np.float32) * 0.9
    for i in np.unique(gt_grid[gt_grid > 0]):
        voxels = np.argwhere(gt_grid == i)
        distance = np.sqrt(((voxels - voxels.mean(0)) ** 2).sum(1))
        assert distance.max() > 4.0  # not touching the centre sphere (radius 2.5)
        ndn[tuple(voxels[np.argmax(distance)])] = 0.7
    return nsn, ndn


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 2-volume dataset (images/ + labels/), a bundle of two tiny untrained networks with
    SHIPPED, and the known probability maps keyed by each volume's network-grid image."""
    root = tmp_path_factory.mktemp("ppsearch")
    data = root / "data"
    series = synthetic.make_series(small_embryo(seed=4, timepoints=2))
    assert [int(tp.labels.max()) for tp in series] == [GT_NUCLEI] * 2
    synthetic.write_dataset(data, series, VOXEL)
    for task, seed in (("nsn", 1), ("ndn", 2)):
        keras.utils.set_random_seed(seed)
        cfg = ModelConfig(name=task, depth=2, init_channels=4)
        save_model_folder(root / "bundle" / task, build_unet(cfg), task=task, model_cfg=cfg, spacing_um=0.8,
                          data_cfg=DataConfig())
    save_bundle(root / "bundle", SHIPPED, description="tiny untrained networks", voxel_size_um=(0.8, 0.8, 1.75),
                tta=4)
    recipe = GridRecipe.from_data_config(0.8, DataConfig())
    maps = {}
    for tp in series:
        grid = recipe.apply(tp.image, VOXEL)
        maps[hashlib.sha1(grid.tobytes()).hexdigest()] = _known_maps(
            preprocess.resize_labels(tp.labels, grid.shape))
    return root, data, maps


@pytest.fixture
def known_networks(case, monkeypatch):
    """predict.segment answers the known maps; returns the list of its calls (volume
    shapes; ``.ttas``: the test-time augmentation each was asked for)."""
    _, _, maps = case

    class Calls(list):
        ttas: list[int] = []

    calls = Calls()
    calls.ttas = []

    def segment(nets, volumes, cfg):
        volume = next(iter(volumes.values()))
        calls.append(volume.shape)
        calls.ttas.append(cfg.tta)
        return maps[hashlib.sha1(volume.tobytes()).hexdigest()]

    monkeypatch.setattr(predict, "segment", segment)
    return calls


def _trials(out):
    with open(out / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_search_finds_the_known_thresholds_and_resumes(case, known_networks, tmp_path, monkeypatch):
    root, data, _ = case
    out = tmp_path / "search"
    args = ["search", "qcanet", "--model", root / "bundle", "--data", data, "--out", out, "--seed", "3"]
    result = invoke(*args, "--trials", 30)
    assert result.exit_code == 0, result.output
    assert len(known_networks) == 2  # the networks ran once per volume, not once per trial
    assert known_networks.ttas == [4, 4]  # as predict runs the bundle: with its test-time augmentation
    rows = _trials(out)
    assert len(rows) == 30 and all(r["state"] == "COMPLETE" for r in rows)
    assert rows[0]["warm_start"] and float(rows[0]["nsn_threshold"]) == 0.5  # the bundle's settings first
    assert {"value", "seg", "det_f1"} <= set(rows[0])

    best = json.loads((out / "best_params.json").read_text())
    tuned = PostprocessConfig(**best["postprocess"])
    assert GOOD_NSN[0] <= tuned.nsn_threshold < GOOD_NSN[1]
    # the shipped settings take the halo and split every nucleus in two; the tuned ones recover
    # the true nuclei (MUCov short of 1 only by the round trip to the network grid and back)
    assert best["before"]["nuclei"] == 2 * GT_NUCLEI and best["before"]["mucov"] < 0.4
    assert best["after"]["nuclei"] == GT_NUCLEI and best["after"]["det_f1"] == 1.0
    assert best["after"]["mucov"] > 0.99 and best["after"]["seg"] > 0.99
    assert float(rows[0]["value"]) == pytest.approx(best["before"]["mucov"], abs=1e-6)
    assert best["after"]["mucov"] == pytest.approx(max(float(r["value"]) for r in rows), abs=1e-6)
    assert "before (bundle's settings)" in result.output and "after (tuned)" in result.output

    bundle = read_bundle(out / "bundle")
    assert bundle.postprocess == tuned and bundle.voxel_size_um == (0.8, 0.8, 1.75) and bundle.tta == 4
    assert "tuned by qca-tf search qcanet" in bundle.description
    for task in ("nsn", "ndn"):  # the same networks
        assert (out / "bundle" / task / "weights.h5").read_bytes() == \
            (root / "bundle" / task / "weights.h5").read_bytes()

    # rerun with a bigger budget: resumes to 36 trials, not 30 + 36; the same budget adds none
    result = invoke(*args, "--trials", 36)
    assert result.exit_code == 0, result.output
    assert len(_trials(out)) == 36
    result = invoke(*args, "--trials", 36)
    assert result.exit_code == 0 and "already has 36 finished" in result.output
    assert len(_trials(out)) == 36

    # the study belongs to its bundle: another one is refused before the networks run
    shutil.copytree(root / "bundle", tmp_path / "other")
    calls = len(known_networks)
    one_line_error(invoke(*args[:2], "--model", tmp_path / "other", *args[4:], "--trials", 40), "another --model")
    assert len(known_networks) == calls and len(_trials(out)) == 36
    # ... and so does its test-time augmentation: the same bundle folder with another tta is refused too
    src = read_bundle(root / "bundle")
    try:
        save_bundle(root / "bundle", src.postprocess, description=src.description, voxel_size_um=src.voxel_size_um,
                    tta=8)
        one_line_error(invoke(*args, "--trials", 40), "another test-time augmentation", "4 vs 8")
    finally:
        save_bundle(root / "bundle", src.postprocess, description=src.description, voxel_size_um=src.voxel_size_um,
                    tta=src.tta)
    assert len(known_networks) == calls and len(_trials(out)) == 36

    # the new bundle predicts with the real (untrained) networks
    monkeypatch.undo()
    result = invoke("predict", data / "images" / "t0000.tif", "--out", tmp_path / "pred", "--model",
                    out / "bundle", "--no-quicklook", "--precision", "float32", "--engine", "tensorflow")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "labels" / "t0000.tif").exists()
    run = json.loads((tmp_path / "pred" / "run.json").read_text())
    assert run["postprocess"] == best["postprocess"]


def test_score_is_what_predict_writes(case, known_networks, tmp_path):
    """A trial scores the labels predict would write with the same settings."""
    root, data, _ = case
    from qca_tf.search.postprocess_search import cache_probabilities, read_ground_truth, score
    from qca_tf import metrics

    nets = load_networks(bundle=root / "bundle", infer_cfg=InferenceConfig(precision="float32"))
    volumes = cache_probabilities(nets, read_ground_truth(data), InferenceConfig(), progress=False)
    good = PostprocessConfig(nsn_threshold=0.7, ndn_threshold=0.8, min_marker_size=0, min_volume_um3=0.0)
    nets.postprocess = good
    expected = []
    for v in volumes:
        labels, _, _ = predict.to_labels(nets, v.shape, v.nsn, v.ndn)
        expected.append(metrics.mucov(labels, v.gt))
    assert score(good, volumes, nets.spacing_um)["mucov"] == pytest.approx(np.mean(expected), abs=1e-12)
    # past the memory budget the probabilities are memory-mapped from disk, with the same scores
    spilled = cache_probabilities(nets, read_ground_truth(data), InferenceConfig(), spill_dir=tmp_path,
                                  memory_gb=0.0, progress=False)
    assert all(isinstance(v.nsn, np.memmap) and (tmp_path / f"{v.name}.ndn.npy").exists() for v in spilled)
    assert score(good, spilled, nets.spacing_um) == score(good, volumes, nets.spacing_um)


def test_search_keeps_the_bundles_annotation_offset(case, known_networks, tmp_path):
    """A bundle's annotation offset is not searched: every trial, the 'before' score and the
    tuned bundle keep it, and a study refuses the same bundle folder once its offset changed."""
    from qca_tf.search.postprocess_search import cache_probabilities, read_ground_truth, score

    root, data, _ = case
    moved = tmp_path / "moved"
    shutil.copytree(root / "bundle", moved)
    src = read_bundle(moved)
    offset = (0.0, 1.6, -0.8)
    save_bundle(moved, dataclasses.replace(SHIPPED, annotation_offset_um=offset), description=src.description,
                voxel_size_um=src.voxel_size_um, tta=src.tta)
    out = tmp_path / "search"
    args = ["search", "qcanet", "--model", moved, "--data", data, "--out", out, "--seed", "3"]
    result = invoke(*args, "--trials", 6)
    assert result.exit_code == 0, result.output
    best = json.loads((out / "best_params.json").read_text())
    assert best["postprocess"]["annotation_offset_um"] == list(offset)
    assert read_bundle(out / "bundle").postprocess.annotation_offset_um == offset
    nets = load_networks(bundle=moved, infer_cfg=InferenceConfig(precision="float32"))
    volumes = cache_probabilities(nets, read_ground_truth(data), InferenceConfig(tta=src.tta), progress=False)
    before = score(nets.postprocess, volumes, nets.spacing_um)
    assert best["before"] == pytest.approx(before) and before != pytest.approx(score(SHIPPED, volumes, nets.spacing_um))
    rows = _trials(out)
    assert float(rows[0]["value"]) == pytest.approx(before["mucov"], abs=1e-6)  # the warm start, offset included
    save_bundle(moved, SHIPPED, description=src.description, voxel_size_um=src.voxel_size_um, tta=src.tta)
    one_line_error(invoke(*args, "--trials", 8), "another annotation offset")


def test_bad_input_is_one_line(case, tmp_path):
    root, data, _ = case
    one_line_error(invoke("search", "qcanet", "--data", data, "--trials", 3, "--out", tmp_path / "a"), "--model")
    one_line_error(invoke("search", "nsn", "--model", root / "bundle", "--trials", 3, "--out", tmp_path / "b"),
                   "--model", "qcanet")
    one_line_error(invoke("search", "qcanet", "--model", root / "bundle", "--data", data, "--trials", 3,
                          "--epochs", 4, "--out", tmp_path / "c"), "--epochs")
    one_line_error(invoke("search", "ndn", "--voxel-size", 1, 1, 1, "--trials", 3, "--out", tmp_path / "c"),
                   "--voxel-size", "qcanet")
    one_line_error(invoke("search", "qcanet", "--model", root / "bundle", "--trials", 3, "--out", tmp_path / "d"),
                   "--data")
    one_line_error(invoke("search", "qcanet", "--model", root / "bundle", "--data", data, "--trials", 0,
                          "--out", tmp_path / "e"), "--trials")
    no_labels = tmp_path / "no_labels"
    (no_labels / "images").mkdir(parents=True)
    for f in (data / "images").iterdir():
        (no_labels / "images" / f.name).write_bytes(f.read_bytes())
    result = invoke("search", "qcanet", "--model", root / "bundle", "--data", no_labels, "--trials", 3,
                    "--out", tmp_path / "f")
    one_line_error(result, "instance ground truth", "labels")
    assert not (tmp_path / "f").exists()  # nothing written
    one_line_error(invoke("search", "qcanet", "--model", tmp_path / "nowhere", "--data", data, "--trials", 3,
                          "--out", tmp_path / "g"), "nowhere")
