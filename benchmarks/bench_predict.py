"""Prediction benchmark: how fast `qca-tf predict` is, part by part, against the
reference QCANet sliding window, on one stack and on a time series.

Run from the repository root::

    .venv/bin/python benchmarks/bench_predict.py --image ../shared/data/qcanet-example-8cell/image.tif

Parts (each can be skipped with --skip-PART): 1 networks per engine and precision,
2 the reference sliding window (same networks), 3 startup in a fresh process,
4 the whole `qca-tf predict` command in subprocesses (one stack; a --series-points
series), 5 pipelined vs sequential in-process series, 6 peak memory of a large volume.
The networks are the NSN and NDN presets with seeded random weights and calibrated BN
statistics, saved as a bundle for the command. `--device gpu` runs it on a GPU.
Figures go to stdout (and --json PATH); progress to stderr. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported (qca_tf.models imports keras)

import numpy as np  # noqa: E402

log = logging.getLogger("bench_predict")

REF_PATCH = 96     # reference tool: patch edge (voxels of the network grid)
REF_STRIDE = 48    # reference tool: stride; the centre REF_STRIDE^3 of each patch is kept
SPACING_UM = 0.8   # network grid of the random-weight models (the reference training data's xy voxel)
CALIB_EDGE = 96    # random models: BN statistics come from a centre crop of at most this edge


# ------------------------------------------------------------------ setup helpers


def setup_tensorflow(threads: int | None) -> None:
    """Import TensorFlow and apply ``--threads`` (intra- and inter-op) before any op runs."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def calibrate(model: Any, volume: np.ndarray, multiple: int, foreground: float) -> tuple[int, int, int]:
    """Make a random-weight network's output non-trivial, using a centre crop of ``volume``
    (z, y, x), at most CALIB_EDGE per axis and a multiple of ``multiple``:

    1. BatchNormalization: every layer's moving mean/variance is set to the batch statistics of
       its input on the crop (momentum 0 for one training-mode forward pass, so each BN sees the
       already-normalised output of the BNs before it; then the momentum is restored).
    2. Head: the class-1 bias is shifted so that a fraction ``foreground`` of the crop's voxels
       has logit(class 1) > logit(class 0), i.e. the mask is blobs, not (almost) all foreground.

    Returns the crop shape."""
    import keras

    crop = tuple(max(multiple, min(n, CALIB_EDGE) // multiple * multiple) for n in volume.shape)
    starts = [max(0, (n - c) // 2) for n, c in zip(volume.shape, crop)]
    sub = volume[tuple(slice(s, s + c) for s, c in zip(starts, crop))]
    sub = np.pad(sub, [(0, c - n) for c, n in zip(crop, sub.shape)], mode="reflect")[None, ..., None]
    sub = sub.astype(np.float32)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    try:
        model(sub, training=True)
    finally:
        for bn, m in zip(bns, saved):
            bn.momentum = m
    head = model.get_layer("head_conv")
    logits = np.asarray(keras.Model(model.input, head.output)(sub, training=False))
    diff = logits[..., 1] - logits[..., 0]
    kernel, bias = head.get_weights()
    bias[1] -= float(np.quantile(diff, 1.0 - foreground))
    head.set_weights([kernel, bias])
    return crop  # type: ignore[return-value]


def random_model(cfg: Any, task: str, seed: int, calib_volume: np.ndarray | None,
                 foreground: float = 0.5) -> Any:
    """A LoadedModel of architecture ``cfg`` with He-normal random weights (seeded with
    ``seed``, plus 1 for the NDN so the two networks differ) and, if a volume is given,
    calibrated on it (see :func:`calibrate`) to a ``foreground`` fraction."""
    import keras

    from qca_tf import models
    from qca_tf.modelio import LoadedModel

    keras.utils.set_random_seed(seed + (task == "ndn"))
    model = models.build_unet(cfg)
    if calib_volume is not None:
        calibrate(model, calib_volume, cfg.multiple, foreground)
    return LoadedModel(model, cfg, task, SPACING_UM, Path(f"<random {task} seed {seed}>"))


# ------------------------------------------------------------------ reference plan, timing, input


def reference_plan(shape: tuple[int, int, int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Reference sliding window on a (z, y, x) volume: per axis (pad before, pad after) and the
    number of patches. Before: REF_STRIDE/2; patches = ceil(n / stride); padded length
    stride * patches + stride (so the last 96-patch ends exactly at the padded end)."""
    sh = REF_STRIDE // 2
    steps = [math.ceil(n / REF_STRIDE) for n in shape]
    pads = [(sh, REF_STRIDE * s + REF_STRIDE - n - sh) for n, s in zip(shape, steps)]
    return pads, steps


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, all threads, user + system, result) of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - t0, time.process_time() - c0, result


def load_volume(args: argparse.Namespace) -> tuple[np.ndarray, str, Any]:
    """The raw (z, y, x) volume (file or synthetic), a description, and its voxel size."""
    from qca_tf import io, synthetic

    voxel = io.VoxelSize.from_xyz(args.voxel_size)
    if args.image:
        raw = io.read_stack(args.image)
        return raw, f"{args.image} {raw.shape} {raw.dtype}", voxel
    cfg = synthetic.SynthConfig(shape=(51, 120, 122), voxel_size=tuple(args.voxel_size), seed=args.seed)
    raw = synthetic.make_series(cfg)[0].image
    return raw, f"synthetic embryo {raw.shape} {raw.dtype} (seed {args.seed})", voxel


# ------------------------------------------------------------------ machine


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """CPU model, logical CPUs, bf16 units, GPU, and the float32 peak (GFLOP/s) the
    achieved throughput is compared with: ``--peak-gflops``, or CPUs x GHz x float32
    FLOPs per cycle (32 with AVX2 + FMA: two 8-lane FMA pipes; 64 with AVX-512 and two
    FMA pipes; the GHz is the highest ``cpu MHz`` in /proc/cpuinfo, or ``--cpu-ghz``)."""
    from qca_tf import engines

    flags = engines.cpu_flags()
    model, mhz = "unknown", []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("cpu MHz"):
                mhz.append(float(line.split(":", 1)[1]))
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0))
    ghz = args.cpu_ghz or (max(mhz) / 1000 if mhz else None)
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 16
    peak = args.peak_gflops or (cpus * ghz * per_cycle if ghz else None)
    ov_error = engines.openvino_import_error()
    info = {"cpu": model, "cpus": cpus, "ghz": ghz, "flops_per_cycle": per_cycle, "peak_gflops": peak,
            "peak_source": "--peak-gflops" if args.peak_gflops else f"{cpus} CPUs x {ghz} GHz x {per_cycle}",
            "avx512": "avx512f" in flags, "bf16_flags": sorted(engines.BF16_FLAGS & flags),
            "openvino": None if ov_error else _openvino_version(), "openvino_error": ov_error,
            "gpu": engines.has_gpu()}
    if not ov_error:
        info["openvino_capabilities"] = sorted(engines.openvino_capabilities())
        info["bf16_units"] = engines.has_bf16_units()
    return info


def _openvino_version() -> str:
    import openvino

    return openvino.__version__


def variants(machine: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str]]:
    """(engine, precision) pairs to time: TensorFlow float32 always; on a GPU TensorFlow
    mixed_float16; on a CPU with bf16 units (or ``--all-precisions``) TensorFlow
    mixed_bfloat16; OpenVINO float32, and bf16 where the CPU has bf16 units, when installed."""
    out = [("tensorflow", "float32")]
    if machine["gpu"]:
        out.append(("tensorflow", "mixed_float16"))
    elif machine.get("bf16_units") or args.all_precisions:
        out.append(("tensorflow", "mixed_bfloat16"))
    if machine["openvino"] and not (machine["gpu"] and args.device == "gpu"):
        out.append(("openvino", "float32"))
        if machine.get("bf16_units") or args.all_precisions:
            out.append(("openvino", "mixed_bfloat16"))
    return out


# ------------------------------------------------------------------ models


def make_bundle(args: argparse.Namespace, volume: np.ndarray, folder: Path) -> dict[str, Any]:
    """Seeded random preset NSN and NDN, calibrated on ``volume`` (see :func:`random_model`),
    saved as model folders and a bundle in ``folder`` for ``qca-tf predict``. Returns
    {task: LoadedModel} of the float32 networks (the same weights as the folders)."""
    from qca_tf.bundle import save_bundle
    from qca_tf.config import PRESETS, ModelConfig, PostprocessConfig
    from qca_tf.modelio import save_model_folder, weights_file

    loaded = {}
    for task in ("nsn", "ndn"):
        fg = args.foreground[task == "ndn"]
        cfg = PRESETS[task] if args.models == "preset" else ModelConfig(name=task, depth=2, init_channels=4)
        lm = random_model(cfg, task, args.seed, volume, fg)
        save_model_folder(folder / task, lm.model, task=task, model_cfg=lm.model_cfg, spacing_um=SPACING_UM)
        lm.folder = folder / task
        lm.weights_path = weights_file(folder / task)  # its conversion is the one `qca-tf predict` finds
        loaded[task] = lm
    save_bundle(folder, PostprocessConfig())
    return loaded


def precision_model(loaded: Any, policy: str) -> Any:
    """``loaded`` rebuilt under the Keras dtype ``policy`` with the same weights."""
    from qca_tf import models
    from qca_tf.modelio import LoadedModel

    if policy == "float32":
        return loaded
    model = models.build_unet(loaded.model_cfg, dtype_policy=policy)
    model.set_weights(loaded.model.get_weights())
    return LoadedModel(model, loaded.model_cfg, loaded.task, loaded.spacing_um, loaded.folder)


# ------------------------------------------------------------------ part 1: networks per engine


def bench_networks(args: argparse.Namespace, machine: dict[str, Any], volume: np.ndarray,
                   nets: dict[str, Any]) -> dict[str, Any]:
    """Whole-volume prediction of each network on each (engine, precision): the first call
    (conversion / compilation included) and the best of ``--repeats`` further calls;
    GFLOP/s and its fraction of the float32 peak; mask agreement with TensorFlow float32."""
    from qca_tf import infer, models, preprocess
    from qca_tf.config import InferenceConfig

    out: dict[str, Any] = {}
    reference_masks: dict[str, np.ndarray] = {}
    for engine, precision in variants(machine, args):
        name = f"{engine} {precision}"
        row: dict[str, Any] = {"engine": engine, "precision": precision, "networks": {}}
        for task in args.networks:
            base = nets[task]
            lm = precision_model(base, precision) if engine == "tensorflow" else base
            cfg = InferenceConfig(engine=engine, precision=precision)
            w_build, _, _ = timed(lambda: infer.forward(lm, cfg))  # OpenVINO: export, convert, compile
            w_first, c_first, prob = timed(lambda: infer.predict_probabilities(lm, volume, cfg))
            best_w, best_c = (math.inf, math.inf) if args.repeats else (w_first, c_first)
            for _ in range(args.repeats):
                w, c, prob = timed(lambda: infer.predict_probabilities(lm, volume, cfg))
                best_w, best_c = min(best_w, w), min(best_c, c)
            mask = prob > 0.5
            if (engine, precision) == ("tensorflow", "float32"):
                reference_masks[task] = mask
            padded = preprocess.pad_to_multiple(volume, base.model_cfg.multiple)[0].shape
            gflop = models.flops(base.model_cfg, padded) / 1e9
            row["networks"][task] = {
                "build_s": w_build, "first_call_s": w_first, "seconds": best_w, "cpu_seconds": best_c, "gflop": gflop,
                "gflops": gflop / best_w,
                "peak_fraction": gflop / best_w / machine["peak_gflops"] if machine["peak_gflops"] else None,
                "agreement_vs_tf_float32": float((mask == reference_masks[task]).mean()),
                "foreground": float(mask.mean())}
            log.info("networks: %s %s: build %.2f s, first %.2f s, best %.2f s (%.1f GFLOP/s), agreement %.6f",
                     name, task, w_build, w_first, best_w, gflop / best_w, row["networks"][task]["agreement_vs_tf_float32"])
        row["seconds_both"] = sum(n["seconds"] for n in row["networks"].values())
        out[name] = row
    return out


# ------------------------------------------------------------------ part 2: reference sliding window


def reference_predict(forward: Any, volume: np.ndarray, max_patches: int | None = None) -> tuple[np.ndarray | None,
                                                                                                   int]:
    """The reference tool's sliding window (test_nsn/test_ndn): mirror-extend, run every 96^3
    patch at stride 48 (batch 1), keep the centre 48^3 of each patch's foreground probability,
    place it at the patch's stride position, crop to the volume. Returns ((z, y, x) float32
    probabilities, patches run); the reference's argmax mask is ``prob > 0.5`` (two-class
    softmax). With ``max_patches``, stops after that many patches and returns (None, n)."""
    from qca_tf.preprocess import mirror_pad

    pads, steps = reference_plan(volume.shape)
    padded = mirror_pad(volume.astype(np.float32, copy=False), pads)
    out = np.empty([REF_STRIDE * s for s in steps], np.float32)
    lo, hi = REF_STRIDE // 2, REF_STRIDE // 2 + REF_STRIDE
    n = 0
    for iz in range(steps[0]):
        for iy in range(steps[1]):
            for ix in range(steps[2]):
                if max_patches is not None and n >= max_patches:
                    return None, n
                z, y, x = iz * REF_STRIDE, iy * REF_STRIDE, ix * REF_STRIDE
                patch = padded[z:z + REF_PATCH, y:y + REF_PATCH, x:x + REF_PATCH]
                prob = forward(patch[None, ..., None])[0]
                out[z:z + REF_STRIDE, y:y + REF_STRIDE, x:x + REF_STRIDE] = prob[lo:hi, lo:hi, lo:hi]
                n += 1
    return out[:volume.shape[0], :volume.shape[1], :volume.shape[2]], n


def bench_reference(args: argparse.Namespace, volume: np.ndarray, nets: dict[str, Any],
                    ours: dict[str, Any]) -> dict[str, Any]:
    """The reference scheme's networks alone (TensorFlow float32, the same compiled pass as
    ours), all patches, or ``--reference-patches K`` of them with the time scaled to all
    (every patch has the same shape, so the time per patch is constant); the mask agreement
    with our whole-volume TensorFlow float32 pass when all patches ran."""
    from qca_tf import infer, models
    from qca_tf.config import InferenceConfig

    _, steps = reference_plan(volume.shape)
    n_patches = int(np.prod(steps))
    limit = args.reference_patches if args.reference_patches and args.reference_patches < n_patches else None
    result: dict[str, Any] = {"patches": n_patches, "patches_timed": limit or n_patches, "networks": {}}
    for task in args.networks:
        lm = nets[task]
        fwd = infer.forward(lm, InferenceConfig(engine="tensorflow", precision="float32"))
        fwd(np.zeros((1, REF_PATCH, REF_PATCH, REF_PATCH, 1), np.float32))  # warm-up: one patch
        log.info("reference: %s, %d of %d patches of %d^3...", task, limit or n_patches, n_patches, REF_PATCH)
        w, c, (prob, ran) = timed(lambda: reference_predict(fwd, volume, limit))
        seconds = w * n_patches / ran
        gflop = models.flops(lm.model_cfg, (REF_PATCH,) * 3) * n_patches / 1e9
        r = {"seconds": seconds, "cpu_seconds": c * n_patches / ran, "estimated": ran < n_patches,
             "gflop": gflop, "gflops": gflop / seconds}
        tf32 = ours.get("tensorflow float32", {}).get("networks", {}).get(task)
        if prob is not None and tf32 is not None:
            mine = infer.predict_probabilities(lm, volume, InferenceConfig(engine="tensorflow", precision="float32"))
            r["agreement_vs_ours"] = float(((prob > 0.5) == (mine > 0.5)).mean())
        result["networks"][task] = r
        log.info("reference: %s %.1f s%s", task, seconds, " (scaled)" if ran < n_patches else "")
    result["seconds_both"] = sum(n["seconds"] for n in result["networks"].values())
    return result


# ------------------------------------------------------------------ part 3: startup


def startup_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: the times `qca-tf predict` spends before its first result,
    doing what the command does (``--child-engine``): import (qca_tf, and TensorFlow when
    the engine is TensorFlow or a network is not in the OpenVINO cache), model load (both
    bundle networks), first network call of each (compilation, the first pass) and a
    second call. Prints one JSON line, with whether TensorFlow was imported."""
    t0 = time.perf_counter()
    from qca_tf import engines, io, predict, preprocess
    from qca_tf.bundle import load_networks
    from qca_tf.config import InferenceConfig
    from qca_tf.runtime import init_tensorflow

    engine = engines.resolve_engine(args.child_engine)
    if engine == "tensorflow":
        init_tensorflow()
    cfg = engines.resolve_inference(InferenceConfig(engine=engine))
    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    nets = load_networks(bundle=args.child_bundle, infer_cfg=cfg)
    t_load = time.perf_counter() - t1
    voxel = io.VoxelSize.from_xyz(args.voxel_size)
    t2 = time.perf_counter()
    volume = preprocess.to_network_grid(io.read_stack(args.image), voxel, nets.spacing_um)
    t_read = time.perf_counter() - t2
    t3 = time.perf_counter()
    predict.segment(nets, volume, cfg)
    t_first = time.perf_counter() - t3
    t4 = time.perf_counter()
    predict.segment(nets, volume, cfg)
    t_second = time.perf_counter() - t4
    print(json.dumps({"engine": engine, "precision": cfg.precision, "import_s": t_import, "load_s": t_load,
                      "read_s": t_read, "first_call_s": t_first, "second_call_s": t_second,
                      "startup_s": t_import + t_load + t_read + t_first - t_second,
                      "tensorflow_imported": "tensorflow" in sys.modules}))


def bench_startup(args: argparse.Namespace, bundle: Path, env: dict[str, str], engine: str) -> dict[str, Any]:
    """:func:`startup_child` in a subprocess (``env`` holds the conversion cache)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--startup-child", "--child-bundle", str(bundle),
           "--child-engine", engine, "--image", args.image, "--voxel-size", *map(str, args.voxel_size)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------ part 4: the whole command


def qca_tf_command() -> list[str]:
    """The installed ``qca-tf`` console script beside this Python, else ``python -m qca_tf.cli``."""
    script = Path(sys.executable).parent / "qca-tf"
    return [str(script)] if script.exists() else [sys.executable, "-m", "qca_tf.cli"]


def run_command(inputs: list[str], bundle: Path, out: Path, args: argparse.Namespace, env: dict[str, str],
                extra: list[str]) -> dict[str, Any]:
    """Wall time of one ``qca-tf predict`` subprocess (process start to exit) and its run.json timings."""
    cmd = [*qca_tf_command(), "predict", *inputs, "--model", str(bundle), "--out", str(out),
           "--voxel-size", *map(str, args.voxel_size), *extra]
    log.info("command: %s", " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    run = json.loads((out / "run.json").read_text())
    return {"command": " ".join(cmd), "wall_s": wall, "timings": run["timings_s"],
            "engine": run["inference"].get("engine"), "precision": run["inference"]["precision"],
            "timepoints": len(run["processed"])}


def bench_command(args: argparse.Namespace, bundle: Path, tmp: Path, env: dict[str, str],
                  nets: dict[str, Any]) -> dict[str, Any]:
    """``qca-tf predict`` as a user types it, in subprocesses: one stack with the default
    engine (auto) with an empty conversion cache (first run) and again (cached), one stack
    with ``--engine tensorflow``, and a ``--series`` time series of copies of the stack
    (per time point: wall / time points)."""
    from qca_tf import engines, io

    image = args.image
    res: dict[str, Any] = {}
    runs = args.command_runs
    if "cold" in runs:
        res["stack_cold"] = run_command([image], bundle, tmp / "cmd-cold", args, {**env, "QCA_TF_CACHE": str(
            tmp / "cache-cold")}, [])
    if engines.openvino_import_error() is None:  # the bundle's conversions in the cache (part 1 may have done it)
        for lm in nets.values():
            engines.converted_model(lm)
    if "cached" in runs:
        res["stack"] = run_command([image], bundle, tmp / "cmd-cached", args, env, [])
    if "tensorflow" in runs and not engines.has_gpu():  # on a GPU, auto is TensorFlow already
        res["stack_tensorflow"] = run_command([image], bundle, tmp / "cmd-tf", args, env, ["--engine", "tensorflow"])
    if args.series_points and "series" in runs:
        folder = tmp / "series-images"
        folder.mkdir()
        raw = io.read_stack(image)
        for t in range(args.series_points):
            io.write_stack(folder / f"t{t:03d}.tif", raw, io.VoxelSize.from_xyz(args.voxel_size))
        r = run_command([str(folder)], bundle, tmp / "cmd-series", args, env, [])
        r["per_timepoint_s"] = r["wall_s"] / r["timepoints"]
        res["series"] = r
    return res


# ------------------------------------------------------------------ part 5: time series


def bench_series(args: argparse.Namespace) -> dict[str, Any]:
    """Part 5: predict_series pipelined vs sequential on a synthetic series."""
    from qca_tf import io, predict, preprocess, synthetic
    from qca_tf.config import PRESETS, InferenceConfig, ModelConfig
    from qca_tf.modelio import save_model_folder

    shape = tuple(args.series_shape)
    with tempfile.TemporaryDirectory(prefix="bench-series-") as tmp_name:
        tmp = Path(tmp_name)
        log.info("series: making %d synthetic time points of %s", args.timepoints, shape)
        scfg = synthetic.SynthConfig(shape=shape, timepoints=args.timepoints, seed=args.seed)
        synthetic.write_dataset(tmp / "data", synthetic.make_series(scfg), io.VoxelSize.from_xyz(scfg.voxel_size))
        images = tmp / "data" / "images"
        first = predict.prepare(io.read_series(images)[0], None, [preprocess.GridRecipe(SPACING_UM)])
        folders = {}
        for task in ("nsn", "ndn"):
            if args.series_models == "preset":
                cfg = PRESETS[task]
            else:
                cfg = ModelConfig(name=task, depth=2, init_channels=8, kernel_size=3)
            loaded = random_model(cfg, task, args.seed, first.volume, args.foreground[task == "ndn"])
            folders[task] = tmp / "models" / task
            save_model_folder(folders[task], loaded.model, task=task, model_cfg=cfg, spacing_um=SPACING_UM)
        nets = predict.load_networks(nsn=folders["nsn"], ndn=folders["ndn"])
        icfg = InferenceConfig()
        log.info("series: warm-up on one time point")
        predict.segment(nets, first.volume, icfg)
        runs = {}
        for label, pipelined in (("pipelined", True), ("sequential", False)):
            log.info("series: %s run", label)
            opts = predict.PredictOptions(pipelined=pipelined, progress=False)
            t0 = time.perf_counter()
            summary = predict.predict_series([images], tmp / f"out-{label}", nets, icfg, opts)
            wall = time.perf_counter() - t0
            n = len(summary.processed)
            runs[label] = {"timepoints": n, "wall_seconds": wall, "seconds_per_timepoint": wall / n,
                           "timings": dict(summary.timings),
                           "nuclei_per_timepoint": [int(r["count"]) for r in summary.summary_rows]
                           if summary.summary_rows and "count" in summary.summary_rows[0] else None}
    return {"shape": list(shape), "grid_shape": list(first.volume.shape), "models": args.series_models,
            "runs": runs,
            "speedup": runs["sequential"]["seconds_per_timepoint"] / runs["pipelined"]["seconds_per_timepoint"]}


# ------------------------------------------------------------------ part 6: memory


def memory_child(args: argparse.Namespace) -> None:
    """Runs in the subprocess: predict a smooth random (z, y, x) volume of ``--memory-shape``
    with the NSN preset (random weights, BN not calibrated: memory does not depend on the
    values) and the default InferenceConfig; prints one JSON line."""
    from qca_tf import infer, models, preprocess
    from qca_tf.config import PRESETS, InferenceConfig

    shape = tuple(args.memory_shape)
    coarse = np.random.default_rng(args.seed).random([max(2, n // 8) for n in shape], dtype=np.float32)
    volume = preprocess.normalize(preprocess.resample(coarse, [n / c for n, c in zip(shape, coarse.shape)]))
    del coarse
    loaded = random_model(PRESETS["nsn"], "nsn", args.seed, None)
    icfg = InferenceConfig()
    t0 = time.perf_counter()
    prob = infer.predict_probabilities(loaded, volume, icfg)
    seconds = time.perf_counter() - t0
    print(json.dumps({"shape": list(volume.shape), "seconds": seconds, "foreground": float((prob > 0.5).mean()),
                      "gflop": models.flops(loaded.model_cfg, shape) / 1e9,
                      "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Part 6: run :func:`memory_child` in a subprocess; its peak RSS from RUSAGE_CHILDREN."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", "--seed", str(args.seed),
           "--memory-shape", *map(str, args.memory_shape)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log.info("memory: predicting %s in a subprocess", tuple(args.memory_shape))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    if peak <= before:
        log.warning("an earlier child had a larger peak RSS; the figure below is that child's")
    return {**child, "peak_rss_kib": peak, "peak_rss_gib": peak / 2**20, "subprocess_wall_seconds": wall,
            "gflops": child["gflop"] / child["seconds"]}


# ------------------------------------------------------------------ output


def fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_report(res: dict[str, Any]) -> None:
    """The figures as compact tables on stdout."""
    env, m = res["environment"], res["machine"]
    print(f"# bench_predict  tensorflow {env['tensorflow']}  openvino {m['openvino'] or 'absent'}  "
          f"load avg {env['loadavg_start']} -> {env.get('loadavg_end')}")
    print(f"cpu: {m['cpu']}, {m['cpus']} logical CPUs, AVX-512 {m['avx512']}, bf16 flags {m['bf16_flags'] or 'none'}, "
          f"OpenVINO capabilities {m.get('openvino_capabilities')}; GPU {m['gpu']}")
    print(f"float32 peak: {fmt(m['peak_gflops'], '.0f')} GFLOP/s ({m['peak_source']})")
    vol = res.get("volume")
    if vol:
        print(f"input: {vol['source']}, voxel {vol['voxel_size_xyz_um']} um (x y z) -> grid {vol['grid_shape']} "
              f"at {vol['spacing_um']} um; networks: NSN and NDN "
              f"{'presets' if vol.get('models', 'preset') == 'preset' else 'tiny (depth 2, 4 channels)'}, "
              "seeded random weights with calibrated BN statistics")
    nets = res.get("networks")
    if nets:
        print("\n## 1. networks, whole volume, per engine and precision (s: best of --repeats calls after the first; "
              "with --repeats 0 the first)")
        print(f"{'engine precision':30} {'net':4} {'build s':>8} {'first s':>8} {'s':>7} {'GFLOP':>6} {'GFLOP/s':>8} "
              f"{'of peak':>7} {'agree':>9}")
        for name, row in nets.items():
            for task, n in row["networks"].items():
                print(f"{name:30} {task:4} {n['build_s']:8.2f} {n['first_call_s']:8.2f} {n['seconds']:7.2f} {n['gflop']:6.0f} "
                      f"{n['gflops']:8.1f} {fmt(n['peak_fraction'], '7.2f'):>7} {n['agreement_vs_tf_float32']:9.6f}")
            print(f"{name:30} both {'':17} {row['seconds_both']:7.2f}")
        print("(build: compiled pass made, OpenVINO export + conversion + compilation; agree: fraction of mask "
              "voxels equal to TensorFlow float32's)")
    ref = res.get("reference")
    if ref:
        est = ref["patches_timed"] < ref["patches"]
        print(f"\n## 2. reference sliding window (patch {REF_PATCH}, stride {REF_STRIDE}, centre {REF_STRIDE}^3 kept, "
              f"TensorFlow float32): {ref['patches']} patches"
              + (f", {ref['patches_timed']} timed and scaled to all" if est else ""))
        for task, n in ref["networks"].items():
            print(f"{task:4} {n['seconds']:8.1f} s  {n['gflops']:6.1f} GFLOP/s  agreement with ours "
                  f"{fmt(n.get('agreement_vs_ours'), '.5f')}")
        print(f"both {ref['seconds_both']:8.1f} s (networks alone)")
        if nets:
            for name, row in nets.items():
                print(f"  ratio reference / {name} networks: {ref['seconds_both'] / row['seconds_both']:.1f}x")
    st = res.get("startup")
    if st:
        print("\n## 3. startup in a fresh process (both presets; conversion cache warm)")
        for label, s in st.items():
            tf_note = "" if s.get("tensorflow_imported") is None else (
                ", TensorFlow imported" if s["tensorflow_imported"] else ", TensorFlow not imported")
            print(f"{label}: {s['engine']} {s['precision']}{tf_note}: import {s['import_s']:.2f} s, "
                  f"model load {s['load_s']:.2f} s,"
                  f" read+resample {s['read_s']:.2f} s, first call {s['first_call_s']:.2f} s (second "
                  f"{s['second_call_s']:.2f} s); startup (import + load + read + first - second) "
                  f"{s['startup_s']:.2f} s; process wall {s['process_wall_s']:.2f} s")
    cmd = res.get("command")
    if cmd:
        print("\n## 4. the whole `qca-tf predict` command (subprocess, process start included)")
        print(f"{'run':26} {'engine precision':26} {'tps':>4} {'wall s':>8} {'s/tp':>7} {'networks':>8} "
              f"{'watershed':>9} {'write':>7}")
        for label, r in cmd.items():
            t = r["timings"]
            print(f"{label:26} {str(r['engine']) + ' ' + r['precision']:26} {r['timepoints']:4d} {r['wall_s']:8.1f} "
                  f"{r['wall_s'] / r['timepoints']:7.1f} {t['networks']:8.1f} {t['watershed']:9.2f} {t['write']:7.2f}")
        if ref and "stack" in cmd:
            print(f"reference networks alone / whole command (one stack, cached): "
                  f"{ref['seconds_both'] / cmd['stack']['wall_s']:.1f}x (target >= 8)")
            if "series" in cmd:
                print(f"reference networks alone / series command per time point: "
                      f"{ref['seconds_both'] / cmd['series']['per_timepoint_s']:.1f}x")
        print("(networks / watershed / write: run.json per-stage sums; watershed includes resampling labels back, "
              "write includes criteria and quick-look)")
    ser = res.get("series")
    if ser:
        print(f"\n## 5. time series in-process: {len(ser['runs']['pipelined']['nuclei_per_timepoint'] or [])} synthetic "
              f"time points {ser['shape']} -> grid {ser['grid_shape']}, {ser['models']} random-weight networks")
        print(f"{'mode':11} {'s/tp':>7} {'wall s':>7} {'read':>7} {'networks':>8} {'watershed':>9} {'write':>7} "
              f"{'total':>7}")
        for label, r in ser["runs"].items():
            t = r["timings"]
            print(f"{label:11} {r['seconds_per_timepoint']:7.3f} {r['wall_seconds']:7.2f} {t['read']:7.2f} "
                  f"{t['networks']:8.2f} {t['watershed']:9.2f} {t['write']:7.2f} {t['total']:7.2f}")
        print(f"sequential / pipelined (s per time point): {ser['speedup']:.2f}")
    mem = res.get("memory")
    if mem:
        print(f"\n## 6. memory: NSN preset on {mem['shape']} float32 (default InferenceConfig, max_memory_gb 4)")
        print(f"peak RSS of the subprocess: {mem['peak_rss_gib']:.2f} GiB (requirement < 8 GB); predict "
              f"{mem['seconds']:.1f} s ({mem['gflops']:.1f} GFLOP/s)")


# ------------------------------------------------------------------ CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image", help="3D TIFF (z, y, x); without it, a synthetic 51x120x122 embryo")
    p.add_argument("--voxel-size", nargs=3, type=float, default=[0.8, 0.8, 1.75], metavar=("X", "Y", "Z"),
                   help="voxel size of --image in um")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                   help="gpu: require a GPU (TensorFlow float32 and mixed_float16; the command's auto engine "
                        "is TensorFlow mixed_float16 there); cpu: hide any GPU from TensorFlow")
    p.add_argument("--models", choices=["preset", "tiny"], default="preset",
                   help="parts 1-4: the NSN and NDN presets, or tiny networks (depth 2, 4 channels) to try the script")
    p.add_argument("--networks", nargs="+", choices=["nsn", "ndn"], default=["nsn", "ndn"],
                   help="networks of parts 1 and 2")
    p.add_argument("--foreground", nargs=2, type=float, default=[0.025, 0.0005], metavar=("NSN", "NDN"),
                   help="random-weight networks: foreground fraction their head bias is calibrated to "
                        "(the example embryo's ground truth: 0.023 and 0.00035)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed calls per engine in part 1 after the first (0: report the first call)")
    p.add_argument("--command-runs", nargs="+", choices=["cold", "cached", "tensorflow", "series"],
                   default=["cold", "cached", "tensorflow", "series"],
                   help="part-4 commands: one stack with an empty conversion cache, with it, with --engine "
                        "tensorflow, and the --series-points series")
    p.add_argument("--all-precisions", action="store_true",
                   help="also time bf16 variants on a CPU without bf16 units (slow there)")
    p.add_argument("--reference-patches", type=int, default=0,
                   help="time only this many reference patches and scale to all (0: run all)")
    p.add_argument("--series-points", type=int, default=10, help="time points of the part-4 series command (0: skip)")
    p.add_argument("--peak-gflops", type=float, default=None, help="float32 peak of this machine (GFLOP/s)")
    p.add_argument("--cpu-ghz", type=float, default=None, help="clock for the peak estimate (default: /proc/cpuinfo)")
    p.add_argument("--timepoints", type=int, default=10, help="time points of the part-5 in-process series")
    p.add_argument("--series-shape", nargs=3, type=int, default=[24, 96, 96], metavar=("Z", "Y", "X"))
    p.add_argument("--series-models", choices=["tiny", "preset"], default="tiny",
                   help="part-5 networks: tiny (depth 2, 8 channels, kernel 3) or the presets")
    p.add_argument("--memory-shape", nargs=3, type=int, default=[200, 512, 512], metavar=("Z", "Y", "X"))
    for part in ("networks", "reference", "startup", "command", "series", "memory"):
        p.add_argument(f"--skip-{part}", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="TensorFlow intra- and inter-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write all numbers to this JSON file")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--startup-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-bundle", help=argparse.SUPPRESS)
    p.add_argument("--child-engine", default="auto", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 0 or args.timepoints < 1 or args.series_points < 0:
        p.error("--repeats must be >= 0, --timepoints >= 1, --series-points >= 0")
    if not all(0 < f < 1 for f in args.foreground):
        p.error("--foreground fractions must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # children inherit it too
    if args.startup_child:  # as the command: TensorFlow only if the engine needs it
        startup_child(args)
        return 0
    setup_tensorflow(args.threads)
    if args.memory_child:
        memory_child(args)
        return 0
    import tensorflow as tf

    from qca_tf import io, preprocess

    machine = machine_info(args)
    if args.device == "gpu" and not machine["gpu"]:
        log.error("--device gpu: TensorFlow sees no GPU")
        return 1
    res: dict[str, Any] = {"environment": {"tensorflow": tf.__version__,
                                           "threads": args.threads or "default",
                                           "loadavg_start": " ".join(f"{v:.2f}" for v in os.getloadavg())},
                           "machine": machine, "argv": sys.argv[1:]}
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp_name:
        tmp = Path(tmp_name)
        raw, source, voxel = load_volume(args)
        if not args.image:
            args.image = str(tmp / "image.tif")
            io.write_stack(args.image, raw, voxel)
        volume = preprocess.to_network_grid(raw, voxel, SPACING_UM)
        res["volume"] = {"source": source, "voxel_size_xyz_um": list(args.voxel_size), "spacing_um": SPACING_UM,
                         "grid_shape": list(volume.shape), "models": args.models}
        env = {**os.environ, "QCA_TF_CACHE": str(tmp / "cache")}
        os.environ["QCA_TF_CACHE"] = env["QCA_TF_CACHE"]
        nets = make_bundle(args, volume, tmp / "bundle")
        ours: dict[str, Any] = {}
        if not args.skip_networks:
            ours = res["networks"] = bench_networks(args, machine, volume, nets)
        if not args.skip_reference:
            res["reference"] = bench_reference(args, volume, nets, ours)
        if not args.skip_command:
            res["command"] = bench_command(args, tmp / "bundle", tmp, env, nets)
        if not args.skip_startup:  # after the command, so the conversion cache is warm
            res["startup"] = {"auto": bench_startup(args, tmp / "bundle", env, "auto")}
    if not args.skip_series:
        res["series"] = bench_series(args)
    if not args.skip_memory:
        res["memory"] = bench_memory(args)
    res["environment"]["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    if args.json:  # before the tables, so a printing problem loses no figure
        from qca_tf.config import write_json_atomic

        write_json_atomic(args.json, res)
    print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
