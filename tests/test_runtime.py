"""Progress bars only on a terminal: logs written to a file or a pipe carry none."""
from __future__ import annotations

import io
import subprocess
import sys

from qca_tf.runtime import keras_verbose, progress_enabled


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal():
    assert progress_enabled(_Terminal()) is True
    assert progress_enabled(io.StringIO()) is False
    closed = io.StringIO()
    closed.close()
    assert progress_enabled(closed) is False
    assert keras_verbose(True) == 1 and keras_verbose(False) == 0


def test_stderr_to_a_pipe_means_no_bars():
    code = "from qca_tf.runtime import keras_verbose, progress_enabled; print(progress_enabled(), keras_verbose())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "0"]
