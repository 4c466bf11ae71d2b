"""XLA (``jit_compile=True``) against the plain TensorFlow graph, on this machine's CPU.

One preset network with seeded random weights on one (z, y, x) volume; the two variants
alternate twice (so a change of machine load hits both) and the best second call of
each is reported. The measurement behind ``qca-tf predict --jit`` being ignored on a CPU
(qca_tf.engines.use_jit)::

    .venv/bin/python benchmarks/bench_xla.py nsn 64 96 96
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # the CPU figure, also on a GPU machine

import numpy as np  # noqa: E402


def main(argv: list[str]) -> int:
    import keras
    import tensorflow as tf

    from qca_tf import models
    from qca_tf.config import PRESETS

    name = argv[0] if argv else "nsn"
    shape = tuple(int(v) for v in argv[1:4]) if len(argv) >= 4 else (64, 96, 96)
    keras.utils.set_random_seed(0)
    model = models.build_unet(PRESETS[name])
    x = tf.constant(np.random.default_rng(0).random((1, *shape, 1), dtype=np.float32))
    best: dict[bool, float] = {}
    for jit in (False, True, False, True):
        fn = tf.function(lambda v: model(v, training=False)[..., 1], jit_compile=jit)
        t0 = time.perf_counter()
        fn(x).numpy()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn(x).numpy()
        second = time.perf_counter() - t0
        best[jit] = min(best.get(jit, float("inf")), second)
        print(f"{name} {shape} jit={jit}: first call {first:.2f} s, second {second:.2f} s", flush=True)
    print(f"{name} {shape}: best plain {best[False]:.2f} s, best XLA {best[True]:.2f} s, "
          f"XLA / plain {best[True] / best[False]:.1f}x; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
