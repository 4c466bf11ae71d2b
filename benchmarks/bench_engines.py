"""Engines side by side on one network: TensorFlow float32 against OpenVINO float32
(and bf16 where the CPU has bf16 units), interleaved twice on the same volume, best
call of each, mask agreement. Quicker than bench_predict.py on a busy machine::

    .venv/bin/python benchmarks/bench_engines.py nsn ../shared/data/qcanet-example-8cell/image.tif

The network is the preset with seeded random weights calibrated on the volume, as in
bench_predict.py; the volume is brought to the 0.8 um grid (voxel 0.8 0.8 1.75 um).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("QCA_TF_CACHE", tempfile.mkdtemp(prefix="bench-engines-cache-"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_predict as b  # noqa: E402


def main(argv: list[str]) -> int:
    from qca_tf import engines, infer, io, models, preprocess
    from qca_tf.config import PRESETS, InferenceConfig

    task, image = argv[0], argv[1]
    raw = io.read_stack(image)
    vol = preprocess.to_network_grid(raw, io.VoxelSize(0.8, 0.8, 1.75), 0.8)
    lm = b.random_model(PRESETS[task], task, 0, vol, 0.025 if task == "nsn" else 0.0005)
    cfgs = {"tensorflow float32": InferenceConfig(engine="tensorflow", precision="float32"),
            "openvino float32": InferenceConfig(engine="openvino", precision="float32")}
    if engines.has_bf16_units():
        cfgs["openvino bf16"] = InferenceConfig(engine="openvino", precision="mixed_bfloat16")
    for name, c in cfgs.items():
        t = time.perf_counter()
        infer.forward(lm, c)
        print(name, "build", round(time.perf_counter() - t, 2), flush=True)
        t = time.perf_counter()
        infer.predict_probabilities(lm, vol, c)
        print(name, "first", round(time.perf_counter() - t, 2), flush=True)
    best: dict[str, float] = {}
    masks = {}
    for _ in range(2):
        for name, c in cfgs.items():
            t = time.perf_counter()
            p = infer.predict_probabilities(lm, vol, c)
            w = time.perf_counter() - t
            best[name] = min(best.get(name, float("inf")), w)
            masks[name] = p > 0.5
            print(name, "call", round(w, 2), "load", os.getloadavg()[0], flush=True)
    gflop = models.flops(PRESETS[task], preprocess.pad_to_multiple(vol, PRESETS[task].multiple)[0].shape) / 1e9
    ref = masks["tensorflow float32"]
    print(json.dumps({"network": task, "grid": list(vol.shape), "gflop": gflop, "best_s": best,
                      "gflops": {k: gflop / v for k, v in best.items()},
                      "agreement_vs_tf_float32": {k: float((m == ref).mean()) for k, m in masks.items()},
                      "tf_float32_over": {k: best["tensorflow float32"] / v for k, v in best.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
