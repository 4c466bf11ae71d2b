"""Study storage: concurrent workers on the embedded journal store, resume to N, a
worker killed mid-trial, reproducible seeds, another network's study, PostgreSQL.

Trials run a cheap deterministic objective (tests/search_objectives.py) in real worker
processes: what is tested here is the coordination, not training."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from qca_tf.errors import ConfigError
from qca_tf.search import run as run_mod
from qca_tf.search.settings import SearchSettings
from qca_tf.search.space import SearchSpace
from qca_tf.search.storage import open_storage, redact
from qca_tf.search.worker import run_worker
import search_objectives

TESTS = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def _objectives_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _settings(out: Path, trials: int, **kw) -> SearchSettings:
    base = dict(network="ndn", out=str(out), data="unused", trials=trials, study="ndn", max_params=None,
                objective="search_objectives:quick")
    return SearchSettings(**{**base, **kw})


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="ndn", storage=open_storage(None, out))


def _ran_once(out: Path, study: optuna.Study) -> None:
    """Every trial that completed ran exactly once (one marker), and no other trial ran."""
    complete = {t.number for t in study.get_trials() if t.state == TrialState.COMPLETE}
    for t in complete:
        markers = list((out / "trials" / f"{t:04d}").glob("ran-*"))
        assert len(markers) == 1, (t, markers)


def test_concurrent_workers_exactly_n_none_duplicated(tmp_path, monkeypatch):
    monkeypatch.setenv("QCA_TEST_BARRIER", "3")
    out = tmp_path / "s"
    study = run_mod.search(_settings(out, 10, workers=3), echo=lambda s: None, progress=False)
    trials = study.get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 10
    assert all(t.state != TrialState.RUNNING for t in trials)
    assert not [t for t in trials if t.state == TrialState.FAIL]
    _ran_once(out, study)
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) == 3  # three processes really ran trials at the same time
    assert trials[0].user_attrs.get("warm_start") == "ndn preset" and trials[0].params["depth"] == 4
    lines = (out / "trials.csv").read_text().splitlines()
    assert len(lines) == 1 + len(trials) and lines[0].startswith("number,state,depth")
    assert (out / "best_params.json").exists() and (out / "search.json").exists()


def test_resume_continues_to_n_total(tmp_path):
    out = tmp_path / "s"
    run_mod.search(_settings(out, 3), echo=lambda s: None, progress=False)
    lines = []
    study = run_mod.search(_settings(out, 5), echo=lines.append, progress=False)
    assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) == 5
    assert "3 of 5 trial(s) finished" in lines[0]
    assert sum(ln.startswith("trial ") for ln in lines) == 2  # one line per new trial


def test_killed_worker_trial_is_failed_and_retried(tmp_path, monkeypatch):
    out = tmp_path / "s"
    cfg = _settings(out, 4, warm_start=False)
    run_mod.search(_settings(out, 1, warm_start=False), echo=lambda s: None, progress=False)  # study + settings
    cfg.write(out / "search.json")
    monkeypatch.setenv("QCA_TEST_HANG_TRIAL", "2")
    argv, env = run_mod.worker_command(out / "search.json", 0, None)  # the command the search itself runs
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    monkeypatch.delenv("QCA_TEST_HANG_TRIAL")
    marker = out / "trials" / "0002" / "hanging"
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert marker.exists(), "worker never reached trial 2"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _study(out).get_trials()[2].state == TrialState.RUNNING  # the journal store has no heartbeat
    study = run_mod.search(cfg, echo=lambda s: None, progress=False)
    trials = study.get_trials()
    assert trials[2].state == TrialState.FAIL and "died" in trials[2].user_attrs["fail_reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 2]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == trials[2].params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4


def test_same_seed_same_suggestions_different_seed_differs(tmp_path):
    def params(out, seed):
        cfg = _settings(out, 14, seed=seed, warm_start=False, trials_per_process=20)
        space = SearchSpace()
        out.mkdir()
        run_mod.open_study(cfg, space, open_storage(None, out))
        run_worker(cfg, 0, None, objective=search_objectives.quick)
        return [t.params for t in _study(out).get_trials()]

    a, b, c = params(tmp_path / "a", 5), params(tmp_path / "b", 5), params(tmp_path / "c", 6)
    assert len(a) == 14 and a == b  # past TPE's 10 start-up trials too
    assert a != c


def test_study_of_another_network_is_refused(tmp_path):
    out = tmp_path / "s"
    run_mod.search(_settings(out, 1), echo=lambda s: None, progress=False)
    with pytest.raises(ConfigError, match="created for another network"):
        run_mod.search(_settings(out, 2, network="nsn"), echo=lambda s: None, progress=False)
    space = tmp_path / "space.json"
    space.write_text('{"depth": [1, 2]}')
    with pytest.raises(ConfigError, match="created for another search space"):
        run_mod.search(_settings(out, 2, space_file=str(space)), echo=lambda s: None, progress=False)


def test_storage_url_errors_hide_the_password(tmp_path):
    assert redact("postgresql+psycopg://bob:s3cret@db.example/qca") == "postgresql+psycopg://bob:***@db.example/qca"
    with pytest.raises(ConfigError) as err:
        open_storage("postgresql+psycopg://bob:s3cret@127.0.0.1:1/qca", tmp_path)
    assert "s3cret" not in str(err.value) and "cannot open the study storage" in str(err.value)
    with pytest.raises(ConfigError, match="not a database URL"):
        open_storage("not a url:s3cret@", tmp_path)


# ------------------------------------------------------------------ PostgreSQL

PG_BIN = [Path("/usr/local/bin"), *sorted(Path("/usr/lib/postgresql").glob("*/bin"))]


def _pg_tool(name):
    for d in PG_BIN:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


@pytest.fixture
def postgres(tmp_path):
    """A PostgreSQL server on a free loopback port, run as an unprivileged user."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg not installed: pip install 'qca_tf[postgres]'")
    user = None
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
            user = "postgres"
        except KeyError:
            pytest.skip("running as root and no unprivileged 'postgres' user to run initdb")
    import tempfile

    # outside pytest's 0700 tmp folder, so the unprivileged server user can reach it
    pgdir = Path(tempfile.mkdtemp(prefix="qca-pg-"))
    os.chmod(pgdir, 0o700)
    as_user = (["runuser", "-u", user, "--"] if user else [])
    (pgdir / "pw").write_text("s3cret\n")
    if user:
        for p in (pgdir, pgdir / "pw"):
            shutil.chown(p, user)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", str(pgdir / "data"), "-A", "password", "-U", "qca",
                    f"--pwfile={pgdir / 'pw'}"], check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(pgdir / "data"), "-l", str(pgdir / "log"), "-w", "-o",
                    f"-p {port} -k {pgdir} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://qca:s3cret@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(pgdir / "data"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(pgdir, ignore_errors=True)


def test_postgresql_two_workers_exactly_n(tmp_path, postgres, monkeypatch):
    monkeypatch.setenv("QCA_TEST_BARRIER", "2")
    out = tmp_path / "s"
    cfg = _settings(out, 8, workers=2, storage=redact(postgres))
    lines = []
    study = run_mod.search(cfg, storage_url=postgres, echo=lines.append, progress=False)
    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 8
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    _ran_once(out, study)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2
    for f in [*out.rglob("*.json"), *out.rglob("*.csv"), *out.rglob("*.log")]:
        assert "s3cret" not in f.read_text(errors="replace"), f
    assert not any("s3cret" in ln for ln in lines)
