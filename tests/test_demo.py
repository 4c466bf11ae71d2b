"""`qca-tf demo` runs the whole chain and reports where everything is."""
from __future__ import annotations

import json

from click.testing import CliRunner

from qca_tf.cli import main


def test_demo_short_budget(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--epochs", "2", "--timepoints", "2"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "IoU" in res.output and "detection F" in res.output
    for path in ("model/qcanet.json", "model/nsn/weights.h5", "model/ndn/weights.h5", "prediction/criteria.csv",
                 "prediction/nuclei.csv", "prediction/plots/timeseries.png", "prediction/labels/t0001.tif",
                 "data/test/labels/t0001.tif", "evaluation.json"):
        assert (out / path).exists(), path
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [r["name"] for r in evaluation["per_timepoint"]] == ["t0000", "t0001"]
    assert 0.0 <= evaluation["summary"]["iou"]["mean"] <= 1.0
