"""`qca-tf demo` (its default settings: what a new user runs) counts every nucleus right,
explains its metrics and names every output."""
from __future__ import annotations

import json
import re

import tifffile
from click.testing import CliRunner

from qca_tf.cli import main


def test_demo_counts_every_nucleus_at_every_time_point(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # the counts against the ground truth written by the demo itself
    labels = sorted((out / "data" / "test" / "labels").glob("*.tif"))
    truth = [len(set(tifffile.imread(p).ravel().tolist()) - {0}) for p in labels]
    predicted = [len(set(tifffile.imread(out / "prediction" / "labels" / p.name).ravel().tolist()) - {0})
                 for p in labels]
    assert len(labels) == 6 and truth[-1] > truth[0]  # the test embryo divides
    assert predicted == truth
    line = next(ln for ln in res.output.splitlines() if "predicted/true" in ln)
    assert re.findall(r"t\d{4} (\d+)/(\d+)", line) == [(str(p), str(t)) for p, t in zip(predicted, truth)]
    assert "(all right)" in line
    # every metric explained, every output named, and there
    for fragment in ("IoU", "SEG", "MUCov", "detection F", "good: above"):
        assert fragment in res.output
    for path in ("model", "prediction/labels", "prediction/criteria.csv", "prediction/nuclei.csv",
                 "prediction/plots/timeseries.png", "prediction/plots/quicklook", "prediction/run.json",
                 "evaluation.json", "data/train", "data/test"):
        assert str(out / path) in res.output, path
        assert (out / path).exists(), path
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [r["name"] for r in evaluation["per_timepoint"]] == [p.stem for p in labels]
    assert evaluation["summary"]["det_f1"]["mean"] > 0.9
