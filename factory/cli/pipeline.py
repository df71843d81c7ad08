"""CLI commands: `factory pipeline run` (the nightly rebuild) and `factory pipeline unlock`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import click

from factory.channels import check_channel
from factory.cli.context import CliContext, output_option, pass_cli
from factory.errors import ConfigError, ExitCode, FactoryError, RefusedError
from factory.output import Progress
from factory.pipeline import (
    DEFAULT_LOCK_TTL,
    LOCK_PARAMETER,
    AwsSteps,
    LockHeld,
    RunSettings,
    discover_families,
    gather_facts,
    plan_nightly,
    read_lock,
    release_lock,
    render_markdown,
    render_plan,
    render_text,
    run_nightly,
)
from factory.redact import redact
from factory.retire import RetireResult, RetireScope, RetireSettings, retire_images

MAX_LOCK_TTL = 7 * 86400


@click.group("pipeline")
def pipeline_group() -> None:
    """The nightly rebuild: build, verify and publish every family under a lock held in AWS."""


def _retire_step(cli: CliContext, progress: Progress) -> Callable[[], RetireResult]:
    """The configured retention plan, applied as `factory retire --apply` does."""

    def retire() -> RetireResult:
        cfg = cli.config
        scope = RetireScope.from_config(cfg, [cli.clients(region) for region in cfg.regions])
        settings = RetireSettings.from_config(cfg, now=datetime.now(UTC))
        return retire_images(scope, settings, apply=True, progress=progress)

    return retire


def _check_report_path(report: Path | None) -> None:
    if report is not None and not report.parent.is_dir():
        raise ConfigError(f"--report {report}: directory {report.parent} does not exist")


@pipeline_group.command("run")
@click.argument("families", nargs=-1)
@click.option("--channel", help="Channel to publish each verified AMI to (default: the first).")
@click.option(
    "--retire/--no-retire",
    default=False,
    show_default=True,
    help="Then apply the configured retention plan (as `factory retire --apply`).",
)
@click.option(
    "--rebuild", is_flag=True, help="Build every family even when its inputs are unchanged."
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a Markdown summary here (for CI artifacts).",
)
@click.option(
    "--lock-ttl",
    type=click.IntRange(60, MAX_LOCK_TTL),
    default=DEFAULT_LOCK_TTL,
    show_default=True,
    help="Seconds the lock counts as held after each renewal (one per family).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; take no lock, change nothing.")
@output_option
@pass_cli
def run_cmd(
    cli: CliContext,
    *,
    families: Sequence[str],
    channel: str | None,
    retire: bool,
    rebuild: bool,
    report: Path | None,
    lock_ttl: int,
    dry_run: bool,
) -> None:
    """Build (or reuse), verify and publish every family (default: all), then retire if asked.

    One run at a time: the SSM parameter /factory/locks/pipeline is the lock. A run that finds
    it held exits 3 naming the holder; an expired lock is taken over. Exit 0 when every family
    succeeded, 1 when one failed (the others still ran).
    """
    cfg = cli.config
    channel = channel or cfg.channels[0]
    check_channel(channel, cfg.channels)
    names = _families(cli, families)
    _check_report_path(report)
    clients = cli.clients()
    if dry_run:
        facts = [gather_facts(cfg, clients, f, channel, rebuild=rebuild) for f in names]
        plan = plan_nightly(
            facts, channel=channel, rebuild=rebuild, retire=retire, lock_ttl=lock_ttl
        )
        cli.emit(plan, render_plan(plan))
        return
    progress = cli.progress()
    try:
        result = run_nightly(
            clients,
            AwsSteps(cfg, clients, progress),
            names,
            RunSettings(channel=channel, rebuild=rebuild, lock_ttl=lock_ttl),
            retire=_retire_step(cli, progress) if retire else None,
            progress=progress,
        )
    except LockHeld as exc:
        if report is not None:
            report.write_text(redact(f"# Nightly pipeline: not run\n\n{exc.message}\n"))
        cli.emit({"locked": True, "holder": exc.holder, "message": exc.message})
        raise  # main() says it in one line and exits ExitCode.BUSY
    if report is not None:
        report.write_text(render_markdown(result))
    cli.emit(result, render_text(result))
    if not result.ok:
        failed = [r.family for r in result.families if not r.ok]
        what = f"{len(failed)} of {len(result.families)} families failed ({', '.join(failed)})"
        if result.retire is not None and not result.retire.ok:
            what += "; retire had failures"
        if result.error:
            what = result.error
        raise FactoryError(f"pipeline {result.run_id}: {what}", ExitCode.FAILED)


def _families(cli: CliContext, families: Sequence[str]) -> tuple[str, ...]:
    names = discover_families(cli.config.templates_dir, families)
    if not names:
        raise ConfigError(f"no families with a family.toml in {cli.config.templates_dir}")
    return names


@pipeline_group.command("unlock")
@click.option("--force", is_flag=True, help="Do not ask for confirmation.")
@output_option
@pass_cli
def unlock_cmd(cli: CliContext, *, force: bool) -> None:
    """Remove a stale pipeline lock (a run that died without releasing it)."""
    clients = cli.clients()
    holder = read_lock(clients)
    if holder is None:
        cli.emit({"parameter": LOCK_PARAMETER, "holder": None, "removed": False}, "no lock held")
        return
    if not force:
        if not sys.stdin.isatty():
            raise ConfigError(
                f"{LOCK_PARAMETER} is held by {holder.describe()}; pass --force to remove it"
            )
        if not click.confirm(
            f"{LOCK_PARAMETER} is held by {holder.describe()}. Remove it?", err=True
        ):
            raise RefusedError("lock kept; nothing changed")
    removed = release_lock(clients, holder)
    if not removed:
        raise RefusedError(
            f"{LOCK_PARAMETER} changed meanwhile; run `factory pipeline unlock` again"
        )
    cli.emit(
        {"parameter": LOCK_PARAMETER, "holder": holder, "removed": True},
        f"removed {LOCK_PARAMETER} (held by {holder.describe()})",
    )


COMMANDS: list[click.Command] = [pipeline_group]
