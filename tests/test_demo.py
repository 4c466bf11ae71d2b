"""`qca-tf demo` runs the whole chain, reports counts that agree with its own files and
ground truth, explains its metrics and names every output (fast test, on a smaller
training set); and at its defaults counts every nucleus right at every test time point
(``-m slow``: the default demo takes several CPU minutes, too long for the default run;
``benchmarks/bench_demo.py`` prints the same with its time)."""
from __future__ import annotations

import json
import re

import pytest
import tifffile
from click.testing import CliRunner

from qca_tf import demo
from qca_tf.cli import main


def _count(path) -> int:
    return len(set(tifffile.imread(path).ravel().tolist()) - {0})


def test_demo_short_budget_reports_what_it_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "TRAIN_EMBRYOS", 1)  # 3 training volumes instead of 12: this test checks the
    monkeypatch.setattr(demo, "TRAIN_TIMEPOINTS", 3)  # reporting, the slow one below the accuracy
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "2", "--timepoints", "3"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    labels = sorted((out / "data" / "test" / "labels").glob("*.tif"))
    assert [p.stem for p in labels] == ["t0000", "t0001", "t0002"]
    truth = [_count(p) for p in labels]
    predicted = [_count(out / "prediction" / "labels" / p.name) for p in labels]
    assert truth[-1] > truth[0]  # the test embryo divides within the series
    # the printed counts are the files' counts, and the verdict agrees with them
    line = next(ln for ln in res.output.splitlines() if "predicted/true" in ln)
    assert re.findall(r"t\d{4} (\d+)/(\d+)", line) == [(str(p), str(t)) for p, t in zip(predicted, truth)]
    wrong = sum(p != t for p, t in zip(predicted, truth))
    assert ("(all right)" in line) == (wrong == 0)
    if wrong:
        assert f"(wrong at {wrong} time point(s))" in line
    # every metric explained with what a good value is, every output named and there
    for fragment in ("IoU", "SEG", "MUCov", "detection F", "good: above"):
        assert fragment in res.output
    for path in ("model", "prediction/labels", "prediction/criteria.csv", "prediction/nuclei.csv",
                 "prediction/plots/timeseries.png", "prediction/plots/quicklook", "prediction/run.json",
                 "evaluation.json", "data/train", "data/test"):
        assert str(out / path) in res.output, path
        assert (out / path).exists(), path
    for path in ("model/qcanet.json", "model/nsn/weights.h5", "model/ndn/weights.h5"):
        assert (out / path).exists(), path
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [r["name"] for r in evaluation["per_timepoint"]] == [p.stem for p in labels]
    printed = float(re.search(r"IoU\s+([0-9.]+)", res.output).group(1))
    assert abs(printed - evaluation["summary"]["iou"]["mean"]) < 5e-4


@pytest.mark.slow
def test_default_demo_counts_every_nucleus_at_every_time_point(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    labels = sorted((out / "data" / "test" / "labels").glob("*.tif"))
    truth = [_count(p) for p in labels]
    predicted = [_count(out / "prediction" / "labels" / p.name) for p in labels]
    assert len(labels) == 6 and truth[-1] > truth[0]  # the test embryo divides (twice)
    assert predicted == truth
    assert "(all right)" in next(ln for ln in res.output.splitlines() if "predicted/true" in ln)
    assert json.loads((out / "evaluation.json").read_text())["summary"]["det_f1"]["mean"] > 0.9
