"""The shipped `embryo-small` model works right after install: listed by name, loaded by
`predict --model embryo-small`, and it finds every nucleus of an embryo at its voxel size."""
from __future__ import annotations

import json

import numpy as np

from cli_helpers import invoke
from qca_tf import registry, synthetic
from qca_tf.bundle import read_bundle
from qca_tf.evaluate import evaluate_series
from qca_tf.io import VoxelSize, read_stack

VOXEL = VoxelSize(0.8, 0.8, 1.75)  # embryo-small's training voxel size


def test_embryo_small_is_listed_and_records_its_voxel_size():
    folder = registry.resolve("embryo-small")
    assert folder == registry.PACKAGE_ROOT / "embryo-small"
    meta = read_bundle(folder)
    assert meta.voxel_size_um == (0.8, 0.8, 1.75)
    assert "embryo-small" in invoke("models").output


def test_embryo_small_finds_every_nucleus_of_a_synthetic_embryo(tmp_path):
    """6 nuclei (one touching pair) and a polar body at 0.8 x 0.8 x 1.75 um: one
    predicted nucleus per true one, each centre within the evaluation distance."""
    cfg = synthetic.SynthConfig(shape=(24, 96, 96), voxel_size=(VOXEL.x, VOXEL.y, VOXEL.z), n_nuclei=6,
                                radius_um=(5.0, 7.0), touching_pairs=1, polar_bodies=1, timepoints=1, seed=0)
    synthetic.write_dataset(tmp_path / "data", synthetic.make_series(cfg), VOXEL)
    res = invoke("-q", "predict", tmp_path / "data" / "images", "--model", "embryo-small", "--out", tmp_path / "out",
                 "--no-quicklook")
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["inference"]["tta"] == read_bundle(registry.resolve("embryo-small")).tta  # the bundle's, by default
    labels = read_stack(tmp_path / "out" / "labels" / "t0000.tif")
    truth = read_stack(tmp_path / "data" / "labels" / "t0000.tif")
    assert np.count_nonzero(np.unique(labels)) == np.count_nonzero(np.unique(truth)) == 6
    ev = evaluate_series(tmp_path / "out" / "labels", tmp_path / "data" / "labels")
    assert ev.summary["det_f1"]["mean"] == 1.0
    assert ev.summary["iou"]["mean"] > 0.5  # wider masks than the flat synthetic nuclei: the real annotation's style
