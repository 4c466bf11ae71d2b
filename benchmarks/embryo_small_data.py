"""Build the `embryo-small` training, validation and held-out test folders from the one
real annotated stack (the QCANet 8-cell example) plus synthetic embryos.

Hold-out (decided before any training, never tuned on): the real stack is cut at x = 52
(no nucleus crosses it). The left part (3 nuclei) trains; the right part (5 nuclei) is
the test, as recorded and as a simulated later stage ("late": the right part shrunk to
0.8x in every axis (smaller nuclei), dimmer, gamma-changed, bleached, noisier, and
attenuated with depth). ``--train-part right`` swaps the two (the cross-validation's
second fold: the right part trains, the left part is the test) and ``--train-part all``
trains on all 8 nuclei with no test (the two folds estimate how that recipe does on
nuclei it never saw). Validation uses a synthetic embryo and a dimmed copy of the
training part only. For the fine-tuning stage of
train_embryo_small.py: ``train_real/`` is the real training part alone,
``val_finetune/`` its dimmed copy (the fine-tuning's best epoch) and ``val_real/`` the
real kinds of shift, on which the networks and the thresholds are chosen: the dimmed
copy, the training part as a simulated later stage (another noise seed), and two mosaics
of the training part's nuclei scaled 0.55-1.0x and packed 1-2 voxels apart (seeds 60
and 61, the second through the later-stage simulation), so that the choice sees small
nuclei pressed against big ones; ``val_polar/`` holds polar bodies, which must not be
kept as nuclei (two mosaics with 3 each, ``add_polar_bodies``, and two synthetic embryos
with 2 each; their centres in ``val_polar/polar.json``).
Options change the training folder only (validation and test stay
fixed): ``--real-copies N`` samples the real part N times as often, ``--soft-edge LOW
HIGH`` gives the synthetic training nuclei the real annotation's soft intensity edge,
``--late-synth N`` adds N synthetic later-stage embryos (16 smaller nuclei) to train/
(and one, another seed, to val_real/), ``--mosaics N`` adds N mosaics of the training
part's nuclei (seeds 40 upwards, ``real_mosaic``) to train/, ``--mosaic-polar N`` puts N
polar bodies beside the nuclei of each.

    python benchmarks/embryo_small_data.py OUT [--real DIR] [--real-copies N] [--soft-edge LOW HIGH]
        [--late-synth N] [--mosaics N] [--mosaic-polar N] [--train-part left|right|all]

writes OUT/train, OUT/val, OUT/train_real, OUT/val_finetune, OUT/val_real, OUT/val_polar and
OUT/test (not with --train-part all), each with images/ labels/ nsn/; ndn/ (NDN targets) in train/, val/, train_real/
and val_finetune/, and in val_real/ for real_PART_dim only; val_polar/ also has polar.json
(file names carry the training part: real_left.tif, real_left_dim.tif, ... by default).
ImageJ voxel sizes 0.8 x 0.8 x 1.75 um. Those folders are replaced when OUT already has them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from qca_tf import io, synthetic
from qca_tf.io import VoxelSize
from qca_tf.labels import annotation_offset

VOXEL = VoxelSize(0.8, 0.8, 1.75)
CUT_X = 52
REAL = Path("/work/shared/data/qcanet-example-8cell")
#: --train-part: the real part that trains -> the part that is its held-out test (None:
#: every nucleus trains). Its training file is OUT/train_real/images/real_PART.tif.
TEST_PART = {"left": "right", "right": "left", "all": None}
#: The folders this script writes under OUT (and replaces when they exist)
SPLITS = ("train", "val", "train_real", "val_finetune", "val_real", "val_polar", "test")
#: --align-annotation: the training part's measured annotation offset, under OUT
OFFSET_FILE = "annotation_offset.json"


def later_stage(image: np.ndarray, labels: np.ndarray, seed: int, zoom: float = 0.8
                ) -> tuple[np.ndarray, np.ndarray]:
    """A simulated later, dimmer stack: nuclei ``zoom`` x smaller, signal 0.45x with gamma
    1.3, 15% intensity lost from top to bottom, Poisson-like and camera noise."""
    rng = np.random.default_rng(seed)
    small = ndimage.zoom(image.astype(np.float32), zoom, order=1)
    lab = ndimage.zoom(labels, zoom, order=0)
    bg = float(np.percentile(image, 5))
    sig = np.clip(small - bg, 0, None)
    peak = float(np.percentile(sig, 99.9))
    sig = peak * (sig / peak) ** 1.3 * 0.45
    ramp = 1.0 - 0.15 * np.linspace(0, 1, sig.shape[0])[:, None, None]
    sig = sig * ramp
    out = rng.poisson(np.clip(sig, 0, None) * 0.5) / 0.5 + bg + rng.normal(0, 6.0, sig.shape)
    return np.clip(out, 0, 65535).astype(np.uint16), lab.astype(np.uint16)


def moved(image: np.ndarray, offset_um: tuple[float, float, float]) -> np.ndarray:
    """``image`` (z, y, x) moved by ``offset_um`` (z, y, x um at VOXEL; cubic spline, borders
    repeated), same dtype: the image onto an annotation that lies ``offset_um`` from it."""
    shift = [o / s for o, s in zip(offset_um, VOXEL.zyx)]
    out = ndimage.shift(image.astype(np.float32), shift, order=3, mode="nearest")
    return np.clip(np.rint(out), 0, np.iinfo(image.dtype).max).astype(image.dtype)


def annotation_offset_of(out: Path) -> tuple[float, float, float] | None:
    """The annotation offset (z, y, x um) a data folder's training part was aligned with
    (``--align-annotation``), or None when it was built without."""
    path = out / OFFSET_FILE
    return tuple(json.loads(path.read_text())["annotation_offset_um"]) if path.exists() else None


def dimmed(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bg = float(np.percentile(image, 5))
    sig = np.clip(image.astype(np.float32) - bg, 0, None) * 0.6
    out = rng.poisson(sig) + bg + rng.normal(0, 4.0, sig.shape)
    return np.clip(out, 0, 65535).astype(np.uint16)


def built_part(out: Path) -> str | None:
    """The ``--train-part`` a folder OUT of this script was built with (None: not one)."""
    named = [part for part in TEST_PART if (out / "train_real" / "images" / f"real_{part}.tif").exists()]
    return named[0] if len(named) == 1 else None


def write(root: Path, name: str, image: np.ndarray, labels: np.ndarray, ndn: np.ndarray | None) -> None:
    for sub in ("images", "labels", "nsn") + (("ndn",) if ndn is not None else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    io.write_stack(root / "images" / name, image, VOXEL)
    io.write_stack(root / "labels" / name, labels.astype(np.uint16), VOXEL)
    io.write_stack(root / "nsn" / name, ((labels > 0) * 255).astype(np.uint8), VOXEL)
    if ndn is not None:
        io.write_stack(root / "ndn" / name, ndn.astype(np.uint8), VOXEL)


def soft_edges(image: np.ndarray, labels: np.ndarray, edge: tuple[float, float], seed: int) -> np.ndarray:
    """Give each nucleus the real annotation's intensity profile: the signal above
    background falls from the centre to ``edge`` (a fraction drawn per nucleus from the
    range) at the mask boundary, as in the real 8-cell stack, where the annotated masks
    reach out to about 0.15-0.2 of the peak (synthetic nuclei are flat to their edge)."""
    rng = np.random.default_rng(seed)
    bg = float(np.percentile(image, 5))
    out = image.astype(np.float32)
    sampling = (VOXEL.z, VOXEL.y, VOXEL.x)
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        own = labels[sl] == lab
        d = ndimage.distance_transform_edt(own, sampling=sampling)
        r = d / max(float(d.max()), 1e-6)     # 0 at the mask boundary, 1 at the deepest voxel
        e = rng.uniform(*edge)
        f = e + (1 - e) * r**1.2
        block = out[sl]
        block[own] = bg + (block[own] - bg) * f[own]
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16)


def nucleus_sources(image: np.ndarray, labels: np.ndarray, ndn: np.ndarray) -> list[dict]:
    """Each real nucleus of ``labels`` (z, y, x) cut out for pasting: its background-free
    signal (the real texture and noise), a weight that keeps the signal inside the mask and
    fades it to 0 within 2.4 um outside (0 near any other nucleus), its mask and its
    annotated centre blob (``ndn`` > 0 inside the nucleus)."""
    bg = float(np.percentile(image, 5))
    sampling = (VOXEL.z, VOXEL.y, VOXEL.x)
    others_near = ndimage.binary_dilation(labels > 0, iterations=2)
    out = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(sl, (2, 4, 4), labels.shape))
        own = labels[sl] == lab
        fade = np.clip(1.0 - (ndimage.distance_transform_edt(~own, sampling=sampling) - 0.8) / 2.4, 0.0, 1.0)
        fade[others_near[sl] & ~ndimage.binary_dilation(own, iterations=2)] = 0.0
        out.append(dict(signal=(image[sl].astype(np.float32) - bg) * fade, weight=fade, mask=own,
                        centre=(ndn[sl] > 0) & own))
    return out


def real_mosaic(image: np.ndarray, labels: np.ndarray, ndn: np.ndarray, seed: int, n_nuclei: int = 10,
                scale: tuple[float, float] = (0.55, 1.0), shape: tuple[int, int, int] = (48, 112, 112),
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A compact embryo of real nuclei: the nuclei of ``labels`` (z, y, x) pasted, each
    scaled by a factor drawn from ``scale`` in every axis (smaller nuclei, as at later
    stages), turned in xy and dimmed by 0.5-1.0, every one touching or nearly touching
    (0.8-1.6 um gaps) a nucleus already placed, on values drawn from the real background.
    Returns (image uint16, instance labels, NDN target: each nucleus's annotated centre
    blob at its new place, the blob's own size, as the real annotation draws it)."""
    rng = np.random.default_rng(seed)
    bg = float(np.percentile(image, 5))
    far = image[~ndimage.binary_dilation(labels > 0, iterations=4)]  # the real background's values
    sources = nucleus_sources(image, labels, ndn)
    sig = np.zeros(shape, np.float32)
    lab = np.zeros(shape, np.uint16)
    cen = np.zeros(shape, np.uint8)
    covered = np.zeros(shape, np.float32)  # how much of the real noise each voxel already has
    spacing = np.array([VOXEL.z, VOXEL.y, VOXEL.x])
    for k in range(n_nuclei):
        src = sources[rng.integers(len(sources))]
        s = float(rng.uniform(*scale))
        turn, flip = int(rng.integers(4)), bool(rng.integers(2))

        def turned(a: np.ndarray) -> np.ndarray:
            a = np.rot90(a, turn, axes=(1, 2))
            return a[:, :, ::-1] if flip else a

        def tf(a: np.ndarray, order: int) -> np.ndarray:
            return ndimage.zoom(turned(a).astype(np.float32), s, order=order)
        signal = tf(src["signal"], 1) * float(rng.uniform(0.5, 1.0))
        weight = tf(src["weight"], 1)
        mask = tf(src["mask"], 0) > 0.5
        blob = tf(src["centre"], 0) > 0.5
        if not mask.any():
            continue
        size = np.array(mask.shape)
        gap = int(rng.integers(1, 3))  # voxels of background kept between masks (xy 0.8 um each)
        grown = ndimage.binary_dilation(mask, iterations=gap)
        placed = False
        for _ in range(50):
            if k == 0:
                corner = (np.array(shape) - size) // 2 + rng.integers(-4, 5, 3)
                corner = np.clip(corner, 0, np.array(shape) - size)
                placed = True
                break
            anchor = np.array(ndimage.center_of_mass(lab == rng.integers(1, lab.max() + 1)))
            d = rng.normal(size=3) * np.array([0.5, 1.0, 1.0])   # flatter in z, like an embryo's nuclei
            d /= np.linalg.norm(d)
            for r_um in np.arange(0.0, 40.0, 0.4):
                centre = anchor + d * r_um / spacing
                corner = np.round(centre - size / 2).astype(int)
                if (corner < 0).any() or (corner + size > np.array(shape)).any():
                    break
                box = tuple(slice(c, c + n) for c, n in zip(corner, size))
                if not (lab[box][grown] > 0).any():
                    placed = True
                    break
            if placed:
                break
        if not placed:
            continue
        box = tuple(slice(c, c + n) for c, n in zip(corner, size))
        sig[box] += signal
        covered[box] += weight
        lab[box][mask] = lab.max() + 1
        cen_box = cen[box]
        if blob.any():  # the real centre blob, unscaled, at the scaled centre
            bz, by, bx = np.nonzero(turned(src["centre"]))
            c_new = np.round(ndimage.center_of_mass(blob)).astype(int)
            offs = np.stack([bz, by, bx], 1) - np.round(np.mean([bz, by, bx], 1)).astype(int)
            pts = np.clip(c_new + offs, 0, np.array(cen_box.shape) - 1)
            cen_box[pts[:, 0], pts[:, 1], pts[:, 2]] = 255
    cen[lab == 0] = 0
    c = np.clip(covered, 0.0, 1.0)  # pasted crops carry their own background; elsewhere real background values
    out = sig + bg + (1.0 - c) * (rng.choice(far, size=shape).astype(np.float32) - bg)
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16), lab, cen


def add_polar_bodies(image: np.ndarray, labels: np.ndarray, source_image: np.ndarray, source_labels: np.ndarray,
                     n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (z, y, x, uint16) with ``n`` polar bodies added beside the nuclei of
    ``labels``, which they do not join (they are not nuclei: labels and NDN targets stay as
    they are). Each is a small bright ellipsoid as ``qca_tf.synthetic`` draws them (semi-axes
    1.5-2.5 um, 1.3-1.7x the 90th percentile of the source nuclei's signal above
    background), blurred like the microscope's PSF, with 10 % multiplicative noise, 2.4-6
    um from the nearest nucleus (outside its cell, as in the perivitelline space). Returns (image uint16, polar-body centres (n, 3) z, y, x
    in um). Its own random stream: the image without polar bodies is unchanged."""
    rng = np.random.default_rng([seed, 7])
    spacing = np.array([VOXEL.z, VOXEL.y, VOXEL.x])
    bg = float(np.percentile(source_image, 5))
    ref = float(np.percentile(source_image[source_labels > 0].astype(np.float32) - bg, 90))
    dist = ndimage.distance_transform_edt(labels == 0, sampling=spacing)
    pos = np.moveaxis(np.indices(labels.shape, dtype=np.float32), 0, -1) * spacing  # (z, y, x, 3) um
    body = np.zeros(labels.shape, np.float32)
    centres: list[np.ndarray] = []
    for _ in range(n):
        semi = rng.uniform(1.5, 2.5) * np.exp(rng.normal(0.0, 0.08, 3))
        margin = np.ceil(semi / spacing).astype(int) + 1
        ok = (dist >= semi.max() + 2.4) & (dist <= semi.max() + 6.0)
        inner = np.zeros_like(ok)
        inner[tuple(slice(m, -m) for m in margin)] = True
        ok &= inner
        for c in centres:  # apart from the polar bodies already placed
            ok &= ((pos - c) ** 2).sum(-1) > (2 * semi.max() + 2.0) ** 2
        cand = np.argwhere(ok)
        if not len(cand):
            raise ValueError(f"add_polar_bodies: no room for polar body {len(centres) + 1} of {n} (seed {seed})")
        c = cand[rng.integers(len(cand))] * spacing
        r2 = (((pos - c) / semi) ** 2).sum(-1)
        body += np.where(r2 <= 1.0, float(rng.uniform(1.3, 1.7)) * ref, 0.0).astype(np.float32)
        centres.append(c)
    body = ndimage.gaussian_filter(body, sigma=np.array([0.9, 0.3, 0.3]) / spacing)
    body *= 1.0 + 0.1 * rng.normal(size=body.shape).astype(np.float32)
    out = image.astype(np.float32) + np.clip(body, 0.0, None)
    return np.clip(np.rint(out), 0, 65535).astype(np.uint16), np.array(centres, np.float64).reshape(-1, 3)


def embryo_config(seed: int, **changes) -> synthetic.SynthConfig:
    """The synthetic 8-cell embryo of these folders (48 x 112 x 112 voxels at the real
    stack's voxel size, 8 nuclei of radius 4.5-7.5 um, 2 touching pairs, a polar body,
    division every 2 time points), with ``changes``."""
    base = dict(shape=(48, 112, 112), voxel_size=(VOXEL.x, VOXEL.y, VOXEL.z), n_nuclei=8, radius_um=(4.5, 7.5),
                touching_pairs=2, polar_bodies=1, division_interval=2, seed=seed)
    return synthetic.SynthConfig(**{**base, **changes})


def synthetic_embryos(root: Path, seed: int, timepoints: int, prefix: str,
                      edge: tuple[float, float] | None = None) -> None:
    cfg = embryo_config(seed, timepoints=timepoints)
    for t, frame in enumerate(synthetic.make_series(cfg)):
        image = frame.image if edge is None else soft_edges(frame.image, frame.labels, edge, seed * 100 + t)
        write(root, f"{prefix}_t{t}.tif", image, frame.labels, frame.ndn)


def late_synthetic_embryo(root: Path, seed: int, name: str) -> None:
    """A synthetic later-stage embryo: 16 nuclei of radius 3.5-5.5 um (a 16-cell embryo's
    nuclei are smaller than an 8-cell one's), 4 touching pairs, a polar body."""
    cfg = embryo_config(seed, timepoints=1, n_nuclei=16, radius_um=(3.5, 5.5), touching_pairs=4,
                        division_interval=0)
    frame = synthetic.make_series(cfg)[0]
    write(root, name, frame.image, frame.labels, frame.ndn)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--real", type=Path, default=REAL)
    ap.add_argument("--real-copies", type=int, default=1,
                    help="copies of the real training part in train/ (samples its crops this many times as often)")
    ap.add_argument("--soft-edge", type=float, nargs=2, metavar=("LOW", "HIGH"),
                    help="training synthetic nuclei fall to this fraction of their signal at the mask edge "
                         "(drawn per nucleus); default: flat nuclei as qca_tf.synthetic makes them")
    ap.add_argument("--late-synth", type=int, default=0, metavar="N",
                    help="N synthetic later-stage embryos (16 smaller nuclei, flat: --soft-edge does not apply) in "
                         "train/, and one more in val_real/")
    ap.add_argument("--mosaics", type=int, default=0, metavar="N",
                    help="N embryos of the real training part's nuclei, scaled and packed (real_mosaic) in train/")
    ap.add_argument("--mosaic-polar", type=int, default=0, metavar="N",
                    help="N polar bodies (bright, small, not nuclei) beside the nuclei of each training mosaic")
    ap.add_argument("--train-part", choices=tuple(TEST_PART), default="left",
                    help="the real part that trains and validates: left (x < 52, 3 nuclei; test = right, 5 nuclei), "
                         "right (5 nuclei; test = left: the second fold of a cross-validation) or all (8 nuclei, "
                         "no test)")
    ap.add_argument("--align-annotation", action="store_true",
                    help="move the real training part's image onto its annotation (the offset measured on that part "
                         "by qca_tf.labels.annotation_offset, written to OUT/annotation_offset.json) before anything "
                         "is built from it; the test stays as recorded")
    a = ap.parse_args(argv)
    if not 0 <= a.late_synth <= 19:  # training seeds 11.. must stay below val_real's seed 30
        ap.error("--late-synth: 0 to 19 embryos")
    if not 0 <= a.mosaics <= 19:  # training seeds 40.. must stay below val_real's seeds 60, 61
        ap.error("--mosaics: 0 to 19 embryos")
    if not 0 <= a.mosaic_polar <= 4:
        ap.error("--mosaic-polar: 0 to 4 polar bodies per mosaic")
    if a.mosaic_polar and not a.mosaics:
        ap.error("--mosaic-polar: needs --mosaics N > 0 (the polar bodies go beside the mosaics' nuclei)")
    for split in SPLITS:  # built anew: files of an earlier build (another --train-part) must not stay
        shutil.rmtree(a.out / split, ignore_errors=True)
    (a.out / OFFSET_FILE).unlink(missing_ok=True)
    image = io.read_stack(a.real / "image.tif")
    labels, n = ndimage.label(io.read_stack(a.real / "nsn_gt.tif") > 0)
    ndn = io.read_stack(a.real / "ndn_gt.tif")
    left, right = np.s_[:, :, :CUT_X], np.s_[:, :, CUT_X:]
    for piece in (left, right):  # the cut must not split a nucleus
        inside = set(np.unique(labels[piece])) - {0}
        assert not inside & (set(np.unique(labels[right if piece is left else left])) - {0}), "cut splits a nucleus"
    part, name = a.train_part, TEST_PART[a.train_part]
    piece = {"left": left, "right": right, "all": np.s_[:, :, :]}
    im, lab, cen = image[piece[part]], labels[piece[part]], ndn[piece[part]]
    if a.align_annotation:
        offset = annotation_offset(im, lab, VOXEL.zyx)
        im = moved(im, offset)
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / OFFSET_FILE).write_text(json.dumps({"train_part": part, "annotation_offset_um": offset}) + "\n")
        print(f"annotation offset of the {part} part: ({', '.join(f'{v:+.3f}' for v in offset)}) um (z, y, x); "
              "its image moved onto the annotation")
    for c in range(a.real_copies):
        write(a.out / "train", f"real_{part}.tif" if c == 0 else f"real_{part}_copy{c}.tif", im, lab, cen)
    edge = tuple(a.soft_edge) if a.soft_edge else None
    synthetic_embryos(a.out / "train", seed=1, timepoints=4, prefix="synth1", edge=edge)
    synthetic_embryos(a.out / "train", seed=2, timepoints=2, prefix="synth2", edge=edge)
    for k in range(a.late_synth):
        late_synthetic_embryo(a.out / "train", seed=11 + k, name=f"synth_late{11 + k}.tif")
    for k in range(a.mosaics):
        m_im, m_lab, m_cen = real_mosaic(im, lab, cen, seed=40 + k)
        if a.mosaic_polar:
            m_im, _ = add_polar_bodies(m_im, m_lab, im, lab, a.mosaic_polar, seed=40 + k)
        write(a.out / "train", f"mosaic{40 + k}.tif", m_im, m_lab, m_cen)
    write(a.out / "val", f"real_{part}_dim.tif", dimmed(im, 5), lab, cen)
    synthetic_embryos(a.out / "val", seed=3, timepoints=1, prefix="synth3")
    write(a.out / "train_real", f"real_{part}.tif", im, lab, cen)
    write(a.out / "val_finetune", f"real_{part}_dim.tif", dimmed(im, 5), lab, cen)
    write(a.out / "val_real", f"real_{part}_dim.tif", dimmed(im, 5), lab, cen)
    write(a.out / "val_real", f"real_{part}_late.tif", *later_stage(im, lab, seed=8), None)
    # small nuclei packed against bigger ones, which the two volumes above (a few nuclei,
    # far apart) cannot show: the training part's nuclei in two mosaics, one as recorded and
    # one through the later-stage simulation (no further shrinking)
    mosaic_im, mosaic_lab, _ = real_mosaic(im, lab, cen, seed=60)
    write(a.out / "val_real", "mosaic60.tif", mosaic_im, mosaic_lab, None)
    mosaic_im, mosaic_lab, _ = real_mosaic(im, lab, cen, seed=61)
    write(a.out / "val_real", "mosaic61_late.tif", *later_stage(mosaic_im, mosaic_lab, seed=9, zoom=1.0), None)
    if a.late_synth:
        late_synthetic_embryo(a.out / "val_real", seed=30, name="synth_late30.tif")
    # polar bodies, which must not be kept as nuclei: two mosaics with 3 each and two
    # synthetic embryos with 2 each; their centres (z, y, x um) in val_polar/polar.json
    polar = {}
    for k in (62, 63):
        m_im, m_lab, _ = real_mosaic(im, lab, cen, seed=k)
        m_im, centres = add_polar_bodies(m_im, m_lab, im, lab, 3, seed=k)
        write(a.out / "val_polar", f"mosaic{k}_polar.tif", m_im, m_lab, None)
        polar[f"mosaic{k}_polar.tif"] = centres.tolist()
    for k in (70, 71):
        frame = synthetic.make_series(embryo_config(k, timepoints=1, polar_bodies=2, division_interval=0))[0]
        write(a.out / "val_polar", f"synth{k}_polar.tif", frame.image, frame.labels, None)
        polar[f"synth{k}_polar.tif"] = frame.polar_centres_um.tolist()
    (a.out / "val_polar" / "polar.json").write_text(json.dumps(polar, indent=1))
    if name is not None:  # the other part, never seen: as recorded and as a simulated later stage
        test_lab, _ = ndimage.label(labels[piece[name]] > 0)
        write(a.out / "test", f"real_{name}.tif", image[piece[name]], test_lab, None)
        write(a.out / "test", f"real_{name}_late.tif", *later_stage(image[piece[name]], test_lab, seed=7), None)
    for split in (s for s in SPLITS if (a.out / s).exists()):
        names = sorted(p.name for p in (a.out / split / "images").glob("*.tif"))
        print(f"{split}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
