"""Training: Keras ``fit`` on random crops, whole-volume validation each epoch, the
paper's decay-on-drop learning-rate schedule, best-epoch model folder, resumable.

Two steps, so a search trains many configurations on data read once:
:func:`prepare_data` (collect, check, split; datasets built lazily and reused) and
:func:`fit` (one configuration, extra Keras callbacks). :func:`train` is both.

Output folder layout::

    OUT/config.json, OUT/weights.h5    best epoch (a weights-only model folder, see modelio)
    OUT/epochs.csv                     one row per epoch: epoch, loss, metric, lr, best,
                                       tiebreak (NDN: centre-mask Dice, breaks ties of F)
    OUT/training.json                  the run's options and volumes: a rerun resumes or
                                       reports "finished" only when they match
    OUT/.resume/                       Keras BackupAndRestore state while a run is unfinished
"""
from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import io, losses, metrics, modelio, preprocess
from .atomic import atomic_path, writable_folder
from .config import (DataConfig, ModelConfig, TrainConfig, check_compatible, flag_for, read_json, to_dict,
                     write_json_atomic)
from .data import VolumeSpec, check_volume, training_dataset, validation_dataset
from .errors import ConfigError, InputError
from .finetune import InitialModel, load_initial_weights
from .infer import resolve_precision
from .models import build_unet

log = logging.getLogger(__name__)

#: Centre-matching distance (um) of the NDN validation F-measure (the evaluation's).
VAL_MATCH_DISTANCE_UM = metrics.MATCH_DISTANCE_UM
EPOCH_FIELDS = ("epoch", "loss", "metric", "lr", "best", "tiebreak")
RUN_NAME = "training.json"


@dataclass
class TrainResult:
    """What a training run produced: the model folder and its best epoch."""

    folder: Path
    metric_name: str
    best_epoch: int
    best_metric: float
    history: list[dict] = field(default_factory=list)
    #: True when ``out_dir`` already held this run, finished: nothing was trained.
    finished: bool = False
    #: The best epoch's tie-break score (NDN: centre-mask Dice; NSN and unet3d: 0).
    best_tiebreak: float = 0.0


# ------------------------------------------------------------------ dataset assembly


def collect_volumes(data_root: str | os.PathLike, task: str, data_cfg: DataConfig,
                    spacing_um: float | None = None) -> tuple[list[VolumeSpec], float]:
    """Find the dataset's volumes for ``task`` and their zoom to the network grid.

    The grid is isotropic at ``spacing_um``, by default the xy voxel size of the first volume.
    NDN targets come from ``ndn/`` masks, else from ``labels/`` instance labels.
    """
    samples = io.find_dataset(data_root)
    override = io.VoxelSize.from_xyz(data_cfg.voxel_size) if data_cfg.voxel_size else None
    specs: list[VolumeSpec] = []
    for s in samples:
        if task == "nsn":
            target, from_labels = s.nsn, False
            if target is None:
                raise InputError(f"{s.image}: no NSN mask with the same name in {Path(data_root) / 'nsn'}")
        else:
            target, from_labels = (s.ndn, False) if s.ndn is not None else (s.labels, True)
            if target is None:
                raise InputError(
                    f"{s.image}: no NDN mask (ndn/) and no instance labels (labels/) with the same name to make one"
                )
        check_volume(s.image, target, data_cfg.channels)
        voxel = io.voxel_size_of(s.image, override)
        if spacing_um is None:
            spacing_um = min(voxel.x, voxel.y)
        specs.append(VolumeSpec(s.name, s.image, target, from_labels,
                                preprocess.zoom_factors(voxel, spacing_um), voxel))
    if not specs:
        raise InputError(f"{data_root}: no training volumes found")
    return specs, float(spacing_um)


def split_volumes(specs: list[VolumeSpec], val_fraction: float, seed: int) -> tuple[list[VolumeSpec], list[VolumeSpec]]:
    """Seeded train/validation split of the volumes. With one volume, its last
    ``val_fraction`` along x (or y, the longer) is held out for validation and the rest
    trains; with ``val_fraction`` 0, validation equals training (logged as a warning)."""
    if val_fraction == 0:
        log.warning("validation equals training: the metric is measured on the training volumes "
                    "(val_fraction 0); it will not show overfitting")
        return specs, specs
    if len(specs) == 1:
        return _spatial_split(specs[0], val_fraction)
    order = np.random.default_rng(seed).permutation(len(specs))
    n_val = min(len(specs) - 1, max(1, round(val_fraction * len(specs))))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [specs[i] for i in train], [specs[i] for i in val]


def _spatial_split(spec: VolumeSpec, val_fraction: float) -> tuple[list[VolumeSpec], list[VolumeSpec]]:
    """One volume: the last ``val_fraction`` of its longer xy axis validates, the rest trains."""
    shape = io.read_stack(spec.image).shape
    axis = 2 if shape[2] >= shape[1] else 1
    cut = int(round(shape[axis] * (1 - val_fraction)))
    if cut < 1 or cut >= shape[axis]:
        log.warning("validation equals training: %s is too small to hold out %.0f%% of it",
                    spec.name, 100 * val_fraction)
        return [spec], [spec]
    full = [(0, n) for n in shape]
    train_box, val_box = list(full), list(full)
    train_box[axis], val_box[axis] = (0, cut), (cut, shape[axis])
    name = "zyx"[axis]
    log.warning("one training volume: validating on its held-out part %s >= %d (%d of %d voxels along %s), "
                "training on the rest; give --val-data DIR to validate on other volumes",
                name, cut, shape[axis] - cut, shape[axis], name)
    return [spec.with_region(tuple(train_box), "[train]")], [spec.with_region(tuple(val_box), "[val]")]


def scheduled_lrs(metrics: list[float], base_lr: float, decay: float, patience: int) -> list[float]:
    """Learning rate of each epoch (len(metrics) + 1 values: the last is the next epoch's).

    The rate is multiplied by ``decay`` when the metric has not beaten its best for
    ``patience`` epochs in a row (the wait then restarts): a noisy dip does not decay it.
    """
    lr, best, wait, out = base_lr, -math.inf, 0, [base_lr]
    for m in metrics:
        if m > best:
            best, wait = m, 0
        else:
            wait += 1
            if wait >= patience:
                lr, wait = lr * decay, 0
        out.append(lr)
    return out


# ------------------------------------------------------------------ optimisation


def make_optimizer(cfg: TrainConfig, dtype_policy: str | None = None) -> keras.optimizers.Optimizer:
    """SGD with momentum (lr ``sgd_lr``) or Adam (alpha, beta1, beta2, epsilon). Under the
    ``mixed_float16`` policy it is wrapped in a LossScaleOptimizer: Keras only adds loss
    scaling itself when the model carries the policy, and build_unet sets it per layer."""
    if cfg.optimizer == "sgd":
        opt = keras.optimizers.SGD(learning_rate=cfg.sgd_lr, momentum=cfg.sgd_momentum)
    else:
        opt = keras.optimizers.Adam(learning_rate=cfg.adam_alpha, beta_1=cfg.adam_beta1,
                                    beta_2=cfg.adam_beta2, epsilon=cfg.adam_epsilon)
    if dtype_policy == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def build_compiled(model_cfg: ModelConfig, train_cfg: TrainConfig, dtype_policy: str) -> keras.Model:
    """The network of ``model_cfg`` under the (resolved) ``dtype_policy``, compiled with the
    optimiser and loss of ``train_cfg`` (call inside the distribution strategy's scope)."""
    model = build_unet(model_cfg, weight_decay=train_cfg.weight_decay, dtype_policy=dtype_policy)
    model.compile(optimizer=make_optimizer(train_cfg, dtype_policy),
                  loss=losses.get_loss(train_cfg.resolved_loss, train_cfg.class_weights))
    return model


def validation_scores(model: keras.Model, val_ds: tf.data.Dataset, task: str,
                      spacing_um: float) -> tuple[float, float]:
    """(metric, tie-break), each the mean over validation volumes. The metric is IoU (nsn)
    or the detection F-measure (ndn). The tie-break picks between epochs of equal metric:
    for ndn the Dice of the predicted centre mask with the target spheres (F reaches 1.0
    early on a few volumes, and the centres keep improving after), for nsn 0."""
    scores, ties = [], []
    for x, target in val_ds:
        prob = model(x, training=False)[0, ..., 1]
        z, y, w = target.shape
        pred = prob[:z, :y, :w].numpy() > 0.5
        gt = target.numpy() > 0
        if task == "nsn":
            scores.append(metrics.iou(pred, gt))
            ties.append(0.0)
        else:
            scores.append(metrics.detection_from_masks(pred, gt, (spacing_um,) * 3, VAL_MATCH_DISTANCE_UM)["f1"])
            total = int(pred.sum()) + int(gt.sum())
            ties.append(2.0 * int(np.logical_and(pred, gt).sum()) / total if total else 1.0)
    return float(np.mean(scores)), float(np.mean(ties))


def _row_key(row: dict) -> tuple[float, float]:
    return float(row["metric"]), float(row.get("tiebreak") or 0.0)


def best_row(rows: list[dict]) -> int:
    """Index of the best epoch among ``epochs.csv`` rows: highest metric, ties broken by
    the tie-break column (rows written before it existed count 0), then the earliest."""
    keys = [_row_key(r) for r in rows]
    return max(range(len(rows)), key=lambda i: (keys[i], -i))


def _decayed_lr(rows: list[dict], base_lr: float, decay: float, patience: int) -> float:
    """Replay the schedule over logged epochs: the lr for the next epoch."""
    return scheduled_lrs([float(r["metric"]) for r in rows], base_lr, decay, patience)[-1]


def _write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EPOCH_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_epochs(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a training folder's ``epochs.csv`` (keys EPOCH_FIELDS, values as
    written: strings); [] when there is none. The one reader of that file."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class EpochCallback(keras.callbacks.Callback):
    """Per epoch: validation metric into the logs, decay-on-drop, best-epoch saving,
    a CSV row and a one-line summary. State is replayed from ``epochs.csv`` on resume."""

    def __init__(self, *, out: Path, val_ds, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 data_cfg: DataConfig, spacing_um: float, rows: list[dict]):
        super().__init__()
        self.out, self.val_ds = out, val_ds
        self.model_cfg, self.train_cfg, self.data_cfg = model_cfg, train_cfg, data_cfg
        self.spacing_um = spacing_um
        self.rows = rows
        self.metric_name = train_cfg.metric_name
        top = best_row(rows) if rows else None
        self.best, self.best_tie = _row_key(rows[top]) if top is not None else (-math.inf, -math.inf)
        self.best_epoch = int(rows[top]["epoch"]) if top is not None else 0
        self.base_lr = train_cfg.sgd_lr if train_cfg.optimizer == "sgd" else train_cfg.adam_alpha

    def on_train_begin(self, logs=None):
        if self.rows:
            self.model.optimizer.learning_rate.assign(
                _decayed_lr(self.rows, self.base_lr, self.train_cfg.lr_decay, self.train_cfg.lr_patience))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        score, tie = validation_scores(self.model, self.val_ds, self.train_cfg.task, self.spacing_um)
        logs[self.metric_name] = score
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        improved = (score, tie) > (self.best, self.best_tie)
        if improved:
            self.best, self.best_tie, self.best_epoch = score, tie, epoch + 1
            modelio.save_model_folder(
                self.out, self.model, task=self.train_cfg.task, model_cfg=self.model_cfg,
                spacing_um=self.spacing_um, train_cfg=self.train_cfg, data_cfg=self.data_cfg,
                metrics={"best_epoch": self.best_epoch, self.metric_name: score},
            )
        history = [float(r["metric"]) for r in self.rows] + [score]
        nxt = scheduled_lrs(history, self.base_lr, self.train_cfg.lr_decay, self.train_cfg.lr_patience)[-1]
        self.model.optimizer.learning_rate.assign(nxt)
        self.rows.append({"epoch": epoch + 1, "loss": f"{logs.get('loss', float('nan')):.6g}",
                          "metric": f"{score:.6f}", "lr": f"{lr:.6g}", "best": int(improved),
                          "tiebreak": f"{tie:.6f}"})
        _write_rows(self.out / "epochs.csv", self.rows)
        log.info("epoch %d/%d: loss %.4f, %s %.4f (best %.4f at epoch %d), lr %.3g",
                 epoch + 1, self.train_cfg.epochs, logs.get("loss", float("nan")), self.metric_name,
                 score, self.best, self.best_epoch, lr)


# ------------------------------------------------------------------ entry point


def _strategy(distribute: bool) -> tf.distribute.Strategy:
    gpus = tf.config.list_physical_devices("GPU")
    if distribute and len(gpus) > 1:
        log.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    if distribute:
        log.warning("--distribute needs more than one GPU (found %d); training on one device", len(gpus))
    return tf.distribute.get_strategy()


@dataclass
class PreparedData:
    """A dataset ready for many fits: volumes found, checked and split once; tf.data
    pipelines built on first use and reused (their per-volume cache too).

    ``spacing_um``: isotropic network-grid spacing. Datasets: see :mod:`qca_tf.data`.
    """

    task: str
    data_cfg: DataConfig
    train_specs: list[VolumeSpec]
    val_specs: list[VolumeSpec]
    spacing_um: float
    _train_ds: dict = field(default_factory=dict, repr=False)
    _val_ds: dict = field(default_factory=dict, repr=False)

    @property
    def ndn_diameter_um(self) -> float:
        return self.data_cfg.ndn_diameter * self.spacing_um

    def steps_per_epoch(self, train_cfg: TrainConfig) -> int:
        """Steps per epoch: crops per volume, at least ``train_cfg.min_crops_per_epoch`` crops."""
        return train_cfg.steps_per_epoch(len(self.train_specs))

    def training(self, batch_size: int, seed: int) -> tf.data.Dataset:
        """Endless random crops ((b, pz, py, px, c), (b, pz, py, px)), one pipeline per (batch, seed)."""
        key = (batch_size, seed)
        if key not in self._train_ds:
            self._train_ds[key] = training_dataset(self.train_specs, self.data_cfg, batch_size=batch_size,
                                                   seed=seed, ndn_diameter_um=self.ndn_diameter_um)
        return self._train_ds[key]

    def validation(self, multiple: int) -> tf.data.Dataset:
        """Whole validation volumes padded to ``multiple``, one pipeline per multiple."""
        if multiple not in self._val_ds:
            self._val_ds[multiple] = validation_dataset(self.val_specs, self.data_cfg, multiple=multiple,
                                                        ndn_diameter_um=self.ndn_diameter_um)
        return self._val_ds[multiple]


def prepare_data(data_root: str | os.PathLike, task: str, data_cfg: DataConfig, seed: int,
                 val_data: str | os.PathLike | None = None, spacing_um: float | None = None) -> PreparedData:
    """Collect and check the volumes of ``data_root`` for ``task`` and split them (seeded).

    ``val_data``: a dataset folder to validate on (all of ``data_root`` then trains);
    without it, ``data_cfg.val_fraction`` of the volumes (or, with one volume, of its
    extent) is held out. ``spacing_um``: the network grid (default: the first volume's
    xy voxel size; a fine-tuning passes its initial model's)."""
    specs, spacing_um = collect_volumes(data_root, task, data_cfg, spacing_um)
    if val_data is not None:
        train_specs = specs
        val_specs, _ = collect_volumes(val_data, task, data_cfg, spacing_um)
    else:
        train_specs, val_specs = split_volumes(specs, data_cfg.val_fraction, seed)
    log.info("%d training and %d validation volume(s); network grid %.3g um isotropic",
             len(train_specs), len(val_specs), spacing_um)
    return PreparedData(task, data_cfg, train_specs, val_specs, spacing_um)


def grid_extent(spec: VolumeSpec) -> tuple[int, int, int]:
    """(z, y, x) size of a training volume (its region, if any) on the network grid, from the file header."""
    lay = io.read_layout(spec.image)
    zyx = [n for r, n in zip(lay.roles, lay.full_shape) if r in "zyx"]
    if spec.region:
        zyx = [stop - start for start, stop in spec.region]
    return preprocess.resampled_shape(zyx, spec.factors)


def clamp_patch(prepared: PreparedData, multiple: int) -> PreparedData:
    """``prepared`` with its crop no larger than the largest training volume (per axis,
    rounded up to ``multiple`` = 2**depth), with a warning when it was: a crop far larger
    than the data only pads it and can exhaust memory (a 400-voxel cube needs tens of GB)."""
    extents = np.array([grid_extent(s) for s in prepared.train_specs]).max(axis=0)
    limit = [int(math.ceil(n / multiple) * multiple) for n in extents]
    patch = tuple(min(int(p), lim) for p, lim in zip(prepared.data_cfg.patch, limit))
    if patch == tuple(prepared.data_cfg.patch):
        return prepared
    log.warning("--patch %s is larger than the training volumes (%s z, y, x on the network grid); "
                "training with crops of %s instead", "x".join(map(str, prepared.data_cfg.patch)),
                "x".join(map(str, extents)), "x".join(map(str, patch)))
    import dataclasses

    return PreparedData(prepared.task, dataclasses.replace(prepared.data_cfg, patch=patch), prepared.train_specs,
                        prepared.val_specs, prepared.spacing_um)


def run_record(prepared: PreparedData, model_cfg: ModelConfig, train_cfg: TrainConfig,
               init: InitialModel | None = None) -> dict:
    """What makes a training run the same run: its options, its volumes and the model whose
    weights it started from (``training.json``)."""
    def volumes(specs: list[VolumeSpec]) -> list[str]:
        return [f"{Path(s.image).resolve()} + {Path(s.target).resolve()}"
                + (f" {s.region}" if s.region else "") for s in specs]

    return {"model": to_dict(model_cfg), "train": to_dict(train_cfg), "data": to_dict(prepared.data_cfg),
            "volumes": {"train": volumes(prepared.train_specs), "validation": volumes(prepared.val_specs)},
            "init": init.record() if init is not None else None}


def _recorded_run(out: Path) -> dict | None:
    """The recorded options of the run in ``out``: training.json, else (older folders)
    the model, train and data sections of config.json; None when there are none."""
    if (out / RUN_NAME).is_file():
        return read_json(out / RUN_NAME)
    if (out / "config.json").is_file():
        info = read_json(out / "config.json")
        return {k: info[k] for k in ("model", "train", "data") if isinstance(info.get(k), dict)}
    return None


def run_differences(recorded: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Options that differ between a recorded run and this one, each as
    ``--flag (section.key): recorded -> now``; keys in ``ignore`` ("train.epochs") are skipped."""
    out = []
    for section in ("model", "train", "data"):
        old, new = recorded.get(section), current[section]
        if not isinstance(old, dict):
            continue
        for key in new:
            if f"{section}.{key}" in ignore or key not in old or old[key] == new[key]:
                continue
            out.append(f"{flag_for(section, key)} ({section}.{key}): {old[key]!r} then, {new[key]!r} now")
    if isinstance(recorded.get("volumes"), dict):
        for part, flag in (("train", "--data"), ("validation", "--val-data")):
            if recorded["volumes"].get(part) != current["volumes"][part]:
                out.append(f"{flag}: other {part} volumes ({len(recorded['volumes'].get(part) or [])} then, "
                           f"{len(current['volumes'][part])} now)")
    old_init, new_init = recorded.get("init"), current.get("init")
    if (old_init or {}).get("sha256") != (new_init or {}).get("sha256"):
        def name(rec: dict | None) -> str:
            return f"{rec['folder']} (sha256 {rec['sha256'][:12]}...)" if rec else "random weights"

        out.append(f"--init: {name(old_init)} then, {name(new_init)} now")
    return out


def _clear_run(out: Path) -> None:
    """Remove a previous run's progress (``--overwrite``); its model files are replaced by the new run."""
    import shutil

    shutil.rmtree(out / ".resume", ignore_errors=True)
    for name in ("epochs.csv", RUN_NAME):
        (out / name).unlink(missing_ok=True)


def fit(prepared: PreparedData, out_dir: str | os.PathLike, model_cfg: ModelConfig, train_cfg: TrainConfig, *,
        callbacks: list[keras.callbacks.Callback] | tuple = (), distribute: bool = False,
        verbose: int | None = None, overwrite: bool = False, init: InitialModel | None = None) -> TrainResult:
    """Fit one configuration on prepared data; save its best epoch as a model folder in ``out_dir``.

    ``init``: start from this model's weights (fine-tuning; see :mod:`qca_tf.finetune`);
    its architecture must be ``model_cfg`` and its grid ``prepared.spacing_um``.

    ``callbacks`` run after the epoch callback, so ``logs[train_cfg.metric_name]`` (the
    validation metric) is in their ``on_epoch_end`` logs. An interrupted run resumes from
    its last finished epoch when called again with the same ``out_dir`` and options; a
    finished one is not trained again (its result is returned, ``TrainResult.finished``);
    other options are a ConfigError naming them. ``overwrite`` starts again from epoch 1.
    """
    if train_cfg.task != prepared.task:
        raise ConfigError(f"invalid train.task: {train_cfg.task!r} but the data were prepared for {prepared.task!r}")
    check_compatible(model_cfg, prepared.data_cfg)
    if init is not None and (init.model_cfg != model_cfg or abs(init.spacing_um - prepared.spacing_um) > 1e-9):
        raise ConfigError(f"{init.folder}: fine-tuning needs its architecture and {init.spacing_um} um grid "
                          f"(got {model_cfg} on a {prepared.spacing_um} um grid)")
    policy = resolve_precision(train_cfg.precision)  # before any work: mixed_float16 needs a GPU
    out = Path(out_dir)
    writable_folder(out)
    resume_dir = out / ".resume"
    record = run_record(prepared, model_cfg, train_cfg, init)
    if overwrite:
        _clear_run(out)
    previous = read_epochs(out / "epochs.csv")
    recorded = _recorded_run(out) if previous else None
    if previous and recorded is not None:
        unfinished = resume_dir.exists()
        differ = run_differences(recorded, record, ignore=("train.epochs",) if unfinished else ())
        if differ:
            state = "an unfinished" if unfinished else f"a finished ({len(previous)} epochs)"
            raise ConfigError(f"{out}: holds {state} training with other options: {'; '.join(differ)}; "
                              "rerun with the same options, or give --overwrite or another --out to start again")
        if not unfinished and len(previous) >= train_cfg.epochs:
            best = best_row(previous)
            log.info("training in %s is already finished (%d epochs); the model is in %s; "
                     "--overwrite trains again", out, len(previous), out)
            return TrainResult(folder=out, metric_name=train_cfg.metric_name, best_epoch=int(previous[best]["epoch"]),
                               best_metric=float(previous[best]["metric"]), history=previous, finished=True,
                               best_tiebreak=_row_key(previous[best])[1])
    if previous and not resume_dir.exists():
        log.warning("%s: %d epoch(s) in epochs.csv but no resume state (.resume/); training starts again "
                    "from epoch 1", out, len(previous))
    log.info("training with precision %s", policy)
    if not resume_dir.exists():
        write_json_atomic(out / RUN_NAME, record)
    rows = previous if resume_dir.exists() else []
    meta = resume_dir / "training_metadata.json"
    done_epochs = int(read_json(meta).get("epoch", 0)) if meta.exists() else 0
    rows = rows[:done_epochs]  # the CSV row is written just before the backup: drop an unbacked one
    if done_epochs:
        log.info("resuming after epoch %d", done_epochs)

    keras.utils.set_random_seed(train_cfg.seed)
    steps = prepared.steps_per_epoch(train_cfg)
    train_ds = prepared.training(train_cfg.batch_size, train_cfg.seed).skip(done_epochs * steps)
    val_ds = prepared.validation(model_cfg.multiple)

    if verbose is None:  # per-step bars only on a terminal, never in a log file
        from .runtime import keras_verbose

        verbose = keras_verbose()
    with _strategy(distribute).scope():
        model = build_compiled(model_cfg, train_cfg, policy)
        if init is not None and not done_epochs:  # a resumed run restores its own weights
            load_initial_weights(model, init)
    callback = EpochCallback(out=out, val_ds=val_ds, model_cfg=model_cfg, train_cfg=train_cfg,
                             data_cfg=prepared.data_cfg, spacing_um=prepared.spacing_um, rows=rows)
    backup = keras.callbacks.BackupAndRestore(str(resume_dir), save_freq="epoch", delete_checkpoint=True)
    model.fit(train_ds, epochs=train_cfg.epochs, steps_per_epoch=steps,
              callbacks=[callback, *callbacks, backup], verbose=verbose, shuffle=False)
    return TrainResult(folder=out, metric_name=train_cfg.metric_name, best_epoch=callback.best_epoch,
                       best_metric=callback.best, history=callback.rows, best_tiebreak=float(callback.best_tie))


def train(data_root: str | os.PathLike, out_dir: str | os.PathLike, model_cfg: ModelConfig,
          train_cfg: TrainConfig, data_cfg: DataConfig, *, distribute: bool = False,
          verbose: int | None = None, val_data: str | os.PathLike | None = None,
          overwrite: bool = False, init: InitialModel | None = None) -> TrainResult:
    """Train one network (NSN or NDN task) and save its best epoch as a model folder in ``out_dir``:
    :func:`prepare_data` (``val_data``: a folder to validate on) then :func:`fit`. An
    interrupted run resumes when called again with the same ``out_dir``. ``init``: start
    from that model's weights, on its grid (``model_cfg`` and ``data_cfg`` must carry its
    architecture and recipe: :func:`qca_tf.finetune.check_architecture`, ``recipe_data_config``).
    """
    check_compatible(model_cfg, data_cfg)
    resolve_precision(train_cfg.precision)  # before reading data: mixed_float16 needs a GPU
    writable_folder(Path(out_dir))
    spacing = init.spacing_um if init is not None else None
    prepared = clamp_patch(prepare_data(data_root, train_cfg.task, data_cfg, train_cfg.seed, val_data, spacing),
                           model_cfg.multiple)
    return fit(prepared, out_dir, model_cfg, train_cfg, distribute=distribute, verbose=verbose, overwrite=overwrite,
               init=init)
