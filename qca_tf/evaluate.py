"""``qca-tf evaluate``: compare predicted label images with ground truth, per time point.

Pairs time points by name (two single files are paired whatever their names), reads
both as label images (a ground truth holding a single foreground value is a mask:
its instances are its 6-connected components), and applies
:func:`qca_tf.metrics.evaluate`.

IoU, Dice, SEG, MUCov and the instance matching need no voxel size. Only the
detection scores (centres matched within a distance in micrometres) do: they use
``--voxel-size``, else the ground truth's (or the prediction's) metadata; with
neither they are not computed (None), and :attr:`Evaluation.detection_note` says why.

The evaluation JSON (:meth:`Evaluation.payload`) has one shape whoever writes it
(``qca-tf evaluate --json`` and the demo's ``evaluation.json``)::

    {"format": "qca_tf.evaluation/1", "pred": ..., "gt": ...,
     "match_distance_um": 3.0, "detection": "computed" | "<why not>",
     "per_timepoint": [{"name": ..., "voxel_size_um": [x, y, z] | null, "iou": ..., ...}],
     "summary": {metric: {"mean": ..., "sd": ...}}, "mean": {metric: mean}}
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from . import io, metrics
from .config import write_json_atomic
from .errors import InputError

log = logging.getLogger(__name__)

EVALUATION_FORMAT = "qca_tf.evaluation/1"


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


@dataclass
class Evaluation:
    """Metric rows per time point (with ``name`` and ``voxel_size_um``), their mean/sd
    ``summary``, and why detection was not computed (None when it was)."""

    pred: Path
    gt: Path
    match_distance_um: float
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    detection_note: str | None = None

    def payload(self) -> dict[str, Any]:
        """The evaluation JSON (see the module docstring)."""
        return {"format": EVALUATION_FORMAT, "pred": str(self.pred), "gt": str(self.gt),
                "match_distance_um": self.match_distance_um,
                "detection": self.detection_note or "computed",
                "per_timepoint": self.rows, "summary": self.summary,
                "mean": {k: v["mean"] for k, v in self.summary.items()}}

    def write_json(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.payload())


def _voxel_size(p: io.TimePoint, g: io.TimePoint, override: io.VoxelSize | None) -> io.VoxelSize | None:
    if override is not None:
        return override
    return io.read_voxel_size(g.source) or io.read_voxel_size(p.source)


def _label_volume(tp: io.TimePoint) -> np.ndarray:
    volume = tp.load()
    if volume.dtype.kind not in "biu" and not np.all(np.mod(volume, 1) == 0):
        raise InputError(f"{tp.source}: a label image must hold integers, got dtype {volume.dtype}")
    return volume


def evaluate_series(pred: str | os.PathLike, gt: str | os.PathLike, *, voxel_size: io.VoxelSize | None = None,
                    match_distance_um: float = metrics.MATCH_DISTANCE_UM) -> Evaluation:
    """Evaluate every ground-truth time point against its prediction (see the module docstring)."""
    rows = []
    missing_voxel: list[str] = []
    for name, p, g in pair_timepoints(pred, gt):
        voxel = _voxel_size(p, g, voxel_size)
        pl, gl = _label_volume(p), _label_volume(g)
        if pl.shape != gl.shape:
            raise InputError(f"{p.source}: prediction shape {pl.shape} differs from ground truth {g.source} {gl.shape}")
        if voxel is None:
            missing_voxel.append(str(g.source))
        row = metrics.evaluate(as_instances(pl), as_instances(gl), None if voxel is None else voxel.zyx,
                               match_distance_um)
        rows.append({"name": name, "voxel_size_um": None if voxel is None else [voxel.x, voxel.y, voxel.z], **row})
        log.debug("%s: %s", name, row)
    note = None
    if missing_voxel:
        note = (f"detection P/R/F not computed for {len(missing_voxel)} time point(s): no voxel size in "
                f"{missing_voxel[0]}{' and others' if len(missing_voxel) > 1 else ''}; "
                "give --voxel-size X Y Z (micrometres) to match centres within "
                f"{match_distance_um:g} um")
        log.debug("%s", note)
    summary = metrics.summarize([{k: v for k, v in r.items() if k not in ("name", "voxel_size_um")} for r in rows])
    return Evaluation(Path(pred), Path(gt), float(match_distance_um), rows, summary, note)
