"""The `factory` command line: thin Click commands over the stage modules.

One module per command group; each exposes `COMMANDS`. Errors are turned into a one-line
message and an exit code here, and only here.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from typing import Any

import click

from factory import __version__
from factory.cli.context import OUTPUT_CHOICES, CliContext
from factory.errors import ExitCode, FactoryError
from factory.redact import redact

COMMAND_MODULES = (
    "local",
    "render",
    "build",
    "verify",
    "images",
    "provenance",
    "rollout",
    "retire",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ami-factory")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="factory.toml to use."
)
@click.option("--region", help="AWS region (default: AWS_REGION, then factory.toml).")
@click.option("--profile", help="AWS profile (default: AWS_PROFILE).")
@click.option(
    "--output",
    "-O",
    type=click.Choice(OUTPUT_CHOICES),
    default="text",
    show_default=True,
    help="Result format on stdout; progress always goes to stderr.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: str | None,
    region: str | None,
    profile: str | None,
    output: str,
    debug: bool,
    quiet: bool,
) -> None:
    """ami-factory: build, verify, publish, roll out and retire golden AMIs."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not debug:
        for noisy in ("botocore", "boto3", "urllib3", "paramiko"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = CliContext(
        config_file=config_file,
        region=region,
        profile=profile,
        output=output,
        debug=debug,
        quiet=quiet,
    )


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"factory.cli.{name}")
        for command in getattr(module, "COMMANDS", ()):
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI, turning errors into a message and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="factory", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except FactoryError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {redact(exc.message)}", err=True)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, not a traceback
        if debug:
            traceback.print_exc()
        click.echo(
            f"internal error: {redact(f'{type(exc).__name__}: {exc}')} (rerun with --debug)",
            err=True,
        )
        sys.exit(ExitCode.FAILED)
    sys.exit(ExitCode.OK)
