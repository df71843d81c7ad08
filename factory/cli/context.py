"""What every command gets: parsed global options, and the config and clients built from them."""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from factory.config import FactoryConfig, load_config
from factory.output import Progress, emit

if TYPE_CHECKING:
    # factory.aws imports boto3 (~0.3 s): only commands that make clients pay for it
    from factory.aws import AwsClients

OUTPUT_CHOICES = ("text", "json")


@dataclass
class CliContext:
    config_file: str | None
    region: str | None
    profile: str | None
    output: str
    debug: bool
    quiet: bool
    _config: FactoryConfig | None = field(default=None, repr=False)
    _clients: dict[str, AwsClients] = field(default_factory=dict, repr=False)
    emitted: bool = field(default=False, repr=False)  # a result is on stdout already

    @property
    def config(self) -> FactoryConfig:
        if self._config is None:
            self._config = load_config(
                config_file=Path(self.config_file) if self.config_file else None,
                region=self.region,
                profile=self.profile,
            )
        return self._config

    def clients(self, region: str | None = None) -> AwsClients:
        """Clients for the configured account in `region` (default: the configured one)."""
        from factory.aws import AwsClients, AwsTarget

        cfg = self.config
        region = region or cfg.region
        if region not in self._clients:
            self._clients[region] = AwsClients(
                AwsTarget(region, cfg.profile, cfg.role_arn, cfg.endpoint_url)
            )
        return self._clients[region]

    def progress(self) -> Progress:
        # JSON output keeps stderr quiet only when asked; progress never touches stdout
        return Progress(quiet=self.quiet)

    @property
    def json(self) -> bool:
        return self.output == "json"

    def emit(self, result: Any, human: str | None = None) -> None:
        emit(result, self.output, human)
        self.emitted = True


# The command line being run (main() reads it to report an error the way output was asked for).
CURRENT: ContextVar[CliContext | None] = ContextVar("factory_cli_context", default=None)


def json_requested(args: Sequence[str]) -> bool:
    """Whether `args` ask for JSON output (-O json, -Ojson, --output json, --output=json; the
    last one counts), for errors raised before or after the options were parsed."""
    mode = None
    for i, arg in enumerate(args):
        if arg in ("-O", "--output") and i + 1 < len(args):
            mode = args[i + 1]
        elif arg.startswith("--output="):
            mode = arg.removeprefix("--output=")
        elif arg.startswith("-O") and len(arg) > 2:
            mode = arg[2:]
    return mode == "json"


pass_cli = click.make_pass_decorator(CliContext)


def output_option(fn: Any) -> Any:
    """`--output json` on every command, as well as on the group."""

    def _set(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        cli = ctx.find_object(CliContext)
        if value is not None and cli is not None:
            cli.output = value

    return click.option(
        "--output",
        "-O",
        type=click.Choice(OUTPUT_CHOICES),
        default=None,
        expose_value=False,
        callback=_set,
        help="Result format: text or json.",
    )(fn)
