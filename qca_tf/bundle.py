"""QCANet bundles: an NSN and an NDN model folder with the post-processing that goes
with them, the unit ``qca-tf predict --model`` loads (by folder or by registered name,
see :mod:`qca_tf.registry`).

A bundle folder (format ``qca_tf.bundle/4``)::

    qcanet.json   format, postprocess (PostprocessConfig, with the annotation
                  offset the labels are moved by), tta (the test-time
                  augmentation its thresholds were chosen with: 1, 4 or 8, see
                  :data:`qca_tf.infer.TTA_TRANSFORMS`), description (what data the
                  networks were trained on), voxel_size_um (x, y, z of that data, or
                  null), qca_tf_version
    nsn/, ndn/    model folders (see :mod:`qca_tf.modelio`)

Formats 1 (``{"format": "qca_tf.bundle/1", "postprocess": {...}}``: no description, no
voxel size), 2 (no tta: 1) and 3 (no annotation offset: 0) are migrated on load; a
newer format is refused with a ModelError that says to upgrade qca_tf.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .config import (TTA_CHOICES, InferenceConfig, PostprocessConfig, from_dict, read_json, to_dict, valid_tta,
                     write_json_atomic)
from .errors import ConfigError, ModelError
from .modelio import (CONFIG_NAME, LoadedModel, check_input_channels, copy_model_folder, format_version,
                      read_model_config)
from .preprocess import GridRecipe

log = logging.getLogger(__name__)

BUNDLE_FILE = "qcanet.json"
BUNDLE_FORMAT_NAME = "qca_tf.bundle"
BUNDLE_FORMAT_VERSION = 4
BUNDLE_FORMAT = f"{BUNDLE_FORMAT_NAME}/{BUNDLE_FORMAT_VERSION}"
_KEYS = {"format", "postprocess", "tta", "description", "voxel_size_um", "qca_tf_version"}


@dataclass
class Bundle:
    """A bundle's metadata (qcanet.json, migrated) and where its networks are."""

    folder: Path
    postprocess: PostprocessConfig
    description: str = ""
    voxel_size_um: tuple[float, float, float] | None = None
    info: dict = field(default_factory=dict)
    tta: int = 1  # the test-time augmentation ``qca-tf predict`` uses by default (InferenceConfig.tta)

    @property
    def nsn(self) -> Path:
        return self.folder / "nsn"

    @property
    def ndn(self) -> Path:
        return self.folder / "ndn"


@dataclass
class Networks:
    """NSN (required) and NDN (optional: without it, connected components of NSN), the
    post-processing parameters, and the bundle they came from (None for --nsn/--ndn)."""

    nsn: LoadedModel
    ndn: LoadedModel | None
    postprocess: PostprocessConfig
    bundle: Bundle | None = None

    @property
    def spacing_um(self) -> float:
        return self.nsn.spacing_um

    @property
    def precision(self) -> str:
        """The resolved Keras dtype policy the networks run under."""
        return self.nsn.precision

    @property
    def recipes(self) -> list[GridRecipe]:
        """The distinct preprocessing recipes of the networks (NSN's first): a time point
        is brought to the grid once per recipe."""
        nets = [self.nsn] + ([self.ndn] if self.ndn is not None else [])
        return list(dict.fromkeys(net.grid_recipe for net in nets))


def _check_voxel(voxel_size_um, where: str) -> tuple[float, float, float] | None:
    if voxel_size_um is None:
        return None
    try:
        voxel = tuple(float(v) for v in voxel_size_um)
    except (TypeError, ValueError):
        voxel = ()
    if len(voxel) != 3 or not all(v > 0 for v in voxel):
        raise ConfigError(f"{where}: voxel_size_um {voxel_size_um!r} is not three positive numbers (x, y, z)")
    return voxel  # type: ignore[return-value]


def _check_tta(tta, where: str) -> int:
    if not valid_tta(tta):
        raise ConfigError(f"{where}: tta {json.dumps(tta)} is not one of {', '.join(map(str, TTA_CHOICES))}")
    return int(tta)


def save_bundle(folder: str | os.PathLike, postprocess_cfg: PostprocessConfig, *, description: str = "",
                voxel_size_um: tuple[float, float, float] | None = None, tta: int = 1) -> None:
    """Mark ``folder`` (holding model folders ``nsn/`` and ``ndn/``) as a QCANet bundle.
    ``description`` says what data the networks learnt from (shown by ``qca-tf models``),
    ``voxel_size_um`` (x, y, z) that data's voxel size, ``tta`` the test-time augmentation
    (1, 4 or 8) ``qca-tf predict`` uses by default, the one its thresholds were chosen with."""
    folder = Path(folder)
    tta = _check_tta(tta, str(folder))
    for task in ("nsn", "ndn"):
        if not (folder / task / CONFIG_NAME).exists():
            raise ModelError(f"{folder / task}: not a model folder (no {CONFIG_NAME})")
        info, _ = read_model_config(folder / task)
        if info["task"] != task:
            raise ModelError(f"{folder / task}: is a {info['task']} model, not an {task.upper()}")
    voxel = _check_voxel(voxel_size_um, str(folder))
    write_json_atomic(folder / BUNDLE_FILE, {
        "format": BUNDLE_FORMAT, "postprocess": to_dict(postprocess_cfg), "tta": tta, "description": str(description),
        "voxel_size_um": None if voxel is None else list(voxel), "qca_tf_version": __version__})


def make_bundle(out: str | os.PathLike, nsn: str | os.PathLike, ndn: str | os.PathLike,
                postprocess_cfg: PostprocessConfig, *, description: str = "",
                voxel_size_um: tuple[float, float, float] | None = None, tta: int = 1) -> Path:
    """Copy model folders ``nsn`` and ``ndn`` into ``out/nsn`` and ``out/ndn`` in the
    current weights-only format (no optimiser state, no training logs) and write
    ``out/qcanet.json``. A source that already is ``out/nsn`` (or ``out/ndn``) stays."""
    out = Path(out)
    for task, src in (("nsn", Path(nsn)), ("ndn", Path(ndn))):
        read_model_config(src)  # a missing or broken folder fails before anything is written
        if (out / task).resolve() != src.resolve():
            copy_model_folder(src, out / task)
    save_bundle(out, postprocess_cfg, description=description, voxel_size_um=voxel_size_um, tta=tta)
    return out


def _migrate(meta: dict, version: int, path: Path) -> dict:
    meta = dict(meta)
    if version == 1:  # 1 -> 2: description and training voxel size added
        log.debug("%s: migrating bundle format 1 to %d", path, BUNDLE_FORMAT_VERSION)
        meta.setdefault("description", "")
        meta.setdefault("voxel_size_um", None)
        version = 2
    if version == 2:  # 2 -> 3: tta added (before it, predict ran without test-time augmentation)
        meta.setdefault("tta", 1)
    # 3 -> 4: postprocess.annotation_offset_um added; its default (0, 0, 0) is what format 3 did
    meta["format"] = BUNDLE_FORMAT
    return meta


def read_bundle(folder: str | os.PathLike) -> Bundle:
    """Read and migrate ``folder/qcanet.json`` (the networks are not loaded)."""
    folder = Path(folder)
    path = folder / BUNDLE_FILE
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    if not path.is_file():
        hint = "; it is a single model folder: give it with --nsn (or --ndn)" if (folder / CONFIG_NAME).is_file() \
            else ""
        raise ModelError(f"{folder}: not a QCANet bundle (no {BUNDLE_FILE}){hint}")
    meta = read_json(path)
    version = format_version(meta.get("format"), BUNDLE_FORMAT_NAME, BUNDLE_FORMAT_VERSION, path)
    if version < 3 and "tta" in meta:  # format 2 predicted without it: a tta there was not written by qca_tf
        raise ConfigError(f"{path}: key 'tta' came with format 3; write \"format\": \"{BUNDLE_FORMAT}\" to use it")
    post_meta = meta.get("postprocess")
    if version < 4 and isinstance(post_meta, dict) and "annotation_offset_um" in post_meta:
        raise ConfigError(f"{path}: key 'postprocess.annotation_offset_um' came with format 4; write "
                          f"\"format\": \"{BUNDLE_FORMAT}\" to use it")
    meta = _migrate(meta, version, path)
    unknown = sorted(set(meta) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(_KEYS))})")
    try:
        post = from_dict(PostprocessConfig, meta.get("postprocess", {}), "postprocess")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    description = meta.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError(f"{path}: description {description!r} is not a string")
    return Bundle(folder, post, description, _check_voxel(meta.get("voxel_size_um"), str(path)), meta,
                  _check_tta(meta.get("tta", 1), str(path)))


def load_networks(*, nsn: str | os.PathLike | None = None, ndn: str | os.PathLike | None = None,
                  bundle: str | os.PathLike | None = None, infer_cfg: InferenceConfig | None = None,
                  postprocess_cfg: PostprocessConfig | None = None) -> Networks:
    """Load NSN and NDN from model folders (or SavedModel exports), or from a bundle given
    as a folder or a registered name (:func:`qca_tf.registry.resolve`); ``nsn``/``ndn``
    given with a bundle replace its networks. ``infer_cfg.precision`` (default auto) is
    resolved once, here, and both networks load under it. ``postprocess_cfg`` overrides
    the bundle's post-processing parameters. With the openvino engine a network whose
    OpenVINO model is already cached is not built in Keras (no TensorFlow import)."""
    from .engines import keras_policy, resolve_inference
    from .modelio import load_model_folder
    from .registry import resolve

    stored = PostprocessConfig()
    meta = None
    if bundle is not None:
        meta = read_bundle(resolve(bundle))
        stored = meta.postprocess
        nsn, ndn = nsn or meta.nsn, ndn or meta.ndn
    if nsn is None:
        raise ModelError("no NSN model: give --nsn DIR or --model BUNDLE")
    run_cfg = resolve_inference(infer_cfg or InferenceConfig())
    policy = keras_policy(run_cfg)
    log.debug("loading the networks for the %s engine at precision %s", run_cfg.engine, run_cfg.precision)

    def load(folder):
        if run_cfg.engine == "openvino":
            from .engines import cached_openvino_model

            cached = cached_openvino_model(folder)
            if cached is not None:
                return cached
        from .runtime import init_tensorflow

        init_tensorflow()
        return load_model_folder(folder, dtype_policy=policy)

    nets = Networks(nsn=load(nsn), ndn=load(ndn) if ndn is not None else None,
                    postprocess=postprocess_cfg or stored, bundle=meta)
    if nets.ndn is not None:
        check_input_channels(nets.ndn, nets.nsn.model_cfg.input_channels, f"the NSN {nsn} (train both on the same "
                             "channels)")
    if nets.nsn.task != "nsn":
        raise ModelError(f"{nsn}: is a {nets.nsn.task} model, not an NSN")
    if nets.ndn is not None:
        if nets.ndn.task != "ndn":
            raise ModelError(f"{ndn}: is a {nets.ndn.task} model, not an NDN")
        if abs(nets.ndn.spacing_um - nets.nsn.spacing_um) > 1e-6:
            raise ModelError(f"{ndn}: trained on a {nets.ndn.spacing_um} um grid, the NSN on "
                             f"{nets.nsn.spacing_um} um; train both on the same voxel size")
    return nets
