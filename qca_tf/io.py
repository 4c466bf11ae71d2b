"""TIFF input/output, voxel sizes, time series and dataset discovery.

Arrays are (z, y, x); a 4D time series is (t, z, y, x). Voxel sizes are in
micrometres and carried as :class:`VoxelSize` (x, y, z), whose ``.zyx`` is the
spacing tuple numpy/scipy functions take.
"""
from __future__ import annotations

import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from .atomic import atomic_path
from .errors import InputError, OutputError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")

# Length units found in ImageJ descriptions and OME-XML, in micrometres.
_UNIT_UM = {
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
}


@dataclass(frozen=True)
class VoxelSize:
    """Physical voxel size in micrometres, given as x, y, z."""

    x: float
    y: float
    z: float

    def __post_init__(self) -> None:
        for axis in ("x", "y", "z"):
            value = getattr(self, axis)
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise InputError(f"voxel size {axis}={value!r} is not a number") from None
            if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
                raise InputError(f"voxel size {axis}={value!r} must be a positive finite number (micrometres)")
            object.__setattr__(self, axis, number)

    @property
    def zyx(self) -> tuple[float, float, float]:
        """The spacing as (z, y, x), the axis order of the arrays."""
        return (self.z, self.y, self.x)

    @classmethod
    def from_xyz(cls, seq: Sequence[float]) -> VoxelSize:
        """Build from an (x, y, z) sequence, e.g. the ``--voxel-size X Y Z`` option."""
        values = tuple(seq)
        if len(values) != 3:
            raise InputError(f"voxel size {values!r} must be three numbers x, y, z (micrometres)")
        return cls(*values)


# --------------------------------------------------------------------------- reading


def _open(path: Path) -> tifffile.TiffFile:
    """Open a TIFF file; a missing, non-TIFF or unreadable file raises InputError."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a TIFF file")
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types on corrupt input
        raise InputError(f"{path}: not a readable TIFF file ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    """First line of an exception message (messages must stay one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dims(shape: Sequence[int]) -> str:
    return " x ".join(str(n) for n in shape)


def _series_layout(tif: tifffile.TiffFile, path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and axes of the first series with all singleton axes removed."""
    try:
        series = tif.series[0]
        shape, axes = tuple(series.shape), series.axes
    except Exception as exc:
        raise InputError(f"{path}: not a readable TIFF file ({_reason(exc)})") from None
    if 0 in shape:
        raise InputError(f"{path}: is empty (shape {_dims(shape)})")
    kept = [(n, a) for n, a in zip(shape, axes) if n != 1]
    return tuple(n for n, _ in kept), "".join(a for _, a in kept)


def _check_ndim(shape: tuple[int, ...], axes: str, path: Path, allowed: tuple[int, ...]) -> None:
    """Reject dimensionalities not in ``allowed`` with a one-line message naming the file."""
    ndim = len(shape)
    if ndim in allowed:
        return
    want = "a 3D stack (z, y, x)" if allowed == (3,) else "a 3D stack (z, y, x) or a 4D time series (t, z, y, x)"
    if ndim < 2:
        raise InputError(f"{path}: is {ndim}D (shape {_dims(shape)}); expected {want}")
    if ndim == 2:
        raise InputError(f"{path}: is 2D (Y x X); expected {want}")
    raise InputError(f"{path}: is {ndim}D ({' x '.join(axes)} = {_dims(shape)}); expected {want}")


def _check_values(array: np.ndarray, path: Path, what: str = "") -> np.ndarray:
    if array.size == 0:
        raise InputError(f"{path}{what}: is empty (shape {_dims(array.shape)})")
    if array.dtype.kind in "fc":
        if np.isnan(array).any():
            raise InputError(f"{path}{what}: contains NaN voxels")
        if np.isinf(array).any():
            raise InputError(f"{path}{what}: contains infinite voxels")
    return array


def _read_series(tif: tifffile.TiffFile, path: Path, key: slice | None = None) -> np.ndarray:
    try:
        if key is None:
            return tif.series[0].asarray()
        return tif.asarray(key=key, series=0)
    except Exception as exc:
        raise InputError(f"{path}: not a readable TIFF file ({_reason(exc)})") from None


def read_stack(path: str | os.PathLike) -> np.ndarray:
    """Read a 3D stack (z, y, x) in its stored dtype; singleton axes are squeezed."""
    path = Path(path)
    with _open(path) as tif:
        shape, axes = _series_layout(tif, path)
        _check_ndim(shape, axes, path, (3,))
        array = _read_series(tif, path).reshape(shape)
    return _check_values(array, path)


def _unit_scale(unit: str | None) -> float | None:
    """Micrometres per ``unit`` (ImageJ escapes µ as a literal \\u00B5), or None if unknown."""
    if not unit:
        return None
    unit = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    return _UNIT_UM.get(unit) or _UNIT_UM.get(unit.lower())


def _ome_voxel_size(xml: str) -> VoxelSize | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        scale = _unit_scale(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is None or scale is None:
            return None
        sizes.append(float(value) * scale)
    return _voxel_size_or_none(sizes)


def _imagej_voxel_size(tif: tifffile.TiffFile) -> VoxelSize | None:
    meta = tif.imagej_metadata or {}
    scale = _unit_scale(meta.get("unit"))
    if scale is None or "spacing" not in meta:
        return None
    tags = tif.pages[0].tags
    sizes = []
    for name in ("XResolution", "YResolution"):
        if name not in tags:
            return None
        num, den = tags[name].value  # pixels per unit
        if num <= 0:
            return None
        sizes.append(den / num * scale)
    sizes.append(float(meta["spacing"]) * scale)
    return _voxel_size_or_none(sizes)


def _voxel_size_or_none(xyz: Sequence[float]) -> VoxelSize | None:
    if not all(math.isfinite(v) and v > 0 for v in xyz):
        return None
    # Resolutions are stored as rationals: round away the conversion noise (0.8 -> 0.80000000001).
    return VoxelSize(*(float(f"{v:.9g}") for v in xyz))


def read_voxel_size(path: str | os.PathLike) -> VoxelSize | None:
    """Voxel size (um) from OME-XML or ImageJ metadata; None unless x, y and z are all given."""
    path = Path(path)
    with _open(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            size = _ome_voxel_size(tif.ome_metadata)
            if size is not None:
                return size
        if tif.is_imagej:
            return _imagej_voxel_size(tif)
    return None


def voxel_size_of(path: str | os.PathLike, override: VoxelSize | None) -> VoxelSize:
    """The override if given, else the file's metadata, else an InputError asking for --voxel-size."""
    if override is not None:
        return override
    size = read_voxel_size(path)
    if size is None:
        raise InputError(f"{path}: no voxel size in the file's metadata; give it with --voxel-size X Y Z (micrometres)")
    return size


# --------------------------------------------------------------------------- writing


def _writable_array(array: np.ndarray, path: Path) -> np.ndarray:
    """Cast to a dtype ImageJ reads: uint8, uint16 or float32."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype in (np.uint8, np.uint16, np.float32):
        return array
    if array.dtype.kind in "iu":
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise OutputError(f"{path}: integer values {lo}..{hi} do not fit uint16 (0..65535) for an ImageJ TIFF")
        return array.astype(np.uint16)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    raise OutputError(f"{path}: cannot write dtype {array.dtype} as an ImageJ TIFF")


def write_stack(path: str | os.PathLike, array: np.ndarray, voxel_size: VoxelSize | None = None) -> None:
    """Write a 3D (z, y, x) array as an ImageJ TIFF (scale in um when ``voxel_size`` is given), atomically."""
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D (z, y, x) array, got shape {array.shape}")
    data = _writable_array(array, path)
    metadata: dict[str, object] = {"axes": "ZYX"}
    kwargs: dict[str, object] = {}
    if voxel_size is not None:
        metadata.update(spacing=voxel_size.z, unit="um")
        kwargs["resolution"] = (1.0 / voxel_size.x, 1.0 / voxel_size.y)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, imagej=True, metadata=metadata, **kwargs)
    log.debug("wrote %s %s %s", path, data.shape, data.dtype)


# --------------------------------------------------------------------------- time series


def natural_key(s: str) -> list:
    """Sort key putting "t2" before "t10" (digit runs compare as integers)."""
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", s)]


@dataclass(frozen=True)
class TimePoint:
    """One 3D time point: a whole 3D file (``index`` None) or frame ``index`` of a 4D (t, z, y, x) file."""

    name: str
    source: Path
    index: int | None

    def load(self) -> np.ndarray:
        """The (z, y, x) volume of this time point (reads only this frame of a 4D file)."""
        if self.index is None:
            return read_stack(self.source)
        path = Path(self.source)
        what = f" (time point {self.index})"
        with _open(path) as tif:
            shape, axes = _series_layout(tif, path)
            _check_ndim(shape, axes, path, (4,))
            n_t = shape[0]
            if not 0 <= self.index < n_t:
                raise InputError(f"{path}: has {n_t} time points, no time point {self.index}")
            full = tuple(tif.series[0].shape)
            planes = math.prod(shape[1:-2])  # pages per time point when each page is one (y, x) plane
            if len(tif.series[0].pages) == math.prod(full[:-2]) and full[-2:] == shape[-2:]:
                frame = _read_series(tif, path, slice(self.index * planes, (self.index + 1) * planes))
            else:  # pages hold more than one plane (e.g. samples): read all and pick the frame
                frame = _read_series(tif, path).reshape(shape)[self.index]
        return _check_values(frame.reshape(shape[1:]), path, what)


def _tiffs_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _layout_of(path: Path, allowed: tuple[int, ...]) -> tuple[tuple[int, ...], str, bool]:
    """Squeezed shape, axes, and whether the axes come from ImageJ/OME metadata (not guessed)."""
    with _open(path) as tif:
        shape, axes = _series_layout(tif, path)
        labelled = bool(tif.is_imagej or tif.is_ome)
    _check_ndim(shape, axes, path, allowed)
    return shape, axes, labelled


def read_series(path: str | os.PathLike) -> list[TimePoint]:
    """Time points of a 3D TIFF (one), a 4D (t, z, y, x) TIFF, or a folder of 3D TIFFs (natural order)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = _tiffs_in(path)
        if not files:
            raise InputError(f"{path}: folder holds no TIFF files (*.tif, *.tiff)")
        for f in files:
            _layout_of(f, (3,))
        return [TimePoint(f.stem, f, None) for f in files]
    shape, axes, labelled = _layout_of(path, (3, 4))
    if len(shape) == 3:
        return [TimePoint(path.stem, path, None)]
    if labelled and axes != "TZYX":  # e.g. channels (ZCYX); without ImageJ/OME axes 4D is (t, z, y, x)
        raise InputError(f"{path}: is 4D with axes {axes} ({_dims(shape)}); expected a one-channel time series TZYX")
    return [TimePoint(f"{path.stem}_t{i:04d}", path, i) for i in range(shape[0])]


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Sample:
    """One training/evaluation volume and its masks (None where absent)."""

    name: str
    image: Path
    nsn: Path | None
    ndn: Path | None
    labels: Path | None


# images folder name -> {field: mask folder name}
_LAYOUTS = {
    "images": {"nsn": "nsn", "ndn": "ndn", "labels": "labels"},
    "images_raw": {"nsn": "images_nsn", "ndn": "images_ndn"},
}


def _by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in _tiffs_in(folder):
        if f.stem in found:
            raise InputError(f"{f}: same name as {found[f.stem]}; keep one of them")
        found[f.stem] = f
    return found


def find_dataset(root: str | os.PathLike) -> list[Sample]:
    """Pair images with masks by file stem: ``root/images`` + ``nsn``/``ndn``/``labels``, or
    ``root/images_raw`` + ``images_nsn``/``images_ndn`` (the reference layout). Natural order."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    present = [name for name in _LAYOUTS if (root / name).is_dir()]
    if not present:
        raise InputError(f"{root}: no images folder; expected {' or '.join(n + '/' for n in _LAYOUTS)} inside it")
    if len(present) > 1:
        raise InputError(f"{root}: has both {present[0]}/ and {present[1]}/; keep one layout")
    images_dir = root / present[0]
    images = _by_stem(images_dir)
    if not images:
        raise InputError(f"{images_dir}: holds no TIFF files (*.tif, *.tiff)")
    masks: dict[str, dict[str, Path]] = {}
    for field, folder in _LAYOUTS[present[0]].items():
        found = _by_stem(root / folder) if (root / folder).is_dir() else {}
        for stem, f in found.items():
            if stem not in images:
                raise InputError(f"{f}: no matching image in {images_dir}")
        masks[field] = found
    return [Sample(name=stem, image=image, nsn=masks["nsn"].get(stem), ndn=masks["ndn"].get(stem),
                   labels=masks.get("labels", {}).get(stem))
            for stem, image in images.items()]
