"""`qca-tf predict` never reuses results of another run, shares a folder safely between
processes, stops at once on a write error, finishes a series around a bad time point,
and checks its inputs before TensorFlow loads."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from cli_helpers import invoke, one_line_error
from conftest import VOXEL

QUIET = ("--no-quicklook",)


def _images(src, dst, names=("t0000", "t0001")):
    dst.mkdir(parents=True)
    for n in names:
        shutil.copy2(src / f"{n}.tif", dst / f"{n}.tif")
    return dst


def _names(out, table="criteria.csv"):
    return [r["name"] for r in csv.DictReader(open(out / table))]


@pytest.fixture(scope="module")
def two(trained_bundle, synth_dataset, tmp_path_factory):
    """Two time points predicted with the bundle: (images folder, output folder)."""
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    base = tmp_path_factory.mktemp("trust")
    images = _images(root / "images", base / "images")
    out = base / "out"
    res = invoke("predict", images, "--model", bundle, "--out", out, *QUIET)
    assert res.exit_code == 0, res.output
    return images, out


def test_each_time_point_records_what_made_it(two, trained_bundle):
    images, out = two
    record = json.loads((out / "nuclei" / "t0001.json").read_text())
    assert record["input"]["path"] == str((images / "t0001.tif").resolve())
    assert record["input"]["size"] == (images / "t0001.tif").stat().st_size
    assert record["run"]["postprocess"]["nsn_threshold"] == 0.5
    assert len(record["run"]["models"]["nsn"]) == 64 and record["run"]["models"]["nsn"] != record["run"]["models"]["ndn"]
    run = json.loads((out / "run.json").read_text())
    assert run["identity"] == record["run"] and run["shards"]["0/1"]["processed"] == ["t0000", "t0001"]


def test_rerun_with_other_threshold_model_or_input_is_refused(two, trained_bundle, synth_dataset, tmp_path):
    images, done = two
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    out = tmp_path / "out"
    shutil.copytree(done, out)
    res = invoke("predict", images, "--model", bundle, "--out", out, *QUIET)
    assert res.exit_code == 0 and "skipped 2 finished" in res.output, res.output

    # another threshold
    one_line_error(invoke("-q", "predict", images, "--model", bundle, "--out", out, "--nsn-threshold", 0.3, *QUIET),
                   "t0000 was made with --nsn-threshold 0.5 (now 0.3)", "--overwrite")
    one_line_error(invoke("-q", "predict", images, "--model", bundle, "--out", out, "--marker-gap", 0, *QUIET),
                   "t0000 was made with --marker-gap 0.8 (now 0.0)", "--overwrite")
    one_line_error(invoke("-q", "predict", images, "--model", bundle, "--out", out, "--tta", 4, *QUIET),
                   "t0000 was made with --tta 1 (now 4)", "--overwrite")
    # another model: same files but the NDN's config differs by one byte
    other = tmp_path / "bundle"
    shutil.copytree(bundle, other)
    cfg = other / "ndn" / "config.json"
    cfg.write_text(cfg.read_text() + "\n")
    one_line_error(invoke("-q", "predict", images, "--model", other, "--out", out, *QUIET),
                   "t0000 was made with another NDN model (sha256", "--overwrite or a new output folder")
    # another embryo whose files have the same names
    embryo = tmp_path / "embryo"
    embryo.mkdir()
    shutil.copy2(root / "images" / "t0002.tif", embryo / "t0000.tif")
    one_line_error(invoke("-q", "predict", embryo, "--model", bundle, "--out", out, *QUIET),
                   "t0000 was made from another input file", str((images / "t0000.tif").resolve()))
    # the same input file, changed since
    shutil.copy2(root / "images" / "t0002.tif", images.parent / "t0001.new")
    changed = tmp_path / "changed"
    shutil.copytree(images, changed)
    res = invoke("predict", changed, "--model", bundle, "--out", tmp_path / "o2", *QUIET)
    assert res.exit_code == 0, res.output
    before = (changed / "t0001.tif").stat().st_mtime_ns
    os.replace(images.parent / "t0001.new", changed / "t0001.tif")
    os.utime(changed / "t0001.tif", ns=(before + 10**9, before + 10**9))
    one_line_error(invoke("-q", "predict", changed, "--model", bundle, "--out", tmp_path / "o2", *QUIET),
                   "t0001 was made from an older version of", "t0001.tif")
    # another voxel size
    one_line_error(invoke("-q", "predict", images, "--model", bundle, "--out", out, "--voxel-size", 0.8, 0.8, 2.0, *QUIET),
                   "t0000 was made with input voxel size", "2.0")
    # a finished time point from an older tool, without a record
    (out / "nuclei" / "t0001.json").unlink()
    one_line_error(invoke("-q", "predict", images / "t0001.tif", "--model", bundle, "--out", out, *QUIET),
                   "t0001 is finished but records nothing")
    # --overwrite redoes them with the new threshold, and the new numbers are the ones kept
    res = invoke("predict", images, "--model", bundle, "--out", out, "--nsn-threshold", 0.3, "--overwrite", *QUIET)
    assert res.exit_code == 0 and "segmented 2 time point(s)" in res.output, res.output
    assert json.loads((out / "nuclei" / "t0001.json").read_text())["run"]["postprocess"]["nsn_threshold"] == 0.3
    assert json.loads((out / "run.json").read_text())["postprocess"]["nsn_threshold"] == 0.3


def test_claimed_time_points_are_left_to_their_live_owner(two, trained_bundle, tmp_path):
    """A time point claimed by a live process is not computed; a dead process's claim and the
    temp files of a killed run are cleaned up; shards are all recorded in run.json."""
    import socket

    images, _ = two
    bundle, _ = trained_bundle
    out = tmp_path / "out"
    (out / ".claims").mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        host = socket.gethostname()
        (out / ".claims" / "t0000").write_text(json.dumps({"pid": live.pid, "host": host}))
        (out / ".claims" / "t0001").write_text(json.dumps({"pid": dead.pid, "host": host}))
        (out / "labels").mkdir()
        (out / "labels" / ".t0001.tif.ab12cd_9.tmp").write_bytes(b"half a label image")
        (out / ".criteria.csv.zz99yy88.tmp").write_text("half a table")
        (out / "labels" / ".t0000.tif.qq11ww22.tmp").write_bytes(b"being written by the live owner")
        res = invoke("predict", images, "--model", bundle, "--out", out, "--shard", "0/1", *QUIET)
        assert res.exit_code == 0, res.output
        assert sorted(p.name for p in (out / "labels").iterdir()) == [".t0000.tif.qq11ww22.tmp", "t0001.tif"]
        assert not (out / ".criteria.csv.zz99yy88.tmp").exists()
        assert _names(out) == ["t0001"]
        run = json.loads((out / "run.json").read_text())
        assert run["busy"] == ["t0000"] and run["processed"] == ["t0001"]
        assert (out / ".claims" / "t0000").exists() and not (out / ".claims" / "t0001").exists()
    finally:
        live.kill()
        live.wait()
    # the owner died without finishing: its claim is taken over; two shards, both recorded
    res = invoke("predict", images, "--model", bundle, "--out", out, "--shard", "0/2", *QUIET)
    assert res.exit_code == 0 and "segmented 1 time point(s)" in res.output, res.output
    res = invoke("predict", images, "--model", bundle, "--out", out, "--shard", "1/2", *QUIET)
    assert res.exit_code == 0 and "skipped 1 finished" in res.output, res.output
    shards = json.loads((out / "run.json").read_text())["shards"]
    assert shards["0/2"]["processed"] == ["t0000"] and shards["1/2"]["skipped"] == ["t0001"]
    assert shards["0/1"]["processed"] == ["t0001"]
    assert _names(out) == ["t0000", "t0001"] and not list((out / ".claims").iterdir())


def test_write_error_stops_the_networks_at_once(trained_bundle, synth_dataset, tmp_path, monkeypatch):
    from qca_tf import predict
    from qca_tf.errors import OutputError

    bundle, _ = trained_bundle
    root, _ = synth_dataset
    images = _images(root / "images", tmp_path / "images", ("t0000", "t0001", "t0002"))
    shutil.copy2(images / "t0000.tif", images / "t0003.tif")
    calls = []
    real_segment = predict.segment

    def counting_segment(*args, **kwargs):
        calls.append(1)
        return real_segment(*args, **kwargs)

    def full_disk(path, *args, **kwargs):
        raise OutputError(f"{path}: cannot write there (No space left on device)")

    monkeypatch.setattr(predict, "segment", counting_segment)
    monkeypatch.setattr(predict.io, "write_stack", full_disk)
    res = invoke("-q", "predict", images, "--model", bundle, "--out", tmp_path / "out", *QUIET)
    one_line_error(res, "t0000.tif: cannot write there (No space left on device)")
    assert 1 <= len(calls) <= 2, f"the networks ran {len(calls)} of 4 time points after the writer failed"
    assert not list((tmp_path / "out" / ".claims").iterdir())  # claims released


def test_bad_time_point_does_not_stop_the_others(trained_bundle, synth_dataset, tmp_path):
    bundle, _ = trained_bundle
    root, series = synth_dataset
    images = tmp_path / "images"
    images.mkdir()
    for i, tp in enumerate(series):
        image = tp.image.astype(np.float32)
        if i == 1:
            image[3, 10, 10] = np.nan
        tifffile.imwrite(images / f"t{i:04d}.tif", image, imagej=True, resolution=(1 / 0.8, 1 / 0.8),
                         metadata={"axes": "ZYX", "spacing": 1.75, "unit": "um"})
    out = tmp_path / "out"
    one_line_error(invoke("-q", "predict", images, "--model", bundle, "--out", out, *QUIET),
                   "time point t0001 not segmented", "t0001.tif: contains NaN voxels", "the other 2 time point(s)")
    assert _names(out) == ["t0000", "t0002"] and _names(out, "nuclei.csv")
    run = json.loads((out / "run.json").read_text())
    assert list(run["failed"]) == ["t0001"] and run["processed"] == ["t0000", "t0002"]


# ------------------------------------------------------------------ checks before TensorFlow


def _without_tensorflow(args: list[str]) -> tuple[int, str, bool]:
    code = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        from qca_tf.cli import main
        res = CliRunner().invoke(main, {args!r})
        print(repr((res.exit_code, res.output, 'tensorflow' in sys.modules)))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["missing voxel size", "2D", "not a tiff", "unwritable output", "channel count"])
def test_bad_input_fails_before_tensorflow_loads(kind, trained_bundle, synth_dataset, tmp_path):
    bundle, _ = trained_bundle
    root, _ = synth_dataset
    path, out, extra = tmp_path / "x.tif", tmp_path / "out", []
    if kind == "missing voxel size":
        tifffile.imwrite(path, np.ones((8, 32, 32), np.uint16))
        expect = "--voxel-size"
    elif kind == "2D":
        tifffile.imwrite(path, np.ones((32, 32), np.uint16))
        expect = "2D"
    elif kind == "not a tiff":
        path.write_text("hello")
        expect = "not a readable TIFF"
    elif kind == "channel count":  # two channels chosen for a one-channel model
        tifffile.imwrite(path, np.ones((8, 2, 32, 32), np.uint16), imagej=True, resolution=(1 / 0.8, 1 / 0.8),
                         metadata={"axes": "ZCYX", "spacing": 1.75, "unit": "um"})
        extra, expect = ["--channel", "0", "--channel", "1"], "--channel: the model takes 1 channel(s); got 2 (0, 1)"
    else:
        path = root / "images" / "t0000.tif"
        (tmp_path / "file").write_text("a file")
        out, expect = tmp_path / "file" / "out", "file"
    code, output, tf_loaded = _without_tensorflow(["predict", str(path), "--model", str(bundle), "--out", str(out),
                                                   *extra])
    assert code == 1 and output.startswith("Error: ") and expect in output and len(output.strip().splitlines()) == 1
    assert not tf_loaded
    assert not out.exists()  # a refused input leaves no empty output folders behind


def test_stack_too_large_for_memory_and_thin_stack(trained_bundle, synth_dataset, tmp_path, monkeypatch):
    from qca_tf import predict

    bundle, _ = trained_bundle
    root, _ = synth_dataset
    monkeypatch.setattr(predict, "available_memory", lambda: 200_000)
    res = invoke("-q", "predict", root / "images" / "t0000.tif", "--model", bundle, "--out", tmp_path / "o")
    one_line_error(res, "t0000.tif: a time point of 16 x 64 x 64 voxels (131.1 KB as stored) needs about 2.4 MB", "more than the")
    # test-time augmentation holds a turned copy of the input and one more prediction: 8 more bytes per grid voxel
    monkeypatch.setattr(predict, "available_memory", lambda: 3_000_000)
    predict.preflight([root / "images" / "t0000.tif"], tmp_path / "o", model_folder=bundle / "nsn", tta=1)
    res = invoke("-q", "predict", root / "images" / "t0000.tif", "--model", bundle, "--out", tmp_path / "o", "--tta", 8)
    one_line_error(res, "t0000.tif: a time point of 16 x 64 x 64 voxels (131.1 KB as stored) needs about 3.6 MB", "more than the")
    monkeypatch.undo()
    thin = tmp_path / "thin.tif"
    tifffile.imwrite(thin, np.ones((2, 32, 32), np.uint16), imagej=True, resolution=(1 / 0.8, 1 / 0.8),
                     metadata={"axes": "ZYX", "spacing": 1.75, "unit": "um"})
    warnings = []
    monkeypatch.setattr(predict.log, "warning", lambda msg, *a: warnings.append(msg % a))
    predict.preflight([thin], tmp_path / "t", model_folder=bundle / "nsn")
    assert len(warnings) == 1 and "only 2 z slice(s) (3.5 um): thinner than a nucleus" in warnings[0]
    warnings.clear()
    predict.preflight([root / "images" / "t0000.tif"], tmp_path / "t", model_folder=bundle / "nsn")
    assert warnings == []


def test_claim_from_another_host_is_respected_and_named(two, trained_bundle, tmp_path):
    """A claim written on another machine cannot be checked from here: the time point is
    left alone, and the warning names the host, the pid and the claim file to delete if
    that process is gone; once deleted, a rerun segments it."""
    images, _ = two
    bundle, _ = trained_bundle
    out = tmp_path / "out"
    (out / ".claims").mkdir(parents=True)
    (out / ".claims" / "t0001").write_text(json.dumps({"pid": 4242, "host": "node-17.cluster.example"}))
    res = invoke("predict", images, "--model", bundle, "--out", out, *QUIET)
    assert res.exit_code == 0, res.output
    assert _names(out) == ["t0000"]
    assert "t0001 (pid 4242 on node-17.cluster.example)" in res.output
    assert f"if it is gone, delete {out / '.claims'}/<name> and rerun" in res.output
    (out / ".claims" / "t0001").unlink()
    res = invoke("predict", images, "--model", bundle, "--out", out, *QUIET)
    assert res.exit_code == 0 and "skipped 1 finished" in res.output, res.output
    assert _names(out) == ["t0000", "t0001"]


def test_record_from_before_a_parameter_existed_says_so():
    """A time point made by an older qca_tf, whose record lacks a post-processing parameter
    added since, is refused with words that say so, not 'with --marker-gap None'."""
    from qca_tf import resume

    post = {"nsn_threshold": 0.5, "ndn_threshold": 0.5, "min_marker_size": 0, "min_volume_um3": 20.0}
    identity = {"models": {"nsn": "a" * 64, "ndn": "b" * 64}, "postprocess": {**post, "marker_gap_um": 0.8},
                "inference": {}, "qca_tf_version": "0.1.0"}
    recorded = {"run": {"models": {"nsn": "a" * 64, "ndn": "b" * 64}, "postprocess": post, "inference": {},
                        "qca_tf_version": "0.1.0"}, "input": {}}
    message = resume.difference(recorded, identity, {"path": "x.tif"})
    assert message == "before --marker-gap existed (by an older qca_tf; now --marker-gap 0.8)"


def test_record_from_before_tta_counts_as_without_it():
    """Records written before --tta existed were made without test-time augmentation: the
    same run without it is skipped as before, one with it is refused."""
    from qca_tf import resume

    run = {"models": {"nsn": "a" * 64, "ndn": None}, "postprocess": {"nsn_threshold": 0.5},
           "qca_tf_version": "0.1.0"}
    source = {"path": "x.tif", "size": 1, "mtime_ns": 2, "index": None, "channels": None,
              "voxel_size_um": [0.8, 0.8, 1.75]}
    recorded = {"run": {**run, "inference": {"engine": "tensorflow", "precision": "float32"}}, "input": source}
    now = {**run, "inference": {"engine": "tensorflow", "precision": "float32", "tta": 1}}
    assert resume.difference(recorded, now, source) is None
    now["inference"]["tta"] = 8
    assert resume.difference(recorded, now, source) == "with --tta 1 (now 8)"


def test_record_from_before_the_annotation_offset_counts_as_without_it():
    """Records written before --annotation-offset existed left the labels on the image: the
    same run with offset 0 is skipped as before, one with an offset is refused."""
    from qca_tf import resume

    source = {"path": "x.tif", "size": 1, "mtime_ns": 2, "index": None, "channels": None,
              "voxel_size_um": [0.8, 0.8, 1.75]}
    run = {"models": {"nsn": "a" * 64, "ndn": None}, "inference": {"tta": 1}, "qca_tf_version": "0.1.0"}
    recorded = {"run": {**run, "postprocess": {"nsn_threshold": 0.5}}, "input": source}
    now = {**run, "postprocess": {"nsn_threshold": 0.5, "annotation_offset_um": [0.0, 0.0, 0.0]}}
    assert resume.difference(recorded, now, source) is None
    now["postprocess"]["annotation_offset_um"] = [0.0, -0.4, 0.0]
    assert resume.difference(recorded, now, source) == ("before --annotation-offset existed (by an older qca_tf; "
                                                        "now --annotation-offset [0.0, -0.4, 0.0])")


def test_annotation_offset_moves_predicted_labels(trained_bundle, synth_dataset, tmp_path):
    """`qca-tf predict --annotation-offset` (and a bundle recording the offset) moves every
    nucleus by the offset in um, records it, and a rerun with another offset is refused."""
    from scipy import ndimage

    from qca_tf.bundle import read_bundle, save_bundle

    bundle, _ = trained_bundle
    root, _ = synth_dataset
    images = _images(root / "images", tmp_path / "images", names=("t0000",))
    offset = (-1.0, 0.8, -1.6)
    res = invoke("predict", images, "--model", bundle, "--out", tmp_path / "plain", *QUIET)
    assert res.exit_code == 0, res.output
    res = invoke("predict", images, "--model", bundle, "--out", tmp_path / "moved", "--annotation-offset", *offset,
                 "--save-masks", *QUIET)
    assert res.exit_code == 0, res.output
    recorded = read_bundle(bundle)
    with_offset = tmp_path / "bundle_offset"
    shutil.copytree(bundle, with_offset)
    save_bundle(with_offset, dataclasses.replace(recorded.postprocess, annotation_offset_um=offset),
                description=recorded.description, voxel_size_um=recorded.voxel_size_um, tta=recorded.tta)
    res = invoke("predict", images, "--model", with_offset, "--out", tmp_path / "bundled", *QUIET)
    assert res.exit_code == 0, res.output
    plain, moved = (tifffile.imread(tmp_path / o / "labels" / "t0000.tif") for o in ("plain", "moved"))
    np.testing.assert_array_equal(moved, tifffile.imread(tmp_path / "bundled" / "labels" / "t0000.tif"))
    recorded_offset = json.loads((tmp_path / "moved" / "run.json").read_text())["identity"]["postprocess"]
    np.testing.assert_allclose(recorded_offset["annotation_offset_um"], offset)
    voxel = np.array(VOXEL.zyx)  # the synthetic series' voxel size
    assert plain.max() == moved.max() > 0
    mask = tifffile.imread(tmp_path / "moved" / "nsn" / "t0000.tif") > 0  # the saved NSN mask moved with them
    assert mask[moved > 0].all() and not mask[plain > 0].all()
    for k in range(1, plain.max() + 1):  # the nuclei keep their order: ids by position
        shift = (np.array(ndimage.center_of_mass(moved == k)) - ndimage.center_of_mass(plain == k)) * voxel
        np.testing.assert_allclose(shift, offset, atol=0.5)
    one_line_error(invoke("-q", "predict", images, "--model", bundle, "--out", tmp_path / "moved", *QUIET),
                   "t0000 was made with --annotation-offset [-1.0, 0.8, -1.6] (now [0.0, 0.0, 0.0])", "--overwrite")


def test_bundle_tta_is_predicts_default(trained_bundle, synth_dataset, tmp_path):
    """A bundle recording tta 8 predicts as --tta 8 does with the same networks, and says so in run.json."""
    from qca_tf.bundle import read_bundle, save_bundle

    bundle, _ = trained_bundle
    root, _ = synth_dataset
    images = _images(root / "images", tmp_path / "images", names=("t0000",))
    with_tta = tmp_path / "bundle8"
    shutil.copytree(bundle, with_tta)
    src = read_bundle(bundle)
    save_bundle(with_tta, src.postprocess, description=src.description, voxel_size_um=src.voxel_size_um, tta=8)
    res = invoke("predict", images, "--model", with_tta, "--out", tmp_path / "a", *QUIET)
    assert res.exit_code == 0, res.output
    res = invoke("predict", images, "--model", bundle, "--tta", 8, "--out", tmp_path / "b", *QUIET)
    assert res.exit_code == 0, res.output
    for out in ("a", "b"):
        run = json.loads((tmp_path / out / "run.json").read_text())
        assert run["inference"]["tta"] == 8 and run["identity"]["inference"]["tta"] == 8
    a = tifffile.imread(tmp_path / "a" / "labels" / "t0000.tif")
    assert a.max() > 0
    np.testing.assert_array_equal(a, tifffile.imread(tmp_path / "b" / "labels" / "t0000.tif"))


def test_identity_records_the_precision_the_engine_runs(trained_bundle):
    """OpenVINO builds its networks from float32 Keras models (nets.precision) but runs them at
    the resolved precision (bf16 where the CPU has bf16 units): the identity records the latter,
    so a float32 rerun does not reuse bf16 results."""
    from qca_tf import resume
    from qca_tf.bundle import load_networks
    from qca_tf.config import InferenceConfig

    bundle, _ = trained_bundle
    nets = load_networks(bundle=bundle, infer_cfg=InferenceConfig(engine="tensorflow", precision="float32"))
    ran = InferenceConfig(engine="openvino", precision="mixed_bfloat16", tta=4)
    assert nets.precision == "float32"
    assert resume.run_identity(nets, ran)["inference"] == {"engine": "openvino", "precision": "mixed_bfloat16",
                                                            "tta": 4}
    old = {"run": resume.run_identity(nets, InferenceConfig(engine="openvino", precision="float32")),
           "input": {"path": "x.tif", "size": 1, "mtime_ns": 2, "index": None, "channels": None,
                     "voxel_size_um": [0.8, 0.8, 1.75]}}
    assert resume.difference(old, resume.run_identity(nets, InferenceConfig(engine="openvino",
                                                                            precision="mixed_bfloat16")),
                             old["input"]) == "with --precision float32 (now mixed_bfloat16)"


def test_shards_of_a_run_json_from_before_tta_are_kept(two, trained_bundle, tmp_path):
    """run.json written before --tta existed (no tta in its identity) is the same run as one at
    --tta 1: its shard history is merged, not dropped."""
    images, done = two
    bundle, _ = trained_bundle
    out = tmp_path / "out"
    shutil.copytree(done, out)
    run = json.loads((out / "run.json").read_text())
    del run["identity"]["inference"]["tta"]
    (out / "run.json").write_text(json.dumps(run))
    for name in ("t0000", "t0001"):  # the per-time-point records, as the older tool wrote them
        record = json.loads((out / "nuclei" / f"{name}.json").read_text())
        del record["run"]["inference"]["tta"]
        (out / "nuclei" / f"{name}.json").write_text(json.dumps(record))
    res = invoke("predict", images / "t0001.tif", "--model", bundle, "--out", out, *QUIET)
    assert res.exit_code == 0 and "skipped 1 finished" in res.output, res.output
    shards = json.loads((out / "run.json").read_text())["shards"]
    assert shards["0/1"]["processed"] == ["t0000", "t0001"]


@pytest.mark.parametrize("data,tta,says", [
    ({"flips": True, "rot90": True, "patch": [16, 32, 32]}, 8, None),
    ({"flips": True, "rot90": False, "patch": [16, 32, 32]}, 8, "xy quarter turns that the NSN was not trained "
                                                               "with; --tta 4 keeps"),
    ({"flips": True, "rot90": True, "patch": [16, 32, 48]}, 8, "xy quarter turns"),  # turns need square patches
    ({"flips": True, "rot90": False, "patch": [16, 32, 32]}, 4, None),
    ({"flips": False, "rot90": True, "patch": [16, 32, 32]}, 4, "x/y flips that the NSN was not trained with; "
                                                               "--tta 1 keeps"),
    ({"flips": False, "rot90": False, "patch": [16, 32, 32]}, 1, None),
])
def test_tta_beyond_the_training_augmentation_warns(caplog, data, tta, says):
    from types import SimpleNamespace

    from qca_tf.config import DataConfig
    from qca_tf.predict import check_tta

    nsn = SimpleNamespace(data_cfg=DataConfig(**{**data, "patch": tuple(data["patch"])}), folder="m/nsn", task="nsn")
    caplog.set_level("WARNING", logger="qca_tf.predict")
    check_tta(SimpleNamespace(nsn=nsn, ndn=None), tta)
    if says is None:
        assert not caplog.records
    else:
        assert len(caplog.records) == 1 and says in caplog.records[0].getMessage()
