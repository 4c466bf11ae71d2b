"""Training: Keras ``fit`` on random crops, whole-volume validation each epoch, the
paper's decay-on-drop learning-rate schedule, best-epoch model folder, resumable.

Output folder layout::

    OUT/config.json, OUT/weights.h5    best epoch (a weights-only model folder, see modelio)
    OUT/epochs.csv                     one row per epoch: epoch, loss, metric, lr, best
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
from .atomic import atomic_path
from .config import DataConfig, ModelConfig, TrainConfig, read_json
from .data import VolumeSpec, check_volume, training_dataset, validation_dataset
from .errors import InputError, OutputError
from .infer import resolve_precision
from .models import build_unet

log = logging.getLogger(__name__)

#: Centre-matching distance (um) of the NDN validation F-measure.
VAL_MATCH_DISTANCE_UM = 3.0
EPOCH_FIELDS = ("epoch", "loss", "metric", "lr", "best")


@dataclass
class TrainResult:
    """What a training run produced: the model folder and its best epoch."""

    folder: Path
    metric_name: str
    best_epoch: int
    best_metric: float
    history: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------ dataset assembly


def collect_volumes(data_root: str | os.PathLike, task: str, data_cfg: DataConfig) -> tuple[list[VolumeSpec], float]:
    """Find the dataset's volumes for ``task`` and their zoom to the network grid.

    The grid is isotropic at the xy voxel size of the first volume (``spacing_um``).
    NDN targets come from ``ndn/`` masks, else from ``labels/`` instance labels.
    """
    samples = io.find_dataset(data_root)
    override = io.VoxelSize.from_xyz(data_cfg.voxel_size) if data_cfg.voxel_size else None
    specs: list[VolumeSpec] = []
    spacing_um: float | None = None
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
        check_volume(s.image, target)
        voxel = io.voxel_size_of(s.image, override)
        if spacing_um is None:
            spacing_um = min(voxel.x, voxel.y)
        specs.append(VolumeSpec(s.name, s.image, target, from_labels,
                                preprocess.zoom_factors(voxel, spacing_um), voxel))
    if not specs:
        raise InputError(f"{data_root}: no training volumes found")
    return specs, float(spacing_um)


def split_volumes(specs: list[VolumeSpec], val_fraction: float, seed: int) -> tuple[list[VolumeSpec], list[VolumeSpec]]:
    """Seeded train/validation split; with one volume, it is used for both (logged)."""
    if len(specs) == 1 or val_fraction == 0:
        log.warning("validating on the training volumes (%d volume(s), val_fraction %.2f)", len(specs), val_fraction)
        return specs, specs
    order = np.random.default_rng(seed).permutation(len(specs))
    n_val = min(len(specs) - 1, max(1, round(val_fraction * len(specs))))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [specs[i] for i in train], [specs[i] for i in val]


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
                  loss=losses.get_loss(train_cfg.loss, train_cfg.class_weights))
    return model


def validation_score(model: keras.Model, val_ds: tf.data.Dataset, task: str, spacing_um: float) -> float:
    """Mean over validation volumes of IoU (nsn) or detection F-measure (ndn)."""
    scores = []
    for x, target in val_ds:
        prob = model(x, training=False)[0, ..., 1]
        z, y, w = target.shape
        pred = prob[:z, :y, :w].numpy() > 0.5
        gt = target.numpy() > 0
        if task == "nsn":
            scores.append(metrics.iou(pred, gt))
        else:
            scores.append(metrics.detection_from_masks(pred, gt, (spacing_um,) * 3, VAL_MATCH_DISTANCE_UM)["f1"])
    return float(np.mean(scores))


def _decayed_lr(rows: list[dict], base_lr: float, decay: float) -> float:
    """Replay the decay-on-drop schedule over logged epochs: the lr for the next epoch."""
    lr = base_lr
    prev = None
    for row in rows:
        lr = float(row["lr"])
        m = float(row["metric"])
        if prev is not None and m < prev:
            lr *= decay
        prev = m
    return lr


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
        done = [float(r["metric"]) for r in rows]
        self.best = max(done) if done else -math.inf
        self.best_epoch = int(rows[int(np.argmax(done))]["epoch"]) if done else 0
        self.prev = done[-1] if done else None

    def on_train_begin(self, logs=None):
        if self.rows:
            base = self.train_cfg.sgd_lr if self.train_cfg.optimizer == "sgd" else self.train_cfg.adam_alpha
            self.model.optimizer.learning_rate.assign(_decayed_lr(self.rows, base, self.train_cfg.lr_decay))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        score = validation_score(self.model, self.val_ds, self.train_cfg.task, self.spacing_um)
        logs[self.metric_name] = score
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        improved = score > self.best
        if improved:
            self.best, self.best_epoch = score, epoch + 1
            modelio.save_model_folder(
                self.out, self.model, task=self.train_cfg.task, model_cfg=self.model_cfg,
                spacing_um=self.spacing_um, train_cfg=self.train_cfg, data_cfg=self.data_cfg,
                metrics={"best_epoch": self.best_epoch, self.metric_name: score},
            )
        if self.prev is not None and score < self.prev:
            self.model.optimizer.learning_rate.assign(lr * self.train_cfg.lr_decay)
        self.prev = score
        self.rows.append({"epoch": epoch + 1, "loss": f"{logs.get('loss', float('nan')):.6g}",
                          "metric": f"{score:.6f}", "lr": f"{lr:.6g}", "best": int(improved)})
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


def train(data_root: str | os.PathLike, out_dir: str | os.PathLike, model_cfg: ModelConfig,
          train_cfg: TrainConfig, data_cfg: DataConfig, *, distribute: bool = False,
          verbose: int = 1) -> TrainResult:
    """Train one network (NSN or NDN task) and save its best epoch as a model folder in ``out_dir``.

    An interrupted run resumes from its last finished epoch when called again with the
    same ``out_dir``.
    """
    policy = resolve_precision(train_cfg.precision)  # before any work: mixed_float16 needs a GPU
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise OutputError(f"{out}: output folder is not writable")
    specs, spacing_um = collect_volumes(data_root, train_cfg.task, data_cfg)
    train_specs, val_specs = split_volumes(specs, data_cfg.val_fraction, train_cfg.seed)
    log.info("%d training and %d validation volume(s); network grid %.3g um isotropic; precision %s",
             len(train_specs), len(val_specs), spacing_um, policy)

    resume_dir = out / ".resume"
    rows = read_epochs(out / "epochs.csv") if resume_dir.exists() else []
    meta = resume_dir / "training_metadata.json"
    done_epochs = int(read_json(meta).get("epoch", 0)) if meta.exists() else 0
    rows = rows[:done_epochs]  # the CSV row is written just before the backup: drop an unbacked one
    if done_epochs:
        log.info("resuming after epoch %d", done_epochs)

    keras.utils.set_random_seed(train_cfg.seed)
    diameter_um = data_cfg.ndn_diameter * spacing_um
    steps = max(1, len(train_specs) * train_cfg.crops_per_volume // train_cfg.batch_size)
    train_ds = training_dataset(train_specs, data_cfg, batch_size=train_cfg.batch_size,
                                seed=train_cfg.seed, ndn_diameter_um=diameter_um)
    train_ds = train_ds.skip(done_epochs * steps)
    val_ds = validation_dataset(val_specs, data_cfg, multiple=model_cfg.multiple, ndn_diameter_um=diameter_um)

    with _strategy(distribute).scope():
        model = build_compiled(model_cfg, train_cfg, policy)
    callback = EpochCallback(out=out, val_ds=val_ds, model_cfg=model_cfg, train_cfg=train_cfg,
                             data_cfg=data_cfg, spacing_um=spacing_um, rows=rows)
    backup = keras.callbacks.BackupAndRestore(str(resume_dir), save_freq="epoch", delete_checkpoint=True)
    model.fit(train_ds, epochs=train_cfg.epochs, steps_per_epoch=steps,
              callbacks=[callback, backup], verbose=verbose, shuffle=False)
    return TrainResult(folder=out, metric_name=train_cfg.metric_name, best_epoch=callback.best_epoch,
                       best_metric=callback.best, history=callback.rows)
