"""Time series in, instance labels and criteria out: the ``qca-tf predict`` job.

Per time point: read -> resample to the network grid and normalise as each model
recorded (its GridRecipe; once per distinct recipe) -> NSN and NDN probabilities
-> watershed -> labels back on the original grid -> criteria. The
three phases run in a pipeline (a reader thread, the networks on the calling
thread, a post-processing thread), so on a long series the networks do not wait
for the disk or the watershed.

Output folder::

    OUT/labels/<name>.tif      uint16 instance labels, ImageJ metadata with the voxel size
    OUT/nsn/, OUT/ndn/         uint8 masks (optional)
    OUT/nuclei/<name>.csv      per-nucleus criteria of one time point (its completion marker)
    OUT/nuclei.csv             per nucleus, all time points
    OUT/criteria.csv           per time point: count, volume and surface statistics
    OUT/plots/                 timeseries.png and quicklook/<name>.png
    OUT/run.json               versions, parameters, timings

A time point whose ``nuclei/<name>.csv`` exists is skipped on a rerun (unless
``overwrite``), so an interrupted job resumes where it stopped.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, criteria, io, plots, postprocess, preprocess
from .bundle import Networks, load_networks  # noqa: F401  (load_networks: the loader of a predict job)
from .config import InferenceConfig, PostprocessConfig, to_dict, write_json_atomic
from .errors import InputError, ModelError, OutputError
from .preprocess import GridRecipe

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ one time point


@dataclass
class Prepared:
    """A time point read and brought to the network grid, once per distinct recipe."""

    tp: io.TimePoint
    raw: np.ndarray                 # (z, y, x) as stored
    voxel: io.VoxelSize
    volumes: dict[GridRecipe, np.ndarray]  # (Z, Y, X) float32 in [0, 1] on the network grid, per recipe
    seconds: float

    @property
    def volume(self) -> np.ndarray:
        """The volume of the first recipe (the NSN's)."""
        return next(iter(self.volumes.values()))


def prepare(tp: io.TimePoint, voxel_override: io.VoxelSize | None, recipes: Sequence[GridRecipe]) -> Prepared:
    """Read one time point and bring it to the network grid with each of ``recipes``
    (:attr:`Networks.recipes`: each model's recorded resample order and normalisation)."""
    t0 = time.perf_counter()
    image = tp.load()  # (z, y, x), or (z, y, x, c) for a multi-channel model
    raw = image if image.ndim == 3 else image[..., 0]  # outputs measure the first chosen channel
    voxel = io.voxel_size_of(tp.source, voxel_override)
    if raw.max() == raw.min():
        log.warning("%s: constant image (every voxel is %s): no nuclei", tp.name, raw.flat[0])
    volumes = {recipe: recipe.apply(image, voxel) for recipe in dict.fromkeys(recipes)}
    return Prepared(tp, raw, voxel, volumes, time.perf_counter() - t0)


def segment(nets: Networks, volumes: Mapping[GridRecipe, np.ndarray] | np.ndarray,
            cfg: InferenceConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """NSN and NDN foreground probabilities (Z, Y, X) float32 on the network grid, each
    network fed the volume of its own recipe (``Prepared.volumes``; one array: the same
    volume for both).

    A constant volume (normalised to all zeros) holds no nuclei: zero probabilities,
    without running the networks.
    """
    from .infer import predict_probabilities

    def volume_for(net) -> np.ndarray:
        return volumes if isinstance(volumes, np.ndarray) else volumes[net.grid_recipe]

    nsn_volume = volume_for(nets.nsn)
    if not nsn_volume.any():
        zeros = np.zeros(nsn_volume.shape[:3], np.float32)
        return zeros, (zeros if nets.ndn is not None else None)
    nsn = predict_probabilities(nets.nsn, nsn_volume, cfg)
    ndn = predict_probabilities(nets.ndn, volume_for(nets.ndn), cfg) if nets.ndn is not None else None
    return nsn, ndn


def instance_labels(cfg: PostprocessConfig, spacing_um: float, shape: tuple[int, int, int], nsn_prob: np.ndarray,
                    ndn_prob: np.ndarray | None, name: str = "") -> np.ndarray:
    """Instance labels (int32, 1..N) of ``shape`` (the original grid) from the NSN and NDN
    probabilities (Z, Y, X) on the isotropic network grid of ``spacing_um``: the watershed
    with ``cfg`` on the network grid, then nearest-neighbour back to ``shape``. What
    :func:`to_labels` writes, and what ``qca-tf search qcanet`` scores per trial."""
    labels = postprocess.instances_from_probabilities(nsn_prob, ndn_prob, cfg, (spacing_um,) * 3, name=name)
    return postprocess.relabel_consecutive(preprocess.resize_labels(labels, shape))


def to_labels(nets: Networks, shape: tuple[int, int, int], nsn_prob: np.ndarray,
              ndn_prob: np.ndarray | None, name: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Watershed on the network grid, then labels and masks back on the original grid.

    Returns (labels uint16 1..N, nsn mask uint8 0/255, ndn mask uint8 0/255 or None), each ``shape``.
    """
    cfg = nets.postprocess
    labels = instance_labels(cfg, nets.spacing_um, shape, nsn_prob, ndn_prob, name)
    nsn_mask = nsn_prob > cfg.nsn_threshold
    ndn_mask = None if ndn_prob is None else ndn_prob > cfg.ndn_threshold
    if labels.max() > np.iinfo(np.uint16).max:
        raise OutputError(f"{labels.max()} nuclei do not fit a uint16 label image")
    nsn_out = preprocess.resize_labels(nsn_mask.astype(np.uint8), shape) * np.uint8(255)
    ndn_out = None if ndn_mask is None else preprocess.resize_labels(ndn_mask.astype(np.uint8), shape) * np.uint8(255)
    return labels.astype(np.uint16), nsn_out, ndn_out


# ------------------------------------------------------------------ the series job


@dataclass
class PredictOptions:
    """What to write and which time points to do."""

    save_masks: bool = False
    quicklook: bool = True
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)          # (index I, count N): every N-th time point from I
    voxel_size: io.VoxelSize | None = None
    channels: tuple[int, ...] | None = None  # file channels fed to the networks (None: one-channel files)
    pipelined: bool = True
    progress: bool = True


@dataclass
class RunSummary:
    """What a predict run did."""

    out: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    summary_rows: list[dict] = field(default_factory=list)


def _check_output(out: Path) -> None:
    try:
        for sub in ("labels", "nuclei", "plots"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK) or not os.access(out / "labels", os.W_OK):
        raise OutputError(f"{out}: output folder is not writable")


def choose_channels(nets: Networks, requested: tuple[int, ...] = ()) -> tuple[int, ...] | None:
    """The file channels fed to the networks: ``requested`` (``--channel``), else, for a model
    taking several channels, those it was trained on (its ``data.channels``); else None
    (one-channel files; a multi-channel file is then an error listing its channels)."""
    want = nets.nsn.model_cfg.input_channels
    if not requested and want > 1:
        requested = tuple((nets.nsn.info.get("data") or {}).get("channels") or ())
        if not requested:
            raise ModelError(f"{nets.nsn.folder}: model takes {want} channels but records no file channels; "
                             f"give them with --channel ({want} times)")
    if requested and len(requested) != want:
        raise InputError(f"--channel: the model takes {want} channel(s); got {len(requested)} "
                         f"({', '.join(map(str, requested))})")
    return tuple(requested) or None


def discover(inputs: list[str | os.PathLike], channels: tuple[int, ...] | None = None) -> list[io.TimePoint]:
    """All time points of the inputs (3D files, 4D files, folders), names unique."""
    tps: list[io.TimePoint] = []
    for item in inputs:
        tps.extend(io.read_series(item, channels))
    seen: dict[str, Path] = {}
    for tp in tps:
        if tp.name in seen:
            raise InputError(f"{tp.source}: time point name {tp.name!r} also comes from {seen[tp.name]}")
        seen[tp.name] = tp.source
    return tps


def _postprocess_and_write(nets: Networks, prep: Prepared, nsn_prob, ndn_prob, out: Path,
                           opts: PredictOptions, index: int) -> dict[str, float]:
    """Watershed, write labels (+ masks, quick-look) and the time point's nuclei CSV (last)."""
    t0 = time.perf_counter()
    labels, nsn_mask, ndn_mask = to_labels(nets, prep.raw.shape, nsn_prob, ndn_prob, prep.tp.name)
    t1 = time.perf_counter()
    name = prep.tp.name
    io.write_stack(out / "labels" / f"{name}.tif", labels, prep.voxel)
    if opts.save_masks:
        io.write_stack(out / "nsn" / f"{name}.tif", nsn_mask, prep.voxel)
        if ndn_mask is not None:
            io.write_stack(out / "ndn" / f"{name}.tif", ndn_mask, prep.voxel)
    rows = criteria.nucleus_table(labels, prep.voxel, image=prep.raw, timepoint=index)
    if opts.quicklook:
        plots.plot_quicklook(prep.raw, labels, out / "plots" / "quicklook" / f"{name}.png", prep.voxel,
                             title=f"{name}: {int(labels.max())} nuclei")
    criteria.write_csv(out / "nuclei" / f"{name}.csv", rows, criteria.NUCLEUS_FIELDS)
    return {"watershed": t1 - t0, "write": time.perf_counter() - t1}


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def collect_tables(out: Path, tps: list[io.TimePoint]) -> tuple[list[dict], list[dict]]:
    """Assemble OUT/nuclei.csv and OUT/criteria.csv from the finished time points, and the plot."""
    nucleus_rows: list[dict] = []
    summary_rows: list[dict] = []
    for index, tp in enumerate(tps):
        path = out / "nuclei" / f"{tp.name}.csv"
        if not path.exists():
            continue
        rows = _read_rows(path)
        for r in rows:
            r["timepoint"] = index
            r["name"] = tp.name
        nucleus_rows.extend(rows)
        numeric = [{k: float(v) if k.endswith(("_um3", "_um2", "_um")) else v for k, v in r.items()} for r in rows]
        summary = criteria.timepoint_summary(numeric, index)
        summary["name"] = tp.name
        summary_rows.append(summary)
    criteria.write_csv(out / "nuclei.csv", nucleus_rows, ["name", *criteria.NUCLEUS_FIELDS])
    criteria.write_csv(out / "criteria.csv", summary_rows, ["name", *criteria.SUMMARY_FIELDS])
    if summary_rows:
        plots.plot_timeseries(summary_rows, nucleus_rows, out / "plots" / "timeseries.png")
    return summary_rows, nucleus_rows


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tp", desc="predict", disable=not enabled, leave=True)


def predict_series(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, nets: Networks,
                   infer_cfg: InferenceConfig, opts: PredictOptions) -> RunSummary:
    """Segment every time point of ``inputs`` into ``out_dir`` (see the module docstring)."""
    out = Path(out_dir)
    tps = discover(inputs, opts.channels)
    _check_output(out)
    shard_i, shard_n = opts.shard
    mine = [(i, tp) for i, tp in enumerate(tps) if i % shard_n == shard_i]
    finished = {tp.name for _, tp in mine if not opts.overwrite and (out / "nuclei" / f"{tp.name}.csv").exists()}
    todo = [(i, tp) for i, tp in mine if tp.name not in finished]
    run = RunSummary(out=out, skipped=[tp.name for _, tp in mine if tp.name in finished])
    if run.skipped:
        log.info("skipping %d finished time point(s) (use --overwrite to redo them)", len(run.skipped))
    for source in dict.fromkeys(tp.source for _, tp in todo):  # fail before any work, not at time point 57
        io.voxel_size_of(source, opts.voxel_size)
    totals = {"read": 0.0, "networks": 0.0, "watershed": 0.0, "write": 0.0}
    t_start = time.perf_counter()

    def produce():
        for index, tp in todo:
            yield index, prepare(tp, opts.voxel_size, nets.recipes)

    bar = None
    try:
        if opts.pipelined:
            items = _prefetch(produce(), depth=2)
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qca-post")
        else:
            items, pool = produce(), None
        pending: list[Future] = []
        for index, prep in items:
            if bar is None:  # shown once the first time point has been read and checked
                bar = _progress(len(todo), opts.progress)
            totals["read"] += prep.seconds
            t0 = time.perf_counter()
            nsn_prob, ndn_prob = segment(nets, prep.volumes, infer_cfg)
            totals["networks"] += time.perf_counter() - t0
            if pool is None:
                _account(totals, _postprocess_and_write(nets, prep, nsn_prob, ndn_prob, out, opts, index))
                bar.update()
            else:
                fut = pool.submit(_postprocess_and_write, nets, prep, nsn_prob, ndn_prob, out, opts, index)
                fut.add_done_callback(lambda _f: bar.update())
                pending.append(fut)
            run.processed.append(prep.tp.name)
        for fut in pending:
            _account(totals, fut.result())
        if pool is not None:
            pool.shutdown()
    finally:
        if bar is not None:
            bar.close()
    totals["total"] = time.perf_counter() - t_start
    run.timings = totals
    run.summary_rows, _ = collect_tables(out, tps)
    _write_run_json(out, inputs, nets, infer_cfg, opts, run)
    return run


def _account(totals: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        totals[k] += v


def _prefetch(iterable, depth: int):
    """Run ``iterable`` in a background thread, ``depth`` items ahead; re-raises its errors."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=worker, name="qca-read", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _openvino_version(engine: str) -> str | None:
    """OpenVINO's version when ``engine`` runs on it, else None (for run.json)."""
    from .engines import resolve_engine

    if resolve_engine(engine) != "openvino":
        return None
    import openvino

    return openvino.__version__


def _write_run_json(out: Path, inputs, nets: Networks, infer_cfg: InferenceConfig, opts: PredictOptions,
                    run: RunSummary) -> None:
    import keras
    import tensorflow as tf

    payload = {
        "qca_tf_version": __version__,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "device": [d.name for d in tf.config.list_logical_devices()],
        "openvino": _openvino_version(infer_cfg.engine),
        "inputs": [str(p) for p in inputs],
        "models": {"nsn": str(nets.nsn.folder), "ndn": str(nets.ndn.folder) if nets.ndn else None,
                   "bundle": str(nets.bundle.folder) if nets.bundle else None, "spacing_um": nets.spacing_um,
                   "precision": nets.precision,
                   "preprocessing": {net.task: dataclasses.asdict(net.grid_recipe)
                                     for net in (nets.nsn, nets.ndn) if net is not None}},
        "inference": to_dict(infer_cfg),
        "postprocess": to_dict(nets.postprocess),
        "options": {"save_masks": opts.save_masks, "overwrite": opts.overwrite, "shard": list(opts.shard),
                    "voxel_size": None if opts.voxel_size is None else list(opts.voxel_size.zyx[::-1]),
                    "pipelined": opts.pipelined,
                    "channels": None if opts.channels is None else list(opts.channels)},
        "processed": run.processed,
        "skipped": run.skipped,
        "timings_s": run.timings,
    }
    write_json_atomic(out / "run.json", payload)
