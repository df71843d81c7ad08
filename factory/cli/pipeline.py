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
    FamilyResult,
    LockHeld,
    NightlyPlan,
    NightlyResult,
    RetireSummary,
    apply_nightly,
    discover_families,
    gather_nightly,
    holder_text,
    plan_nightly,
    read_lock,
    release_lock,
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
    plan = plan_nightly(
        gather_nightly(cfg, clients, names, channel),
        channel=channel,
        rebuild=rebuild,
        retire=retire,
        lock_ttl=lock_ttl,
    )
    if dry_run:
        cli.emit(plan, render_plan(plan))
        return
    progress = cli.progress()
    try:
        result = apply_nightly(
            plan,
            clients,
            AwsSteps(cfg, clients, progress),
            retire=_retire_step(cli, progress) if plan.retire else None,
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
    _require_ok(result)


def _require_ok(result: NightlyResult) -> None:
    """Exit 1 naming what failed: families, the retire step, or the run itself."""
    if result.ok:
        return
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
                f"{LOCK_PARAMETER} is held by {holder_text(holder)}; pass --force to remove it"
            )
        if not click.confirm(
            f"{LOCK_PARAMETER} is held by {holder_text(holder)}. Remove it?", err=True
        ):
            raise RefusedError("lock kept; nothing changed")
    removed = release_lock(clients, holder)
    if not removed:
        raise RefusedError(
            f"{LOCK_PARAMETER} changed meanwhile; run `factory pipeline unlock` again"
        )
    cli.emit(
        {"parameter": LOCK_PARAMETER, "holder": holder, "removed": True},
        f"removed {LOCK_PARAMETER} (held by {holder_text(holder)})",
    )


# ---- rendering -----------------------------------------------------------------------------


def _verify_text(r: FamilyResult) -> str:
    if r.verify is None:
        return "-"
    if r.verify == "already-verified":
        return "already verified"
    if r.tests_total:
        return f"{r.verify} {r.tests_passed}/{r.tests_total}"
    return r.verify


def _channel_text(r: FamilyResult) -> str:
    if r.ami_id is None or not r.ok:
        return "-"
    if not r.channel_changed:
        return f"{r.channel}: unchanged"
    return f"{r.channel}: {r.channel_previous or 'unset'} -> {r.ami_id}"


def _rows(result: NightlyResult) -> list[tuple[str, ...]]:
    return [
        (
            r.family,
            r.ami_id or "-",
            r.build or "-",
            _verify_text(r),
            _channel_text(r),
            f"{r.seconds:.1f}",
            "ok" if r.ok else "FAILED",
        )
        for r in result.families
    ]


HEADER = ("FAMILY", "AMI", "BUILD", "VERIFY", "CHANNEL", "SECONDS", "RESULT")


def _retire_text(summary: RetireSummary) -> str:
    if summary.error:
        return f"retire failed: {summary.error}"
    return (
        f"retire: {len(summary.deprecated)} deprecated, {len(summary.deregistered)} deregistered, "
        f"{len(summary.restored)} restored, {len(summary.failed)} failed, "
        f"{summary.skipped} skipped ({summary.api_calls} API calls)"
    )


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def render_text(result: NightlyResult) -> str:
    """The run as a short table, then failures, retire and the lock."""
    lines = _table([HEADER, *_rows(result)])
    lines += [f"{r.family}: {r.error}" for r in result.families if r.error]
    if result.retire is not None:
        lines.append(_retire_text(result.retire))
        lines += [f"  retire failed: {f}" for f in result.retire.failed]
    if result.error:
        lines.append(f"run stopped: {result.error}")
    failed = sum(1 for r in result.families if not r.ok)
    lock = f"lock {result.lock.parameter} {'released' if result.lock_released else 'NOT released'}"
    if result.lock_taken_over is not None:
        lock += f" (taken over from expired {holder_text(result.lock_taken_over)})"
    lines.append(
        f"run {result.run_id}: {len(result.families)} families, {failed} failed, "
        f"{result.seconds:.1f}s; {lock}"
    )
    return redact("\n".join(lines))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: NightlyResult) -> str:
    """The report CI keeps as an artifact (through the same redaction as all output)."""
    verdict = "succeeded" if result.ok else "FAILED"
    lines = [
        f"# Nightly pipeline {result.run_id}: {verdict}",
        "",
        f"- started {result.started.isoformat(timespec='seconds')}, "
        f"finished {result.finished.isoformat(timespec='seconds')} ({result.seconds:.1f}s)",
        f"- channel `{result.channel}`; rebuild: {'yes' if result.rebuild else 'no'}",
        f"- lock `{result.lock.parameter}` held by {result.lock.owner}; "
        f"{'released' if result.lock_released else '**not released**'}",
    ]
    if result.lock_taken_over is not None:
        lines.append(f"- took over an expired lock: {holder_text(result.lock_taken_over)}")
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in _rows(result)]
    errors = [r for r in result.families if r.error]
    if errors:
        lines += ["", "## Failures", ""]
        lines += [f"- **{r.family}**: {_md_cell(r.error or '')}" for r in errors]
    if result.retire is not None:
        lines += ["", "## Retire", "", f"- {_retire_text(result.retire)}"]
        for label, amis in (
            ("deprecated", result.retire.deprecated),
            ("deregistered", result.retire.deregistered),
            ("restored", result.retire.restored),
        ):
            if amis:
                lines.append(f"- {label}: {', '.join(amis)}")
        lines += [f"- failed: {_md_cell(f)}" for f in result.retire.failed]
    if result.error:
        lines += ["", f"**Run stopped:** {_md_cell(result.error)}"]
    return redact("\n".join(lines) + "\n")


def render_plan(plan: NightlyPlan) -> str:
    """The plan as `--dry-run` prints it: per family the action and how its channel moves."""
    header = ("FAMILY", "ACTION", "AMI", "CHANNEL NOW", "CHANNEL MOVE")
    rows = [header]
    for f in plan.families:
        move = {
            "none": "unchanged",
            "set": f"{f.channel} -> {f.ami_id}",
            "after-verify": f"{f.channel} -> the new AMI once verified",
        }[f.channel_move]
        rows.append((f.family, f.action, f.ami_id or "-", f.channel_ami or "unset", move))
    lines = _table(rows)
    lines += [f"{f.family}: {f.error}" for f in plan.families if f.error]
    lines.append(
        f"dry run: no lock taken ({plan.lock_parameter}), nothing changed"
        + (
            "; retire would then apply the retention plan (see `factory retire`)"
            if plan.retire
            else ""
        )
    )
    return redact("\n".join(lines))


COMMANDS: list[click.Command] = [pipeline_group]
