"""Search benchmark on the built-in synthetic embryo (real training, default trial budget).

Prints, for TPE and random sampling over paired seeds with the same trial budget, the
best-so-far value per trial and the median best of each sampler; the share of epochs
saved by pruning (epochs run / epochs of unpruned trials); the resident memory of the
worker process after trials 2, 10 and 20 (workers are replaced every 10 trials, so
trial 10 is the last of the first process and trial 20 the 10th of a fresh one).
Writes a PNG of the curves. ``--patch``, ``--crops-per-volume`` and ``--max-params``
shrink each trial for a 2-core CPU (the search's own options of those names).

    python benchmarks/bench_search.py --network nsn --trials 20 --seeds 3 --epochs 4 --out /tmp/bench_search
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from optuna.trial import TrialState

from qca_tf.search.run import search
from qca_tf.search.settings import SearchSettings


def curve(study) -> list[float]:
    best, out = float("-inf"), []
    for t in sorted(study.get_trials(), key=lambda t: t.number):
        if t.state == TrialState.COMPLETE:
            best = max(best, t.value)
        out.append(best if best > float("-inf") else float("nan"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="nsn")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--patch", type=int, default=32, help="training crop side (voxels)")
    ap.add_argument("--crops-per-volume", type=int, default=4)
    ap.add_argument("--max-params", type=int, default=2_000_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_search"))
    a = ap.parse_args()
    print(f"{a.network}: {a.trials} trials x {a.seeds} seeds x (tpe, random), {a.epochs} epochs, crops "
          f"{a.patch}^3 x {a.crops_per_volume} per volume, max {a.max_params} weights")
    curves: dict[str, list[list[float]]] = {"tpe": [], "random": []}
    epochs_run = epochs_full = 0
    rss = []
    for seed in range(a.seeds):
        for sampler in ("tpe", "random"):
            cfg = SearchSettings(network=a.network, out=str(a.out / f"{sampler}-{seed}"), data="", trials=a.trials,
                                 study=a.network, sampler=sampler, epochs=a.epochs, seed=seed, warm_start=False,
                                 patch=(a.patch,) * 3, crops_per_volume=a.crops_per_volume, max_params=a.max_params)
            t0 = time.perf_counter()
            study = search(cfg, echo=lambda s: None, progress=False, outputs=False)
            c = curve(study)
            curves[sampler].append(c)
            print(f"{sampler:>6} seed {seed}: best so far " + " ".join(f"{v:.3f}" for v in c)
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
            for t in study.get_trials():
                n = len(t.user_attrs.get("epoch_values", []))
                if n:
                    epochs_run += n
                    epochs_full += a.epochs
            by_num = {t.number: t.user_attrs.get("rss_mb") for t in study.get_trials()}
            rss.append((by_num.get(1), by_num.get(9), by_num.get(19)))
    for sampler, cs in curves.items():
        print(f"median best {sampler}: {statistics.median(c[-1] for c in cs):.4f}")
    if epochs_full:
        print(f"epochs run by trained trials: {epochs_run} of {epochs_full} ({1 - epochs_run / epochs_full:.0%} saved by pruning)")
    print("worker RSS MB after trial 2 / 10 / 20 (per study): " + ", ".join(" / ".join(str(v) for v in r) for r in rss))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler, color in (("tpe", "C0"), ("random", "C1")):
        for i, c in enumerate(curves[sampler]):
            ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.7, label=sampler if i == 0 else None)
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation metric so far")
    ax.legend()
    fig.savefig(a.out / "tpe_vs_random.png", dpi=100, bbox_inches="tight")
    print(f"wrote {a.out / 'tpe_vs_random.png'}")


if __name__ == "__main__":
    main()
