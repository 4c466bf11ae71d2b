"""Named errors. A :class:`QcaError` is a user mistake: the CLI prints its message
as one line (``Error: ...``) and exits non-zero, without a traceback."""


class QcaError(Exception):
    """A user-facing error whose message names the file (or option) and the problem."""


class InputError(QcaError):
    """An input image, mask or folder is unusable (dimensionality, NaN, empty, shape...)."""


class ConfigError(QcaError):
    """A configuration value or key is invalid."""


class ModelError(QcaError):
    """A model folder is missing, corrupt or incompatible with the input."""


class OutputError(QcaError):
    """An output location cannot be written."""
