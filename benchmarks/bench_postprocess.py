"""Post-processing, criteria, quick-look and writing: time bounded by the volume, not by
the number of objects (issue 10).

One synthetic embryo (51 x 120 x 122 voxels, 0.8 x 0.8 x 1.75 um, 16 nuclei; network
grid 112 x 120 x 122 at 0.8 um) is processed as ``qca-tf predict`` processes a time point
after the networks: watershed on the network grid (NSN/NDN "probabilities" made from the
ground truth), labels back to the stored grid, labels TIFF, criteria table, quick-look
PNG and CSV. Two volumes side by side in one run:

- ``clean``: the 16 nuclei;
- ``spurious``: the same plus thousands of small specks in both masks outside the nuclei
  (a weak network's output: each speck is its own NDN marker and becomes an instance).

Three variants for each volume:

- ``before``: the previous code (kept below for this comparison only): a smoothed
  marching-cubes surface for every object, a number drawn for every label, no minimum
  volume;
- ``after, --min-volume 0``: the current code with every object kept;
- ``after (default)``: the current code with its default minimum volume (20 um^3).

Run from the repository root::

    .venv/bin/python benchmarks/bench_postprocess.py [--specks 4000] [--repeats 1] [--skip-before]

Prints one table (seconds per step) and the spurious/clean ratio of each variant.
"""
from __future__ import annotations

import argparse
import logging
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure
from scipy import ndimage

from qca_tf import criteria, io, plots, postprocess, preprocess, synthetic
from qca_tf.config import PostprocessConfig

VOXEL = io.VoxelSize(0.8, 0.8, 1.75)
SPACING = 0.8


# ----------------------------------------------------------------- the previous code, for comparison only


def _before_nucleus_table(labels, voxel_size, image=None, timepoint=0):
    """criteria.nucleus_table as it was: every object cropped and meshed (Taubin-smoothed)."""
    spacing = np.asarray(voxel_size.zyx, dtype=np.float64)
    voxel_volume = float(np.prod(spacing))
    rows = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = labels[box] == label
        index = np.nonzero(crop)
        volume = len(index[0]) * voxel_volume
        area = criteria.surface_area(crop, spacing)
        centre = [float((i.mean() + s.start) * d) for i, s, d in zip(index, box, spacing)]
        rows.append({"timepoint": timepoint, "label": label, "volume_um3": volume, "surface_um2": area,
                     "equivalent_diameter_um": (6.0 * volume / math.pi) ** (1.0 / 3.0),
                     "sphericity": math.pi ** (1.0 / 3.0) * (6.0 * volume) ** (2.0 / 3.0) / area if area else None,
                     "centroid_z_um": centre[0], "centroid_y_um": centre[1], "centroid_x_um": centre[2],
                     "mean_intensity": float(image[box][crop].mean()) if image is not None else None})
    return rows


def _before_quicklook(image, labels, voxel_size, out_png, title=""):
    """plots.quicklook_figure as it was: the volume's percentiles, a number for every label."""
    from qca_tf.targets import centroids

    image = np.asarray(image, dtype=np.float32)
    vz, vy, vx = voxel_size.zyx
    nz, ny, nx = labels.shape
    ids, centres = centroids(labels)
    vmin, vmax = np.percentile(image, (0.5, 99.8))
    fig = Figure(figsize=(7.0, min(max(7.0 * (ny * vy + nz * vz) / (nx * vx) + 1.2, 3.0), 14.0)), dpi=plots.DPI,
                 layout="constrained")
    grid = fig.add_gridspec(2, 1, height_ratios=[ny * vy, nz * vz])
    cz, cy, cx = centres.reshape(-1, 3).T
    for row, axis, spacing, n, vertical in ((0, 0, vy, ny, cy), (1, 1, vz, nz, cz)):
        ax = fig.add_subplot(grid[row])
        extent = (-0.5 * vx, (nx - 0.5) * vx, (n - 0.5) * spacing, -0.5 * spacing)
        ax.imshow(image.max(axis=axis), cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        ax.imshow(plots.outline_rgba(labels.max(axis=axis)), extent=extent, interpolation="nearest")
        for label, c_vertical, c_x in zip(ids, vertical, cx):
            ax.text(c_x * vx, c_vertical * spacing, str(int(label)), color=plots.label_colour(int(label)),
                    fontsize=7, ha="center", va="center",
                    path_effects=[patheffects.withStroke(linewidth=1.5, foreground="black")])
        ax.set_aspect("equal")
    fig.suptitle(title)
    plots.save_png_atomic(fig, out_png)


# ----------------------------------------------------------------- one time point, as predict does it


def make_volumes(specks: int, seed: int):
    """(raw image, NSN prob, NDN prob) on the stored and network grids, for the clean and
    the spurious volume."""
    cfg = synthetic.SynthConfig(shape=(51, 120, 122), voxel_size=(VOXEL.x, VOXEL.y, VOXEL.z), n_nuclei=16,
                                radius_um=(4.0, 5.5), touching_pairs=2, polar_bodies=1, timepoints=1, seed=seed)
    tp = synthetic.make_series(cfg)[0]
    factors = preprocess.zoom_factors(VOXEL, SPACING)
    nsn = preprocess.resample(tp.nsn > 0, factors, order=0) > 0
    ndn = preprocess.resample(tp.ndn > 0, factors, order=0) > 0
    clean = (nsn.astype(np.float32) * 0.9, ndn.astype(np.float32) * 0.9)
    rng = np.random.default_rng(seed)
    away = ndimage.binary_dilation(nsn, iterations=2)
    candidates = np.flatnonzero(~away)
    picks = rng.choice(candidates, specks, replace=False)
    speck = np.zeros(nsn.shape, bool)
    speck.ravel()[picks] = True
    speck = ndimage.binary_dilation(speck, structure=ndimage.generate_binary_structure(3, 1)) & ~away
    spurious = (np.where(speck, 0.9, clean[0]).astype(np.float32), np.where(speck, 0.9, clean[1]).astype(np.float32))
    return tp.image, {"clean": clean, "spurious": spurious}


def process(raw, nsn_prob, ndn_prob, out: Path, variant: str) -> dict[str, float]:
    """Seconds per step of one time point; the number of objects written under 'objects'."""
    cfg = {"before": PostprocessConfig(min_volume_um3=0.0, marker_gap_um=0.0),  # the reference rule, as then
           "after, --min-volume 0": PostprocessConfig(min_volume_um3=0.0)}.get(variant, PostprocessConfig())
    times = {}
    t = time.perf_counter()
    labels = postprocess.instances_from_probabilities(nsn_prob, ndn_prob, cfg, (SPACING,) * 3)
    labels = postprocess.relabel_consecutive(preprocess.resize_labels(labels, raw.shape)).astype(np.uint16)
    times["watershed"] = time.perf_counter() - t
    t = time.perf_counter()
    io.write_stack(out / "labels.tif", labels, VOXEL)
    times["labels tif"] = time.perf_counter() - t
    t = time.perf_counter()
    table = _before_nucleus_table if variant == "before" else criteria.nucleus_table
    rows = table(labels, VOXEL, image=raw)
    times["criteria"] = time.perf_counter() - t
    t = time.perf_counter()
    title = f"{int(labels.max())} objects"
    if variant == "before":
        _before_quicklook(raw, labels, VOXEL, out / "quicklook.png", title)
    else:
        plots.plot_quicklook(raw, labels, out / "quicklook.png", VOXEL, title)
    times["quick-look"] = time.perf_counter() - t
    t = time.perf_counter()
    criteria.write_csv(out / "nuclei.csv", rows, criteria.NUCLEUS_FIELDS)
    times["csv"] = time.perf_counter() - t
    times["total"] = sum(times.values())
    times["objects"] = int(labels.max())
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specks", type=int, default=4000, help="spurious specks added (default 4000)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell; the fastest is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-before", action="store_true", help="do not time the previous code")
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs (quick-looks) in this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"# {cpu}; python {platform.python_version()}; specks {args.specks}; best of {args.repeats}")
    raw, volumes = make_volumes(args.specks, args.seed)
    variants = (["before"] if not args.skip_before else []) + ["after, --min-volume 0", "after (default)"]
    steps = ["watershed", "labels tif", "criteria", "quick-look", "csv", "total"]
    results: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for variant in variants:
            for name, (nsn, ndn) in volumes.items():
                out = root / f"{variant.split()[0].strip(',')}-{'all' if '0' in variant else 'min'}-{name}"
                out.mkdir(parents=True, exist_ok=True)
                runs = [process(raw, nsn, ndn, out, variant) for _ in range(args.repeats)]
                results[(variant, name)] = {k: min(r[k] for r in runs) for k in runs[0]}
                print(f"  done: {variant:<22} {name:<9} {results[(variant, name)]['total']:.2f} s",
                      file=sys.stderr)
    header = f"{'variant':<22} {'volume':<9} {'objects':>7} " + " ".join(f"{s:>10}" for s in steps)
    print(header)
    for (variant, name), r in results.items():
        print(f"{variant:<22} {name:<9} {r['objects']:>7d} " + " ".join(f"{r[s]:>10.3f}" for s in steps))
    print()
    for variant in variants:
        clean, spurious = results[(variant, "clean")], results[(variant, "spurious")]
        print(f"{variant:<22} spurious / clean total time: {spurious['total'] / clean['total']:.2f}x "
              f"({spurious['objects']} vs {clean['objects']} objects)")
    if not args.skip_before:
        print(f"spurious volume, before / after (default): "
              f"{results[('before', 'spurious')]['total'] / results[('after (default)', 'spurious')]['total']:.1f}x; "
              f"before / after with --min-volume 0: "
              f"{results[('before', 'spurious')]['total'] / results[('after, --min-volume 0', 'spurious')]['total']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
