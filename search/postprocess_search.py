"""``qca-tf search qcanet``: tune a QCANet bundle's post-processing on the instance metric,
with its two networks fixed.

Searched: the NSN threshold, the NDN threshold, the minimum marker size (network-grid
voxels) and the minimum nucleus volume (um^3) of :class:`qca_tf.config.PostprocessConfig`.
Objective: the mean MUCov over the dataset's volumes (maximised); SEG and detection F
are recorded on every trial.

The networks run once per volume, through the prediction path (``qca_tf.predict``:
each network's recorded grid recipe replayed), and their probabilities are kept (in
memory, or memory-mapped from ``OUT/cache/`` beyond ``cache_memory_gb``); a trial is
only the watershed (:func:`qca_tf.predict.instance_labels`, what ``predict`` writes)
and the metrics (:func:`qca_tf.metrics.evaluate`).

Output folder::

    OUT/study.journal     the embedded study storage (without --storage): rerun to resume
    OUT/bundle/           the same networks with the tuned post-processing (qcanet.json)
    OUT/best_params.json  the tuned parameters and the metrics before and after
    OUT/trials.csv        every trial: parameters, MUCov, SEG, detection F, nuclei, seconds
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import TrialState

from qca_tf.atomic import atomic_path, writable_folder
from qca_tf.config import MATCH_DISTANCE_UM, DataConfig, PostprocessConfig, to_dict, write_json_atomic
from qca_tf.errors import ConfigError, InputError

from . import settings as st
from .outputs import write_trials_csv
from .storage import FINISHED, counts, open_storage, recover_dead, redact, worker_identity

log = logging.getLogger(__name__)

NETWORK = "qcanet"
PARAMS = ("nsn_threshold", "ndn_threshold", "min_marker_size", "marker_gap_um", "min_volume_um3")
THRESHOLDS = (0.05, 0.95)
METRICS = ("mucov", "seg", "det_f1", "iou", "nuclei")
IDENTITY_KEYS = ("network", "model", "data", "space", "tta", "annotation_offset_um")
#: What a study made before a key existed was made with.
_IDENTITY_BEFORE = {"tta": 1, "annotation_offset_um": [0.0, 0.0, 0.0]}


@dataclass(frozen=True)
class PostSearchSettings:
    """The options of one post-processing search."""

    model: str                  # bundle folder or registered name (``--model``)
    data: str                   # dataset folder with images/ and labels/
    out: str
    trials: int
    study: str = NETWORK
    sampler: str = "tpe"
    storage: str | None = None  # redacted form, for messages
    seed: int = 0
    warm_start: bool = True
    timeout_s: float | None = None
    voxel_size: tuple[float, float, float] | None = None  # x, y, z um: overrides the files' metadata
    match_distance_um: float = MATCH_DISTANCE_UM
    cache_memory_gb: float = 2.0

    def __post_init__(self) -> None:
        if self.sampler not in st.SAMPLERS:
            raise ConfigError(f"--sampler {self.sampler!r}: choose one of {', '.join(st.SAMPLERS)}")
        if not (isinstance(self.trials, int) and self.trials >= 1):
            raise ConfigError(f"--trials {self.trials!r}: need at least 1 trial")
        if not self.data:
            raise ConfigError("search qcanet needs --data DIR: images/ and labels/ (instance ground truth)")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"--timeout {self.timeout_s!r}: must be > 0 seconds")


# ------------------------------------------------------------------ the cached volumes


@dataclass
class CachedVolume:
    """One dataset volume: its instance ground truth (z, y, x) on the original grid, voxel
    size, and the networks' foreground probabilities (Z, Y, X) float32 on the network grid."""

    name: str
    gt: np.ndarray
    voxel: Any  # qca_tf.io.VoxelSize
    nsn: np.ndarray
    ndn: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.gt.shape)  # type: ignore[return-value]


@dataclass
class Truth:
    """One dataset volume's image file, instance ground truth (z, y, x; a one-valued mask
    counts as its 6-connected components, as in ``qca-tf evaluate``) and voxel size."""

    name: str
    image: Path
    labels: Path
    gt: np.ndarray
    voxel: Any  # qca_tf.io.VoxelSize


def read_ground_truth(data: str | Path, voxel_override=None) -> list[Truth]:
    """The dataset's volumes (:func:`qca_tf.io.find_dataset`: ``images/`` + ``labels/``)
    with their ground truth; one InputError line when some (or all) have none, or a
    voxel size is missing (``voxel_override``: ``--voxel-size``)."""
    from qca_tf import io
    from qca_tf.evaluate import as_instances
    from qca_tf.labels import as_label_image

    samples = io.find_dataset(data)
    missing = [s for s in samples if s.labels is None]
    if missing:
        what = "no image has" if len(missing) == len(samples) else f"{len(missing)} of {len(samples)} images have"
        raise InputError(f"{data}: {what} instance ground truth (first: {missing[0].image.name}); search qcanet "
                         f"needs {Path(data) / 'labels'}/ with an instance-label TIFF of the same name per image")
    return [Truth(s.name, s.image, s.labels, as_instances(as_label_image(str(s.labels), io.read_stack(s.labels))),
                  io.voxel_size_of(s.image, voxel_override)) for s in samples]


def _spill(array: np.ndarray | None, path: Path) -> np.ndarray | None:
    """``array`` written to ``path`` (.npy) and memory-mapped back."""
    if array is None:
        return None
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return np.load(path, mmap_mode="r")


def cache_probabilities(nets, truths: list[Truth], infer_cfg, *, channels=None, spill_dir: Path | None = None,
                        memory_gb: float = 2.0, progress: bool = True) -> list[CachedVolume]:
    """Run the networks once per volume (``qca_tf.predict.prepare`` + ``segment``, each
    network's recipe replayed) and keep the probabilities; beyond ``memory_gb`` in all,
    the rest go to ``spill_dir`` as .npy files, memory-mapped."""
    from tqdm.auto import tqdm

    from qca_tf import io, predict

    volumes: list[CachedVolume] = []
    held = 0
    for t in tqdm(truths, desc="networks", unit="volume", disable=not progress, leave=False):
        prep = predict.prepare(io.TimePoint(t.name, t.image, None, channels), t.voxel, nets.recipes)
        if prep.raw.shape != t.gt.shape:
            raise InputError(f"{t.labels}: shape {t.gt.shape} differs from its image {t.image} {prep.raw.shape}")
        nsn, ndn = predict.segment(nets, prep.volumes, infer_cfg)
        size = nsn.nbytes + (0 if ndn is None else ndn.nbytes)
        if spill_dir is not None and held + size > memory_gb * 1e9:
            nsn, ndn = _spill(nsn, spill_dir / f"{t.name}.nsn.npy"), _spill(ndn, spill_dir / f"{t.name}.ndn.npy")
        else:
            held += size
        volumes.append(CachedVolume(t.name, t.gt, t.voxel, nsn, ndn))
    log.info("network probabilities of %d volume(s) cached (%.0f MB in memory)", len(volumes), held / 1e6)
    return volumes


# ------------------------------------------------------------------ space and objective


@dataclass(frozen=True)
class PostSpace:
    """The searched ranges: thresholds in ``thresholds`` (widened to hold the bundle's
    values), marker size 0..``max_marker_size``, marker gap 0..``max_gap_um``, minimum
    volume 0..``max_volume_um3``; every trial keeps the bundle's ``annotation_offset_um``
    (a property of its training annotation, not searched)."""

    nsn_threshold: tuple[float, float]
    ndn_threshold: tuple[float, float]
    max_marker_size: int
    max_gap_um: float
    max_volume_um3: float
    annotation_offset_um: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def suggest(self, trial: optuna.Trial) -> PostprocessConfig:
        return config_of({"nsn_threshold": trial.suggest_float("nsn_threshold", *self.nsn_threshold),
                          "ndn_threshold": trial.suggest_float("ndn_threshold", *self.ndn_threshold),
                          "min_marker_size": trial.suggest_int("min_marker_size", 0, self.max_marker_size),
                          "marker_gap_um": trial.suggest_float("marker_gap_um", 0.0, self.max_gap_um),
                          "min_volume_um3": trial.suggest_float("min_volume_um3", 0.0, self.max_volume_um3)},
                         self.annotation_offset_um)

    def to_json(self) -> dict[str, Any]:
        return {"nsn_threshold": list(self.nsn_threshold), "ndn_threshold": list(self.ndn_threshold),
                "min_marker_size": [0, self.max_marker_size], "marker_gap_um": [0.0, self.max_gap_um],
                "min_volume_um3": [0.0, self.max_volume_um3]}


def make_space(shipped: PostprocessConfig, nets, truths: list[Truth]) -> PostSpace:
    """Ranges sensible for this bundle and data: thresholds 0.05..0.95; markers up to the
    voxel count of the NDN's centre sphere (its training ``ndn_diameter``, grid voxels);
    marker gap up to that sphere's diameter in um (a wider gap would join the centres of
    touching nuclei); minimum volume up to half the median ground-truth nucleus volume
    (um^3); each range widened to hold the bundle's own value (the warm start)."""
    ndn_cfg = nets.ndn.data_cfg if nets.ndn is not None and nets.ndn.data_cfg is not None else DataConfig()
    sphere = math.ceil(4.0 / 3.0 * math.pi * (ndn_cfg.ndn_diameter / 2.0) ** 3)
    sizes = []
    for v in truths:
        counts_ = np.bincount(v.gt.ravel())[1:]
        sizes.extend((counts_[counts_ > 0] * float(np.prod(v.voxel.zyx))).tolist())
    half_median = 0.5 * float(np.median(sizes)) if sizes else 100.0

    def widen(value: float) -> tuple[float, float]:
        return (min(THRESHOLDS[0], value), max(THRESHOLDS[1], value))

    gap = ndn_cfg.ndn_diameter * float(nets.spacing_um)
    return PostSpace(widen(shipped.nsn_threshold), widen(shipped.ndn_threshold),
                     max(sphere, shipped.min_marker_size, 1), round(max(gap, float(shipped.marker_gap_um)), 3),
                     round(max(half_median, float(shipped.min_volume_um3), 1.0), 3), shipped.annotation_offset_um)


@contextlib.contextmanager
def quiet_postprocess():
    """Trials explore bad thresholds on purpose: the watershed's 'too few markers' warnings are not news."""
    logger = logging.getLogger("qca_tf.postprocess")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def score(cfg: PostprocessConfig, volumes: list[CachedVolume], spacing_um: float,
          match_distance_um: float = MATCH_DISTANCE_UM) -> dict[str, float]:
    """Mean over ``volumes`` of MUCov, SEG, detection F, IoU and the number of nuclei of the
    labels :func:`qca_tf.predict.instance_labels` makes with ``cfg``."""
    from qca_tf import metrics, predict

    rows = []
    with quiet_postprocess():
        for v in volumes:
            labels = predict.instance_labels(cfg, spacing_um, v.shape, v.nsn, v.ndn, v.name)
            row = metrics.evaluate(labels, v.gt, v.voxel.zyx, match_distance_um, thresholds=())
            rows.append({k: float(row[k]) for k in ("mucov", "seg", "det_f1", "iou")} | {"nuclei": int(labels.max())})
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


# ------------------------------------------------------------------ the study


def open_post_study(cfg: PostSearchSettings, ident: dict[str, Any], storage) -> optuna.Study:
    """Create the study or load it; refuse one made for another network, bundle, data or space."""
    study = optuna.create_study(study_name=cfg.study, storage=storage, direction="maximize", load_if_exists=True)
    attrs = study.user_attrs
    if not attrs:
        for k, v in ident.items():
            study.set_user_attr(k, v)
        return study
    for k in IDENTITY_KEYS:
        recorded = attrs.get(k, _IDENTITY_BEFORE.get(k))
        if recorded != ident[k]:
            what = {"network": "network", "model": "--model", "data": "--data", "space": "search space",
                    "tta": "test-time augmentation (the bundle's tta)",
                    "annotation_offset_um": "annotation offset (the bundle's)"}[k]
            raise ConfigError(f"study {cfg.study!r} in {redact(cfg.storage) if cfg.storage else cfg.out} was "
                              f"created for another {what} ({recorded} vs {ident[k]}); use another --study "
                              f"or --out")
    return study


def _objective(space: PostSpace, volumes: list[CachedVolume], spacing_um: float, match_distance_um: float):
    def objective(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        trial.set_user_attr("worker", worker_identity())
        result = score(space.suggest(trial), volumes, spacing_um, match_distance_um)
        for k in METRICS:
            trial.set_user_attr(k, result[k])
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 4))
        return result["mucov"]

    return objective


def params_of(cfg: PostprocessConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in PARAMS}


def config_of(params: dict[str, Any], annotation_offset_um: tuple[float, float, float]) -> PostprocessConfig:
    """The post-processing of a trial's ``params`` with the bundle's (unsearched) annotation offset."""
    return PostprocessConfig(nsn_threshold=float(params["nsn_threshold"]),
                             ndn_threshold=float(params["ndn_threshold"]),
                             min_marker_size=int(params["min_marker_size"]),
                             marker_gap_um=float(params["marker_gap_um"]),
                             min_volume_um3=float(params["min_volume_um3"]),
                             annotation_offset_um=annotation_offset_um)


# ------------------------------------------------------------------ outputs


def write_bundle(out: Path, source, post: PostprocessConfig, note: str) -> Path:
    """OUT/bundle/: the source bundle's networks (copied as :func:`qca_tf.bundle.make_bundle`
    copies them) with ``post`` and the source's tta; built beside it and renamed into place."""
    from qca_tf.bundle import make_bundle

    dst, tmp, old = out / "bundle", out / ".bundle.tmp", out / ".bundle.old"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    description = "; ".join(p for p in (source.description, note) if p)
    make_bundle(tmp, source.nsn, source.ndn, post, description=description, voxel_size_um=source.voxel_size_um,
                tta=source.tta)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def _line(label: str, m: dict[str, float]) -> str:
    return (f"{label:<28} MUCov {m['mucov']:.4f}  SEG {m['seg']:.4f}  detection F {m['det_f1']:.4f}  "
            f"nuclei/volume {m['nuclei']:.1f}")


@dataclass
class PostSearchResult:
    study: optuna.Study
    before: dict[str, float]
    after: dict[str, float]
    best: PostprocessConfig
    bundle: Path


def search_postprocess(cfg: PostSearchSettings, *, storage_url: str | None = None,
                       echo: Callable[[str], None] = print, progress: bool = True) -> PostSearchResult:
    """Run (or resume) the post-processing search of ``cfg`` and write its outputs."""
    from qca_tf.bundle import load_networks, read_bundle
    from qca_tf.config import InferenceConfig
    from qca_tf.engines import resolve_inference
    from qca_tf.io import VoxelSize
    from qca_tf.predict import choose_channels
    from qca_tf.registry import resolve

    out = Path(cfg.out)
    st.check_sampler_available(cfg.sampler)
    folder = resolve(cfg.model)
    source = read_bundle(folder)
    truths = read_ground_truth(cfg.data, VoxelSize.from_xyz(cfg.voxel_size) if cfg.voxel_size else None)
    writable_folder(out)  # every check above runs before anything is written
    storage = open_storage(storage_url, out)
    infer_cfg = resolve_inference(InferenceConfig(tta=source.tta))  # scored as predict runs this bundle
    nets = load_networks(bundle=folder, infer_cfg=infer_cfg)
    shipped = nets.postprocess
    space = make_space(shipped, nets, truths)
    ident = {"network": NETWORK, "model": str(folder.resolve()), "data": str(Path(cfg.data).resolve()),
             "space": space.to_json(), "tta": source.tta, "annotation_offset_um": list(shipped.annotation_offset_um)}
    st.route_optuna_logs()  # one summary at the end, not a line per trial
    study = open_post_study(cfg, ident, storage)
    recover_dead(study)
    volumes = cache_probabilities(nets, truths, infer_cfg, channels=choose_channels(nets), spill_dir=out / "cache",
                                  memory_gb=cfg.cache_memory_gb, progress=progress)
    if cfg.warm_start and not study.get_trials(deepcopy=False):
        study.enqueue_trial(params_of(shipped), user_attrs={"warm_start": "bundle's settings"})
    done = counts(study)["finished"]
    if done >= cfg.trials:
        echo(f"study {cfg.study!r} already has {done} finished trial(s) (>= --trials {cfg.trials})")
    else:
        echo(f"study {cfg.study!r}: {done} of {cfg.trials} trial(s) finished; {len(volumes)} volume(s), "
             f"sampler {cfg.sampler}, storage {redact(cfg.storage)}")
        sampler = st.make_sampler(cfg.sampler, st.worker_seed(cfg.seed, 0, len(study.trials)))
        study = optuna.load_study(study_name=cfg.study, storage=storage, sampler=sampler)
        study.optimize(_objective(space, volumes, nets.spacing_um, cfg.match_distance_um),
                       n_trials=cfg.trials - done, timeout=cfg.timeout_s, show_progress_bar=False,
                       callbacks=[optuna.study.MaxTrialsCallback(cfg.trials, states=FINISHED)])
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"study {cfg.study!r}: no completed trial to take parameters from")
    before = score(shipped, volumes, nets.spacing_um, cfg.match_distance_um)
    top = max(complete, key=lambda t: t.value)
    best = config_of(top.params, shipped.annotation_offset_um)
    after = score(best, volumes, nets.spacing_um, cfg.match_distance_um)
    if after["mucov"] < before["mucov"]:
        log.warning("no trial beat the bundle's own settings (MUCov %.4f vs %.4f); the new bundle keeps them",
                    after["mucov"], before["mucov"])
        best, after = shipped, before
    write_trials_csv(study, out / "trials.csv", list(PARAMS), metrics=tuple(METRICS[1:]),
                     attrs=("seconds", "warm_start"))
    write_json_atomic(out / "best_params.json", {
        "network": NETWORK, "trial": top.number, "metric": "mucov", "value": after["mucov"],
        "params": params_of(best), "postprocess": to_dict(best), "shipped": to_dict(shipped),
        "before": before, "after": after, "model": str(folder), "data": str(cfg.data), "space": space.to_json(),
        "volumes": [v.name for v in volumes]})
    note = (f"post-processing tuned by qca-tf search qcanet on {Path(cfg.data).name} (MUCov {before['mucov']:.3f} "
            f"-> {after['mucov']:.3f})")
    bundle = write_bundle(out, source, best, note)
    from .outputs import top_table

    echo(top_table(study))
    echo(_line("before (bundle's settings)", before))
    echo(_line("after (tuned)", after))
    echo("tuned: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in params_of(best).items()))
    echo(f"new bundle: {bundle}  (qca-tf predict IMAGES --model {bundle} --out DIR)  parameters: "
         f"{out / 'best_params.json'}  all trials: {out / 'trials.csv'}")
    return PostSearchResult(study, before, after, best, bundle)
