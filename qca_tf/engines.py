"""Prediction engines: the compiled forward pass of a loaded network.

Every engine gives the same function, ``(b, z, y, x, c) float32 -> (b, z, y, x) float32``
foreground probability (softmax channel 1), for any spatial size that is a multiple of
``2**depth`` (dynamic shapes: one compiled pass serves the whole volume and every tile
shape of :mod:`qca_tf.infer`).

- ``tensorflow``: a ``tf.function`` of the Keras model under the precision policy it
  was loaded with (float32, mixed_float16 on a GPU, mixed_bfloat16); optionally XLA.
- ``openvino``: the OpenVINO CPU runtime, float32 or bf16 (``mixed_bfloat16``). It runs
  what :mod:`qca_tf.export` writes: the network is exported as a SavedModel
  (:func:`qca_tf.export.write_savedmodel`), converted with ``openvino.convert_model``,
  and the converted model (OpenVINO IR) is cached under :func:`cache_dir`, keyed by a
  hash of the architecture, the weights and the qca_tf / OpenVINO versions, so a
  second run does not convert again.
- ``auto``: TensorFlow on a GPU; OpenVINO on a CPU-only machine where it is installed;
  TensorFlow otherwise.

Precision on OpenVINO (:func:`openvino_precision`): ``auto`` is bf16 where the CPU has
bf16 units (AMX or AVX512_BF16: OpenVINO's ``OPTIMIZATION_CAPABILITIES`` lists BF16),
float32 elsewhere.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import to_dict
from .errors import ConfigError, ModelError

log = logging.getLogger(__name__)

ENGINES = ("auto", "tensorflow", "openvino")
#: /proc/cpuinfo flags of CPUs with bf16 matrix or vector units.
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
#: Measured XLA / plain graph time on CPU (DESIGN section 8: 2-core AMX Xeon, 8-11x;
#: docs/BENCHMARKS.md: 2-core AVX2 EPYC).
XLA_CPU_SLOWDOWN = "about 10x"
_OV_PRECISION = {"float32": "f32", "mixed_bfloat16": "bf16"}

Forward = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------ what this machine has


#: Device files a GPU that TensorFlow can use leaves on Linux (NVIDIA's driver; AMD ROCm;
#: WSL2's GPU paravirtualisation, which has no /dev/nvidia*; NVIDIA Jetson).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu")


@functools.lru_cache(maxsize=None)
def has_gpu() -> bool:
    """True when TensorFlow sees a GPU. On Linux without a GPU driver's device file this is
    known without importing TensorFlow (several seconds of start-up)."""
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in GPU_DEVICE_FILES):
        return False
    from .runtime import init_tensorflow

    return bool(init_tensorflow().config.list_physical_devices("GPU"))


def _import_openvino() -> Any:
    import openvino

    return openvino


def openvino_import_error() -> str | None:
    """None when ``import openvino`` works, else why not (one line)."""
    try:
        _import_openvino()
    except Exception as exc:  # ImportError, or a broken native library
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
    return None


@functools.lru_cache(maxsize=None)
def _core() -> Any:
    return _import_openvino().Core()


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in ``path`` (empty where unreadable)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def openvino_capabilities() -> frozenset[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU device (e.g. FP32, BF16, INT8)."""
    return frozenset(str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def has_bf16_units(capabilities: frozenset[str] | None = None, flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively. OpenVINO's device ``capabilities`` decide
    when known (BF16 listed); else the /proc/cpuinfo ``flags`` (amx_bf16, avx512_bf16).
    Both are read from this machine when not given."""
    if capabilities is None:
        try:
            capabilities = openvino_capabilities()
        except Exception:  # no OpenVINO: fall back on the CPU flags
            capabilities = None
    if capabilities is not None:
        return "BF16" in capabilities
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))


def resolve_engine(requested: str, *, gpu: bool | None = None, openvino_error: str | None | bool = False) -> str:
    """The engine ``requested`` (ENGINES) resolves to on this machine: "tensorflow" or
    "openvino". ``gpu`` and ``openvino_error`` (None: OpenVINO imports) are read from the
    machine unless given. ``--engine openvino`` without OpenVINO is a ConfigError."""
    if requested not in ENGINES:
        raise ConfigError(f"--engine {requested!r}: choose one of {', '.join(ENGINES)}")
    if requested == "tensorflow":
        return "tensorflow"
    error = openvino_import_error() if openvino_error is False else openvino_error
    if requested == "openvino":
        if error:
            raise ConfigError(f"--engine openvino: OpenVINO is not available ({error}); "
                              "install it with `pip install openvino` or use --engine tensorflow")
        return "openvino"
    if has_gpu() if gpu is None else gpu:
        return "tensorflow"
    if error:
        log.info("engine auto: TensorFlow (OpenVINO unavailable: %s)", error)
        return "tensorflow"
    return "openvino"


def openvino_precision(requested: str, *, bf16_units: bool | None = None) -> str:
    """The precision the OpenVINO engine runs for ``requested`` (config.PRECISIONS):
    "mixed_bfloat16" or "float32". ``auto`` is bf16 where the CPU has bf16 units
    (``bf16_units``, read from the machine unless given), float32 elsewhere."""
    if requested == "mixed_float16":
        raise ConfigError("--precision mixed_float16 is for the tensorflow engine on a GPU; "
                          "the openvino engine runs float32 or mixed_bfloat16 (or auto)")
    if requested not in ("auto", "float32", "mixed_bfloat16"):
        raise ConfigError(f"--precision {requested!r}: choose auto, float32, mixed_float16 or mixed_bfloat16")
    if requested == "float32":
        return "float32"
    units = _machine_bf16() if bf16_units is None else bf16_units
    if requested == "mixed_bfloat16" and not units:
        _warn_once("this CPU has no bf16 units (AMX / AVX512_BF16): OpenVINO runs float32")
    return "mixed_bfloat16" if units else "float32"


@functools.lru_cache(maxsize=None)
def _machine_bf16() -> bool:
    return has_bf16_units()


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)


def use_jit(jit: bool, engine: str, *, gpu: bool | None = None) -> bool:
    """Whether to compile with XLA: only when asked for, on TensorFlow, on a GPU. On a CPU
    XLA is dropped with a warning (measured about 10x slower there); OpenVINO has no XLA."""
    if not jit:
        return False
    if engine != "tensorflow":
        log.warning("--jit ignored: XLA is TensorFlow's compiler; the %s engine compiles its own way", engine)
        return False
    if not (has_gpu() if gpu is None else gpu):
        log.warning("--jit ignored on a CPU: XLA made the networks %s slower there (see docs/BENCHMARKS.md)",
                    XLA_CPU_SLOWDOWN)
        return False
    return True


def resolve_inference(cfg: Any) -> Any:
    """``cfg`` (an InferenceConfig) with its engine, precision and jit resolved for this
    machine: the one place they are decided. The precision is the one the networks run
    at (OpenVINO: :func:`openvino_precision`; TensorFlow: ``infer.resolve_precision``)."""
    import dataclasses

    from .infer import resolve_precision

    engine = resolve_engine(cfg.engine)
    precision = openvino_precision(cfg.precision) if engine == "openvino" else resolve_precision(cfg.precision)
    return dataclasses.replace(cfg, engine=engine, precision=precision, jit=use_jit(cfg.jit, engine))


def keras_policy(cfg: Any) -> str:
    """The Keras dtype policy to build the networks with for a resolved ``cfg``: float32
    for OpenVINO (it converts the float32 network and runs it at its own precision)."""
    return "float32" if cfg.engine == "openvino" else cfg.precision


# ------------------------------------------------------------------ forward passes


def forward(loaded: Any, engine: str, precision: str = "auto", jit: bool = False) -> Forward:
    """The compiled forward pass of ``loaded`` (a modelio.LoadedModel) on ``engine`` (ENGINES):
    (b, z, y, x, c) float32 -> (b, z, y, x) float32 foreground probability. Built once per
    model, engine, precision and jit flag (cached in ``loaded.forward_cache``).

    TensorFlow runs the model under the policy it was loaded with (``precision`` is not
    used); OpenVINO runs ``openvino_precision(precision)`` and needs a float32 model."""
    engine = resolve_engine(engine)
    if engine == "tensorflow":
        return tensorflow_forward(loaded, jit)
    if jit:
        log.debug("jit ignored by the openvino engine")
    return openvino_forward(loaded, openvino_precision(precision))


def tensorflow_forward(loaded: Any, jit: bool = False) -> Forward:
    """TensorFlow pass: one ``tf.function`` per model and jit flag, traced once with a
    dynamic input signature (XLA, with ``jit``, still compiles once per distinct shape)."""
    import tensorflow as tf

    from .modelio import SavedModelWrapper

    model = loaded.model
    if model is None:
        raise ModelError(f"{loaded.folder}: loaded for the openvino engine only (from its conversion cache); "
                         "load it with the tensorflow engine to run it there")
    key = ("tensorflow", bool(jit))
    if key not in loaded.forward_cache:
        if jit and not has_gpu():
            log.warning("XLA (jit) on a CPU: measured %s slower than without it", XLA_CPU_SLOWDOWN)
        saved = isinstance(model, SavedModelWrapper)

        def call(x):
            probs = model(x) if saved else model(x, training=False)
            return tf.cast(probs[..., 1], tf.float32)  # mixed precision models end in float32 already
        spec = tf.TensorSpec([None, None, None, None, loaded.model_cfg.input_channels], tf.float32)
        loaded.forward_cache[key] = tf.function(call, jit_compile=bool(jit), input_signature=[spec])
    fn = loaded.forward_cache[key]
    return lambda x: fn(tf.constant(x, tf.float32)).numpy()


def cache_dir() -> Path:
    """Where converted models are cached: $QCA_TF_CACHE, else $XDG_CACHE_HOME/qca_tf,
    else ~/.cache/qca_tf."""
    if os.environ.get("QCA_TF_CACHE"):
        return Path(os.environ["QCA_TF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qca_tf"


def model_key(loaded: Any) -> str:
    """sha256 (hex) of what the converted model depends on: the architecture, the weights
    (the weights file it was loaded from, a SavedModel folder's files, or a Keras model's
    arrays) and the qca_tf and OpenVINO versions. From a weights file it needs no TensorFlow."""
    from .modelio import SavedModelWrapper

    h = hashlib.sha256()
    ov_version = _import_openvino().__version__
    h.update(json.dumps({"model": to_dict(loaded.model_cfg), "qca_tf": __version__, "openvino": ov_version},
                        sort_keys=True).encode())
    files: list[tuple[str, Path]] = []
    memo = None
    if getattr(loaded, "weights_path", None) is not None:
        path = Path(loaded.weights_path)
        st = path.stat()
        # the same file, unchanged, in this process: hashed once (a cache hit looks the key
        # up twice, in cached_openvino_model and again when the engine compiles)
        memo = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, h.hexdigest())
        if memo in _FILE_KEYS:
            return _FILE_KEYS[memo]
        files = [(path.name, path)]
    elif isinstance(loaded.model, SavedModelWrapper):
        root = Path(loaded.model.folder)
        files = [(str(p.relative_to(root)), p) for p in sorted(p for p in root.rglob("*") if p.is_file())]
    else:
        for w in loaded.model.weights:
            a = np.ascontiguousarray(np.asarray(w))
            h.update(f"{w.path}:{a.dtype}:{a.shape}".encode())
            h.update(a.data)
    for name, path in files:
        h.update(name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    if memo is not None:
        _FILE_KEYS[memo] = h.hexdigest()
    return h.hexdigest()


#: model_key of weights files already hashed in this process:
#: (path, inode, size, mtime_ns, ctime_ns, header digest) -> key.
_FILE_KEYS: dict[tuple, str] = {}


def _cached_xml(key: str) -> Path:
    return cache_dir() / "openvino" / key[:32] / "model.xml"


def cached_openvino_model(folder: str | Path) -> Any | None:
    """A model folder (config.json + weights file) as a :class:`qca_tf.modelio.LoadedModel`
    without its Keras network (``model`` None), when its OpenVINO model is already in the
    cache: prediction with the openvino engine then needs no TensorFlow. None when the
    folder must be loaded the usual way (not converted yet, or a SavedModel export)."""
    from .modelio import LoadedModel, SAVEDMODEL_NAME, read_data_config, read_model_config, weights_file

    folder = Path(folder)
    info, model_cfg = read_model_config(folder)
    source = weights_file(folder)
    if source is None or source.name == SAVEDMODEL_NAME:
        return None
    loaded = LoadedModel(None, model_cfg, info["task"], float(info["spacing_um"]), folder, info,
                         data_cfg=read_data_config(info), precision="float32", weights_path=source)
    if not _cached_xml(model_key(loaded)).is_file():
        return None
    log.debug("%s: its OpenVINO model is cached; TensorFlow is not loaded for it", folder)
    return loaded


def _convert(loaded: Any, xml: Path) -> None:
    """Export ``loaded`` as a SavedModel (a SavedModel folder is used as it is), convert it
    with OpenVINO and save the IR as ``xml`` (+ .bin), atomically (temp folder, rename)."""
    from .export import write_savedmodel
    from .modelio import SavedModelWrapper

    ov = _import_openvino()
    xml.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=xml.parent.parent, prefix=f".{xml.parent.name}.", suffix=".tmp"))
    try:
        if isinstance(loaded.model, SavedModelWrapper):
            saved = Path(loaded.model.folder)
        else:
            saved = tmp / "savedmodel"
            write_savedmodel(loaded.model, loaded.model_cfg.input_channels, saved)
        ov_model = ov.convert_model(str(saved))
        ov.save_model(ov_model, str(tmp / xml.name), compress_to_fp16=False)
        shutil.rmtree(tmp / "savedmodel", ignore_errors=True)
        try:
            os.replace(tmp, xml.parent)
        except OSError:
            if not xml.is_file():  # not another process that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def converted_model(loaded: Any) -> Path:
    """The OpenVINO IR (``model.xml``) of ``loaded``, converted on first use and cached
    under ``cache_dir()/openvino/<model_key>/``. An unwritable cache converts into a
    temporary folder instead (and says so)."""
    from .modelio import SavedModelWrapper

    if loaded.model is None:  # cached_openvino_model: converted before, nothing to convert from
        xml = _cached_xml(model_key(loaded))
        if not xml.is_file():
            raise ModelError(f"{loaded.folder}: its OpenVINO model left the cache {xml.parent} while in use; "
                             "run the command again")
        return xml
    if not isinstance(loaded.model, SavedModelWrapper):
        policies = {getattr(getattr(layer, "dtype_policy", None), "name", "float32") for layer in loaded.model.layers}
        policy = next((p for p in sorted(policies) if p != "float32"), "float32")
        if policy != "float32":
            raise ConfigError(f"the openvino engine needs the network loaded as float32, not {policy}; "
                              "load it with precision float32 (its own precision is the engine's)")
    key = model_key(loaded)
    xml = _cached_xml(key)
    if xml.is_file():
        log.debug("OpenVINO model from the cache %s", xml)
        return xml
    log.info("converting %s for OpenVINO (once; cached in %s)", loaded.folder, xml.parent)
    try:
        _convert(loaded, xml)
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix="qca_tf-openvino-")) / key[:32] / "model.xml"
        log.warning("cannot write the OpenVINO cache %s (%s); converting into %s (set QCA_TF_CACHE to a "
                    "writable folder to keep it)", xml.parent, exc.strerror or exc, fallback.parent)
        _convert(loaded, fallback)
        xml = fallback
    return xml


def openvino_forward(loaded: Any, precision: str) -> Forward:
    """OpenVINO CPU pass at ``precision`` ("float32" or "mixed_bfloat16"): one compiled
    model with dynamic shapes per model and precision."""
    if precision not in _OV_PRECISION:
        raise ConfigError(f"the openvino engine runs float32 or mixed_bfloat16, not {precision}")
    key = ("openvino", precision)
    if key not in loaded.forward_cache:
        xml = converted_model(loaded)
        core = _core()
        try:
            model = core.read_model(str(xml))
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
                                                         "PERFORMANCE_HINT": "LATENCY"})
        except RuntimeError as exc:
            text = str(exc).strip().splitlines()
            raise ModelError(f"{xml}: OpenVINO cannot compile it ({text[0][:200] if text else exc}); "
                             f"delete {xml.parent} to convert again") from None
        request = compiled.create_infer_request()
        lock = threading.Lock()

        def run(x: np.ndarray) -> np.ndarray:
            with lock:  # one infer request: calls from several threads take turns
                request.infer({0: np.ascontiguousarray(x, np.float32)})
                return np.array(request.get_output_tensor(0).data[..., 1], np.float32)

        log.debug("OpenVINO %s compiled (%s) from %s", loaded.folder, precision, xml)
        loaded.forward_cache[key] = run
    return loaded.forward_cache[key]
