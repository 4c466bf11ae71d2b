"""What test-time augmentation costs: `qca-tf predict` with --tta 1, 4 and 8, side by side.

    python benchmarks/bench_tta.py [--image STACK] [--model BUNDLE] [--voxel-size X Y Z] [--repeats N]
        [--engine auto|tensorflow|openvino] [--precision auto|float32|...]

Runs the whole command in subprocesses (what a user waits for), the settings interleaved
``--repeats`` times after one warm-up run (OpenVINO conversion cached), and prints per
setting the best command wall time, the best network time (run.json), both as a ratio to
--tta 1, and how far its labels are from --tta 1's (nuclei, voxels with another
foreground/background call). Defaults: the real 8-cell stack of ../shared/data and the
shipped `embryo-small` at its voxel size. Accuracy is not measured here: the held-out
figures are in docs/models/embryo-small.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "qcanet-example-8cell" / "image.tif"
SETTINGS = ("1", "4", "8")


def predict(image: Path, out: Path, a: argparse.Namespace, tta: str) -> tuple[float, float]:
    """(command wall seconds, network seconds from run.json) of one `qca-tf predict`."""
    cmd = [sys.executable, "-m", "qca_tf.cli", "-q", "predict", str(image), "--model", a.model, "--out", str(out),
           "--voxel-size", *map(str, a.voxel_size), "--tta", tta, "--engine", a.engine, "--precision", a.precision,
           "--no-quicklook", "--overwrite"]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    return wall, json.loads((out / "run.json").read_text())["timings_s"]["networks"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--model", default="embryo-small")
    ap.add_argument("--voxel-size", nargs=3, type=float, default=[0.8, 0.8, 1.75], metavar=("X", "Y", "Z"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--engine", default="auto", choices=["auto", "tensorflow", "openvino"])
    ap.add_argument("--precision", default="auto")
    a = ap.parse_args(argv)
    from qca_tf.io import read_stack

    with tempfile.TemporaryDirectory(prefix="bench-tta-") as tmp:
        outs = {s: Path(tmp) / f"tta{s}" for s in SETTINGS}
        predict(a.image, outs["1"], a, "1")  # warm-up: OpenVINO conversion cache, file cache
        times: dict[str, list[tuple[float, float]]] = {s: [] for s in SETTINGS}
        for _ in range(a.repeats):
            for s in SETTINGS:
                times[s].append(predict(a.image, outs[s], a, s))
        labels = {s: read_stack(outs[s] / "labels" / f"{a.image.stem}.tif") for s in SETTINGS}
    base_wall = min(w for w, _ in times["1"])
    base_net = min(n for _, n in times["1"])
    fg1 = labels["1"] > 0
    print(f"{a.image} ({'x'.join(map(str, labels['1'].shape))} z,y,x), model {a.model}, engine {a.engine}, "
          f"precision {a.precision}, best of {a.repeats}")
    print("| --tta | command s | ratio | networks s | ratio | nuclei | foreground voxels changed vs --tta 1 |")
    print("|---|---|---|---|---|---|---|")
    for s in SETTINGS:
        wall, net = min(w for w, _ in times[s]), min(n for _, n in times[s])
        changed = np.count_nonzero((labels[s] > 0) != fg1) / max(1, np.count_nonzero(fg1))
        print(f"| {s} | {wall:.1f} | {wall / base_wall:.2f}x | {net:.1f} | {net / base_net:.2f}x | "
              f"{len(np.unique(labels[s])) - 1} | {100 * changed:.2f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
