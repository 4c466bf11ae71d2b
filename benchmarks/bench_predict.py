"""Prediction benchmark: our whole-volume inference vs the reference sliding window,
pipelined vs sequential time-series prediction, and peak memory of a large volume.

Run from the repository root::

    .venv/bin/python benchmarks/bench_predict.py --image ../shared/data/qcanet-example-8cell/image.tif

Figures go to stdout as a table (and to ``--json PATH``); progress goes to stderr.
See benchmarks/README.md for what every figure means.
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


# ------------------------------------------------------------------ part 1: reference vs ours


def reference_plan(shape: tuple[int, int, int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Reference sliding window on a (z, y, x) volume: per axis (pad before, pad after) and the
    number of patches. Before: REF_STRIDE/2; patches = ceil(n / stride); padded length
    stride * patches + stride (so the last 96-patch ends exactly at the padded end)."""
    sh = REF_STRIDE // 2
    steps = [math.ceil(n / REF_STRIDE) for n in shape]
    pads = [(sh, REF_STRIDE * s + REF_STRIDE - n - sh) for n, s in zip(shape, steps)]
    return pads, steps


def reference_predict(forward: Any, volume: np.ndarray) -> np.ndarray:
    """The reference tool's sliding window (test_nsn/test_ndn): mirror-extend, run every 96^3
    patch at stride 48 (batch 1), keep the centre 48^3 of each patch's foreground probability,
    place it at the patch's stride position, crop to the volume. Returns (z, y, x) float32
    probabilities; the reference's argmax mask is ``prob > 0.5`` (two-class softmax)."""
    from qca_tf.preprocess import mirror_pad

    pads, steps = reference_plan(volume.shape)
    padded = mirror_pad(volume.astype(np.float32, copy=False), pads)
    out = np.empty([REF_STRIDE * s for s in steps], np.float32)
    lo, hi = REF_STRIDE // 2, REF_STRIDE // 2 + REF_STRIDE
    for iz in range(steps[0]):
        for iy in range(steps[1]):
            for ix in range(steps[2]):
                z, y, x = iz * REF_STRIDE, iy * REF_STRIDE, ix * REF_STRIDE
                patch = padded[z:z + REF_PATCH, y:y + REF_PATCH, x:x + REF_PATCH]
                prob = forward(patch[None, ..., None])[0]
                out[z:z + REF_STRIDE, y:y + REF_STRIDE, x:x + REF_STRIDE] = prob[lo:hi, lo:hi, lo:hi]
    return out[:volume.shape[0], :volume.shape[1], :volume.shape[2]]


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


def bench_reference(args: argparse.Namespace) -> dict[str, Any]:
    """Part 1: ours vs the reference sliding window on one volume, per network and combined."""
    from qca_tf import infer, models, preprocess
    from qca_tf.config import PRESETS, InferenceConfig
    from qca_tf.modelio import load_model_folder

    raw, source, voxel = load_volume(args)
    given = {"nsn": args.nsn, "ndn": args.ndn}
    loaded_given = {task: load_model_folder(folder) for task, folder in given.items() if folder}
    spacing = next(iter(loaded_given.values())).spacing_um if loaded_given else SPACING_UM
    volume = preprocess.to_network_grid(raw, voxel, spacing)
    log.info("volume %s -> network grid %s (spacing %.3g um)", raw.shape, volume.shape, spacing)
    result: dict[str, Any] = {"source": source, "voxel_size_xyz_um": list(args.voxel_size), "spacing_um": spacing,
                              "grid_shape": list(volume.shape), "networks": {}}
    pads, steps = reference_plan(volume.shape)
    n_patches = int(np.prod(steps))
    result["reference_patches"] = n_patches
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for task in args.networks:
        if task in loaded_given:
            loaded = loaded_given[task]
            weights = f"trained model folder {given[task]}"
        else:
            fg = args.foreground[task == "ndn"]
            loaded = random_model(PRESETS[task], task, args.seed, volume, fg)
            weights = (f"{task.upper()} preset, random He-normal weights (seed {args.seed + (task == 'ndn')}), "
                       f"BN statistics and head bias (foreground {fg}) calibrated on a <= {CALIB_EDGE}^3 "
                       "centre crop")
        cfg = loaded.model_cfg
        icfg = InferenceConfig()
        forward = infer._forward(loaded, icfg.jit)  # the same compiled pass predict_probabilities uses
        padded_ours = preprocess.pad_to_multiple(volume, cfg.multiple)[0].shape
        log.info("%s: warm-up (ours: one whole call; reference: one %d^3 patch)", task, REF_PATCH)
        infer.predict_probabilities(loaded, volume, icfg)
        forward(np.zeros((1, REF_PATCH, REF_PATCH, REF_PATCH, 1), np.float32))
        t_ours = c_ours = t_ref = c_ref = math.inf
        for rep in range(args.repeats):  # interleaved, so a change of machine load hits both schemes
            w, c, p_ours = timed(lambda: infer.predict_probabilities(loaded, volume, icfg))
            t_ours, c_ours = min(t_ours, w), min(c_ours, c)
            log.info("%s: ours %.2f s (CPU %.2f s); reference (%d patches of %d^3)...", task, w, c, n_patches,
                     REF_PATCH)
            w, c, p_ref = timed(lambda: reference_predict(forward, volume))
            t_ref, c_ref = min(t_ref, w), min(c_ref, c)
            log.info("%s: reference %.2f s (CPU %.2f s) [repeat %d/%d]", task, w, c, rep + 1, args.repeats)
        m_ours, m_ref = p_ours > 0.5, p_ref > 0.5
        masks[task] = (m_ours, m_ref)
        r = models.receptive_field_radius(cfg)
        interior = tuple(slice(r, n - r) for n in volume.shape)
        n_int = int(np.prod([max(0, n - 2 * r) for n in volume.shape]))
        f_ours, f_ref = models.flops(cfg, volume.shape), models.flops(cfg, (REF_PATCH,) * 3) * n_patches
        result["networks"][task] = {
            "weights": weights, "model": {"depth": cfg.depth, "init_channels": cfg.init_channels,
                                          "kernel_size": cfg.kernel_size},
            "ours_input_shape": list(padded_ours),
            "seconds_ours": t_ours, "seconds_reference": t_ref, "speedup": t_ref / t_ours,
            "cpu_seconds_ours": c_ours, "cpu_seconds_reference": c_ref, "cpu_speedup": c_ref / c_ours,
            "agreement": float((m_ours == m_ref).mean()),
            "foreground_ours": float(m_ours.mean()), "foreground_reference": float(m_ref.mean()),
            "receptive_field_radius": r, "interior_voxels": n_int,
            "agreement_interior": float((m_ours[interior] == m_ref[interior]).mean()) if n_int else None,
            "max_abs_prob_diff_interior": float(np.abs(p_ours[interior] - p_ref[interior]).max()) if n_int else None,
            "mean_abs_prob_diff": float(np.abs(p_ours - p_ref).mean()),
            "gflop_ours": f_ours / 1e9, "gflop_reference": f_ref / 1e9,
            "gflops_ours": f_ours / 1e9 / t_ours, "gflops_reference": f_ref / 1e9 / t_ref,
            "voxels_ours": int(np.prod(padded_ours)), "voxels_reference": n_patches * REF_PATCH**3,
        }
    if len(masks) == 2:
        nets = result["networks"]
        t_o = sum(n["seconds_ours"] for n in nets.values())
        t_r = sum(n["seconds_reference"] for n in nets.values())
        both = np.mean((masks["nsn"][0] == masks["nsn"][1]) & (masks["ndn"][0] == masks["ndn"][1]))
        f_o = sum(n["gflop_ours"] for n in nets.values())
        f_r = sum(n["gflop_reference"] for n in nets.values())
        c_o = sum(n["cpu_seconds_ours"] for n in nets.values())
        c_r = sum(n["cpu_seconds_reference"] for n in nets.values())
        result["combined"] = {"seconds_ours": t_o, "seconds_reference": t_r, "speedup": t_r / t_o,
                              "cpu_seconds_ours": c_o, "cpu_seconds_reference": c_r, "cpu_speedup": c_r / c_o,
                              "agreement_both_masks": float(both), "gflop_ours": f_o, "gflop_reference": f_r,
                              "gflops_ours": f_o / t_o, "gflops_reference": f_r / t_r}
    return result


# ------------------------------------------------------------------ part 2: time series


def bench_series(args: argparse.Namespace) -> dict[str, Any]:
    """Part 2: predict_series pipelined vs sequential on a synthetic series."""
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


# ------------------------------------------------------------------ part 3: memory


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
    """Part 3: run :func:`memory_child` in a subprocess; its peak RSS from RUSAGE_CHILDREN."""
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
    """The figures as a compact table on stdout."""
    env = res["environment"]
    print(f"# bench_predict  tensorflow {env['tensorflow']}  cpus {env['cpus']}  threads {env['threads']}  "
          f"load avg at start {env['loadavg_start']}")
    ref = res.get("reference")
    if ref:
        print(f"\n## 1. ours (whole volume) vs reference sliding window (patch {REF_PATCH}, stride {REF_STRIDE})")
        print(f"input: {ref['source']}, voxel {ref['voxel_size_xyz_um']} um (x y z) -> grid {ref['grid_shape']} "
              f"at {ref['spacing_um']} um; reference patches: {ref['reference_patches']}")
        for task, n in ref["networks"].items():
            print(f"{task.upper()} weights: {n['weights']}")
        print(f"{'net':8} {'ours s':>7} {'ref s':>7} {'ref/ours':>8} {'cpu o':>7} {'cpu r':>7} {'cpu r/o':>7} "
              f"{'agree':>8} {'agree int':>9} {'GFLOP o':>8} {'GFLOP r':>8} {'GFLOP/s o':>9} {'GFLOP/s r':>9}")
        rows = [(task.upper(), n, n["agreement"], n["agreement_interior"]) for task, n in ref["networks"].items()]
        if ref.get("combined"):
            rows.append(("NSN+NDN", ref["combined"], ref["combined"]["agreement_both_masks"], None))
        for name, n, agree, agree_int in rows:
            print(f"{name:8} {n['seconds_ours']:7.2f} {n['seconds_reference']:7.2f} {n['speedup']:8.2f} "
                  f"{n['cpu_seconds_ours']:7.2f} {n['cpu_seconds_reference']:7.2f} {n['cpu_speedup']:7.2f} "
                  f"{agree:8.5f} {fmt(agree_int, '9.5f'):>9} {n['gflop_ours']:8.0f} {n['gflop_reference']:8.0f} "
                  f"{n['gflops_ours']:9.1f} {n['gflops_reference']:9.1f}")
        for task, n in ref["networks"].items():
            print(f"{task.upper()}: ours input {n['ours_input_shape']} = {n['voxels_ours']} voxels, reference "
                  f"{n['voxels_reference']} voxels ({n['voxels_reference'] / n['voxels_ours']:.1f}x); foreground "
                  f"ours {n['foreground_ours']:.3f} ref {n['foreground_reference']:.3f}; receptive-field radius "
                  f"{n['receptive_field_radius']}, interior voxels {n['interior_voxels']}, max |dp| interior "
                  f"{fmt(n['max_abs_prob_diff_interior'], '.2e')}, mean |dp| {n['mean_abs_prob_diff']:.2e}")
        print("requirement: ref/ours >= 8 and agree >= 0.999 (agree = fraction of voxels with equal masks; "
              "agree int = the same beyond the receptive-field radius from every face)")
    ser = res.get("series")
    if ser:
        print(f"\n## 2. time series: {len(ser['runs']['pipelined']['nuclei_per_timepoint'] or [])} synthetic time "
              f"points {ser['shape']} -> grid {ser['grid_shape']}, {ser['models']} random-weight networks")
        print(f"{'mode':11} {'s/tp':>7} {'wall s':>7} {'read':>7} {'networks':>8} {'watershed':>9} {'write':>7} "
              f"{'total':>7}")
        for label, r in ser["runs"].items():
            t = r["timings"]
            print(f"{label:11} {r['seconds_per_timepoint']:7.3f} {r['wall_seconds']:7.2f} {t['read']:7.2f} "
                  f"{t['networks']:8.2f} {t['watershed']:9.2f} {t['write']:7.2f} {t['total']:7.2f}")
        print(f"sequential / pipelined (s per time point): {ser['speedup']:.2f}; nuclei per time point: "
              f"{ser['runs']['pipelined']['nuclei_per_timepoint']}")
        print("(read/networks/watershed/write are summed per-stage seconds; pipelined stages overlap)")
    mem = res.get("memory")
    if mem:
        print(f"\n## 3. memory: NSN preset on {mem['shape']} float32 (default InferenceConfig, max_memory_gb 4)")
        print(f"peak RSS of the subprocess: {mem['peak_rss_kib']} KiB = {mem['peak_rss_gib']:.2f} GiB "
              f"(requirement < 8 GB); predict {mem['seconds']:.1f} s ({mem['gflops']:.1f} GFLOP/s on "
              f"{mem['gflop']:.0f} GFLOP of the volume); subprocess wall {mem['subprocess_wall_seconds']:.1f} s")


# ------------------------------------------------------------------ CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--image", help="3D TIFF (z, y, x) for part 1; without it, a synthetic 51x120x122 embryo")
    p.add_argument("--voxel-size", nargs=3, type=float, default=[0.8, 0.8, 1.75], metavar=("X", "Y", "Z"),
                   help="voxel size of --image in um")
    p.add_argument("--nsn", help="trained NSN model folder; without it, the NSN preset with random weights")
    p.add_argument("--ndn", help="trained NDN model folder; without it, the NDN preset with random weights")
    p.add_argument("--networks", nargs="+", choices=["nsn", "ndn"], default=["nsn", "ndn"],
                   help="networks to compare in part 1")
    p.add_argument("--foreground", nargs=2, type=float, default=[0.025, 0.0005], metavar=("NSN", "NDN"),
                   help="random-weight networks: foreground fraction their head bias is calibrated to "
                        "(the example embryo's ground truth: 0.023 and 0.00035)")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs per scheme in part 1, interleaved (the min is reported)")
    p.add_argument("--timepoints", type=int, default=10, help="time points of the part-2 series")
    p.add_argument("--series-shape", nargs=3, type=int, default=[24, 96, 96], metavar=("Z", "Y", "X"))
    p.add_argument("--series-models", choices=["tiny", "preset"], default="tiny",
                   help="part-2 networks: tiny (depth 2, 8 channels, kernel 3) or the presets")
    p.add_argument("--memory-shape", nargs=3, type=int, default=[200, 512, 512], metavar=("Z", "Y", "X"))
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-series", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="TensorFlow intra- and inter-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write all numbers to this JSON file")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.timepoints < 1:
        p.error("--repeats and --timepoints must be >= 1")
    if not all(0 < f < 1 for f in args.foreground):
        p.error("--foreground fractions must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    setup_tensorflow(args.threads)
    if args.memory_child:
        memory_child(args)
        return 0
    import tensorflow as tf

    res: dict[str, Any] = {"environment": {"tensorflow": tf.__version__, "cpus": os.cpu_count(),
                                           "threads": args.threads or "default",
                                           "loadavg_start": " ".join(f"{v:.2f}" for v in os.getloadavg())},
                           "argv": sys.argv[1:]}
    if not args.skip_reference:
        res["reference"] = bench_reference(args)
    if not args.skip_series:
        res["series"] = bench_series(args)
    if not args.skip_memory:
        res["memory"] = bench_memory(args)
    res["environment"]["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print_report(res)
    if args.json:
        from qca_tf.config import write_json_atomic

        write_json_atomic(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
