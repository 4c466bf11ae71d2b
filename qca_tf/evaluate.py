"""``qca-tf evaluate``: compare predicted label images with ground truth, per time point.

Pairs time points by name (two single files are paired whatever their names), reads
both as label images (a ground truth holding a single foreground value is a mask:
its instances are its 6-connected components), and applies
:func:`qca_tf.metrics.evaluate`.
"""
from __future__ import annotations

import logging
import os

import numpy as np
from scipy import ndimage

from . import io, metrics
from .errors import InputError

log = logging.getLogger(__name__)


def pair_timepoints(pred: str | os.PathLike, gt: str | os.PathLike) -> list[tuple[str, io.TimePoint, io.TimePoint]]:
    """(name, prediction, ground truth) for every ground-truth time point; a missing prediction is an error."""
    preds, gts = io.read_series(pred), io.read_series(gt)
    if len(preds) == 1 and len(gts) == 1:
        return [(gts[0].name, preds[0], gts[0])]
    by_name = {tp.name: tp for tp in preds}
    missing = [tp.name for tp in gts if tp.name not in by_name]
    if missing:
        raise InputError(f"{pred}: no prediction for ground-truth time point(s) {', '.join(missing[:5])}")
    return [(tp.name, by_name[tp.name], tp) for tp in gts]


def as_instances(labels: np.ndarray) -> np.ndarray:
    """Instance labels as stored, or the 6-connected components of a one-valued mask."""
    values = np.unique(labels)
    if values.size == 2 and values[0] == 0:
        return ndimage.label(labels > 0)[0]
    return labels


def evaluate_series(pred: str | os.PathLike, gt: str | os.PathLike, *, voxel_size: io.VoxelSize | None = None,
                    match_distance_um: float = 3.0) -> tuple[list[dict], dict]:
    """Per-time-point metric rows (with ``name``) and their mean/sd summary."""
    rows = []
    for name, p, g in pair_timepoints(pred, gt):
        voxel = io.voxel_size_of(g.source, voxel_size)
        pl, gl = p.load(), g.load()
        if pl.shape != gl.shape:
            raise InputError(f"{p.source}: prediction shape {pl.shape} differs from ground truth {g.source} {gl.shape}")
        row = metrics.evaluate(as_instances(pl), as_instances(gl), voxel.zyx, match_distance_um)
        rows.append({"name": name, **row})
        log.debug("%s: %s", name, row)
    return rows, metrics.summarize([{k: v for k, v in r.items() if k != "name"} for r in rows])
