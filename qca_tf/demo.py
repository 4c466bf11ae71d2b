"""``qca-tf demo``: the whole method end to end on a synthetic embryo, 1.5 to 9 minutes on a 2-core CPU.

Makes a training series and a separate test series (different seed) with known
ground truth, trains small NSN and NDN networks, predicts the test series with the
NDN-seeded watershed, and evaluates against the ground truth::

    OUT/data/train/, OUT/data/test/   synthetic stacks (images/, nsn/, ndn/, labels/)
    OUT/model/                        QCANet bundle: nsn/, ndn/ model folders + qcanet.json
    OUT/prediction/                   labels/, criteria.csv, nuclei.csv, plots/, run.json
    OUT/evaluation.json               metrics per time point and mean (sd)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import synthetic
from .config import DataConfig, InferenceConfig, ModelConfig, PostprocessConfig, TrainConfig
from .io import VoxelSize

log = logging.getLogger(__name__)

#: Small networks that learn the synthetic embryo (the whole demo: 1.5 min on 2 AVX-512 cores, 7-9 on AVX2).
DEMO_NSN = ModelConfig(name="nsn", depth=2, init_channels=4, kernel_size=3)
DEMO_NDN = ModelConfig(name="ndn", depth=2, init_channels=4, kernel_size=3)
#: Training embryos and their time points (the test embryo is another seed). As many time
#: points as the test series, so training sees every stage the test shows: with 4, training
#: saw one round of divisions and the networks missed the smaller daughters of the second
#: (counts 6, 6, 5, 5, 4, 4 for a true 6, 6, 7, 7, 8, 8).
TRAIN_EMBRYOS = 2
TRAIN_TIMEPOINTS = 6


@dataclass
class DemoResult:
    """``summary``: metric -> {"mean", "sd"} over the test time points; ``counts``:
    (time point, predicted nuclei, true nuclei) per test time point."""

    out: Path
    summary: dict
    prediction: Path
    bundle: Path
    counts: list[tuple[str, int, int]]
    #: wall seconds per stage: data, nsn training, ndn training, prediction, evaluation
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


#: Training crop (z, y, x network-grid voxels). Small crops are what makes the demo fast:
#: a CPU training step costs about its voxels (12 epochs of 32x48x48 crops: 15 minutes).
#: At the same cost, 36 crops of 24x32x32 per epoch learnt better than 27 or 18 crops of
#: 32x32x32 (counts wrong at 1 or 2 of 6 time points, seed 0).
DEMO_PATCH = (24, 32, 32)
#: Training epochs per network (36 crops each). Seed 0 counts right; seed 2 misses one
#: nucleus at one of 6 time points, with 8 epochs too (benchmarks/README.md).
DEMO_EPOCHS = 12


def demo_train_configs(epochs: int, seed: int) -> tuple[TrainConfig, TrainConfig, DataConfig]:
    """Training settings of the demo's NSN and NDN (Adam: fastest to converge on small budgets;
    the rate halves after 2 epochs without a better validation score, so short runs settle)."""
    nsn = TrainConfig(task="nsn", optimizer="adam", adam_alpha=3e-3, epochs=epochs, crops_per_volume=4,
                      lr_patience=2, loss="ce+dice", seed=seed)
    ndn = TrainConfig(task="ndn", optimizer="adam", adam_alpha=3e-3, epochs=epochs, crops_per_volume=4,
                      lr_patience=2, loss="ce+dice", seed=seed)
    return nsn, ndn, DataConfig(patch=DEMO_PATCH, val_fraction=0.25)


def run_demo(out: str | os.PathLike, *, seed: int = 0, timepoints: int = 6, epochs: int = DEMO_EPOCHS,
             progress: bool | None = None) -> DemoResult:
    """Run the demo into ``out`` and return the headline metrics (mean over test time points)."""
    from .evaluate import evaluate_series
    from .bundle import load_networks, save_bundle
    from .predict import PredictOptions, predict_series
    from .train import train

    out = Path(out)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage], clock = now - clock, now

    voxel = VoxelSize(0.8, 0.8, 1.75)
    base = synthetic.SynthConfig(shape=(20, 80, 80), voxel_size=(voxel.x, voxel.y, voxel.z), n_nuclei=6,
                                 radius_um=(4.0, 5.5), touching_pairs=2, polar_bodies=1, division_interval=2)
    log.info("making synthetic embryos in %s", out / "data")
    # two embryos for training (so the networks cannot memorise one), a third one for testing
    train_series = [tp for k in range(TRAIN_EMBRYOS)
                    for tp in synthetic.make_series(dataclasses.replace(base, timepoints=TRAIN_TIMEPOINTS, seed=seed + k))]
    test_series = synthetic.make_series(dataclasses.replace(base, timepoints=timepoints, seed=seed + 1000))
    synthetic.write_dataset(out / "data" / "train", train_series, voxel)
    test_names = [Path(n).stem for n in synthetic.write_dataset(out / "data" / "test", test_series, voxel)]

    lap("data")
    nsn_cfg, ndn_cfg, data_cfg = demo_train_configs(epochs, seed)
    from .runtime import keras_verbose, progress_enabled

    progress = progress_enabled() if progress is None else progress
    verbose = keras_verbose(progress)
    bundle = out / "model"
    log.info("training NSN")
    # a rerun of the demo trains afresh (its data are made again; --epochs may differ)
    train(out / "data" / "train", bundle / "nsn", DEMO_NSN, nsn_cfg, data_cfg, verbose=verbose, overwrite=True)
    lap("nsn training")
    log.info("training NDN")
    train(out / "data" / "train", bundle / "ndn", DEMO_NDN, ndn_cfg, data_cfg, verbose=verbose, overwrite=True)
    save_bundle(bundle, PostprocessConfig(), description="qca-tf demo: synthetic embryos (seed "
                f"{seed}), {DEMO_NSN.depth}-level networks with {DEMO_NSN.init_channels} channels",
                voxel_size_um=(voxel.x, voxel.y, voxel.z))
    lap("ndn training")

    infer_cfg = InferenceConfig()
    nets = load_networks(bundle=bundle, infer_cfg=infer_cfg)
    prediction = out / "prediction"
    predict_series([out / "data" / "test" / "images"], prediction, nets, infer_cfg,
                   PredictOptions(overwrite=True, progress=progress))
    lap("prediction")
    evaluation = evaluate_series(prediction / "labels", out / "data" / "test" / "labels")
    evaluation.write_json(out / "evaluation.json")
    counts = [(name, _count(prediction / "labels" / f"{name}.tif"), int(np.count_nonzero(np.unique(tp.labels))))
              for name, tp in zip(test_names, test_series)]
    lap("evaluation")
    return DemoResult(out=out, summary=evaluation.summary, prediction=prediction, bundle=bundle, counts=counts,
                      seconds=seconds)


def _count(path: Path) -> int:
    """Nuclei in an instance-label TIFF (distinct non-zero labels)."""
    from .io import read_stack

    return int(np.count_nonzero(np.unique(read_stack(path))))
