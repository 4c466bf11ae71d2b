"""TensorFlow start-up for command-line use: import it without its C++ start-up chatter.

TensorFlow 2.21 writes absl INFO/ERROR lines (oneDNN notice, CUDA probing) straight to
file descriptor 2 during import and device initialisation, ignoring
TF_CPP_MIN_LOG_LEVEL. The CLI promises one clean line per error, so those two steps
run with fd 2 sent to a temporary file, which is replayed only if they fail.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile

log = logging.getLogger(__name__)


def init_tensorflow():
    """Import TensorFlow and initialise its devices quietly; return the module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            devices = tf.config.list_logical_devices()
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    log.debug("TensorFlow %s, devices: %s", tf.__version__, ", ".join(d.name for d in devices))
    return tf


def progress_enabled(stream=None) -> bool:
    """Whether progress bars are wanted: only when ``stream`` (default stderr) is a terminal,
    so logs written to a file or a pipe carry no per-step bars and colour codes."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams (e.g. test runners)
        return False


def keras_verbose(progress: bool | None = None) -> int:
    """Keras ``fit`` verbosity: 1 (per-step bar) on a terminal, else 0 (our epoch callback
    logs one line per epoch). ``progress`` None means :func:`progress_enabled`."""
    return 1 if (progress_enabled() if progress is None else progress) else 0
