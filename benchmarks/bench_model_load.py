"""Model-folder load time: format 1 (``model.keras``, optimiser state included) against
format 2 (``weights.h5``, weights only; float32 and float16), side by side in one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_model_load.py [--preset ndn] [--repeats 2]

The network is the preset with He-normal weights and an Adam optimiser whose state has
been built (the same size as after training), so ``model.keras`` is as large as one
written by ``qca-tf train`` before format 2. Each load rebuilds the network from
config.json and reads the weights, as ``qca-tf predict`` does. Figures go to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="ndn", choices=["nsn", "ndn", "unet3d"])
    p.add_argument("--repeats", type=int, default=2, help="loads per format, interleaved (min reported)")
    args = p.parse_args(argv)

    import keras

    from qca_tf import __version__, config, modelio
    from qca_tf.models import build_unet

    cfg = config.preset(args.preset)
    keras.utils.set_random_seed(0)
    model = build_unet(cfg)
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    model.optimizer.build(model.trainable_variables)  # Adam moments: the state a training run saves
    n_params = model.count_params()
    with tempfile.TemporaryDirectory(prefix="bench-load-", dir=os.environ.get("TMPDIR")) as tmp_name:
        tmp = Path(tmp_name)
        folders = {"format 1 (model.keras)": tmp / "v1", "format 2 (weights.h5)": tmp / "v2",
                   "format 2, float16": tmp / "v2half"}
        t0 = time.perf_counter()
        folders["format 1 (model.keras)"].mkdir()
        model.save(folders["format 1 (model.keras)"] / modelio.KERAS_NAME)
        info = {"format": "qca_tf.model/1", "task": "ndn", "model": config.to_dict(cfg), "train": None,
                "data": None, "spacing_um": 0.8, "metrics": {}, "qca_tf_version": __version__}
        config.write_json_atomic(folders["format 1 (model.keras)"] / modelio.CONFIG_NAME, info)
        save = {"format 1 (model.keras)": time.perf_counter() - t0}
        for name, half in (("format 2 (weights.h5)", False), ("format 2, float16", True)):
            t0 = time.perf_counter()
            modelio.save_model_folder(folders[name], model, task="ndn", model_cfg=cfg, spacing_um=0.8, half=half)
            save[name] = time.perf_counter() - t0
        del model
        keras.backend.clear_session()
        # one untimed build, so TensorFlow's one-off start-up is in neither figure
        build_unet(cfg)
        keras.backend.clear_session()
        loads: dict[str, list[float]] = {name: [] for name in folders}
        for _ in range(args.repeats):
            for name, folder in folders.items():
                t0 = time.perf_counter()
                modelio.load_model_folder(folder)
                loads[name].append(time.perf_counter() - t0)
                keras.backend.clear_session()
        rows = {name: {"size_mb": folder_mb(folder), "save_s": save[name], "load_s": loads[name],
                       "load_min_s": min(loads[name])} for name, folder in folders.items()}
    base = rows["format 1 (model.keras)"]["load_min_s"]
    print(f"# bench_model_load: {args.preset} preset, {n_params / 1e6:.1f} M parameters, "
          f"keras {keras.__version__}, cpus {os.cpu_count()}")
    print(f"{'folder':26} {'MB':>8} {'save s':>7} {'load s (min)':>12} {'all loads s':>20} {'old/new':>7}")
    for name, r in rows.items():
        loads_txt = " ".join(f"{v:.2f}" for v in r["load_s"])
        print(f"{name:26} {r['size_mb']:8.1f} {r['save_s']:7.2f} {r['load_min_s']:12.2f} {loads_txt:>20} "
              f"{base / r['load_min_s']:7.1f}")
    print(json.dumps({"preset": args.preset, "parameters": n_params, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
