from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from factory.cli import cli


def test_help_lists_every_command_group() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in (
        "local",
        "render",
        "validate",
        "build",
        "verify",
        "images",
        "channel",
        "revoke",
        "provenance",
        "rollout",
        "drift",
        "retire",
    ):
        assert f"  {command}" in result.output, command


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "/nonexistent/factory.toml", "render", "base"],
        ["local", "env", "--state-dir", "/nonexistent-state-dir"],
        ["no-such-command"],
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.lower().startswith("error")]
    assert errors, proc.stderr


def test_debug_shows_the_traceback() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "factory.cli",
            "--debug",
            "local",
            "env",
            "--state-dir",
            "/nonexistent",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
