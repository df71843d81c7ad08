from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from typing import Any

import click
import pytest
from click.testing import CliRunner

import factory.cli
from factory.cli import LAZY_COMMANDS, LazyGroup, cli


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


# Lazy registration: `factory --help` must not import the command modules (boto3, paramiko,
# cryptography, Jinja), and must read exactly as if every command were registered.

HEAVY_LIBRARIES = ("boto3", "botocore", "paramiko", "cryptography", "jinja2", "rich")

# Runs the CLI in a fresh interpreter, then prints which heavy libraries and command modules
# it imported (stdout is the CLI's own; the report is the last line of stderr).
IMPORT_PROBE = """
import json, sys
import factory.cli
try:
    factory.cli.main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps({
    "heavy": sorted(m for m in %r if m in sys.modules),
    "commands": sorted(
        m.removeprefix("factory.cli.") for m in sys.modules
        if m.startswith("factory.cli.") and m != "factory.cli.context"
    ),
}), file=sys.stderr)
"""


def imported_by(argv: list[str]) -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE % (HEAVY_LIBRARIES,), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report: dict[str, list[str]] = json.loads(proc.stderr.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("argv", [["--help"], [], ["--version"]], ids=["help", "bare", "version"])
def test_listing_commands_imports_no_command_module(argv: list[str]) -> None:
    assert imported_by(argv) == {"heavy": [], "commands": []}


def test_a_command_imports_only_its_own_module() -> None:
    assert imported_by(["local", "--help"])["commands"] == ["local"]


def test_light_modules_import_no_heavy_library() -> None:
    probe = (
        "import sys, factory.cli.context, factory.output, factory.errors, factory.config; "
        f"print(sorted(m for m in {HEAVY_LIBRARIES!r} if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


def real_commands() -> dict[str, tuple[str, click.Command]]:
    """Every command that a module of factory.cli lists in `COMMANDS`, with its module."""
    found: dict[str, tuple[str, click.Command]] = {}
    for module_info in pkgutil.iter_modules(factory.cli.__path__):
        if module_info.name == "__main__":  # runs the CLI
            continue
        module = importlib.import_module(f"factory.cli.{module_info.name}")
        for command in getattr(module, "COMMANDS", ()):
            assert command.name not in found, f"{command.name} registered twice"
            found[str(command.name)] = (module_info.name, command)
    return found


def test_lazy_table_names_every_command_and_its_module() -> None:
    table = {name: entry.module for name, entry in LAZY_COMMANDS.items()}
    assert table == {name: module for name, (module, _) in real_commands().items()}


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_lazy_summary_shortens_like_the_commands_help(name: str) -> None:
    _, command = real_commands()[name]
    stub = click.Command(name, help=LAZY_COMMANDS[name].summary)
    for limit in range(10, 200):
        assert stub.get_short_help_str(limit) == command.get_short_help_str(limit), limit


def fresh_groups() -> tuple[LazyGroup, click.Group]:
    """A lazy `factory` group with nothing imported yet, and the same group registered eagerly."""
    settings: dict[str, Any] = {
        "name": "factory",
        "params": cli.params,
        "help": cli.help,
        "callback": cli.callback,
        "context_settings": cli.context_settings,
    }
    commands = [command for _, command in real_commands().values()]
    return LazyGroup(lazy=LAZY_COMMANDS, **settings), click.Group(commands=commands, **settings)


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_lazy_help_reads_as_eager_registration(width: int) -> None:
    lazy, eager = fresh_groups()

    def help_text(group: click.Group) -> str:
        return group.get_help(click.Context(group, info_name="factory", terminal_width=width))

    before = help_text(lazy)
    assert lazy.commands == {}, "listing the commands imported them"
    assert before == help_text(eager)
    lazy.load_all()
    assert help_text(lazy) == before


@pytest.mark.parametrize("argv", [["biuld"], ["no-such-command"], ["render", "--no-such-option"]])
def test_lazy_errors_read_as_eager_registration(argv: list[str]) -> None:
    lazy, eager = fresh_groups()
    got, expected = CliRunner().invoke(lazy, argv), CliRunner().invoke(eager, argv)
    assert got.exit_code == expected.exit_code == 2
    assert got.output == expected.output


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_every_command_answers_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"], prog_name="factory")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: factory {name} "), result.output
