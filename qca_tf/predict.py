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
    OUT/nuclei/<name>.json     what made it: model hashes, parameters, input identity (qca_tf.resume)
    OUT/nuclei.csv             per nucleus, all time points
    OUT/criteria.csv           per time point: count, volume and surface statistics
    OUT/plots/                 timeseries.png and quicklook/<name>.png
    OUT/run.json               versions, parameters, timings

A time point whose ``nuclei/<name>.csv`` exists is skipped on a rerun (unless
``overwrite``) when its record matches this run, so an interrupted job resumes where
it stopped; a record that differs is an error. Concurrent processes on one folder
claim time points (see :mod:`qca_tf.resume`) instead of computing them twice.
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

from . import __version__, criteria, io, plots, postprocess, preprocess, resume
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
    """Watershed on the network grid, then labels and masks back on the original grid
    (both moved by the bundle's annotation offset).

    Returns (labels uint16 1..N, nsn mask uint8 0/255, ndn mask uint8 0/255 or None), each ``shape``.
    """
    cfg = nets.postprocess
    grid = (nets.spacing_um,) * 3  # moved once into the labels' frame, for the labels and the masks
    nsn_prob = postprocess.to_annotation_frame(nsn_prob, cfg.annotation_offset_um, grid)
    ndn_prob = None if ndn_prob is None else postprocess.to_annotation_frame(ndn_prob, cfg.annotation_offset_um, grid)
    moved = dataclasses.replace(cfg, annotation_offset_um=(0.0, 0.0, 0.0))
    labels = instance_labels(moved, nets.spacing_um, shape, nsn_prob, ndn_prob, name)
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
    default_channels: tuple[int, ...] | None = None  # read from multi-channel files when channels is None
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
    busy: list[str] = field(default_factory=list)            # claimed by another live process
    failed: dict[str, str] = field(default_factory=dict)     # bad time point -> its error


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
    check_channel_count(want, requested)
    return tuple(requested) or None


def check_channel_count(takes: int, requested: tuple[int, ...] | None) -> None:
    """InputError when ``--channel`` gave (``requested``) another number of channels than the
    model's ``takes`` inputs; nothing when none were given."""
    if requested and len(requested) != takes:
        raise InputError(f"--channel: the model takes {takes} channel(s); got {len(requested)} "
                         f"({', '.join(map(str, requested))})")


def recorded_channel(info: dict, model_cfg) -> tuple[int, ...] | None:
    """The file channel a one-channel model was trained on (``--channel k`` at training,
    recorded as ``data.channels``), read from multi-channel files by default; None when
    it records none or takes several channels (those are chosen by :func:`choose_channels`)."""
    recorded = tuple((info.get("data") or {}).get("channels") or ())
    return recorded if model_cfg.input_channels == 1 and len(recorded) == 1 else None


def discover(inputs: list[str | os.PathLike], channels: tuple[int, ...] | None = None,
             default_channels: tuple[int, ...] | None = None) -> list[io.TimePoint]:
    """All time points of the inputs (3D files, 4D files, folders), names unique;
    ``default_channels`` are read from multi-channel files when ``channels`` is None."""
    tps: list[io.TimePoint] = []
    for item in inputs:
        tps.extend(io.read_series(item, channels, default_channels))
    seen: dict[str, Path] = {}
    for tp in tps:
        if tp.name in seen:
            raise InputError(f"{tp.source}: time point name {tp.name!r} also comes from {seen[tp.name]}")
        seen[tp.name] = tp.source
    return tps


def check_tta(nets: Networks, tta: int) -> None:
    """Warn when test-time augmentation averages over transforms a network was not trained
    with (its recorded DataConfig: ``flips``, ``turns_xy``): its predictions on those views
    are guesses, not a consensus. Networks that record no data settings are not judged."""
    if tta == 1:
        return
    for net in (nets.nsn, nets.ndn):
        data = net.data_cfg if net is not None else None
        if data is None:
            continue
        missing = ([] if data.flips else ["x/y flips"]) + ([] if tta < 8 or data.turns_xy else ["xy quarter turns"])
        if missing:
            log.warning("%s: --tta %d averages over %s that the %s was not trained with; --tta %d keeps to what "
                        "it learnt", net.folder, tta, " and ".join(missing), net.task.upper(),
                        4 if missing == ["xy quarter turns"] else 1)


THIN_UM = 5.0  # a small nucleus's diameter: a thinner stack cuts every nucleus


def available_memory() -> int | None:
    """Bytes of memory this process can still use (MemAvailable, capped by a cgroup limit), or None."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit.isdigit():
            avail = min(avail or int(limit), int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def preflight(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, *, model_folder=None,
              channels: tuple[int, ...] = (), voxel_size: io.VoxelSize | None = None, tta: int = 1) -> None:
    """The checks of a predict job that need neither TensorFlow nor pixels, run before the models
    load: every input readable with z, y, x axes (and the channels), a voxel size for each, the
    output folder writable, one time point's working set within the free memory (refused, with
    its size, before reading), and a warning for a stack thinner than a nucleus. ``model_folder``
    (the NSN's, optional) gives the network grid and the channels a multi-channel model records;
    ``tta`` > 1 adds a turned copy of the input and one more prediction to the working set."""
    from .errors import QcaError
    from .modelio import read_model_config

    spacing, chosen, default, takes = None, tuple(channels) or None, None, None
    if model_folder is not None:
        try:
            info, model_cfg = read_model_config(model_folder)
            spacing = float(info["spacing_um"])
            takes = model_cfg.input_channels
            if chosen is None and model_cfg.input_channels > 1:
                chosen = tuple((info.get("data") or {}).get("channels") or ()) or None
            default = recorded_channel(info, model_cfg)
        except (QcaError, KeyError, TypeError, ValueError):
            pass  # the model loader reports what is wrong with the model
    if takes is not None:  # the check choose_channels makes after loading, here before TensorFlow
        check_channel_count(takes, tuple(channels))
    tps = discover(inputs, chosen, default)
    free = available_memory()
    for source in dict.fromkeys(tp.source for tp in tps):
        voxel = io.voxel_size_of(source, voxel_size)
        lay = io.read_layout(source)
        z, y, x = lay.zyx
        n_c = len(chosen) if chosen else 1
        raw = z * y * x * n_c * io.stack_dtype(source).itemsize
        grid = raw
        if spacing:  # float32 volume per channel, NSN + NDN probabilities and int32 labels on the network grid
            grid_voxels = (z * voxel.z / spacing) * (y * voxel.y / spacing) * (x * voxel.x / spacing)
            per_voxel = 4 * n_c + 12 + (4 * n_c + 4 if tta > 1 else 0)  # tta: the turned input, one transform's output
            grid = grid_voxels * per_voxel
        need = raw + grid
        if free is not None and need > free:
            raise InputError(f"{source}: a time point of {z} x {y} x {x} voxels ({_gb(raw)} as stored) needs about "
                             f"{_gb(need)} to segment, more than the {_gb(free)} of memory available")
        if z < 3 or z * voxel.z < THIN_UM:
            log.warning("%s: only %d z slice(s) (%.1f um): thinner than a nucleus (about %g um); nuclei will be cut "
                        "and their volumes wrong", source, z, z * voxel.z, THIN_UM)
    _check_output(Path(out_dir))  # last: a refused input leaves no empty output folders behind


def _postprocess_and_write(nets: Networks, prep: Prepared, nsn_prob, ndn_prob, out: Path,
                           opts: PredictOptions, index: int, record: tuple[dict, dict] | None = None) -> dict[str, float]:
    """Watershed, write labels (+ masks, quick-look), the record of what produced the time point
    (``record``: run and input identity, :mod:`qca_tf.resume`) and its nuclei CSV (last)."""
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
    if record is not None:
        resume.write_record(out, name, *record)
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

    # disable=None: no bar when stderr is not a terminal (a log file or a pipe)
    return tqdm(total=total, unit="tp", desc="predict", disable=None if enabled else True, leave=True)


def predict_series(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, nets: Networks,
                   infer_cfg: InferenceConfig, opts: PredictOptions) -> RunSummary:
    """Segment every time point of ``inputs`` into ``out_dir`` (see the module docstring).

    A finished time point made by another model, other parameters or another input is an
    OutputError (before any work); a bad time point (NaN voxels) does not stop the others:
    the run finishes them, writes the tables and then raises one InputError naming it."""
    from .engines import resolve_inference

    out = Path(out_dir)
    tps = discover(inputs, opts.channels, opts.default_channels)
    _check_output(out)
    shard_i, shard_n = opts.shard
    mine = [(i, tp) for i, tp in enumerate(tps) if i % shard_n == shard_i]
    voxels = {source: io.voxel_size_of(source, opts.voxel_size)  # fail before any work, not at time point 57
              for source in dict.fromkeys(tp.source for _, tp in mine)}
    check_tta(nets, infer_cfg.tta)
    identity = resume.run_identity(nets, resolve_inference(infer_cfg))
    sources = {tp.name: resume.input_identity(tp, voxels[tp.source]) for _, tp in mine}
    with resume.run_lock(out):
        resume.remove_stale_temps(out)

    def finished(tp: io.TimePoint) -> bool:
        """Finished by a run like this one (a different one is an OutputError)."""
        if opts.overwrite or not (out / "nuclei" / f"{tp.name}.csv").exists():
            return False
        resume.check_finished(out, tp.name, identity, sources[tp.name])
        return True

    done_before = {tp.name for _, tp in mine if finished(tp)}
    todo = [(i, tp) for i, tp in mine if tp.name not in done_before]
    run = RunSummary(out=out, skipped=[tp.name for _, tp in mine if tp.name in done_before])
    if run.skipped:
        log.info("skipping %d finished time point(s) (use --overwrite to redo them)", len(run.skipped))
    totals = {"read": 0.0, "networks": 0.0, "watershed": 0.0, "write": 0.0}
    t_start = time.perf_counter()

    def produce():
        """(index, time point, Prepared or the InputError of a bad time point), for the time points
        this process claims; those another live process claims are left to it."""
        for index, tp in todo:
            if not resume.claim(out, tp.name):
                run.busy.append(tp.name)
                continue
            if finished(tp):  # another process finished it since we looked
                run.skipped.append(tp.name)
                resume.release(out, tp.name)
                continue
            try:
                yield index, tp, prepare(tp, opts.voxel_size, nets.recipes)
            except InputError as exc:
                resume.release(out, tp.name)
                yield index, tp, exc

    def raise_failed(futures: list[Future], wait_for: int) -> list[Future]:
        """Drop finished post-processing, re-raising its error at once; wait while more than
        ``wait_for`` are queued (the networks do not run ahead of a failed or slow writer)."""
        while futures and (futures[0].done() or len(futures) > wait_for):
            _account(totals, futures.pop(0).result())
        return futures

    bar = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qca-post") if opts.pipelined else None
    items = _prefetch(produce(), depth=2) if opts.pipelined else produce()
    try:
        pending: list[Future] = []
        for index, tp, prep in items:
            if bar is None:  # shown once the first time point has been read and checked
                bar = _progress(len(todo), opts.progress)
            if isinstance(prep, InputError):
                log.info("%s: not segmented: %s", tp.name, prep)
                run.failed[tp.name] = str(prep)
                bar.update()
                continue
            record = (identity, sources[tp.name])
            if pool is not None:
                raise_failed(pending, wait_for=1)
            totals["read"] += prep.seconds
            t0 = time.perf_counter()
            nsn_prob, ndn_prob = segment(nets, prep.volumes, infer_cfg)
            totals["networks"] += time.perf_counter() - t0
            if pool is None:
                _account(totals, _postprocess_and_write(nets, prep, nsn_prob, ndn_prob, out, opts, index, record))
                resume.release(out, tp.name)
                bar.update()
            else:
                fut = pool.submit(_postprocess_and_write, nets, prep, nsn_prob, ndn_prob, out, opts, index, record)
                fut.add_done_callback(lambda _f, name=tp.name: (resume.release(out, name), bar.update()))
                pending.append(fut)
            run.processed.append(tp.name)
        raise_failed(pending, wait_for=0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if hasattr(items, "close"):
            items.close()  # stops the reader thread
        for _, tp in todo:
            resume.release(out, tp.name)
        if bar is not None:
            bar.close()
    totals["total"] = time.perf_counter() - t_start
    run.timings = totals
    with resume.run_lock(out):
        run.summary_rows, _ = collect_tables(out, tps)
        _write_run_json(out, inputs, nets, infer_cfg, opts, run, identity)
    if run.busy:
        owners = {name: resume.claim_owner(out, name) or {} for name in run.busy}
        held = ", ".join(f"{name} (pid {o.get('pid', '?')} on {o.get('host', '?')})"
                         for name, o in list(owners.items())[:5])
        remote = sorted({str(o.get("host")) for o in owners.values() if o and o.get("host") != resume.host()})
        hint = (f"; this machine cannot tell whether a process on {', '.join(remote)} is still alive: if it is "
                f"gone, delete {out / resume.CLAIMS}/<name> and rerun" if remote else "")
        log.warning("%d time point(s) are being segmented by another process: %s; the last process to finish "
                    "writes the complete tables%s", len(run.busy), held, hint)
    if run.failed:
        first, problem = next(iter(run.failed.items()))
        if len(run.failed) == len(mine):
            raise InputError(problem if len(mine) == 1 else f"no time point segmented: {problem} (and "
                             f"{len(mine) - 1} more; run.json says why)")
        more = list(run.failed)[1:]
        others = (f" (and {len(more)} more: {', '.join(more[:5])}{' ...' if len(more) > 5 else ''}; run.json "
                  "says why)") if more else ""
        raise InputError(f"time point {first} not segmented: {problem}{others}; the other "
                         f"{len(mine) - len(run.failed)} time point(s) are in {out}")
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


def _shard_records(out: Path, identity: dict, opts: PredictOptions, run: RunSummary) -> dict[str, dict]:
    """run.json's "shards": every shard's record (I/N -> what it did), merged with those of the
    earlier or concurrent runs of the same identity already in ``out/run.json`` (call under the run lock)."""
    import json

    try:
        old = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        old = {}
    shards = dict(old.get("shards") or {}) if resume.with_defaults(old.get("identity")) == identity else {}
    key = f"{opts.shard[0]}/{opts.shard[1]}"
    before = shards.get(key) or {}
    processed = list(dict.fromkeys([*(before.get("processed") or []), *run.processed]))
    shards[key] = {"processed": processed, "skipped": [n for n in run.skipped if n not in processed],
                   "busy": run.busy, "failed": run.failed, "host": platform.node(), "pid": os.getpid(),
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "timings_s": run.timings}
    return dict(sorted(shards.items()))


def library_versions() -> dict[str, str | None]:
    """TensorFlow, Keras, NumPy and Python versions for run.json: a loaded module's own
    ``__version__``, else the installed package's (TensorFlow is not loaded when every
    network ran from the OpenVINO cache; it may be installed as tensorflow-cpu)."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    def installed(*names: str) -> str | None:
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                pass
        return None

    def of(module: str, *packages: str) -> str | None:
        loaded = sys.modules.get(module)
        return getattr(loaded, "__version__", None) if loaded is not None else installed(*packages)

    return {"tensorflow": of("tensorflow", "tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"),
            "keras": of("keras", "keras"), "numpy": np.__version__, "python": platform.python_version()}


def _write_run_json(out: Path, inputs, nets: Networks, infer_cfg: InferenceConfig, opts: PredictOptions,
                    run: RunSummary, identity: dict) -> None:
    import sys

    tf = sys.modules.get("tensorflow")  # not imported when every network ran from the OpenVINO cache
    payload = {
        "qca_tf_version": __version__,
        "versions": library_versions(),
        "device": ([d.name for d in tf.config.list_logical_devices()] if tf is not None
                   else ["CPU (OpenVINO; TensorFlow not loaded)"]),
        "openvino": _openvino_version(infer_cfg.engine),
        "inputs": [str(p) for p in inputs],
        "models": {"nsn": str(nets.nsn.folder), "ndn": str(nets.ndn.folder) if nets.ndn else None,
                   "bundle": str(nets.bundle.folder) if nets.bundle else None, "spacing_um": nets.spacing_um,
                   # what the networks ran at (OpenVINO builds them float32 and runs its own precision)
                   "precision": identity["inference"]["precision"],
                   "preprocessing": {net.task: dataclasses.asdict(net.grid_recipe)
                                     for net in (nets.nsn, nets.ndn) if net is not None}},
        "inference": to_dict(infer_cfg),
        "postprocess": to_dict(nets.postprocess),
        "options": {"save_masks": opts.save_masks, "overwrite": opts.overwrite, "shard": list(opts.shard),
                    "voxel_size": None if opts.voxel_size is None else list(opts.voxel_size.zyx[::-1]),
                    "pipelined": opts.pipelined,
                    "channels": None if opts.channels is None else list(opts.channels),
                    "default_channels": None if opts.default_channels is None else list(opts.default_channels)},
        "processed": run.processed,
        "skipped": run.skipped,
        "failed": run.failed,
        "busy": run.busy,
        "timings_s": run.timings,
        "identity": identity,
        "shards": _shard_records(out, identity, opts, run),
    }
    write_json_atomic(out / "run.json", payload)
