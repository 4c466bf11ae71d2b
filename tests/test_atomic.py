"""Atomic outputs: ordinary permissions, nothing half-written, errors named."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from qca_tf import io
from qca_tf.atomic import atomic_path
from qca_tf.errors import OutputError


def test_written_file_has_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_stack(tmp_path / "a.tif", np.zeros((2, 3, 4), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.tif").stat().st_mode) == 0o644


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_unwritable_location_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"file/out\.tif: cannot write there"):
        with atomic_path(tmp_path / "file" / "out.tif"):
            pass
