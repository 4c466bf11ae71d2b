"""The QCANet paper's Table 1 on synthetic embryos: QCANet (NSN + NDN + marker watershed),
QCANet without NDN (NSN + connected components) and a 3D U-Net (connected components).

    python benchmarks/table1.py WORK [--epochs N] [--seed S] [--quick]
                                [--real-test DIR --real-bundle BUNDLE [--real-unet DIR] [--real-only]]

Data (``qca_tf.synthetic``, 0.8 x 0.8 x 1.75 um voxels): two training embryos and one
validation embryo, and a test embryo of another seed followed through two rounds of
divisions (6 -> 8 nuclei), each with touching nuclei and two polar bodies (bright, small,
not nuclei). NSN, NDN and the 3D U-Net are trained with the tool's ``train`` (reduced
architectures, printed), the test series is predicted with ``predict_series`` and scored
with ``evaluate_series``. Prints mean (sd) over the test time points beside the paper's
figures and writes WORK/table1.json and WORK/table1.md.

``--real-test DIR`` (images/ + labels/, e.g. the held-out right part of the real 8-cell
stack made by ``benchmarks/embryo_small_data.py``) adds the same methods on real data
with the given models (``--real-bundle``: QCANet and NSN-only; ``--real-unet``: a 3D
U-Net model folder trained on the same training data). ``--real-only`` skips the
synthetic table (no training): only the real rows, e.g. for a new shipped bundle.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from qca_tf import synthetic
from qca_tf.config import DataConfig, InferenceConfig, ModelConfig, PostprocessConfig, TrainConfig
from qca_tf.io import VoxelSize

VOXEL = VoxelSize(0.8, 0.8, 1.75)
EMBRYO = synthetic.SynthConfig(shape=(20, 80, 80), voxel_size=(VOXEL.x, VOXEL.y, VOXEL.z), n_nuclei=6,
                               radius_um=(4.0, 5.5), touching_pairs=2, polar_bodies=2, division_interval=2,
                               timepoints=6)
#: Reduced for a 2-core CPU (the paper's presets: NSN depth 2 / 16 channels, NDN depth 4 /
#: 12 channels / kernel 5, 3D U-Net depth 3 / 32 channels).
ARCH = {"nsn": ModelConfig(name="nsn", depth=2, init_channels=8, kernel_size=3),
        "ndn": ModelConfig(name="ndn", depth=2, init_channels=8, kernel_size=3),
        "unet3d": ModelConfig(name="unet3d", depth=3, init_channels=8, kernel_size=3)}
DATA = DataConfig(patch=(32, 48, 48))
#: The paper's Table 1 (mean over its test embryos).
PAPER = {"QCANet": {"iou": 0.817, "mucov": 0.801}, "QCANet without NDN": {"iou": 0.813, "mucov": 0.647},
         "3D U-Net": {"iou": 0.665, "mucov": 0.334}}
METRICS = ("iou", "mucov", "seg")


def make_data(work: Path, seed: int, quick: bool) -> list[synthetic.SynthTimepoint]:
    """WORK/data/{train,val,test}; returns the test series (its polar-body centres are scored)."""
    train_seeds = [seed + 1] if quick else [seed + 1, seed + 2]
    train = [tp for s in train_seeds for tp in synthetic.make_series(dataclasses.replace(EMBRYO, seed=s))]
    val = synthetic.make_series(dataclasses.replace(EMBRYO, seed=seed + 3))
    test = synthetic.make_series(dataclasses.replace(EMBRYO, seed=seed + 1000))
    synthetic.write_dataset(work / "data" / "train", train, VOXEL)
    synthetic.write_dataset(work / "data" / "val", [val[0], val[-1]], VOXEL)
    synthetic.write_dataset(work / "data" / "test", test, VOXEL)
    return test


def train_configs(epochs: int, seed: int) -> dict[str, TrainConfig]:
    common = dict(optimizer="adam", adam_alpha=3e-3, epochs=epochs, crops_per_volume=3, seed=seed)
    return {"nsn": TrainConfig(task="nsn", loss="ce+dice", **common),
            "ndn": TrainConfig(task="ndn", loss="ce+dice", **common),
            "unet3d": TrainConfig(task="nsn", loss="ce+dice", **common)}


def polar_kept(labels_dir: Path, gt_dir: Path, names: list[str], series: list[synthetic.SynthTimepoint]
               ) -> tuple[int, int]:
    """(polar bodies kept as a nucleus of their own, polar bodies) over the series
    (:func:`qca_tf.metrics.polar_kept`)."""
    from qca_tf.io import read_stack
    from qca_tf.metrics import polar_kept as kept_at

    spacing = (VOXEL.z, VOXEL.y, VOXEL.x)
    kept = sum(kept_at(read_stack(labels_dir / f"{name}.tif"), read_stack(gt_dir / f"{name}.tif"),
                       tp.polar_centres_um, spacing)["kept"] for name, tp in zip(names, series))
    return kept, sum(len(tp.polar_centres_um) for tp in series)


def ndn_detection(pred_ndn: Path, gt_ndn: Path, names: list[str]) -> list[float]:
    """NDN detection F-measure per time point: centres of the predicted NDN mask's
    components against those of the true centre mask (within the evaluation's distance)."""
    from qca_tf.io import read_stack
    from qca_tf.metrics import MATCH_DISTANCE_UM, detection_from_masks

    return [detection_from_masks(read_stack(pred_ndn / f"{n}.tif"), read_stack(gt_ndn / f"{n}.tif"),
                                 VOXEL.zyx, MATCH_DISTANCE_UM)["f1"] for n in names]


def predict_and_score(out: Path, test: Path, *, nsn: Path, ndn: Path | None, post: PostprocessConfig,
                      voxel: VoxelSize | None = None, tta: int = 1) -> dict:
    """Predict ``test/images`` with NSN (+ NDN) into ``out`` (``tta`` xy transforms averaged);
    evaluation summary (mean, sd)."""
    from qca_tf.bundle import load_networks
    from qca_tf.evaluate import evaluate_series
    from qca_tf.predict import PredictOptions, predict_series

    infer = InferenceConfig(tta=tta)
    nets = load_networks(nsn=nsn, ndn=ndn, infer_cfg=infer, postprocess_cfg=post)
    predict_series([test / "images"], out, nets, infer,
                   PredictOptions(overwrite=True, progress=False, quicklook=False, save_masks=True, voxel_size=voxel))
    return evaluate_series(out / "labels", test / "labels", voxel_size=voxel).summary


def fmt(summary: dict, key: str) -> str:
    s = summary.get(key)
    return "n/a" if s is None else f"{s['mean']:.3f} ({s['sd']:.3f})"


def synthetic_table(work: Path, test_series: list[synthetic.SynthTimepoint], names: list[str], epochs: int,
                    seed: int, times: dict[str, float]) -> dict[str, dict]:
    """Train NSN, NDN and the 3D U-Net on WORK/data and score the three methods on the
    synthetic test series; per method the evaluation summary and polar bodies kept
    (QCANet also the NDN detection F-measure). Adds the step times to ``times``."""
    from qca_tf.train import train

    results: dict[str, dict] = {}
    for net, cfg in train_configs(epochs, seed).items():
        t = time.perf_counter()
        source = work / "data" / "train"
        train(source, work / "models" / net, ARCH[net], cfg, DATA, verbose=0, val_data=work / "data" / "val")
        times[f"train {net}"] = time.perf_counter() - t
    post = PostprocessConfig()
    test = work / "data" / "test"
    models = work / "models"
    t = time.perf_counter()
    methods = {"QCANet": (models / "nsn", models / "ndn"), "QCANet without NDN": (models / "nsn", None),
               "3D U-Net": (models / "unet3d", None)}
    for method, (nsn, ndn) in methods.items():
        out = work / "pred" / method.replace(" ", "_")
        results[method] = {"summary": predict_and_score(out, test, nsn=nsn, ndn=ndn, post=post)}
        kept, total = polar_kept(out / "labels", test / "labels", names, test_series)
        results[method]["polar_bodies_kept"] = [kept, total]
    f1 = ndn_detection(work / "pred" / "QCANet" / "ndn", test / "ndn", names)
    results["QCANet"]["ndn_detection_f1"] = {"mean": float(np.mean(f1)), "sd": float(np.std(f1))}
    times["predict + evaluate (3 methods)"] = time.perf_counter() - t
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="1 epoch, 1 training embryo: checks the script runs")
    ap.add_argument("--real-test", type=Path, default=None)
    ap.add_argument("--real-bundle", type=str, default=None)
    ap.add_argument("--real-unet", type=Path, default=None)
    ap.add_argument("--real-only", action="store_true", help="only the real rows (needs --real-test and --real-bundle)")
    a = ap.parse_args(argv)
    if (a.real_test is None) != (a.real_bundle is None) or (a.real_only and a.real_test is None):
        ap.error("--real-test and --real-bundle go together; --real-only needs both")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from qca_tf.runtime import init_tensorflow

    init_tensorflow()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    epochs = 1 if a.quick else a.epochs
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    results: dict[str, dict] = {}
    names: list[str] = []
    test_series: list[synthetic.SynthTimepoint] = []
    if not a.real_only:
        test_series = make_data(work, a.seed, a.quick)
        names = [f"t{t:04d}" for t in range(len(test_series))]
        results = synthetic_table(work, test_series, names, epochs, a.seed, times)

    real: dict[str, dict] = {}
    if a.real_test is not None:
        from qca_tf.bundle import read_bundle
        from qca_tf.registry import resolve

        meta = read_bundle(resolve(a.real_bundle))
        voxel = VoxelSize.from_xyz(meta.voxel_size_um) if meta.voxel_size_um else None
        runs = {"QCANet": (meta.nsn, meta.ndn, meta.tta), "QCANet without NDN": (meta.nsn, None, meta.tta)}
        if a.real_unet is not None:
            runs["3D U-Net"] = (a.real_unet, None, meta.tta)
        for method, (nsn, ndn, tta) in runs.items():  # as predict runs the bundle (its tta), the U-Net alike
            out = work / "pred_real" / method.replace(" ", "_")
            real[method] = predict_and_score(out, a.real_test, nsn=nsn, ndn=ndn, post=meta.postprocess, voxel=voxel,
                                             tta=tta)

    total = time.perf_counter() - t0
    lines = (["| method | IoU | MUCov | SEG | polar bodies kept | paper IoU | paper MUCov |", "|---|---|---|---|---|---|---|"]
             if results else [])
    for method, r in results.items():
        s = r["summary"]
        k, n = r["polar_bodies_kept"]
        lines.append(f"| {method} | {fmt(s, 'iou')} | {fmt(s, 'mucov')} | {fmt(s, 'seg')} | {k} of {n} | "
                     f"{PAPER[method]['iou']:.3f} | {PAPER[method]['mucov']:.3f} |")
    if results:
        ndn_f = results["QCANet"]["ndn_detection_f1"]
        lines.append("")
        lines.append(f"NDN detection F-measure (centres within the evaluation distance): {ndn_f['mean']:.3f} "
                     f"({ndn_f['sd']:.3f}); paper: 0.870 (on its real embryos)")
    if real:
        lines += ([""] if lines else []) + [f"Real stack ({a.real_test}), models {a.real_bundle}" + (f" and {a.real_unet}" if a.real_unet else ""),
                  "", "| method | IoU | MUCov | SEG |", "|---|---|---|---|"]
        for method, s in real.items():
            lines.append(f"| {method} | {fmt(s, 'iou')} | {fmt(s, 'mucov')} | {fmt(s, 'seg')} |")
    arch = "; ".join(f"{n}: depth {m.depth}, {m.init_channels} channels, kernel {m.kernel_size}" for n, m in ARCH.items())
    from bench_demo import cpu_name  # benchmarks/ is on sys.path when this script runs

    cpu = cpu_name()
    if not results:
        lines += ["", f"Time: {total / 60:.1f} min on {os.cpu_count()} cores of {cpu}."]
    else:
        lines += ["", f"Test: {len(names)} time points of a synthetic embryo (seed {a.seed + 1000}), nuclei "
                  f"{[int(np.count_nonzero(np.unique(tp.labels))) for tp in test_series]}; training: "
                  f"{epochs} epochs, crops {DATA.patch}, architectures reduced for the CPU: {arch}.",
                  "Times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
                  + f"; total {total / 60:.1f} min on {os.cpu_count()} cores of {cpu}."]
    text = "\n".join(lines)
    print(text)
    (work / "table1.md").write_text(text + "\n")
    (work / "table1.json").write_text(json.dumps({"synthetic": results, "real": real, "times_s": times,
                                                  "epochs": None if a.real_only else epochs, "seed": a.seed},
                                                 indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
