"""Shared fixtures: small synthetic datasets written once per session."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from qca_tf import synthetic
from qca_tf.io import VoxelSize

VOXEL = VoxelSize(0.8, 0.8, 1.75)


def small_embryo(seed: int = 0, timepoints: int = 3) -> synthetic.SynthConfig:
    """A 16 x 64 x 64 (z, y, x) embryo: 35 x 64 x 64 on the isotropic network grid."""
    return synthetic.SynthConfig(shape=(16, 64, 64), voxel_size=(VOXEL.x, VOXEL.y, VOXEL.z), n_nuclei=5,
                                 radius_um=(4.0, 5.0), touching_pairs=1, polar_bodies=1, timepoints=timepoints,
                                 division_interval=0, seed=seed)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """A 3-time-point synthetic dataset folder (images/, nsn/, ndn/, labels/) and its series."""
    root = tmp_path_factory.mktemp("synth")
    series = synthetic.make_series(small_embryo())
    synthetic.write_dataset(root, series, VOXEL)
    return root, series
