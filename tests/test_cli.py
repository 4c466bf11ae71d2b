"""The click CLI through CliRunner: synth, train, and one-line errors for user mistakes."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from qca_tf import io
from cli_helpers import invoke, one_line_error

VOXEL = io.VoxelSize(0.8, 0.8, 1.75)


def test_synth_writes_layout_with_voxel_size(tmp_path):
    res = invoke("synth", tmp_path / "s", "--timepoints", 2, "--shape", 12, 48, 48, "--nuclei", 3, "--seed", 4)
    assert res.exit_code == 0, res.output
    for sub in ("images", "nsn", "ndn", "labels"):
        assert sorted(p.name for p in (tmp_path / "s" / sub).iterdir()) == ["t0000.tif", "t0001.tif"]
    assert io.read_voxel_size(tmp_path / "s" / "images" / "t0000.tif") == VOXEL


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_command(tmp_path, where):
    """-v is the group's flag; typed after the command (qca-tf synth OUT -v) it works the same."""
    cmd = ["synth", tmp_path / "s", "--shape", 12, 48, 48, "--nuclei", 3]
    res = invoke(*(["-v", *cmd] if where == "before" else [*cmd, "-v"]))
    assert res.exit_code == 0, res.output
    assert "DEBUG qca_tf.io: wrote" in res.output


def test_train_cli_one_epoch_and_summary(synth_dataset, tmp_path):
    root, _ = synth_dataset
    res = invoke("train", "nsn", "--data", root, "--out", tmp_path / "m", "--epochs", 1, "--patch", 16,
                 "--depth", 1, "--init-channels", 2, "--crops-per-volume", 1, "--optimizer", "adam")
    assert res.exit_code == 0, res.output
    assert "best val_iou" in res.output
    assert (tmp_path / "m" / "weights.h5").exists() and (tmp_path / "m" / "config.json").exists()
    assert not (tmp_path / "m" / "model.keras").exists()  # weights only: the resume state lives in .resume/


def test_train_reference_layout_accepted(synth_dataset, tmp_path):
    root, _ = synth_dataset
    ref = tmp_path / "ref"
    shutil.copytree(root / "images", ref / "images_raw")
    shutil.copytree(root / "ndn", ref / "images_ndn")
    res = invoke("train", "ndn", "--data", ref, "--out", tmp_path / "m", "--epochs", 1, "--patch", 16,
                 "--depth", 1, "--init-channels", 2, "--crops-per-volume", 1)
    assert res.exit_code == 0, res.output
    assert "best val_f1" in res.output


@pytest.fixture()
def bad_dataset(synth_dataset, tmp_path):
    root, _ = synth_dataset
    data = tmp_path / "bad"
    shutil.copytree(root, data)
    return data


def test_missing_folder(tmp_path):
    one_line_error(invoke("train", "nsn", "--data", tmp_path / "nope", "--out", tmp_path / "m"), "nope")


def test_unpaired_mask(bad_dataset, tmp_path):
    shutil.copy(bad_dataset / "nsn" / "t0000.tif", bad_dataset / "nsn" / "extra.tif")
    one_line_error(invoke("train", "nsn", "--data", bad_dataset, "--out", tmp_path / "m"), "extra.tif")


def test_image_without_mask(bad_dataset, tmp_path):
    (bad_dataset / "nsn" / "t0001.tif").unlink()
    one_line_error(invoke("train", "nsn", "--data", bad_dataset, "--out", tmp_path / "m"), "t0001.tif")


def test_mismatched_shapes(bad_dataset, tmp_path):
    mask = io.read_stack(bad_dataset / "nsn" / "t0002.tif")
    io.write_stack(bad_dataset / "nsn" / "t0002.tif", mask[:, :40], VOXEL)
    one_line_error(invoke("train", "nsn", "--data", bad_dataset, "--out", tmp_path / "m"), "t0002.tif", "shape")


def test_2d_image(bad_dataset, tmp_path):
    tifffile.imwrite(bad_dataset / "images" / "t0001.tif", np.ones((64, 64), np.uint16))
    one_line_error(invoke("train", "nsn", "--data", bad_dataset, "--out", tmp_path / "m"), "t0001.tif", "2D")


def test_unreadable_file(bad_dataset, tmp_path):
    (bad_dataset / "images" / "t0000.tif").write_bytes(b"this is not a tiff")
    one_line_error(invoke("train", "nsn", "--data", bad_dataset, "--out", tmp_path / "m"), "t0000.tif")


def test_empty_mask(bad_dataset, tmp_path):
    mask = io.read_stack(bad_dataset / "nsn" / "t0001.tif")
    io.write_stack(bad_dataset / "nsn" / "t0001.tif", np.zeros_like(mask), VOXEL)
    one_line_error(invoke("train", "nsn", "--data", bad_dataset, "--out", tmp_path / "m"), "t0001.tif", "empty mask")


def test_missing_voxel_size(bad_dataset, tmp_path):
    image = io.read_stack(bad_dataset / "images" / "t0000.tif")
    tifffile.imwrite(bad_dataset / "images" / "t0000.tif", image)  # no metadata
    one_line_error(invoke("train", "nsn", "--data", bad_dataset, "--out", tmp_path / "m"), "t0000.tif", "--voxel-size")


@pytest.mark.parametrize("args, fragments", [
    (["predict", "x.tif", "--out", "o", "--marker-gap", "-1"], ["'--marker-gap'", "x>=0", "predict --help'"]),
    (["predict", "x.tif", "--out", "o", "--voxel-size", "0.8", "0.8", "-1"],
     ["'--voxel-size'", "z=-1 must be a positive number"]),
    (["synth", "o", "--voxel-size", "0", "0.8", "1.75"], ["'--voxel-size'", "x=0 must be"]),
    (["bundle", "--nsn", "a", "--ndn", "b", "--out", "o", "--voxel-size", "0.8", "nan", "1"], ["y=nan must be"]),
    (["predct"], ["No such command 'predct'", "Did you mean 'predict'?", "--help'"]),
    (["train", "nsn", "--out", "m"], ["Missing option '--data'", "train --help'"]),
    (["--bogus"], ["No such option '--bogus'", "--help'"]),
])
def test_usage_errors_are_one_line(args, fragments, tmp_path, monkeypatch):
    """A mistyped flag, command or value: one Error: line with the help pointer in it (no
    usage block), exit code 2 as click gives, nothing written."""
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke(*args), *fragments, exit_code=2)
    assert not any(tmp_path.iterdir())


def test_no_arguments_shows_the_help():
    res = invoke()
    assert "Commands:" in res.output and "predict" in res.output and "Error:" not in res.output
    assert len(res.output.splitlines()) > 5


def test_invalid_option_value_named(synth_dataset, tmp_path):
    root, _ = synth_dataset
    one_line_error(invoke("train", "nsn", "--data", root, "--out", tmp_path / "m", "--lr-decay", 3),
                   "--lr-decay")


@pytest.mark.parametrize("flag, value, key", [("--lr", "-1", "train.sgd_lr"), ("--val-fraction", "1.5", "data.val_fraction"),
                                              ("--momentum", "1", "train.sgd_momentum")])
def test_config_error_names_the_typed_flag(synth_dataset, tmp_path, flag, value, key):
    root, _ = synth_dataset
    res = invoke("train", "nsn", "--data", root, "--out", tmp_path / "m", flag, value)
    one_line_error(res, f"invalid {flag}: ")
    assert key not in res.output


def test_config_key_kept_when_the_value_did_not_come_from_a_flag():
    from qca_tf.cli import flag_message

    assert flag_message("invalid train.sgd_lr: must be > 0", ["--lr", "0"]) == "invalid --lr: must be > 0"
    assert flag_message("invalid data.channels: bad", ["--channel", "1"]) == "invalid --channel: bad"
    assert flag_message("invalid train.sgd_lr: must be > 0", ["--params", "p.json"]) == "invalid train.sgd_lr: must be > 0"
    assert flag_message("p.json: invalid train.sgd_lr: x", ["--lr", "0"]) == "p.json: invalid train.sgd_lr: x"


@pytest.mark.parametrize("verbose", [0, 1])
def test_library_warnings_stay_off_the_terminal(verbose):
    import subprocess
    import sys

    code = ("import logging, warnings; from qca_tf.cli import _setup_logging; "
            f"_setup_logging({verbose}, False); warnings.warn('keras says something', UserWarning); "
            "logging.getLogger('tensorflow').warning('tensorflow says something')")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    if verbose:  # -v shows them
        assert "keras says something" in err and "tensorflow says something" in err
    else:
        assert err == ""


def test_train_cli_rerun_of_finished_training(synth_dataset, tmp_path):
    root, _ = synth_dataset
    args = ["train", "nsn", "--data", root, "--out", tmp_path / "m", "--epochs", 1, "--patch", 16, "--depth", 1,
            "--init-channels", 2, "--crops-per-volume", 1, "--optimizer", "adam"]
    assert invoke(*args).exit_code == 0
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert f"already finished: 1 epochs in {tmp_path / 'm'}" in res.output
    changed = [*args[:-6], "--init-channels", 3, "--crops-per-volume", 1, "--optimizer", "adam"]
    res = invoke(*changed)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error: ")]
    assert res.exit_code == 1 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "--init-channels (model.init_channels): 2 then, 3 now" in errors[0] and "--overwrite" in errors[0]
