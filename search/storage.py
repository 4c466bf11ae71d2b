"""Where a study lives, and keeping its trial count honest.

- Default: an Optuna ``JournalStorage`` with a ``JournalFileBackend`` in the output folder
  (``OUT/study.journal``): nothing to start, safe for several processes on one machine
  (Optuna advises against SQLite for parallel workers). It has no heartbeat, so each
  trial records the host, pid and process start time of its worker; at the next start a
  RUNNING trial whose worker is gone is failed and re-queued once (:func:`recover_dead`).
- ``--storage postgresql+psycopg://user:pass@host/db``: Optuna's RDB storage with a
  heartbeat; stale trials are failed and retried by Optuna's retry callback.

Passwords in URLs are never logged nor written: :func:`redact`.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from qca_tf.errors import ConfigError

log = logging.getLogger(__name__)

JOURNAL_NAME = "study.journal"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S = 30
GRACE_S = 120


def redact(url: str | None) -> str:
    """``url`` with its password replaced by ``***`` (the embedded store: its file path)."""
    if url is None:
        return "embedded"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # malformed: hide everything between ':' and '@' after the scheme
        head, sep, tail = url.partition("://")
        if "@" in tail:
            cred, _, host = tail.rpartition("@")
            return f"{head}{sep}{cred.split(':')[0]}:***@{host}"
        return url


def _scrub(text: str, url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(url).password
    except Exception:
        pw = None
    return text.replace(str(pw), "***") if pw else text


def _retry_callback():
    """Optuna's stale-trial retry callback (renamed in Optuna 4.9)."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if cls is not None:
        return {"heartbeat_stale_trial_callback": cls(max_retry=1)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}


def open_storage(url: str | None, out: Path) -> optuna.storages.BaseStorage:
    """The study storage: the journal file in ``out`` (``url`` None) or a database URL."""
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(out / JOURNAL_NAME)))
    shown = redact(url)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"--storage {shown}: not a database URL ({type(exc).__name__})") from None
    if parsed.drivername.startswith("sqlite"):
        log.warning("SQLite storage: Optuna advises against it for parallel workers; prefer the default "
                    "(no --storage) on one machine, or PostgreSQL")
        kwargs: dict[str, Any] = {}
    else:
        kwargs = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S, **_retry_callback()}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except ModuleNotFoundError as exc:
        hint = " (pip install 'qca_tf[postgres]')" if "psycopg" in str(exc) else ""
        raise ConfigError(f"--storage {shown}: driver missing: {exc.name}{hint}") from None
    except Exception as exc:  # unreachable server, bad credentials, unknown database, bad driver
        msg = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url)
        raise ConfigError(f"--storage {shown}: cannot open the study storage ({type(exc).__name__}: {msg})") from None


# ---------------------------------------------------------------- worker identity


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def worker_identity() -> dict[str, Any]:
    """host, pid and process start time of this process (recorded on each trial)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _start_time(pid)}


def _alive(ident: dict[str, Any]) -> bool:
    pid = ident.get("pid")
    if pid is None:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = ident.get("pid_start")
    return start is None or _start_time(int(pid)) == start


def recover_dead(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials of this host whose worker process is gone, and re-queue their
    parameters once (the retry records ``retry_of``). Returns the failed trial numbers."""
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ident = t.user_attrs.get("worker")
        if not ident or ident.get("host") != host or _alive(ident):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                           f"worker process {ident.get('pid')} died during the trial")
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(t.number)
        if "retry_of" not in t.user_attrs:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            log.warning("trial %d: its worker (pid %s) is gone; marked failed and queued again",
                        t.number, ident.get("pid"))
        else:
            log.warning("trial %d: its worker (pid %s) is gone again; marked failed, not retried",
                        t.number, ident.get("pid"))
    return failed


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING) and ``finished``."""
    out = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    out["finished"] = out["COMPLETE"] + out["PRUNED"]
    return out
