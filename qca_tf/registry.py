"""Named models: ``qca-tf predict --model NAME`` and ``qca-tf models``.

A name is the folder name of a QCANet bundle (see :mod:`qca_tf.bundle`) under one of
the model roots, searched in this order (the first root holding a name wins):

1. ``extra_roots`` given by the caller,
2. the folders listed in the environment variable ``QCA_TF_MODELS`` (``os.pathsep``-separated),
3. ``qca_tf/pretrained/`` inside the installed package (shipped as package data).

``--model`` takes a folder or a name: an existing path is a folder, anything else must
be a registered name.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

log = logging.getLogger(__name__)

ENV_VAR = "QCA_TF_MODELS"
PACKAGE_ROOT = Path(__file__).resolve().parent / "pretrained"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

Roots = Sequence[str | os.PathLike] | None


@dataclass(frozen=True)
class ModelEntry:
    """One named model: its bundle folder and what ``qca-tf models`` says about it."""

    name: str
    folder: Path
    description: str
    voxel_size_um: tuple[float, float, float] | None
    spacing_um: float
    size_bytes: int
    tta: int = 1

    def line(self) -> str:
        """One line: name, what data, voxel size, grid, test-time augmentation (when used), size on disk."""
        voxel = ("voxels " + " x ".join(f"{v:g}" for v in self.voxel_size_um) + " um (x y z)"
                 if self.voxel_size_um else "voxel size not recorded")
        what = self.description or "no description"
        tta = f"predicts with --tta {self.tta}; " if self.tta > 1 else ""
        return f"{self.name}: {what}; {voxel}, grid {self.spacing_um:g} um; {tta}{_human(self.size_bytes)}"


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def roots(extra_roots: Roots = None) -> list[Path]:
    """The model roots in search order (see the module docstring)."""
    env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return [Path(p) for p in (*(extra_roots or ()), *env)] + [PACKAGE_ROOT]


def available(extra_roots: Roots = None) -> dict[str, Path]:
    """Registered names -> bundle folders (sorted by name). A sub-folder of a root is a
    named model when it holds a bundle file; other entries are ignored."""
    from .bundle import BUNDLE_FILE

    found: dict[str, Path] = {}
    for root in roots(extra_roots):
        if not root.is_dir():
            if root != PACKAGE_ROOT:
                log.debug("model root %s does not exist", root)
            continue
        for sub in sorted(root.iterdir()):
            if sub.is_dir() and NAME_PATTERN.fullmatch(sub.name) and (sub / BUNDLE_FILE).is_file():
                found.setdefault(sub.name, sub)
    return dict(sorted(found.items()))


def _known(names: Sequence[str]) -> str:
    if not names:
        return (f"no named models are installed (none in {PACKAGE_ROOT} or ${ENV_VAR}); "
                "give a bundle folder instead")
    return f"known names: {', '.join(names)} (see qca-tf models)"


def resolve(model: str | os.PathLike, extra_roots: Roots = None) -> Path:
    """The bundle folder of ``model``: an existing path as it is, else a registered name.
    ModelError when it is neither (listing the known names)."""
    path = Path(model)
    if path.exists():
        return path
    text = str(model)
    names = available(extra_roots)
    if text in names:
        return names[text]
    if NAME_PATTERN.fullmatch(text):
        raise ModelError(f"{text}: not a model folder nor a known model name; {_known(list(names))}")
    raise ModelError(f"{text}: model folder not found")


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def describe(name: str, folder: Path) -> ModelEntry:
    """The entry of bundle ``folder`` registered as ``name`` (reads its metadata, not its weights)."""
    from .bundle import read_bundle
    from .modelio import read_model_config

    meta = read_bundle(folder)
    info, _ = read_model_config(meta.nsn)
    return ModelEntry(name, folder, meta.description, meta.voxel_size_um, float(info["spacing_um"]),
                      folder_size(folder), meta.tta)


def list_models(extra_roots: Roots = None) -> list[ModelEntry]:
    """Every named model, sorted by name."""
    return [describe(name, folder) for name, folder in available(extra_roots).items()]
