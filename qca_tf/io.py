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


# Axis letters tifffile reports that this tool understands (others, e.g. Q or I, carry no meaning).
_KNOWN_AXES = "TZC"


@dataclass(frozen=True)
class Layout:
    """How the first series of a TIFF maps onto time points, z, y, x and channels.

    ``axes``/``shape`` are the series' axes as tifffile reports them, singletons removed
    (for messages). ``roles`` gives each axis of the *full* series (singletons included)
    one of ``t z c y x`` or ``1`` (a singleton). ``labelled``: the axes came from
    ImageJ/OME/tifffile metadata; otherwise they follow the plain-TIFF rule (README).
    """

    path: Path
    axes: str
    shape: tuple[int, ...]
    full_shape: tuple[int, ...]
    roles: str
    labelled: bool
    channel_names: tuple[str, ...] = ()

    def size(self, role: str) -> int:
        """Length of the ``t``, ``z``, ``c``, ``y`` or ``x`` axis (1 when absent)."""
        return self.full_shape[self.roles.index(role)] if role in self.roles else 1

    @property
    def n_t(self) -> int:
        return self.size("t")

    @property
    def n_c(self) -> int:
        return self.size("c")

    @property
    def zyx(self) -> tuple[int, int, int]:
        return (self.size("z"), self.size("y"), self.size("x"))

    def describe_channels(self) -> str:
        """``0: DAPI, 1: GFP`` (names from the metadata) or ``0, 1``."""
        if len(self.channel_names) == self.n_c:
            return ", ".join(f"{i}: {n}" for i, n in enumerate(self.channel_names))
        return ", ".join(str(i) for i in range(self.n_c))

    def check_channels(self, channels: tuple[int, ...] | None) -> tuple[int, ...]:
        """The channel indices to read: ``channels`` checked against the file; None is
        allowed only for a one-channel file (a multi-channel file names its channels)."""
        n = self.n_c
        if channels is None:
            if n > 1:
                raise InputError(f"{self.path}: has {n} channels ({self.describe_channels()}); "
                                 "choose the nuclear channel with --channel N (counted from 0)")
            return (0,)
        bad = [c for c in channels if not 0 <= c < n]
        if bad:
            raise InputError(f"{self.path}: has {n} channel(s) ({self.describe_channels()}); no channel {bad[0]}")
        return tuple(channels)


def _layout_error(path: Path, shape: tuple[int, ...], axes: str, problem: str) -> InputError:
    return InputError(f"{path}: axes {axes} ({_dims(shape)}) {problem}")


def _roles(full_axes: str, full_shape: tuple[int, ...], path: Path) -> tuple[str, bool]:
    """Per full axis its role (t z c y x 1) and whether the roles come from metadata.

    Labelled axes (T, Z, C from ImageJ/OME/tifffile metadata; a trailing S, colour
    samples, is channels) are trusted, and refused when there is no z. Without axis
    metadata (letters such as Q, I, S before Y) the plain rule applies: the last two
    axes are y, x; one more axis is z; two more are t, z; more are refused.
    """
    kept = [(a, n) for a, n in zip(full_axes, full_shape) if n != 1]
    axes = "".join(a for a, _ in kept)
    shape = tuple(n for _, n in kept)
    roles = []
    unknown = [a for a in axes if a not in _KNOWN_AXES + "YX" and not (a == "S" and axes.endswith("S"))]
    labelled = not unknown
    if unknown and any(a in _KNOWN_AXES for a in axes):
        raise _layout_error(path, shape, axes, "mix known and unknown axes; save it as an ImageJ hyperstack (TZCYX)")
    if not labelled:
        n_other = sum(1 for a, n in kept if a not in "YX") - axes.endswith("S")  # colour samples are channels
        plain = {1: "z", 2: "tz"}.get(n_other)
        if plain is None and n_other > 2:
            raise InputError(f"{path}: is {len(kept)}D without axis metadata ({_dims(shape)}); "
                             "save it as an ImageJ hyperstack (TZCYX) so its axes are known")
        it = iter(plain or "")
    for a, n in zip(full_axes, full_shape):
        if n == 1:
            roles.append("1")
        elif a in "YX":
            roles.append(a.lower())
        elif a == "S" and axes.endswith("S"):
            roles.append("c")
        elif labelled:
            roles.append(a.lower())
        else:
            roles.append(next(it))
    if labelled:
        if roles.count("c") > 1:
            raise _layout_error(path, shape, axes, "hold two channel axes (C and colour samples)")
        if "z" not in roles and len(shape) >= 3:
            raise _layout_error(path, shape, axes, "have no z axis; expected a z stack (ZYX, TZYX, ZCYX or TZCYX)")
    return "".join(roles), labelled


def _channel_names(tif: tifffile.TiffFile, n_c: int) -> tuple[str, ...]:
    """Channel names from OME ``Channel Name`` or ImageJ ``Labels`` (first n_c), else ()."""
    try:
        if tif.is_ome and tif.ome_metadata:
            root = ET.fromstring(tif.ome_metadata)
            names = [el.get("Name") for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Channel"]
            if len(names) >= n_c and all(names[:n_c]):
                return tuple(names[:n_c])
        if tif.is_imagej:
            labels = (tif.imagej_metadata or {}).get("Labels")
            if isinstance(labels, (list, tuple)) and len(labels) >= n_c and all(labels[:n_c]):
                return tuple(str(x) for x in labels[:n_c])
    except Exception:  # names are a courtesy: never fail a read over them
        return ()
    return ()


def _series_of(tif: tifffile.TiffFile, path: Path):
    try:
        if not tif.pages or not tif.series:
            raise InputError(f"{path}: TIFF file holds no images (a header without pages)")
        return tif.series[0]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable TIFF file ({_reason(exc)})") from None


def _layout(tif: tifffile.TiffFile, path: Path) -> Layout:
    series = _series_of(tif, path)
    try:
        full_shape, full_axes = tuple(int(n) for n in series.shape), series.axes
    except Exception as exc:
        raise InputError(f"{path}: not a readable TIFF file ({_reason(exc)})") from None
    if 0 in full_shape:
        raise InputError(f"{path}: is empty (shape {_dims(full_shape)})")
    kept = [(n, a) for n, a in zip(full_shape, full_axes) if n != 1]
    shape, axes = tuple(n for n, _ in kept), "".join(a for _, a in kept)
    if len(shape) < 3:
        _check_ndim(shape, axes, path, (3,))
    roles, labelled = _roles(full_axes, full_shape, path)
    n_c = full_shape[roles.index("c")] if "c" in roles else 1
    return Layout(path, axes, shape, full_shape, roles, labelled, _channel_names(tif, n_c) if n_c > 1 else ())


def stack_dtype(path: str | os.PathLike) -> np.dtype:
    """The stored dtype of a TIFF's first series (reads only its metadata)."""
    path = Path(path)
    with _open(path) as tif:
        return np.dtype(_series_of(tif, path).dtype)


def read_layout(path: str | os.PathLike) -> Layout:
    """The :class:`Layout` of a TIFF (reads only its metadata)."""
    path = Path(path)
    with _open(path) as tif:
        return _layout(tif, path)


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


def _read_selection(tif: tifffile.TiffFile, lay: Layout, t: int | None, channels: tuple[int, ...]) -> np.ndarray:
    """Time point ``t`` (None: the file has no t axis) and ``channels`` as (z, y, x, c),
    reading no more of the file than needed: a memory map for contiguous uncompressed
    data, else only the pages that hold the selection, else (odd layouts) the whole series."""
    path = lay.path
    series = _series_of(tif, path)
    basic = tuple(t if r == "t" else 0 if r == "1" else slice(None) for r in lay.roles)
    rest = [r for r in lay.roles if r not in "t1"]  # roles of the axes left after basic indexing
    try:
        if series.dataoffset is not None:
            # copy the selection out of the map: only this time point's bytes are read, and a
            # file rewritten or truncated later cannot fault (SIGBUS) an array still in use
            mapped = tifffile.memmap(path, series=0, mode="r")
            data = np.array(mapped[basic])
            del mapped
        else:
            page_shape = tuple(series.keyframe.shape)
            k = len(lay.full_shape) - len(page_shape)
            if k >= 0 and lay.full_shape[k:] == page_shape and math.prod(lay.full_shape[:k]) == len(series.pages):
                index = np.arange(len(series.pages)).reshape(lay.full_shape[:k])[basic[:k]]
                page_roles = [r for r in lay.roles[:k] if r not in "t1"]
                if "c" in page_roles:  # read only the chosen channels' pages
                    index = np.take(index, list(channels), axis=page_roles.index("c"))
                    channels = tuple(range(len(channels)))
                pages = tif.asarray(key=index.ravel().tolist(), series=0)
                data = np.asarray(pages).reshape(index.shape + page_shape)
                data = data[(slice(None),) * index.ndim + basic[k:]]
            else:
                log.debug("%s: pages do not map onto the axes; reading the whole series", path)
                data = series.asarray().reshape(lay.full_shape)[basic]
        if "c" in rest:
            data = np.take(data, list(channels), axis=rest.index("c"))
        else:
            data = data[..., None]
            rest = rest + ["c"]
        data = np.ascontiguousarray(np.transpose(data, [rest.index(r) for r in "zyxc"]))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable TIFF file ({_reason(exc)})") from None
    return data


def _volume(data: np.ndarray, channels: tuple[int, ...] | None) -> np.ndarray:
    """(z, y, x, c) -> (z, y, x) when one channel was asked for (or the file has one)."""
    return data[..., 0] if channels is None or len(channels) == 1 else data


def read_stack(path: str | os.PathLike, channels: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a 3D stack in its stored dtype: (z, y, x), or (z, y, x, c) when several
    ``channels`` are asked for. A multi-channel file needs ``channels``; singleton
    axes are squeezed; a file with a time axis of more than one point is refused."""
    path = Path(path)
    with _open(path) as tif:
        lay = _layout(tif, path)
        if lay.n_t > 1 or len(lay.shape) - (lay.n_c > 1) != 3:
            _check_ndim(lay.shape, lay.axes, path, (3,))
        chosen = lay.check_channels(channels)
        array = _volume(_read_selection(tif, lay, None, chosen), channels)
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
    """One 3D time point: a whole 3D file (``index`` None) or time point ``index`` of a
    file with a t axis. ``channels``: the file channels to read (None: the file must have one)."""

    name: str
    source: Path
    index: int | None
    channels: tuple[int, ...] | None = None

    def load(self) -> np.ndarray:
        """The (z, y, x) volume of this time point, (z, y, x, c) when several channels are
        chosen. Reads only this time point's data (memory map or its pages), not the movie."""
        if self.index is None:
            return read_stack(self.source, self.channels)
        path = Path(self.source)
        what = f" (time point {self.index})"
        with _open(path) as tif:
            lay = _layout(tif, path)
            if lay.n_t <= 1:
                _check_ndim(lay.shape, lay.axes, path, (4,))
            if not 0 <= self.index < lay.n_t:
                raise InputError(f"{path}: has {lay.n_t} time points, no time point {self.index}")
            frame = _read_selection(tif, lay, self.index, lay.check_channels(self.channels))
        return _check_values(_volume(frame, self.channels), path, what)


def _tiffs_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _checked_layout(path: Path, channels: tuple[int, ...] | None, allow_time: bool,
                    default_channels: tuple[int, ...] | None = None) -> tuple[Layout, tuple[int, ...] | None]:
    """Layout of ``path`` checked to be (t,) z, y, x (, c), and the channels to read from it:
    ``channels``, else ``default_channels`` where the file has several channels, else None."""
    lay = read_layout(path)
    spatial = len(lay.shape) - (lay.n_t > 1) - (lay.n_c > 1)
    if spatial != 3 or (lay.n_t > 1 and not allow_time):
        _check_ndim(lay.shape, lay.axes, path, (3, 4) if allow_time else (3,))
        raise InputError(f"{path}: axes {lay.axes} ({_dims(lay.shape)}); expected a z stack (ZYX, TZYX, ZCYX or TZCYX)")
    chosen = channels
    if chosen is None and default_channels and lay.n_c > 1:
        chosen = tuple(default_channels)
        log.info("%s: has %d channels (%s); reading channel %s, the one the model was trained on "
                 "(--channel overrides)", path, lay.n_c, lay.describe_channels(), ", ".join(map(str, chosen)))
    lay.check_channels(chosen)
    return lay, chosen


def read_series(path: str | os.PathLike, channels: tuple[int, ...] | None = None,
                default_channels: tuple[int, ...] | None = None) -> list[TimePoint]:
    """Time points of a 3D TIFF (one), a TIFF with a t axis (TZYX, TZCYX, ...), or a folder
    of 3D TIFFs (natural order). ``channels`` picks file channels (see :class:`TimePoint`);
    without it, ``default_channels`` (those a model was trained on) are read from files
    that have several channels, and one-channel files are read as they are.
    Checks every file's axes and channels from its metadata; reads no pixels."""
    path = Path(path)
    channels = tuple(channels) if channels is not None else None
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = _tiffs_in(path)
        if not files:
            raise InputError(f"{path}: folder holds no TIFF files (*.tif, *.tiff)")
        chosen = [_checked_layout(f, channels, False, default_channels)[1] for f in files]
        return [TimePoint(f.stem, f, None, c) for f, c in zip(files, chosen)]
    lay, chosen = _checked_layout(path, channels, True, default_channels)
    if lay.n_t <= 1:
        return [TimePoint(path.stem, path, None, chosen)]
    return [TimePoint(f"{path.stem}_t{i:04d}", path, i, chosen) for i in range(lay.n_t)]


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
