"""The demo at its default settings (what a new user runs): wall time and whether every
nucleus is counted right at every test time point.

    python benchmarks/bench_demo.py [--out DIR] [--seed 0]

Prints the CPU, the wall time, the counts predicted/true per time point and the mean
metrics. The test suite runs the demo on a short budget only (tests/test_demo.py).
"""
from __future__ import annotations

import argparse
import platform
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
    args = ap.parse_args()

    from qca_tf.runtime import init_tensorflow

    init_tensorflow()
    from qca_tf.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "demo"
        t0 = time.perf_counter()
        res = run_demo(out, seed=args.seed, progress=False)
        seconds = time.perf_counter() - t0
    right = sum(p == t for _, p, t in res.counts)
    print(f"cpu: {cpu_name()}")
    print(f"demo (defaults, seed {args.seed}): {seconds / 60:.1f} min wall")
    print("counts predicted/true: " + ", ".join(f"{n} {p}/{t}" for n, p, t in res.counts)
          + f"  ({right} of {len(res.counts)} time points right)")
    for key in ("iou", "seg", "mucov", "det_f1"):
        print(f"{key}: {res.summary[key]['mean']:.3f}")


if __name__ == "__main__":
    main()
