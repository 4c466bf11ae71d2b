"""Synthetic embryo time series with exactly known ground truth.

Nuclei are textured ellipsoids of varied size, brightness and orientation inside an
embryo-shaped ellipsoid, rasterised in physical units on the anisotropic grid. Some
pairs touch (a threshold fuses them), small bright polar bodies sit near the embryo
edge (in the image, not in the ground truth), and nuclei drift and divide over time.
The image goes through an anisotropic Gaussian PSF, linear attenuation along z,
photobleaching, Poisson and Gaussian noise, and is stored as uint16.

Arrays are (z, y, x); positions and sizes inside this module are (z, y, x) micrometres.
All randomness comes from one ``np.random.default_rng(cfg.seed)``: the geometry of the
whole series is drawn first, then the images, so imaging parameters never change it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .config import check as _check
from .errors import ConfigError, OutputError
from .io import VoxelSize, write_stack
from .labels import centroids
from .targets import ndn_target

log = logging.getLogger(__name__)

BACKGROUND = 100.0        # camera offset, counts
SIGNAL = 3000.0           # counts for unit fluorescence (a bright nucleus)
CYTOPLASM = 0.04          # embryo autofluorescence, fraction of SIGNAL
TEXTURE_AMPLITUDE = 0.15  # chromatin texture, +- fraction of the nucleus brightness
SPOT_DEPTH = 0.4          # darker nucleolus-like spots, fraction removed at their centre
ATTEMPTS = 200            # random positions tried per nucleus (or pair) before shrinking it
DIRECTIONS = 20           # contact directions tried per pair or division
_CROSS = ndimage.generate_binary_structure(3, 1)
_CUBE = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic series parameters. ``shape`` is (z, y, x) voxels; ``voxel_size`` and
    ``psf_sigma_um`` are (x, y, z) um; ``ndn_diameter`` is in isotropic-grid voxels
    (x voxel units); ``drift_um`` is the per-axis standard deviation of the drift of a
    nucleus (or touching group) per time point, rounded to whole voxels."""

    shape: tuple[int, int, int] = (24, 96, 96)
    voxel_size: tuple[float, float, float] = (0.8, 0.8, 1.75)
    n_nuclei: int = 8
    timepoints: int = 1
    radius_um: tuple[float, float] = (4.0, 6.0)
    touching_pairs: int = 2
    polar_bodies: int = 1
    division_interval: int = 3
    psf_sigma_um: tuple[float, float, float] = (0.3, 0.3, 0.9)
    z_attenuation: float = 0.3
    bleach_per_timepoint: float = 0.03
    photons: float = 200.0
    gaussian_noise: float = 0.02
    ndn_diameter: float = 5.0
    drift_um: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        s = "synthetic"
        _check(len(self.shape) == 3 and all(isinstance(n, int) and n >= 8 for n in self.shape), s, "shape",
               f"{self.shape!r} is not three integers >= 8 (z, y, x)")
        _check(len(self.voxel_size) == 3 and all(v > 0 for v in self.voxel_size), s, "voxel_size",
               f"{self.voxel_size!r} is not three positive numbers (x, y, z)")
        _check(isinstance(self.n_nuclei, int) and self.n_nuclei >= 1, s, "n_nuclei", f"{self.n_nuclei!r} < 1")
        _check(isinstance(self.timepoints, int) and self.timepoints >= 1, s, "timepoints", f"{self.timepoints!r} < 1")
        _check(len(self.radius_um) == 2 and 0 < self.radius_um[0] <= self.radius_um[1], s, "radius_um",
               f"{self.radius_um!r} is not (low, high) with 0 < low <= high")
        _check(isinstance(self.touching_pairs, int) and 0 <= 2 * self.touching_pairs <= self.n_nuclei, s,
               "touching_pairs", f"{self.touching_pairs!r} pairs need 0 <= 2 * pairs <= n_nuclei={self.n_nuclei}")
        _check(isinstance(self.polar_bodies, int) and self.polar_bodies >= 0, s, "polar_bodies", "must be >= 0")
        _check(isinstance(self.division_interval, int) and self.division_interval >= 0, s, "division_interval",
               "must be an integer >= 0")
        _check(len(self.psf_sigma_um) == 3 and all(v >= 0 for v in self.psf_sigma_um), s, "psf_sigma_um",
               f"{self.psf_sigma_um!r} is not three numbers >= 0 (x, y, z)")
        _check(0 <= self.z_attenuation < 1, s, "z_attenuation", f"{self.z_attenuation!r} is not in [0, 1)")
        _check(0 <= self.bleach_per_timepoint < 1, s, "bleach_per_timepoint",
               f"{self.bleach_per_timepoint!r} is not in [0, 1)")
        _check(self.photons > 0, s, "photons", "must be > 0")
        _check(self.gaussian_noise >= 0, s, "gaussian_noise", "must be >= 0")
        _check(self.ndn_diameter > 0, s, "ndn_diameter", "must be > 0")
        _check(self.drift_um >= 0, s, "drift_um", "must be >= 0")
        _check(isinstance(self.seed, int) and self.seed >= 0, s, "seed", f"{self.seed!r} is not an integer >= 0")

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing (z, y, x) in um."""
        x, y, z = self.voxel_size
        return np.array([z, y, x], float)


@dataclass(frozen=True)
class SynthTimepoint:
    """One time point: ``image`` (z, y, x) uint16 raw; ``labels`` uint16 instances 1..N
    (no polar bodies); ``nsn`` uint8 0/255 nucleus mask; ``ndn`` uint8 0/255 centre
    spheres; ``centres_um`` (N, 3) z, y, x centres of gravity of ``labels`` in um;
    ``polar_centres_um`` (P, 3) z, y, x centres of the polar bodies in um (not nuclei: a
    segmentation should leave them out)."""

    image: np.ndarray
    labels: np.ndarray
    nsn: np.ndarray
    ndn: np.ndarray
    centres_um: np.ndarray
    polar_centres_um: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))


@dataclass
class _Body:
    """An ellipsoid: centre (z, y, x) um, rotation (columns = principal axes), semi-axes um,
    brightness (fraction of SIGNAL), texture waves and dark spots in its own frame."""

    centre: np.ndarray
    rot: np.ndarray
    semi: np.ndarray
    brightness: float
    group: int
    waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))   # rows: kz, ky, kx, phase
    spots: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))   # rows: qz, qy, qx, radius

    def moved(self, shift: np.ndarray) -> _Body:
        return _Body(self.centre + shift, self.rot, self.semi, self.brightness, self.group, self.waves, self.spots)


class _Scene:
    """Geometry of one series: grid, embryo, rasteriser and the collision map."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        self.shape = np.array(cfg.shape)
        self.spacing = cfg.spacing
        self.embryo_centre = (self.shape - 1) * self.spacing / 2
        self.embryo_semi = 0.46 * self.shape * self.spacing
        self.ndn_radius = cfg.ndn_diameter * cfg.voxel_size[0] / 2
        self.min_semi = self.ndn_radius + 1.0    # keeps each NDN sphere inside its nucleus
        # NDN spheres of two nuclei in contact stay apart by more than one voxel (6-connectivity).
        self.min_contact = 2 * self.ndn_radius + float(self.spacing.max()) + 0.05
        self.occ = np.zeros(cfg.shape, np.int32)   # group id + 1 of every body voxel
        self.next_group = 0

    # -------------------------------------------------------------- bodies
    def new_group(self) -> int:
        self.next_group += 1
        return self.next_group

    def rotation(self) -> np.ndarray:
        q, r = np.linalg.qr(self.rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]
        return q

    def nucleus(self, radius: float, group: int, brightness: float | None = None) -> _Body:
        """A textured ellipsoid of mean radius ``radius`` um, random orientation, centre unset."""
        rng = self.rng
        aspect = np.exp(rng.normal(0.0, 0.12, 3))
        semi = np.maximum(radius * aspect / np.prod(aspect) ** (1 / 3), self.min_semi)
        k = rng.normal(size=(3, 3))
        k *= (2 * np.pi / rng.uniform(2.0, 4.0, (3, 1))) / np.linalg.norm(k, axis=1, keepdims=True)
        waves = np.column_stack([k, rng.uniform(0, 2 * np.pi, 3)])
        n_spots = int(rng.integers(1, 3))
        u = rng.normal(size=(n_spots, 3))
        u *= (rng.uniform(0, 0.5, (n_spots, 1)) / np.linalg.norm(u, axis=1, keepdims=True))
        spots = np.column_stack([u * semi, rng.uniform(0.7, 1.2, n_spots)])
        if brightness is None:
            brightness = float(rng.uniform(0.55, 1.0))
        return _Body(np.zeros(3), self.rotation(), semi, brightness, group, waves, spots)

    def polar_body(self, group: int) -> _Body:
        rng = self.rng
        semi = rng.uniform(1.5, 2.5) * np.exp(rng.normal(0.0, 0.08, 3))
        return _Body(np.zeros(3), self.rotation(), semi, float(rng.uniform(1.3, 1.7)), group)

    # -------------------------------------------------------------- raster
    def raster(self, body: _Body, pad: int = 0) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
        """Bounding box slices (grown by ``pad`` voxels), body-frame coordinates q (3, dz, dy, dx) um
        and squared normalised radius (dz, dy, dx); None if the box leaves the volume."""
        ext = np.sqrt(((body.rot * body.semi) ** 2).sum(axis=1))
        lo = np.floor((body.centre - ext) / self.spacing).astype(int) - pad
        hi = np.ceil((body.centre + ext) / self.spacing).astype(int) + 1 + pad
        if (lo < 0).any() or (hi > self.shape).any():
            return None
        grids = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d = [g * s - c for g, s, c in zip(grids, self.spacing, body.centre)]
        q = np.stack([np.broadcast_to(sum(body.rot[i, j] * d[i] for i in range(3)), tuple(hi - lo))
                      for j in range(3)])
        r2 = sum((q[j] / body.semi[j]) ** 2 for j in range(3))
        return tuple(slice(a, b) for a, b in zip(lo, hi)), q, r2

    def inside(self, body: _Body) -> bool:
        """Box (plus one voxel) in the volume and centre well inside the embryo."""
        rel = (body.centre - self.embryo_centre) / np.maximum(self.embryo_semi - 0.5 * body.semi.max(), 1e-6)
        return bool((rel**2).sum() <= 1.0) and self.raster(body, pad=1) is not None

    def free(self, bodies: list[_Body]) -> bool:
        """True if all ``bodies`` lie in the volume and keep >= 1 empty voxel to other groups."""
        for b in bodies:
            r = self.raster(b, pad=1)
            if r is None:
                return False
            sl, _, r2 = r
            near = ndimage.binary_dilation(r2 <= 1, _CUBE)
            hit = self.occ[sl][near]
            if ((hit != 0) & (hit != b.group)).any():
                return False
        return True

    def mark(self, bodies: list[_Body], value: int | None = None) -> None:
        """Write (or, with value 0, erase) the bodies' voxels in the collision map."""
        for b in bodies:
            sl, _, r2 = self.raster(b)
            view = self.occ[sl]
            view[r2 <= 1] = b.group if value is None else value

    def touching(self, a: _Body, b: _Body) -> bool:
        """True if the voxel masks of ``a`` and ``b`` overlap or share a face."""
        ra, rb = self.raster(a, pad=1), self.raster(b, pad=1)
        if ra is None or rb is None:
            return False
        lo = [max(x.start, y.start) for x, y in zip(ra[0], rb[0])]
        hi = [min(x.stop, y.stop) for x, y in zip(ra[0], rb[0])]
        if any(h <= l for l, h in zip(lo, hi)):
            return False
        ma = ra[2][tuple(slice(l - s.start, h - s.start) for l, h, s in zip(lo, hi, ra[0]))] <= 1
        mb = rb[2][tuple(slice(l - s.start, h - s.start) for l, h, s in zip(lo, hi, rb[0]))] <= 1
        return bool((ndimage.binary_dilation(ma, _CROSS) & mb).any())

    def reach(self, body: _Body, u: np.ndarray) -> float:
        """Distance from the centre to the surface of ``body`` along unit vector ``u``."""
        q = body.rot.T @ u
        return float(1.0 / np.sqrt(((q / body.semi) ** 2).sum()))

    def contact(self, place: Callable[[float], tuple[_Body, _Body]], start: float) -> tuple[_Body, _Body] | None:
        """Shrink the centre distance from ``start`` in 0.2 um steps until the two bodies returned
        by ``place(distance)`` touch; None if they would come closer than ``min_contact`` (or
        much closer than ``start``, their surface distance along the centre line)."""
        s, stop = start, max(self.min_contact, start - 1.0 - 2 * float(self.spacing.max()))
        while s >= stop:
            a, b = place(s)
            if self.touching(a, b):
                return a, b
            s -= 0.2
        return None

    def direction(self) -> np.ndarray:
        u = self.rng.normal(size=3)
        return u / np.linalg.norm(u)

    def random_centre(self, margin: float) -> np.ndarray:
        """A uniform random point of the embryo shrunk by ``margin`` um."""
        semi = np.maximum(self.embryo_semi - margin, 1e-6)
        return self.embryo_centre + self.direction() * self.rng.random() ** (1 / 3) * semi


# ------------------------------------------------------------------ placement


def _place_initial(scene: _Scene) -> tuple[list[_Body], list[_Body]]:
    """Nuclei (``touching_pairs`` pairs in contact, the rest apart) and polar bodies at t = 0."""
    cfg, rng = scene.cfg, scene.rng
    lo, hi = cfg.radius_um
    n_pairs = cfg.touching_pairs
    sizes = [2] * n_pairs + [1] * (cfg.n_nuclei - 2 * n_pairs)
    nuclei: list[_Body] = []
    for size in sizes:
        radii = rng.uniform(lo, hi, size)
        for shrink in (1.0, 0.9, 0.8, 0.7):
            placed = _try_place(scene, [r * shrink for r in radii])
            if placed is not None:
                break
            log.debug("no room for a nucleus group at %.0f%% of its size; shrinking it", shrink * 100)
        else:
            raise ConfigError(f"cannot place n_nuclei={cfg.n_nuclei} nuclei of radius_um={cfg.radius_um} "
                              f"in shape={cfg.shape} (voxel_size={cfg.voxel_size}); use fewer or smaller nuclei "
                              "or a larger shape")
        scene.mark(placed)
        nuclei += placed
    polar: list[_Body] = []
    for _ in range(cfg.polar_bodies):
        pb = scene.polar_body(scene.new_group())
        for _ in range(ATTEMPTS):
            u = scene.direction()
            pb.centre = scene.embryo_centre + u * scene.embryo_semi * rng.uniform(0.75, 0.95)
            if scene.free([pb]):
                break
        else:
            raise ConfigError(f"cannot place polar_bodies={cfg.polar_bodies} beside n_nuclei={cfg.n_nuclei} "
                              f"nuclei in shape={cfg.shape}; use fewer nuclei or a larger shape")
        scene.mark([pb])
        polar.append(pb)
    return nuclei, polar


def _try_place(scene: _Scene, radii: list[float]) -> list[_Body] | None:
    """One nucleus, or two in contact, at a free random position; None after ATTEMPTS tries."""
    group = scene.new_group()
    bodies = [scene.nucleus(r, group) for r in radii]
    margin = max(b.semi.max() for b in bodies) * len(bodies)
    for _ in range(ATTEMPTS):
        a = bodies[0]
        a.centre = scene.random_centre(0.5 * margin)
        if not scene.inside(a):
            continue
        if len(bodies) == 1:
            if scene.free([a]):
                return [a]
            continue
        b = bodies[1]
        u = scene.direction()
        pair = scene.contact(lambda s: (a, b.moved(a.centre + s * u - b.centre)),
                             scene.reach(a, u) + scene.reach(b, -u) + 0.4)
        if pair is not None and scene.inside(pair[1]) and scene.free(list(pair)):
            return list(pair)
    return None


def _divide(scene: _Scene, nuclei: list[_Body]) -> list[_Body]:
    """Replace one nucleus (larger ones more likely) by two smaller daughters in contact or near."""
    rng = scene.rng
    volumes = np.array([np.prod(b.semi) for b in nuclei])
    for i in rng.choice(len(nuclei), size=len(nuclei), replace=False, p=volumes / volumes.sum()):
        parent = nuclei[i]
        radius = float(np.prod(parent.semi) ** (1 / 3)) * 2 ** (-1 / 3)
        group = scene.new_group()
        d1 = scene.nucleus(radius, group, parent.brightness)
        d2 = scene.nucleus(radius, group, parent.brightness)
        gap = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.8, 2.0))
        scene.mark([parent], 0)
        scene.mark([b for b in nuclei if b.group == parent.group and b is not parent])  # re-mark shared voxels
        for _ in range(DIRECTIONS):
            u = scene.direction()
            c = parent.centre

            def place(s: float, u: np.ndarray = u) -> tuple[_Body, _Body]:
                return d1.moved(c - s / 2 * u - d1.centre), d2.moved(c + s / 2 * u - d2.centre)

            pair = scene.contact(place, scene.reach(d1, -u) + scene.reach(d2, u) + 0.4)
            if pair is None:
                continue
            if gap:
                pair = place(float(np.linalg.norm(pair[1].centre - pair[0].centre)) + gap)
            if all(scene.inside(b) for b in pair) and scene.free(list(pair)):
                scene.mark(list(pair))
                return nuclei[:i] + list(pair) + nuclei[i + 1:]
        scene.mark([parent])
    log.warning("no room for a cell division; the nucleus count stays at %d", len(nuclei))
    return nuclei


def _drift(scene: _Scene, bodies: list[_Body]) -> list[_Body]:
    """Move every group by a whole-voxel random shift where it stays free, inside and apart."""
    rng, spacing = scene.rng, scene.spacing
    groups: dict[int, list[int]] = {}
    for i, b in enumerate(bodies):
        groups.setdefault(b.group, []).append(i)
    out = list(bodies)
    for idx in groups.values():
        shift = np.round(rng.normal(0.0, scene.cfg.drift_um, 3) / spacing) * spacing
        if not shift.any():
            continue
        old = [bodies[i] for i in idx]
        new = [b.moved(shift) for b in old]
        scene.mark(old, 0)
        if all(scene.inside(b) for b in new) and scene.free(new):
            for i, b in zip(idx, new):
                out[i] = b
            scene.mark(new)
        else:
            scene.mark(old)
    return out


# ------------------------------------------------------------------ rendering


def _rasterise(scene: _Scene, nuclei: list[_Body], polar: list[_Body]) -> tuple[np.ndarray, np.ndarray]:
    """Labels (z, y, x) uint16 1..N and the noise-free fluorescence (z, y, x) float32, before PSF."""
    labels = np.zeros(scene.cfg.shape, np.uint16)
    best = np.full(scene.cfg.shape, np.inf, np.float32)
    fluo = np.zeros(scene.cfg.shape, np.float32)
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in scene.cfg.shape)]
    rel = [(g * s - c) / a for g, s, c, a in zip((zz, yy, xx), scene.spacing, scene.embryo_centre, scene.embryo_semi)]
    fluo[sum(r**2 for r in rel) <= 1] = CYTOPLASM
    for lab, b in enumerate(nuclei, start=1):
        sl, q, r2 = scene.raster(b)
        own = (r2 <= 1) & (r2 < best[sl])   # a voxel shared by touching nuclei goes to the nearer one
        best[sl][own] = r2[own]
        labels[sl][own] = lab
        texture = 1 + TEXTURE_AMPLITUDE * np.mean([np.cos(sum(w[j] * q[j] for j in range(3)) + w[3])
                                                    for w in b.waves], axis=0)
        for sp in b.spots:
            texture *= 1 - SPOT_DEPTH * np.exp(-sum((q[j] - sp[j]) ** 2 for j in range(3)) / (2 * sp[3] ** 2))
        fluo[sl][own] = (b.brightness * texture)[own]
    for b in polar:
        sl, _, r2 = scene.raster(b)
        fluo[sl][r2 <= 1] = b.brightness
    present = np.unique(labels)
    if len(present) != len(nuclei) + 1:   # cannot happen: semi-axes >= min_semi, contacts are shallow
        raise RuntimeError(f"synthetic: {len(nuclei) + 1 - len(present)} nuclei lost all their voxels")
    return labels, fluo


def _image(cfg: SynthConfig, fluo: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    """PSF blur, z attenuation, bleaching, Poisson + read noise -> (z, y, x) uint16."""
    x, y, z = cfg.psf_sigma_um
    sigma = np.array([z, y, x]) / cfg.spacing
    blurred = ndimage.gaussian_filter(fluo, sigma, mode="nearest") if sigma.any() else fluo
    nz = cfg.shape[0]
    att = 1 - cfg.z_attenuation * np.arange(nz) / max(nz - 1, 1)
    signal = blurred * att[:, None, None].astype(np.float32) * np.float32((1 - cfg.bleach_per_timepoint) ** t)
    counts = rng.poisson(np.maximum(signal, 0) * cfg.photons) * (SIGNAL / cfg.photons)
    counts = counts + BACKGROUND + rng.normal(0.0, cfg.gaussian_noise * SIGNAL, cfg.shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def make_series(cfg: SynthConfig) -> list[SynthTimepoint]:
    """A synthetic embryo time series of ``cfg.timepoints`` (z, y, x) volumes with ground truth."""
    rng = np.random.default_rng(cfg.seed)
    scene = _Scene(cfg, rng)
    if cfg.radius_um[0] < scene.min_semi:
        log.warning("nuclear semi-axes are kept >= %.2f um so that the NDN sphere (ndn_diameter=%g) fits inside; "
                    "radius_um=%s is partly below that", scene.min_semi, cfg.ndn_diameter, cfg.radius_um)
    nuclei, polar = _place_initial(scene)
    frames = []
    for t in range(cfg.timepoints):
        if t > 0:
            if cfg.division_interval and t % cfg.division_interval == 0:
                nuclei = _divide(scene, nuclei)
            nuclei = _drift(scene, nuclei)
            polar = _drift(scene, polar)
        frames.append((list(nuclei), list(polar)))
    spacing = tuple(float(s) for s in scene.spacing)
    diameter_um = cfg.ndn_diameter * cfg.voxel_size[0]
    series = []
    for t, (nuc, pol) in enumerate(frames):
        labels, fluo = _rasterise(scene, nuc, pol)
        _, centres = centroids(labels)
        ndn = ndn_target(labels, spacing, diameter_um)
        series.append(SynthTimepoint(
            image=_image(cfg, fluo, t, rng),
            labels=labels,
            nsn=np.where(labels > 0, 255, 0).astype(np.uint8),
            ndn=np.where(ndn > 0, 255, 0).astype(np.uint8),
            centres_um=centres * scene.spacing,
            polar_centres_um=np.array([b.centre for b in pol], np.float64).reshape(-1, 3),
        ))
    log.debug("synthetic series: %d time points, nuclei %s", len(series), [len(f[0]) for f in frames])
    return series


def write_dataset(out_dir: str | os.PathLike, series: list[SynthTimepoint], voxel_size: VoxelSize) -> list[str]:
    """Write ``out_dir``/images, nsn, ndn, labels/t0000.tif ... (ImageJ TIFFs with ``voxel_size``,
    a :class:`qca_tf.io.VoxelSize`); return the file names. Files of the same names are replaced;
    other TIFFs already in those folders (another dataset) raise OutputError."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    names = [f"t{t:04d}.tif" for t in range(len(series))]
    for folder in ("images", "nsn", "ndn", "labels"):
        other = sorted(p.name for p in (out / folder).glob("*.tif*") if p.name not in names) \
            if (out / folder).is_dir() else []
        if other:
            raise OutputError(f"{out / folder}: already holds {other[0]} from another dataset; use an empty folder")
    for name, tp in zip(names, series):
        for folder, array in (("images", tp.image), ("nsn", tp.nsn), ("ndn", tp.ndn), ("labels", tp.labels)):
            write_stack(out / folder / name, array, voxel_size)
    log.info("wrote %d synthetic time points to %s", len(names), out)
    return names
