"""Shared fixtures: small synthetic datasets written once per session."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "QCA_TF_CACHE" not in os.environ:  # converted models (qca_tf.engines) go to a per-run folder, not ~/.cache
    import atexit
    import tempfile

    os.environ["QCA_TF_CACHE"] = tempfile.mkdtemp(prefix="qca_tf-test-cache-")
    atexit.register(shutil.rmtree, os.environ["QCA_TF_CACHE"], True)

import pytest

from qca_tf import synthetic
from qca_tf.io import VoxelSize

VOXEL = VoxelSize(0.8, 0.8, 1.75)


def small_embryo(seed: int = 0, timepoints: int = 3) -> synthetic.SynthConfig:
    """A 16 x 64 x 64 (z, y, x) embryo: 35 x 64 x 64 on the isotropic network grid."""
    return synthetic.SynthConfig(shape=(16, 64, 64), voxel_size=(VOXEL.x, VOXEL.y, VOXEL.z), n_nuclei=5,
                                 radius_um=(4.0, 5.0), touching_pairs=1, polar_bodies=1, timepoints=timepoints,
                                 division_interval=0, seed=seed)


@contextlib.contextmanager
def shared_folder(tmp_path_factory, name: str):
    """A folder made once per test run and shared by the pytest-xdist workers: yields
    (folder, made) under an exclusive lock; ``made`` is False the first time, when the
    caller must fill it (the folder's ``.done`` marker is set when the block ends cleanly)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above every worker's own
    folder = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = (folder / ".done").exists()
        if not made:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        yield folder, made
        (folder / ".done").touch()


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """A 3-time-point synthetic dataset folder (images/, nsn/, ndn/, labels/) and its series
    (written once per run; the series is made again here, it is deterministic)."""
    series = synthetic.make_series(small_embryo())
    with shared_folder(tmp_path_factory, "synth") as (root, made):
        if not made:
            synthetic.write_dataset(root, series, VOXEL)
    return root, series


TINY = dict(depth=2, init_channels=4, kernel_size=3)


def tiny_train_config(task: str, epochs: int):
    from qca_tf.config import TrainConfig

    return TrainConfig(task=task, optimizer="adam", adam_alpha=3e-3, epochs=epochs, crops_per_volume=8,
                       loss="ce+dice", seed=0)


@pytest.fixture(scope="session")
def trained_bundle(synth_dataset, tmp_path_factory):
    """Tiny NSN (8 epochs) and NDN (12 epochs, targets made from labels/) trained on the
    synthetic dataset, combined into a QCANet bundle. Returns (bundle folder, results).
    Trained once per run: the other xdist workers find the finished training
    (``train`` reports it with the recorded results instead of training again)."""
    from qca_tf.config import DataConfig, ModelConfig, PostprocessConfig
    from qca_tf.bundle import save_bundle
    from qca_tf.train import train

    root, _ = synth_dataset
    with shared_folder(tmp_path_factory, "trained") as (shared, made):
        bundle, labels_only = shared / "bundle", shared / "labels_only"
        if not made:
            shutil.copytree(root / "images", labels_only / "images")
            shutil.copytree(root / "labels", labels_only / "labels")
        data = DataConfig(patch=(32, 32, 32), val_fraction=0.34)
        nsn = train(root, bundle / "nsn", ModelConfig(name="nsn", **TINY), tiny_train_config("nsn", 8), data,
                    verbose=0)
        ndn = train(labels_only, bundle / "ndn", ModelConfig(name="ndn", **TINY), tiny_train_config("ndn", 12), data,
                    verbose=0)
        if not made:
            save_bundle(bundle, PostprocessConfig())
    return bundle, {"nsn": nsn, "ndn": ndn}
