"""Metrics on hand-built label images with answers computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from qca_tf.errors import InputError
from qca_tf.metrics import (detection_from_masks, detection_scores, dice, evaluate, instance_matching, iou,
                            match_centres, mucov, polar_kept, seg, summarize)

SHAPE = (4, 4, 24)


def bars(*spans, shape=SHAPE):
    """A label image of boxes covering all of z and y and x in [start, stop): (id, start, stop)."""
    labels = np.zeros(shape, np.int32)
    for label, start, stop in spans:
        labels[:, :, start:stop] = label
    return labels


def test_two_cubes_known_overlap():
    pred = np.zeros((8, 8, 8), np.int32)
    gt = np.zeros_like(pred)
    pred[0:4, 0:4, 0:4] = 1  # 64 voxels
    gt[2:6, 0:4, 0:4] = 1  # 64 voxels, 32 shared
    assert iou(pred, gt) == pytest.approx(32 / 96)
    assert dice(pred, gt) == pytest.approx(64 / 128)
    assert seg(pred, gt) == pytest.approx(1 / 3)
    assert mucov(pred, gt) == pytest.approx(1 / 3)


def test_binary_edge_cases():
    empty = np.zeros((3, 3, 3))
    full = np.ones((3, 3, 3))
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0
    assert iou(empty, full) == 0.0 and dice(full, empty) == 0.0
    assert iou(full, full) == 1.0
    with pytest.raises(InputError, match=r"prediction shape \(3, 3, 3\) differs from ground truth shape \(3, 3\)"):
        iou(full, np.ones((3, 3)))


def test_fused_prediction():
    gt = bars((1, 0, 4), (2, 6, 8))  # 64 and 32 voxels
    pred = bars((1, 0, 8))  # 128 voxels covering both: IoU 0.5 and 0.25
    assert seg(pred, gt) == pytest.approx((0.5 + 0.25) / 2)
    assert mucov(pred, gt) == pytest.approx(0.5)
    m = instance_matching(pred, gt)
    assert m[0.5] == pytest.approx({"tp": 1, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.5,
                                    "f1": 2 / 3, "ap": 0.5})
    assert m[0.75] == pytest.approx({"tp": 0, "fp": 1, "fn": 2, "precision": 0.0, "recall": 0.0,
                                     "f1": 0.0, "ap": 0.0})


def test_split_prediction():
    gt = bars((1, 0, 8))
    pred = bars((1, 0, 6), (2, 6, 8))  # IoU 0.75 and 0.25
    assert seg(pred, gt) == pytest.approx(0.75)
    assert mucov(pred, gt) == pytest.approx(0.5)
    m = instance_matching(pred, gt, thresholds=(0.75, 0.8))
    assert (m[0.75]["tp"], m[0.75]["fp"], m[0.75]["fn"]) == (1, 1, 0)  # IoU >= threshold counts
    assert m[0.75]["ap"] == pytest.approx(0.5)
    assert (m[0.8]["tp"], m[0.8]["fp"], m[0.8]["fn"]) == (0, 2, 1)


def test_non_consecutive_ids():
    gt = bars((200, 0, 4), (3, 6, 8))
    pred = bars((17, 0, 8))
    assert seg(pred, gt) == pytest.approx(0.375)
    assert mucov(pred, gt) == pytest.approx(0.5)
    relabelled = bars((1, 0, 4), (2, 6, 8))
    assert instance_matching(pred, gt) == instance_matching(bars((5, 0, 8)), relabelled)


def test_empty_prediction_and_empty_ground_truth():
    gt = bars((1, 0, 4), (2, 6, 8))
    empty = np.zeros(SHAPE, np.int32)
    assert seg(empty, gt) == 0.0 and mucov(empty, gt) == 0.0
    assert seg(gt, empty) == 0.0 and mucov(gt, empty) == 0.0
    assert seg(empty, empty) == 1.0 and mucov(empty, empty) == 1.0
    m = instance_matching(empty, gt)[0.5]
    assert m == {"tp": 0, "fp": 0, "fn": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0, "ap": 0.0}
    m = instance_matching(gt, empty)[0.5]
    assert (m["fp"], m["precision"], m["recall"], m["ap"]) == (2, 0.0, 0.0, 0.0)
    m = instance_matching(empty, empty)[0.75]
    assert m == {"tp": 0, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "ap": 1.0}


def test_threshold_matching_prefers_more_matches_over_greedy():
    """A=[0,10), B=[10,14); P=[3,14), Q=[0,3). IoU(P,A)=0.5, IoU(P,B)=4/11, IoU(Q,A)=0.3.
    Greedy by IoU takes P-A and stops at one match; the optimum is P-B + Q-A."""
    gt = bars((1, 0, 10), (2, 10, 14))
    pred = bars((7, 3, 14), (9, 0, 3))
    m = instance_matching(pred, gt, thresholds=(0.25, 0.5, 0.6))
    assert (m[0.25]["tp"], m[0.25]["fp"], m[0.25]["fn"]) == (2, 0, 0)
    assert (m[0.5]["tp"], m[0.5]["fp"], m[0.5]["fn"]) == (1, 1, 1)
    assert m[0.5]["ap"] == pytest.approx(1 / 3)
    assert m[0.6]["tp"] == 0
    with pytest.raises(InputError, match="threshold"):
        instance_matching(pred, gt, thresholds=(0.0,))


def test_match_centres_hungarian_beats_greedy():
    """gt at x=0 and 6, predictions at x=4 and 10, max 5 um: greedy nearest-neighbour
    first pairs 4-6 (2 um) and is left with 10-0 (too far); Hungarian pairs 4-0 and 10-6."""
    gt = np.array([[0, 0, 0.0], [0, 0, 6.0]])
    pred = np.array([[0, 0, 4.0], [0, 0, 10.0], [0, 50, 0.0]])
    assert match_centres(pred, gt, 5.0) == [(0, 0), (1, 1)]
    assert detection_scores(pred, gt, 5.0) == pytest.approx(
        {"tp": 2, "fp": 1, "fn": 0, "precision": 2 / 3, "recall": 1.0, "f1": 0.8})
    assert match_centres(pred, gt, 3.9) == [(0, 1)]  # only 4-6 is within 3.9 um


def test_match_centres_minimises_distance_among_full_matchings():
    assert match_centres([[0, 0, 0], [0, 0, 10]], [[0, 0, 9], [0, 0, 1]], 20.0) == [(0, 1), (1, 0)]


def test_detection_empty_conventions():
    none = np.zeros((0, 3))
    some = np.array([[1.0, 2.0, 3.0]])
    assert detection_scores(none, none, 3.0) == {"tp": 0, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0,
                                                 "f1": 1.0}
    assert detection_scores(none, some, 3.0) == {"tp": 0, "fp": 0, "fn": 1, "precision": 0.0, "recall": 0.0,
                                                 "f1": 0.0}
    assert detection_scores(some, [], 3.0)["fp"] == 1
    with pytest.raises(InputError, match="max_distance_um"):
        match_centres(some, some, 0.0)


def test_detection_from_masks_uses_physical_units():
    gt = np.zeros((20, 10, 10), bool)
    pred = np.zeros_like(gt)
    gt[4:7, 4:7, 4:7] = True  # centre z=5
    gt[14:17, 4:7, 4:7] = True  # centre z=15
    pred[6:9, 4:7, 4:7] = True  # centre z=7: 2 voxels from the first
    pred[0, 0, 0] = pred[0, 1, 1] = True  # two 6-disconnected specks: false positives
    near = detection_from_masks(pred, gt, (1.0, 1.0, 1.0), 3.0)
    assert (near["tp"], near["fp"], near["fn"]) == (1, 2, 1)
    far = detection_from_masks(pred, gt, (2.0, 1.0, 1.0), 3.0)  # now 4 um apart
    assert (far["tp"], far["fp"], far["fn"]) == (0, 3, 2)


def test_evaluate_flat_dict():
    gt = np.zeros((10, 10, 24), np.int32)
    gt[2:6, 2:6, 0:4] = 5
    gt[2:6, 2:6, 10:18] = 8
    pred = np.zeros_like(gt)
    pred[2:6, 2:6, 0:4] = 1  # perfect
    pred[2:6, 2:6, 10:16] = 2  # IoU 0.75, centre 1 voxel off
    row = evaluate(pred, gt, (1.0, 1.0, 1.0), match_distance_um=3.0)
    expected_keys = {"iou", "dice", "seg", "mucov", "det_precision", "det_recall", "det_f1"}
    for t in ("0.5", "0.75"):
        expected_keys |= {f"{k}@{t}" for k in ("tp", "fp", "fn", "precision", "recall", "f1", "ap")}
    assert set(row) == expected_keys
    assert row["iou"] == pytest.approx(160 / 192)
    assert row["dice"] == pytest.approx(320 / 352)
    assert row["seg"] == pytest.approx(0.875) and row["mucov"] == pytest.approx(0.875)
    assert row["det_f1"] == 1.0
    assert row["tp@0.75"] == 2 and row["ap@0.75"] == 1.0
    # centroids in um: with x spacing 3 um the second centre is 3 um off, z 0.5 um -> still matched
    assert evaluate(pred, gt, (0.5, 1.0, 3.0), 3.0)["det_f1"] == 1.0
    assert evaluate(pred, gt, (0.5, 1.0, 3.1), 3.0)["det_f1"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="prediction shape"):
        evaluate(pred[:-1], gt, (1.0, 1.0, 1.0))


def test_summarize():
    rows = [{"name": "a", "timepoint": 0, "iou": 0.5, "tp@0.5": 2, "flag": True},
            {"name": "b", "timepoint": 1, "iou": 1.0, "tp@0.5": 4, "flag": False}]
    s = summarize(rows)
    assert s == {"iou": {"mean": 0.75, "sd": 0.25}, "tp@0.5": {"mean": 3.0, "sd": 1.0}}
    assert summarize([]) == {}


def test_polar_kept_tells_an_own_object_from_a_grown_nucleus_mask():
    gt = np.zeros((10, 20, 20), np.uint16)
    gt[2:8, 2:8, 2:8] = 1          # a true nucleus
    pred = np.zeros_like(gt)
    pred[2:8, 2:8, 2:10] = 1       # the nucleus, its mask grown over a polar body at x = 9
    pred[4:6, 14:16, 14:16] = 2    # a polar body predicted as a nucleus of its own
    spacing = (2.0, 0.5, 0.5)
    points = [[4.0 * 2.0, 4.0 * 0.5, 9.0 * 0.5],     # in the grown mask
              [5.0 * 2.0, 14.6 * 0.5, 15.4 * 0.5],   # rounds into object 2
              [1.0 * 2.0, 18.0 * 0.5, 18.0 * 0.5],   # dropped (background)
              [9.9 * 2.0, 25.0, 25.0]]               # beyond the volume: clipped to the last voxel (background)
    assert polar_kept(pred, gt, points, spacing) == {"kept": 1, "merged": 1}
    assert polar_kept(pred, gt, np.zeros((0, 3)), spacing) == {"kept": 0, "merged": 0}
    # an object half inside a true nucleus and half outside counts as that nucleus (merged)
    pred2 = np.zeros_like(gt)
    pred2[2:8, 2:8, 5:11] = 3
    assert polar_kept(pred2, gt, [[4.0 * 2.0, 4.0 * 0.5, 10.0 * 0.5]], spacing) == {"kept": 0, "merged": 1}
    with pytest.raises(InputError):
        polar_kept(pred[:5], gt, points, spacing)
    with pytest.raises(InputError, match="z, y, x points"):
        polar_kept(pred, gt, [[1.0, 2.0]], spacing)
