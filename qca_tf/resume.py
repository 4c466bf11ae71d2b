"""What makes a finished time point reusable, and who is computing which: the
bookkeeping of ``qca-tf predict`` resume, concurrent runs and killed runs.

* **Provenance**: beside each finished time point's ``OUT/nuclei/<name>.csv`` lies
  ``OUT/nuclei/<name>.json``: the run identity (sha256 of each model's config.json and
  weights, post-processing parameters, engine, the precision it runs at, test-time
  augmentation, qca_tf version) and the
  input's identity (path, size, modification time, time index, channels, voxel size).
  A rerun skips a time point only when both match; otherwise :func:`check_finished`
  raises one OutputError naming what differs.
* **Claims**: a process computing time point ``name`` holds ``OUT/.claims/<name>``
  (created exclusively; pid, host). Another process skips a claimed time point; a claim
  left by a dead process on this host is taken over.
* **Temp files** (``.<target>.<random><suffix>`` from :func:`qca_tf.atomic.atomic_path`)
  left by a killed run are removed by the next run, except those of time points that a
  live process claims.
* **Run lock**: ``OUT/.run.lock`` (flock) serialises the end-of-run writes (tables,
  ``run.json``) of concurrent shards.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

from . import __version__
from .config import flag_for, to_dict, write_json_atomic
from .errors import OutputError

log = logging.getLogger(__name__)

CLAIMS = ".claims"
LOCK = ".run.lock"
# atomic_path: prefix "." + target name + "." + mkstemp's 8 random characters + suffix
_TEMP = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.(tmp|h5|png)$")
#: Post-processing keys added after runs were first recorded, with the value that gives what
#: the older qca_tf did: a record without the key was made with it.
_POST_KEYS_BEFORE = {"annotation_offset_um": [0.0, 0.0, 0.0]}


# ------------------------------------------------------------------ identity


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_hash(folder: str | os.PathLike) -> str:
    """sha256 of a model folder's config.json and network files (weights.h5 / model.keras,
    or saved_model.pb and variables/): what decides its predictions."""
    from .modelio import CONFIG_NAME, weights_file

    folder = Path(folder)
    files = [folder / CONFIG_NAME] if (folder / CONFIG_NAME).is_file() else []
    source = weights_file(folder)
    if source is not None:
        files.append(source)
        if (folder / "variables").is_dir():
            files.extend(sorted(p for p in (folder / "variables").rglob("*") if p.is_file()))
    return _sha256(files)


#: What a record made before an inference setting existed ran with.
_INFERENCE_BEFORE = {"tta": 1}
_INFERENCE_FLAGS = {"tta": "--tta", "precision": "--precision", "engine": "--engine"}


def run_identity(nets, run_cfg) -> dict:
    """What, besides the input, decides a time point's result: models (hashes), post-processing,
    the engine, the precision it runs at and the test-time augmentation (``run_cfg``: the
    InferenceConfig resolved by ``engines.resolve_inference``), qca_tf version. Hashes the
    model files once (call once per run)."""
    return {"qca_tf_version": __version__,
            "models": {"nsn": model_hash(nets.nsn.folder),
                       "ndn": None if nets.ndn is None else model_hash(nets.ndn.folder)},
            "postprocess": to_dict(nets.postprocess),
            "inference": {"engine": run_cfg.engine, "precision": run_cfg.precision, "tta": run_cfg.tta}}


def with_defaults(identity: dict | None) -> dict | None:
    """A recorded run identity with the inference settings added since it was written filled
    in as what it ran with (:data:`_INFERENCE_BEFORE`), to compare with a new one."""
    if not identity:
        return identity
    inference = {**_INFERENCE_BEFORE, **(identity.get("inference") or {})}
    return {**identity, "inference": inference}


def input_identity(tp, voxel) -> dict:
    """A time point's input: file path, size and modification time, time index, channels and
    the voxel size (x, y, z um) it is measured with."""
    path = Path(tp.source).resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "index": tp.index,
            "channels": None if tp.channels is None else list(tp.channels),
            "voxel_size_um": [voxel.x, voxel.y, voxel.z]}


def sidecar(out: Path, name: str) -> Path:
    return out / "nuclei" / f"{name}.json"


def write_record(out: Path, name: str, identity: dict, source: dict) -> None:
    """Record what produced time point ``name`` (written before its nuclei CSV, the completion marker)."""
    write_json_atomic(sidecar(out, name), {"run": identity, "input": source})


def _short(h: str | None) -> str:
    return "none" if h is None else h[:12]


def difference(recorded: dict, identity: dict, source: dict) -> str | None:
    """What differs between a time point's record and this run (None: nothing), in words."""
    old_run, old_in = recorded.get("run") or {}, recorded.get("input") or {}
    for task in ("nsn", "ndn"):
        old, new = (old_run.get("models") or {}).get(task), identity["models"][task]
        if old != new:
            return f"with another {task.upper()} model (sha256 {_short(old)}..., now {_short(new)}...)"
    old_post = old_run.get("postprocess") or {}
    for key, new in identity["postprocess"].items():
        if old_post.get(key, _POST_KEYS_BEFORE.get(key)) != new:
            flag = flag_for("postprocess", key)
            if key not in old_post:
                return f"before {flag} existed (by an older qca_tf; now {flag} {new})"
            return f"with {flag} {old_post.get(key)} (now {new})"
    old_inference = with_defaults(old_run).get("inference") or {}
    for key, new in identity["inference"].items():
        old = old_inference.get(key)
        if old != new:
            return f"with {_INFERENCE_FLAGS.get(key, key)} {old} (now {new})"
    if old_in.get("path") != source["path"]:
        return f"from another input file ({old_in.get('path')}, now {source['path']})"
    if (old_in.get("size"), old_in.get("mtime_ns")) != (source["size"], source["mtime_ns"]):
        return f"from an older version of {source['path']} (its size or modification time changed since)"
    for key in ("index", "channels", "voxel_size_um"):
        if old_in.get(key) != source[key]:
            return f"with input {key.replace('_', ' ')} {old_in.get(key)} (now {source[key]})"
    if old_run.get("qca_tf_version") != identity["qca_tf_version"]:
        return f"by qca_tf {old_run.get('qca_tf_version')} (now {identity['qca_tf_version']})"
    return None


def check_finished(out: Path, name: str, identity: dict, source: dict) -> None:
    """A finished time point (nuclei CSV present) is reusable only when its record matches this run;
    else one OutputError naming what differs and the ways out."""
    path = sidecar(out, name)
    way_out = "use --overwrite or a new output folder"
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        raise OutputError(f"{out}: {name} is finished but records nothing of what produced it (made by an older "
                          f"qca_tf or another tool); {way_out}") from None
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: unreadable record ({exc}); {way_out}") from None
    diff = difference(recorded, identity, source)
    if diff is not None:
        raise OutputError(f"{out}: {name} was made {diff}; {way_out}")


# ------------------------------------------------------------------ claims


def host() -> str:
    """This machine's name, as claims record it."""
    return socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_owner(out: Path, name: str) -> dict | None:
    """The claim on ``name`` ({pid, host}) or None when unclaimed."""
    try:
        return json.loads((out / CLAIMS / name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": -1, "host": "?"}  # being written: treat as held


def _held_by_other_live(owner: dict | None) -> bool:
    if owner is None:
        return False
    if owner.get("host") != host():
        return True  # cannot tell whether it lives: respect it
    pid = int(owner.get("pid", -1))
    return pid != os.getpid() and (pid < 0 or _alive(pid))


def claim(out: Path, name: str) -> bool:
    """Claim time point ``name`` for this process; False when a live process (or one on another
    host) holds it. A claim of a dead process on this host is taken over."""
    folder = out / CLAIMS
    folder.mkdir(exist_ok=True)
    path = folder / name
    mine = json.dumps({"pid": os.getpid(), "host": host()})
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = claim_owner(out, name)
            if _held_by_other_live(owner):
                return False
            if owner is not None and owner.get("pid") != os.getpid():
                log.info("%s: taking over the claim of dead process %s", name, owner.get("pid"))
            path.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise OutputError(f"{path}: cannot write there ({exc.strerror or exc})") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(mine)
        return True
    return False


def release(out: Path, name: str) -> None:
    path = out / CLAIMS / name
    owner = claim_owner(out, name)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == host():
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------ killed runs, concurrent shards


def remove_stale_temps(out: Path) -> int:
    """Delete temp files of :func:`qca_tf.atomic.atomic_path` left under ``out`` by a killed run,
    except those of time points a live process claims. Call under :func:`run_lock`."""
    removed = 0
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir() and p.name != CLAIMS)]:
        for p in folder.iterdir():
            m = _TEMP.match(p.name)
            if not m or not p.is_file():
                continue
            stem = m.group("target").rsplit(".", 1)[0]
            if _held_by_other_live(claim_owner(out, stem)):
                continue
            p.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("%s: removed %d temp file(s) left by an interrupted run", out, removed)
    return removed


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Exclusive lock on ``out`` for the run-level writes (tables, run.json) of concurrent processes."""
    try:
        fh = open(out / LOCK, "a")
    except OSError as exc:
        raise OutputError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. a file system without locks
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                raise
            log.debug("%s: file locking unsupported (%s)", out, exc)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
