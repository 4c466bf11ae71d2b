"""What a search leaves behind: trials.csv, best_params.json (for ``qca-tf train
--params``), best/ (model folder + SavedModel export), PNG plots, a table of the top trials."""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Callable

import optuna

from qca_tf.atomic import atomic_path
from qca_tf.config import to_dict, write_json_atomic

from . import settings as st
from .space import SearchSpace, configs_for

log = logging.getLogger(__name__)


def trial_dir(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:04d}"


def write_trials_csv(study: optuna.Study, path: Path, params: list[str], *, metrics: tuple[str, ...] = (),
                     attrs: tuple[str, ...] = ("seconds", "reason", "retry_of", "warm_start")) -> None:
    """One row per trial: number, state, ``params`` (empty when inactive), value, the
    ``metrics`` user attributes (6 significant digits) and the ``attrs`` user attributes
    (``reason``: the failure or prune reason)."""
    fields = ["number", "state", *params, "value", *metrics, *attrs]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for t in study.get_trials(deepcopy=False):
            a = t.user_attrs
            row = {"number": t.number, "state": t.state.name, "value": "" if t.value is None else f"{t.value:.6f}"}
            row.update({n: t.params.get(n, "") for n in params})
            row.update({k: "" if a.get(k) is None else f"{a[k]:.6g}" for k in metrics})
            row.update({k: (a.get("fail_reason") or a.get("prune_reason") or "") if k == "reason" else a.get(k, "")
                        for k in attrs})
            w.writerow(row)


def _has_tiebreak(study: optuna.Study) -> bool:
    """Whether any trial recorded a tie-break score (the objective records one for NDN)."""
    return any("tiebreak" in t.user_attrs for t in study.get_trials(deepcopy=False))


def top_table(study: optuna.Study, n: int = 5) -> str:
    from .worker import ranked_complete, tiebreak

    done = ranked_complete(study)[:n]
    if not done:
        return "no completed trial"
    ties = _has_tiebreak(study)  # NDN: centre-mask Dice breaks ties of F
    lines = [f"{'rank':>4} {'trial':>5} {'value':>7}{'  tie-break' if ties else ''}  parameters"]
    for rank, t in enumerate(done, 1):
        ps = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        tie = f"  {tiebreak(t):>9.4f}" if ties else ""
        lines.append(f"{rank:>4} {t.number:>5} {t.value:>7.4f}{tie}  {ps}")
    return "\n".join(lines)


def write_best(study: optuna.Study, cfg: st.SearchSettings, out: Path) -> Path | None:
    """OUT/best_params.json and OUT/best/ (the best trial's model folder + savedmodel/)."""
    from .worker import _base_train, ranked_complete

    complete = ranked_complete(study)
    if not complete:
        return None
    best = complete[0]
    model_cfg, train_cfg = configs_for(cfg.network, best.params, _base_train(cfg))
    write_json_atomic(out / "best_params.json", {
        "network": cfg.network, "trial": best.number, "value": best.value,
        "metric": train_cfg.metric_name, "params": best.params,
        "model": to_dict(model_cfg), "train": to_dict(train_cfg), "data": {"patch": list(cfg.patch)},
    })
    src = trial_dir(out, best.number)
    if not (src / "config.json").exists():
        return None
    dst = out / "best"
    tmp = out / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".resume"))
    if not cfg.objective:
        from qca_tf.runtime import init_tensorflow

        init_tensorflow()  # TensorFlow's start-up messages stay off the terminal (the workers do the same)
        from qca_tf.export import export_savedmodel

        export_savedmodel(tmp, tmp / "savedmodel")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def write_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optimisation history, parameter importances, parallel coordinates (PNG)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    written = []
    for name, fn in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances),
                     ("parallel_coordinates", ovm.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            path = plots / f"{name}.png"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
        except Exception as exc:  # e.g. too few completed trials for importances
            log.info("plot %s skipped: %s", name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            plt.close("all")
    return written


def write_outputs(study: optuna.Study, cfg: st.SearchSettings, space: SearchSpace,
                  echo: Callable[[str], None]) -> None:
    out = Path(cfg.out)
    write_trials_csv(study, out / "trials.csv", [p.name for p in space.params],
                     metrics=("tiebreak",) if _has_tiebreak(study) else ())
    best = write_best(study, cfg, out)
    write_plots(study, out)
    echo(top_table(study))
    if best is not None:
        echo(f"best model: {best}  parameters: {out / 'best_params.json'}  all trials: {out / 'trials.csv'}")
