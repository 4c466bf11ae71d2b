"""Input memory benchmark: peak memory of reading one time point of a big 4D movie, and of
tiled prediction of a volume larger than ``--max-memory``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_inputs.py [--movie-gb 1.0] [--volume 160 512 512]

Every measurement runs in a fresh child process (so peaks do not mix) and reports the
child's peak resident memory (``VmHWM``), and its peak *anonymous* memory (``RssAnon``
sampled every 5 ms: memory the process must hold, as opposed to file pages the kernel
may drop or write back). Figures go to stdout as a table; progress to stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

log = logging.getLogger("bench_inputs")
MB = 2**20


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class AnonPeak:
    """Samples RssAnon in a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.peak = _status_kb("RssAnon") * 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kb("RssAnon") * 1024)
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kb("RssAnon") * 1024)
        return self.peak


# ------------------------------------------------------------------ child tasks


def child_read(path: str, mode: str, t: int) -> dict:
    """Read time point ``t``: ``lazy`` (qca_tf.io, as predict does) or ``whole`` (tifffile.imread, then index)."""
    import tifffile

    from qca_tf import io

    base_hwm, base_anon = _status_kb("VmHWM") * 1024, _status_kb("RssAnon") * 1024
    anon = AnonPeak()
    t0 = time.perf_counter()
    if mode == "lazy":
        volume = io.read_series(path)[t].load()
    else:
        volume = np.ascontiguousarray(tifffile.imread(path)[t])
    seconds = time.perf_counter() - t0
    peak_anon = anon.stop()
    return {"seconds": seconds, "timepoint_mb": volume.nbytes / MB,
            "hwm_mb": (_status_kb("VmHWM") * 1024 - base_hwm) / MB, "anon_mb": (peak_anon - base_anon) / MB}


def child_predict(shape: list[int], max_memory_gb: float, on_disk: bool) -> dict:
    """Tiled NSN-like prediction of a random (z, y, x) volume on the network grid."""
    from qca_tf import infer
    from qca_tf.config import InferenceConfig, ModelConfig
    from qca_tf.modelio import LoadedModel
    from qca_tf.models import build_unet
    from qca_tf.runtime import init_tensorflow

    init_tensorflow()
    import keras

    if not on_disk:
        infer.SCRATCH_FRACTION = float("inf")
    # A depth-1, one-channel U-Net: the memory of the tiling machinery is measured, not the network's
    # speed, and its small activations let --max-memory give tiles of a sensible size.
    cfg = ModelConfig(name="nsn", depth=1, init_channels=1, kernel_size=3)
    keras.utils.set_random_seed(0)
    loaded = LoadedModel(build_unet(cfg), cfg, "nsn", 0.8, folder=None)  # type: ignore[arg-type]
    infer.predict_probabilities(loaded, np.zeros((16, 64, 64), np.float32), InferenceConfig())  # trace once
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    base_hwm, base_anon = _status_kb("VmHWM") * 1024, _status_kb("RssAnon") * 1024
    anon = AnonPeak()
    t0 = time.perf_counter()
    prob = infer.predict_probabilities(loaded, volume, InferenceConfig(max_memory_gb=max_memory_gb))
    mean = float(np.mean(prob[::4, ::4, ::4]))
    seconds = time.perf_counter() - t0
    peak_anon = anon.stop()
    return {"seconds": seconds, "volume_mb": volume.nbytes / MB, "mean_prob": mean,
            "hwm_above_input_mb": (_status_kb("VmHWM") * 1024 - base_hwm) / MB,
            "anon_above_input_mb": (peak_anon - base_anon) / MB}


def _run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ main


def write_movie(path: Path, gb: float, zyx=(64, 256, 256)) -> tuple[int, float]:
    """An ImageJ TZYX uint16 movie of about ``gb`` GB, written one time point at a time."""
    import tifffile

    per_t = int(np.prod(zyx)) * 2
    n_t = max(2, int(gb * 2**30 // per_t))
    rng = np.random.default_rng(0)

    def frames():
        for _ in range(n_t):
            yield from rng.integers(0, 4096, zyx, dtype=np.uint16)

    tifffile.imwrite(path, frames(), shape=(n_t, *zyx), dtype=np.uint16, imagej=True,
                     metadata={"axes": "TZYX"})
    return n_t, path.stat().st_size / MB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--movie-gb", type=float, default=1.0, help="size of the synthetic 4D movie")
    ap.add_argument("--volume", type=int, nargs=3, default=(128, 768, 768), metavar=("Z", "Y", "X"),
                    help="network-grid volume predicted under --max-memory")
    ap.add_argument("--max-memory", type=float, default=0.25, help="prediction budget (GB)")
    ap.add_argument("--skip-whole", action="store_true", help="skip the read-the-whole-movie baseline")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "read":
            result = child_read(rest[0], rest[1], int(rest[2]))
        else:
            result = child_predict([int(v) for v in rest[:3]], float(rest[3]), rest[4] == "disk")
        print(json.dumps(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_inputs_") as tmp:
        movie = Path(tmp) / "movie.tif"
        log.info("writing a %.1f GB movie", args.movie_gb)
        n_t, size_mb = write_movie(movie, args.movie_gb)
        for mode in ("lazy",) + (() if args.skip_whole else ("whole",)):
            log.info("reading one time point (%s)", mode)
            r = _run_child("read", str(movie), mode, str(n_t // 2))
            rows.append((f"read t={n_t // 2} of a {n_t} x 64 x 256 x 256 movie ({size_mb:.0f} MB), {mode}",
                         r["seconds"], r["hwm_mb"], r["anon_mb"], f"time point {r['timepoint_mb']:.0f} MB"))
    for where in ("disk", "memory"):
        log.info("predicting %s with --max-memory %g (%s)", args.volume, args.max_memory, where)
        r = _run_child("predict", *map(str, args.volume), str(args.max_memory), where)
        rows.append((f"predict {'x'.join(map(str, args.volume))} grid volume, --max-memory {args.max_memory:g} GB, "
                     f"scratch on {where}", r["seconds"], r["hwm_above_input_mb"], r["anon_above_input_mb"],
                     f"input {r['volume_mb']:.0f} MB, mean p {r['mean_prob']:.4f}"))
    print(f"{'measurement':<100} {'s':>7} {'peak RSS MB':>12} {'peak anon MB':>13}  note")
    for name, s, hwm, anon, note in rows:
        print(f"{name:<100} {s:>7.1f} {hwm:>12.0f} {anon:>13.0f}  {note}")


if __name__ == "__main__":
    main()
