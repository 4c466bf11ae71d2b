"""The built wheel and an editable install both expose only ``qca_tf`` and a working
``qca-tf`` console script."""
from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True, cwd=build,
    )
    (whl,) = out.glob("qca_tf-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the wheel installed; dependencies come from this
    interpreter's site-packages through a .pth file (appended, so they cannot shadow the wheel)."""
    venv = tmp_path_factory.mktemp("venv")
    py = _venv_with_parent_deps(venv)
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True)
    return venv


def test_wheel_top_level_names(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"qca_tf", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert "qca_tf/cli.py" in names
    assert "qca_tf/search/__init__.py" in names


def test_console_script_runs_from_fresh_venv(fresh_venv, tmp_path):
    exe = fresh_venv / "bin" / "qca-tf"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    help_seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    for command in ("synth", "train"):
        assert command in res.stdout
    # --help must not import TensorFlow (it answers in well under 2 s); checked by module, not by a timing
    probe = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c",
         "import sys; from click.testing import CliRunner; from qca_tf.cli import main;"
         "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0;"
         "print('tensorflow' in sys.modules)"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    assert probe.stdout.strip() == "False"
    # the installed package is the wheel's, not the source tree, and nothing generic is importable
    where = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-c",
         "import qca_tf, qca_tf.search, importlib.util as u;"
         "print(qca_tf.__file__); print(u.find_spec('cli') is None and u.find_spec('search') is None)"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout.split()
    assert str(fresh_venv) in where[0]
    assert where[1] == "True"
    assert help_seconds < 30  # generous: only guards against a hang, speed is covered above


def test_console_script_synth_and_error(fresh_venv, tmp_path):
    exe = fresh_venv / "bin" / "qca-tf"
    res = subprocess.run([str(exe), "synth", str(tmp_path / "s"), "--shape", "12", "48", "48", "--nuclei", "3"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["images", "labels", "ndn", "nsn"]
    bad = subprocess.run([str(exe), "train", "nsn", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("Error:") and "missing" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def _venv_with_parent_deps(venv: Path) -> Path:
    """A new virtual environment whose dependencies come from this interpreter's
    site-packages through a .pth file; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the parent's own qca_tf (regular or editable install) is left out: a regular install on
    # sys.path would win over an editable finder and hide what the test installs
    shadow = venv.parent / f"{venv.name}-deps"
    shadow.mkdir()
    # every site-packages folder on sys.path: also those a .pth file adds (a venv layered on another)
    site_dirs = [sysconfig.get_paths()["purelib"], *site.getsitepackages(),
                 *(p for p in sys.path if Path(p).name == "site-packages" and Path(p).is_dir())]
    for site_dir in dict.fromkeys(site_dirs):
        for entry in Path(site_dir).iterdir():
            own = entry.name.startswith(("qca_tf", "__editable__", "_qca_test"))
            if not own and not (shadow / entry.name).exists():
                (shadow / entry.name).symlink_to(entry)
    Path(purelib, "_qca_test_deps.pth").write_text(f"{shadow}\n")
    return py


def test_editable_install_console_script(tmp_path):
    """``pip install -e .`` gives a working ``qca-tf`` and maps search/ to qca_tf.search,
    importing from the source tree."""
    venv = tmp_path / "venv"
    py = _venv_with_parent_deps(venv)
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "-e", str(ROOT)], check=True, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    res = subprocess.run([str(venv / "bin" / "qca-tf"), "--help"], capture_output=True, text=True, cwd=tmp_path,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert "predict" in res.stdout
    where = subprocess.run(
        [str(py), "-c", "import qca_tf.cli, qca_tf.search; print(qca_tf.cli.__file__); print(qca_tf.search.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout.split()
    assert where == [str(ROOT / "qca_tf" / "cli.py"), str(ROOT / "search" / "__init__.py")]


def test_search_worker_starts_from_source_checkout(fresh_venv, tmp_path, monkeypatch):
    """A regular install run from the source folder (as in CI, or a user in a clone): the worker
    processes must import the installed qca_tf.search, not the checkout's qca_tf/ (which has no
    search/ inside), even with an empty PYTHONPATH entry that stands for the current folder."""
    from qca_tf.search.run import worker_command

    monkeypatch.setenv("PYTHONPATH", os.pathsep + str(tmp_path))
    (tmp_path / "logs").mkdir()
    argv, env = worker_command(tmp_path / "missing-settings.json", 0, None)
    argv[0] = str(fresh_venv / "bin" / "python")
    res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env)
    assert "No module named" not in res.stderr, res.stderr
    assert res.returncode == 2, res.stderr  # EXIT_CONFIG: the settings file is missing, reported in logs/
    assert "missing-settings.json" in (tmp_path / "logs" / "worker-0.error").read_text()
