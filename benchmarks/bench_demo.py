"""The demo at its default settings (what a new user runs): wall time and whether every
nucleus is counted right at every test time point.

    python benchmarks/bench_demo.py [--out DIR] [--seed 0] [--images docs/images]

Prints the CPU, the load average before and after, the wall time (and per stage), the
counts predicted/true per time point and the mean metrics. ``--images DIR`` copies the
README pictures from this run: the time-series plot (``demo_timeseries.png``) and the
quick-look of the last time point (``demo_quicklook.png``). The test suite checks the
default demo's counts with ``pytest -m slow tests/test_demo.py``.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="demo folder [a temporary one]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=Path, default=None, help="copy the README pictures of this run here")
    args = ap.parse_args()
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    from qca_tf.runtime import init_tensorflow

    init_tensorflow()
    tf_start = time.perf_counter() - t_start
    from qca_tf.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "demo"
        t0 = time.perf_counter()
        res = run_demo(out, seed=args.seed, progress=False)
        seconds = time.perf_counter() - t0
        if args.images is not None:
            args.images.mkdir(parents=True, exist_ok=True)
            plots = res.prediction / "plots"
            shutil.copyfile(plots / "timeseries.png", args.images / "demo_timeseries.png")
            last = sorted((plots / "quicklook").glob("*.png"))[-1]
            shutil.copyfile(last, args.images / "demo_quicklook.png")
    load_after = os.getloadavg()
    right = sum(p == t for _, p, t in res.counts)
    print(f"cpu: {cpu_name()}")
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
        *load_before, *load_after))
    total = tf_start + seconds
    print(f"demo (defaults, seed {args.seed}): {total / 60:.1f} min wall ({total:.0f} s, TensorFlow start-up included)")
    print(f"stages: TensorFlow start-up {tf_start:.0f} s, " + ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
          + f", the rest {seconds - sum(res.seconds.values()):.0f} s")
    print("counts predicted/true: " + ", ".join(f"{n} {p}/{t}" for n, p, t in res.counts)
          + f"  ({right} of {len(res.counts)} time points right)")
    for key in ("iou", "seg", "mucov", "det_f1"):
        print(f"{key}: {res.summary[key]['mean']:.3f}")


if __name__ == "__main__":
    main()
