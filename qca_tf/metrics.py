"""Segmentation and detection metrics (DESIGN section 4), defined exactly.

Masks and label images are 3D (z, y, x); a voxel > 0 is foreground, label id 0 is
background and ids need not be consecutive. Conventions for empty inputs are stated
in each docstring: when both sides are empty every score is 1.0 (nothing to find,
nothing wrongly found); when only one side is empty the undefined ratios are 0.0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from .errors import InputError
from .config import MATCH_DISTANCE_UM
from .labels import as_label_image, centroids

logger = logging.getLogger(__name__)


def _same_shape(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    return pred, gt


# --------------------------------------------------------------------------- binary masks


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union TP / (TP + FP + FN) of the masks ``pred > 0`` and
    ``gt > 0`` (any equal shapes). Both empty: 1.0."""
    p, g = (a > 0 for a in _same_shape(pred, gt))
    union = int(np.count_nonzero(p | g))
    return float(np.count_nonzero(p & g) / union) if union else 1.0


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2 TP / (2 TP + FP + FN) of ``pred > 0`` and ``gt > 0``. Both empty: 1.0."""
    p, g = (a > 0 for a in _same_shape(pred, gt))
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    return float(2 * np.count_nonzero(p & g) / total) if total else 1.0


# --------------------------------------------------------------------------- instance overlaps


@dataclass(frozen=True)
class Overlaps:
    """All non-zero overlaps between GT and predicted instances.

    ``gt_ids`` (n_gt,), ``pred_ids`` (n_pred,) are the sorted ids; pair k overlaps GT
    instance ``gt_ids[pair_gt[k]]`` and prediction ``pred_ids[pair_pred[k]]`` with IoU
    ``pair_iou[k]``. Pairs that do not touch are absent (IoU 0).
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    pair_iou: np.ndarray

    @property
    def best_iou_per_gt(self) -> np.ndarray:
        """(n_gt,) best IoU of each GT instance with any prediction (0 if untouched)."""
        best = np.zeros(len(self.gt_ids))
        np.maximum.at(best, self.pair_gt, self.pair_iou)
        return best

    @property
    def best_iou_per_pred(self) -> np.ndarray:
        """(n_pred,) best IoU of each prediction with any GT instance (0 if untouched)."""
        best = np.zeros(len(self.pred_ids))
        np.maximum.at(best, self.pair_pred, self.pair_iou)
        return best


def overlaps(pred_labels: np.ndarray, gt_labels: np.ndarray) -> Overlaps:
    """The contingency table of two label images (z, y, x) in one pass over the voxels:
    instance sizes and the sizes of every (GT, prediction) intersection."""
    pred, gt = _same_shape(pred_labels, gt_labels)
    pred, gt = as_label_image("prediction", pred).ravel(), as_label_image("ground truth", gt).ravel()
    gt_ids, gt_sizes = np.unique(gt[gt > 0], return_counts=True)
    pred_ids, pred_sizes = np.unique(pred[pred > 0], return_counts=True)
    both = (gt > 0) & (pred > 0)
    gi = np.searchsorted(gt_ids, gt[both]).astype(np.int64)
    pi = np.searchsorted(pred_ids, pred[both]).astype(np.int64)
    codes, inter = np.unique(gi * max(len(pred_ids), 1) + pi, return_counts=True)
    pair_gt, pair_pred = codes // max(len(pred_ids), 1), codes % max(len(pred_ids), 1)
    pair_iou = inter / (gt_sizes[pair_gt] + pred_sizes[pair_pred] - inter)
    return Overlaps(gt_ids, pred_ids, pair_gt, pair_pred, pair_iou.astype(np.float64))


def _mean_best(best: np.ndarray, n_other: int) -> float:
    if len(best):
        return float(best.mean())
    return 1.0 if n_other == 0 else 0.0


def seg(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """SEG: mean over GT instances of the best IoU with any predicted instance
    (penalises misses and splits). Unlike the Cell Tracking Challenge SEG, which counts
    a match only when IoU > 0.5, this is the plain best IoU (DESIGN section 4).
    No GT instance: 1.0 if there is no prediction either, else 0.0."""
    ov = overlaps(pred_labels, gt_labels)
    return _mean_best(ov.best_iou_per_gt, len(ov.pred_ids))


def mucov(pred_labels: np.ndarray, gt_labels: np.ndarray) -> float:
    """MUCov: mean over predicted instances of the best IoU with any GT instance
    (penalises false positives and fusions). No prediction: 1.0 if there is no GT
    instance either, else 0.0."""
    ov = overlaps(pred_labels, gt_labels)
    return _mean_best(ov.best_iou_per_pred, len(ov.gt_ids))


# --------------------------------------------------------------------------- counts -> scores


def _scores(tp: int, n_pred: int, n_gt: int) -> dict[str, Any]:
    """tp/fp/fn, precision = tp/n_pred, recall = tp/n_gt, f1 = 2tp/(2tp+fp+fn).
    Both sides empty: precision = recall = f1 = 1.0; one side empty: the undefined ratio is 0.0."""
    fp, fn = n_pred - tp, n_gt - tp
    if n_pred == 0 and n_gt == 0:
        return {"tp": 0, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": tp / n_pred if n_pred else 0.0,
            "recall": tp / n_gt if n_gt else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn)}


def _assign(valid: np.ndarray, quality: np.ndarray) -> list[tuple[int, int]]:
    """Row/column pairs of a one-to-one assignment that first maximises the number of
    ``valid`` pairs, then the summed ``quality`` (in [0, 1]) among them (Hungarian)."""
    if valid.size == 0 or not valid.any():
        return []
    k = min(valid.shape)
    cost = -(valid.astype(np.float64)) - np.where(valid, quality, 0.0) / (2.0 * k)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if valid[r, c]]


# --------------------------------------------------------------------------- detection


def _points(name: str, points: Any) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 3))
    if array.ndim != 2:
        raise InputError(f"{name}: expected an (n, dims) array of centres, got shape {array.shape}")
    return array


def polar_kept(pred_labels: np.ndarray, gt_labels: np.ndarray, points_um: Any,
               spacing_zyx: Sequence[float]) -> dict[str, int]:
    """Where the polar bodies at ``points_um`` (N, 3; z, y, x in um, rounded to the nearest
    voxel) ended up in ``pred_labels`` (z, y, x): ``"kept"``, in a predicted object that
    has more than half its voxels outside the true nuclei of ``gt_labels``, i.e. counted
    as a nucleus of its own; ``"merged"``, in a predicted object that is mostly a true
    nucleus (that nucleus's mask grew over the polar body)."""
    pred, gt = _same_shape(pred_labels, gt_labels)
    pts = _points("points_um", points_um)
    if len(pts) and pts.shape[1] != pred.ndim:
        raise InputError(f"polar body centres: expected (n, {pred.ndim}) z, y, x points, got shape {pts.shape}")
    out = {"kept": 0, "merged": 0}
    if not len(pts):
        return out
    idx = np.clip(np.rint(pts / np.asarray(spacing_zyx, np.float64)).astype(int), 0, np.array(pred.shape) - 1)
    for k in pred[idx[:, 0], idx[:, 1], idx[:, 2]]:
        if k:
            own = pred == k
            out["kept" if np.count_nonzero(gt[own]) * 2 < np.count_nonzero(own) else "merged"] += 1
    return out


def match_centres(pred_centres_um: Any, gt_centres_um: Any, max_distance_um: float) -> list[tuple[int, int]]:
    """One-to-one matching of predicted and GT centres (n, 3), both in um: the Hungarian
    assignment that matches as many pairs within ``max_distance_um`` (inclusive) as
    possible and, among those, minimises the summed distance. Returns
    ``(pred_index, gt_index)`` pairs sorted by prediction index."""
    if not max_distance_um > 0:
        raise InputError(f"max_distance_um: {max_distance_um!r} must be > 0")
    pred, gt = _points("pred_centres_um", pred_centres_um), _points("gt_centres_um", gt_centres_um)
    if len(pred) == 0 or len(gt) == 0:
        return []
    if pred.shape[1] != gt.shape[1]:
        raise InputError(f"pred_centres_um has {pred.shape[1]} coordinates, gt_centres_um {gt.shape[1]}")
    distance = cdist(pred, gt)
    valid = distance <= max_distance_um
    return sorted(_assign(valid, 1.0 - distance / max_distance_um))


def detection_scores(pred_centres_um: Any, gt_centres_um: Any, max_distance_um: float) -> dict[str, Any]:
    """Detection tp, fp, fn, precision, recall, f1 from :func:`match_centres`.
    Both empty: precision = recall = f1 = 1.0; no prediction (or no GT): precision
    (or recall) and f1 are 0.0."""
    pred, gt = _points("pred_centres_um", pred_centres_um), _points("gt_centres_um", gt_centres_um)
    tp = len(match_centres(pred, gt, max_distance_um))
    return _scores(tp, len(pred), len(gt))


def _centres_um(labels: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    _, centres = centroids(labels)
    return centres * np.asarray(spacing_zyx, dtype=np.float64)


def detection_from_masks(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing_zyx: Sequence[float],
                         max_distance_um: float) -> dict[str, Any]:
    """Detection scores of two centre masks (z, y, x): the 6-connected components of
    each mask (> 0), their centroids in um (``spacing_zyx``), then :func:`detection_scores`."""
    pred, gt = _same_shape(pred_mask, gt_mask)
    pred_components, _ = ndimage.label(pred > 0)
    gt_components, _ = ndimage.label(gt > 0)
    return detection_scores(_centres_um(pred_components, spacing_zyx), _centres_um(gt_components, spacing_zyx),
                            max_distance_um)


# --------------------------------------------------------------------------- instance matching


def _matching(ov: Overlaps, threshold: float) -> dict[str, Any]:
    valid = ov.pair_iou >= threshold
    g, p, q = ov.pair_gt[valid], ov.pair_pred[valid], ov.pair_iou[valid]
    rows, g_local = np.unique(g, return_inverse=True)
    cols, p_local = np.unique(p, return_inverse=True)
    table = np.zeros((len(rows), len(cols)))
    table[g_local, p_local] = q
    tp = len(_assign(table > 0, table))
    scores = _scores(tp, len(ov.pred_ids), len(ov.gt_ids))
    denominator = scores["tp"] + scores["fp"] + scores["fn"]
    scores["ap"] = scores["tp"] / denominator if denominator else 1.0
    return scores


def instance_matching(pred_labels: np.ndarray, gt_labels: np.ndarray,
                      thresholds: Iterable[float] = (0.5, 0.75)) -> dict[float, dict[str, Any]]:
    """Per IoU threshold: a one-to-one matching (Hungarian on IoU; a pair counts when
    IoU >= threshold) and its tp, fp, fn, precision, recall, f1 and
    ap = tp / (tp + fp + fn) (StarDist's and Cellpose's "AP"). Both images empty: all
    scores 1.0; one empty: see :func:`detection_scores`."""
    ov = overlaps(pred_labels, gt_labels)
    result = {}
    for t in thresholds:
        if not 0 < t <= 1:
            raise InputError(f"IoU threshold {t!r} is not in (0, 1]")
        result[float(t)] = _matching(ov, float(t))
    return result


# --------------------------------------------------------------------------- all together


def evaluate(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing_zyx: Sequence[float] | None,
             match_distance_um: float = MATCH_DISTANCE_UM,
             thresholds: Iterable[float] = (0.5, 0.75)) -> dict[str, Any]:
    """All metrics of one time point as a flat dict: ``iou, dice, seg, mucov,
    det_precision, det_recall, det_f1`` (detection of the instance centroids in um,
    within ``match_distance_um``; None when ``spacing_zyx`` is None, i.e. the voxel size
    is unknown: the other metrics need none) and, per IoU threshold t, ``tp@t, fp@t,
    fn@t, precision@t, recall@t, f1@t, ap@t`` (e.g. ``f1@0.5``)."""
    pred, gt = _same_shape(pred_labels, gt_labels)
    pred, gt = as_label_image("prediction", pred), as_label_image("ground truth", gt)
    ov = overlaps(pred, gt)
    row: dict[str, Any] = {
        "iou": iou(pred, gt),
        "dice": dice(pred, gt),
        "seg": _mean_best(ov.best_iou_per_gt, len(ov.pred_ids)),
        "mucov": _mean_best(ov.best_iou_per_pred, len(ov.gt_ids)),
    }
    if spacing_zyx is None:
        row.update({f"det_{k}": None for k in ("precision", "recall", "f1")})
    else:
        det = detection_scores(_centres_um(pred, spacing_zyx), _centres_um(gt, spacing_zyx), match_distance_um)
        row.update({f"det_{k}": det[k] for k in ("precision", "recall", "f1")})
    for t in thresholds:
        if not 0 < t <= 1:
            raise InputError(f"IoU threshold {t!r} is not in (0, 1]")
        for key, value in _matching(ov, float(t)).items():
            row[f"{key}@{float(t):g}"] = value
    return row


def summarize(rows: list[dict[str, Any]], exclude: Sequence[str] = ("timepoint",)) -> dict[str, dict[str, float]]:
    """Mean and population sd (ddof=0) over ``rows`` (e.g. time points) of every numeric
    key (bools, strings, None and keys in ``exclude`` skipped):
    ``{key: {"mean": ..., "sd": ...}}``."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key in exclude or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                continue
            values.setdefault(key, []).append(float(value))
    return {key: {"mean": float(np.mean(v)), "sd": float(np.std(v))} for key, v in values.items()}
