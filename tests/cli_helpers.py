"""Helpers shared by the CLI tests: run qca-tf in-process and check one-line errors."""
from __future__ import annotations

from click.testing import CliRunner

from qca_tf.cli import main


def invoke(*args):
    """Run ``qca-tf ARGS`` through click's CliRunner (exceptions propagate)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *fragments, exit_code: int = 1):
    """The command failed with ``exit_code`` (1; click's usage errors 2) and exactly one
    ``Error: ...`` line holding ``fragments``."""
    assert result.exit_code == exit_code, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in result.output
