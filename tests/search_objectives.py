"""Cheap deterministic objectives for the search's storage/worker tests (run inside the
worker processes: the tests put this folder on PYTHONPATH). The value is a smooth function
of the parameters, so samplers, pruning and resume are exercised without training."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from qca_tf.search.worker import Outcome


def score(params: dict) -> float:
    lr = params.get("adam_alpha", params.get("sgd_lr", 1e-3))
    return 1.0 / (1.0 + (math.log10(lr) + 3.0) ** 2) - 0.01 * abs(params["depth"] - 2)


def quick(trial, params, trial_dir: Path) -> Outcome:
    """Two 'epochs' reported to the pruner; a marker file per call; sleeps QCA_TEST_SLEEP s."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / f"ran-{os.getpid()}").write_text("")
    barrier = int(os.environ.get("QCA_TEST_BARRIER", "0"))
    if barrier:  # wait (up to 300 s) until `barrier` worker processes are inside a trial
        folder = trial_dir.parent.parent / "barrier"
        folder.mkdir(exist_ok=True)
        (folder / str(os.getpid())).write_text("")
        end = time.time() + 300
        while len(list(folder.iterdir())) < barrier and time.time() < end:
            time.sleep(0.2)
    time.sleep(float(os.environ.get("QCA_TEST_SLEEP", "0.05")))
    if os.environ.get("QCA_TEST_HANG_TRIAL") == str(trial.number):
        (trial_dir / "hanging").write_text(str(os.getpid()))
        time.sleep(600)
    v = score(params)
    values = [v * 0.5, v]
    for i, x in enumerate(values):
        trial.report(x, i)
    return Outcome("COMPLETE", value=v, epochs=values)
