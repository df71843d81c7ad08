"""`factory render FAMILY` and `factory validate FAMILY`: templates to HCL, checked by Packer."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from factory.build import ValidateResult, validate_family
from factory.cli.context import CliContext, output_option, pass_cli
from factory.errors import ConfigError, FactoryError, PackerError
from factory.output import to_jsonable
from factory.packer import PACKER, detect_version, parse_version
from factory.render import (
    Family,
    RenderSettings,
    Variable,
    load_family,
    load_var_file,
    parse_var_args,
    render,
    resolve_variables,
)

PACKER_VERSION = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+$")


def var_options(fn: Any) -> Any:
    """--var NAME=VALUE (repeatable) and --var-file FILE, shared by render, validate and build."""
    fn = click.option(
        "--var-file",
        "var_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="TOML (name = value) or JSON file of variable values; --var wins over it.",
    )(fn)
    return click.option(
        "--var",
        "var_args",
        multiple=True,
        metavar="NAME=VALUE",
        help="Set a family variable (repeatable); see --list-vars.",
    )(fn)


def given_variables(var_args: Sequence[str], var_file: Path | None) -> dict[str, Any]:
    given: dict[str, Any] = dict(load_var_file(var_file)) if var_file else {}
    given.update(parse_var_args(var_args))
    return given


@dataclass(frozen=True)
class VariableList:
    family: str
    description: str
    variables: tuple[Variable, ...]


def _list_text(listing: VariableList) -> str:
    lines = [f"{listing.family}: {listing.description}".rstrip(": ")]
    for var in listing.variables:
        default = (
            "(required)" if var.required else f"default {json.dumps(to_jsonable(var.default))}"
        )
        lines.append(f"  {var.name:<16} {var.type:<13} {default:<32} {var.description}")
    return "\n".join(lines)


@dataclass(frozen=True)
class RenderResult:
    family: str
    template_digest: str
    packer_version: str
    output: Path | None
    hcl: str


@click.command("render")
@click.argument("family")
@var_options
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the HCL to FILE instead of stdout.",
)
@click.option("--list-vars", is_flag=True, help="List the family's variables and exit.")
@click.option(
    "--packer-version",
    metavar="X.Y.Z",
    help="Render for this Packer version (default: the installed one).",
)
@output_option
@pass_cli
def render_cmd(
    cli: CliContext,
    *,
    family: str,
    var_args: Sequence[str],
    var_file: Path | None,
    out: Path | None,
    list_vars: bool,
    packer_version: str | None,
) -> None:
    """Render templates/FAMILY/*.pkr.hcl.j2 into Packer HCL (stdout or -o FILE)."""
    fam: Family = load_family(cli.config.templates_dir, family)
    if list_vars:
        listing = VariableList(fam.name, fam.description, fam.variables)
        cli.emit(listing, _list_text(listing))
        return
    variables = resolve_variables(fam, given_variables(var_args, var_file))
    if packer_version is not None and not PACKER_VERSION.match(packer_version):
        raise ConfigError(
            f"--packer-version {packer_version!r} is not a version; use X.Y.Z, e.g. 1.11.2"
        )
    version = parse_version(packer_version) if packer_version else detect_version(PACKER)
    settings = RenderSettings(
        version.plugins, cli.config.endpoint_url is not None, cli.config.region
    )
    rendered = render(fam, variables, settings)
    if out is not None:
        try:
            out.write_text(rendered.hcl)
        except OSError as exc:
            raise ConfigError(
                f"cannot write {out}: {exc.strerror}; pass -o a file in an existing directory"
            ) from None
    result = RenderResult(fam.name, rendered.digest, version.text, out, rendered.hcl)
    if cli.json:
        cli.emit(result)
    elif out is None:
        click.echo(rendered.hcl, nl=False)
    else:
        click.echo(f"wrote {out} (sha256 {rendered.digest[:16]}, Packer {version.text})")


@click.command("validate")
@click.argument("family")
@var_options
@output_option
@pass_cli
def validate_cmd(
    cli: CliContext, *, family: str, var_args: Sequence[str], var_file: Path | None
) -> None:
    """Render FAMILY and run `packer validate`; errors name the template's own lines."""
    cfg = cli.config
    credentials: dict[str, str] = {}
    try:
        credentials = cli.clients().credentials_env()
    except FactoryError:  # no credentials or profile: validate needs no AWS, Packer gets none
        credentials = {}
    result: ValidateResult = validate_family(
        cfg,
        family,
        given_variables(var_args, var_file),
        region=cfg.region,
        endpoint=cfg.endpoint_url,
        credentials=credentials,
    )
    if result.valid:
        cli.emit(
            result,
            f"{result.family}: valid (Packer {result.packer_version}, "
            f"sha256 {result.template_digest[:16]})",
        )
        return
    cli.emit(result, "\n".join(result.errors) if not cli.json else None)
    first = next((e for e in result.errors if " line " in e or ".j2:" in e), None)
    summary = first or (result.errors[0] if result.errors else "packer validate failed")
    raise PackerError(f"{result.family} is not valid: {summary}")


COMMANDS: list[click.Command] = [render_cmd, validate_cmd]
