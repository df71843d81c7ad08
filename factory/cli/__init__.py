"""The `factory` command line: thin Click commands over the stage modules.

One module per command group; each exposes `COMMANDS`, and is imported only when one of its
commands runs (`LAZY_COMMANDS` names them all for `--help`). Errors are turned into a one-line
message and an exit code here, and only here.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

import click

from factory import __version__
from factory.cli.context import CURRENT, OUTPUT_CHOICES, CliContext, json_requested
from factory.errors import ExitCode, FactoryError
from factory.redact import redact, redact_logging


class LazyCommand(NamedTuple):
    """Where a top-level command lives, and what `factory --help` says about it."""

    module: str  # under factory.cli; it lists the command in its `COMMANDS`
    summary: str  # the first paragraph of the command's help


# Every top-level command. `factory --help` lists them from here without importing their
# modules (boto3, paramiko, cryptography, Jinja: most of a second); test_cli checks this table
# against the commands themselves.
LAZY_COMMANDS: dict[str, LazyCommand] = {
    "build": LazyCommand(
        "build",
        "Render FAMILY, run `packer build`, tag the new AMI and snapshots status=candidate.",
    ),
    "channel": LazyCommand(
        "channels", "Channels: SSM parameters /factory/FAMILY/CHANNEL naming the AMI to launch."
    ),
    "drift": LazyCommand(
        "rollout",
        "Report groups and instances whose AMI differs from their channel, is revoked or retired.",
    ),
    "images": LazyCommand("images", "The factory's AMIs: list them, show their lineage."),
    "local": LazyCommand(
        "local",
        "The embedded local cloud: AWS on this machine (moto server + sandboxed instances).",
    ),
    "pipeline": LazyCommand(
        "pipeline",
        "The nightly rebuild: build, verify and publish every family under a lock held in AWS.",
    ),
    "promote": LazyCommand(
        "promote",
        "Copy verified AMI_ID into an environment's account and regions (dev -> staging -> prod).",
    ),
    "provenance": LazyCommand(
        "provenance",
        "Signed provenance (in-toto / SLSA v1, DSSE): show it, verify it, manage keys.",
    ),
    "render": LazyCommand(
        "render", "Render templates/FAMILY/*.pkr.hcl.j2 into Packer HCL (stdout or -o FILE)."
    ),
    "retire": LazyCommand(
        "retire",
        "Retire old images: keep what the policy or anything in use needs, retire the rest.",
    ),
    "revoke": LazyCommand(
        "revoke",
        "Revoke AMI_ID: channels and builds refuse it, drift reports it, EC2 deprecates it.",
    ),
    "rollout": LazyCommand(
        "rollout",
        "Roll images out by replacing instances: `factory rollout [start] ASG --ami AMI`, "
        "`factory rollout --fleet fleet.toml`, `factory rollout status ASG`, "
        "`factory rollout rollback ASG`.",
    ),
    "validate": LazyCommand(
        "render", "Render FAMILY and run `packer validate`; errors name the template's own lines."
    ),
    "verify": LazyCommand(
        "verify",
        "Launch each AMI, run its testinfra suite over pinned SSH, tag it verified or failed.",
    ),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is looked up.

    Listing the commands (`factory --help`) reads `lazy`; running one imports its module and
    adds every command the module lists in `COMMANDS`.
    """

    def __init__(self, *args: Any, lazy: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.load(self.lazy[cmd_name].module)
        return self.commands.get(cmd_name)

    def load(self, module_name: str) -> None:
        """Import factory.cli.MODULE_NAME and add the commands it lists."""
        module = importlib.import_module(f"factory.cli.{module_name}")
        for command in module.COMMANDS:
            if command.name not in self.commands:
                self.add_command(command)

    def load_all(self) -> None:
        for module_name in sorted({entry.module for entry in self.lazy.values()}):
            self.load(module_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # An unknown name: load every command first, so that Click's error is the same as with
        # eager registration (newer Clicks suggest close names among the loaded commands).
        if args and args[0] not in self.list_commands(ctx):
            self.load_all()
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's command list, with commands not yet imported described from `lazy`."""
        rows: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or click.Command(name, help=self.lazy[name].summary)
            if not command.hidden:
                rows.append((name, command))
        if not rows:
            return
        # the same width rule as click.Group.format_commands
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        with formatter.section("Commands"):
            formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])


@click.group(
    cls=LazyGroup,
    lazy=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
    # every record, whoever logs it (botocore prints request headers at DEBUG), is redacted
    redact_logging()
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
    CURRENT.set(ctx.obj)


def _fail(message: str, code: int, args: Sequence[str]) -> NoReturn:
    """One `error:` line on stderr; with JSON output and no result printed yet, the error as
    one JSON object on stdout too, so a script parsing stdout always gets JSON."""
    message = redact(message)
    click.echo(message, err=True)
    current = CURRENT.get()
    wants_json = json_requested(args) or (current is not None and current.json)
    if wants_json and not (current is not None and current.emitted):
        text = message.removeprefix("error: ").removeprefix("internal error: ")
        click.echo(json.dumps({"error": text, "exit_code": int(code)}))
    sys.exit(code)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI, turning errors into a message and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    CURRENT.set(None)
    try:
        returned = cli.main(args=args, prog_name="factory", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", ExitCode.INTERRUPTED, args)
    except click.UsageError as exc:  # BadParameter, NoSuchOption, a missing argument, ...
        # one line, not Click's four (usage, "Try ...", blank, error)
        path = exc.ctx.command_path if exc.ctx is not None else "factory"
        message = " ".join(exc.format_message().split()).removesuffix(".")
        _fail(f"error: {message} (see `{path} --help`)", ExitCode.USAGE, args)
    except click.ClickException as exc:
        _fail(f"error: {exc.format_message()}", ExitCode.USAGE, args)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except FactoryError as exc:
        if debug:
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
        _fail(f"error: {exc.message}", int(exc.exit_code), args)
    except KeyboardInterrupt:
        _fail("interrupted", ExitCode.INTERRUPTED, args)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, not a traceback
        if debug:
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
        _fail(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
            ExitCode.FAILED,
            args,
        )
    # without standalone mode Click returns the code of a command's `ctx.exit(code)`
    sys.exit(returned if isinstance(returned, int) else ExitCode.OK)
