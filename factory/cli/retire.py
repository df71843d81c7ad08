"""CLI commands: `factory retire` (plan by default; --apply executes the next step)."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from factory.aws.model import parse_time
from factory.cli.context import CliContext, output_option, pass_cli
from factory.config import MAX_DAYS
from factory.errors import AwsError, ConfigError
from factory.retire import RetirePlan, RetireResult, RetireScope, RetireSettings, retire_images


def _now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    moment = parse_time(value.strip())
    if moment is None:
        raise ConfigError(f"--now {value!r} is not an ISO 8601 time; use e.g. 2026-01-31T12:00Z")
    return moment


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def render_plan(plan: RetirePlan) -> str:
    """The plan as a table (deterministic: same facts, same text)."""
    header = ("REGION", "FAMILY", "VERSION", "AMI", "CREATED", "ACTION", "REASONS")
    rows = [
        (
            d.region,
            d.family,
            d.version or "-",
            d.ami_id,
            _day(d.created_at),
            d.action.value,
            "; ".join(d.reasons),
        )
        for d in plan.decisions
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in [header, *rows]
    ]
    if plan.snapshots:
        lines += ["", "SNAPSHOT               REGION      STARTED     GIB  ACTION  REASON"]
        lines += [
            f"{s.snapshot_id:<22} {s.region:<11} {_day(s.started_at)}  {s.size_gib:>4}  "
            f"{s.action:<6}  {s.reason}"
            for s in plan.snapshots
        ]
    counts = plan.counts
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    lines += [
        "",
        f"{len(plan.decisions)} images ({summary or 'nothing to do'}); "
        f"{plan.images_scanned} scanned with {plan.api_calls} API calls",
    ]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def render_result(result: RetireResult) -> str:
    lines = [
        f"{o.status:<7} {o.action:<16} {o.resource:<22} {o.region:<11} {o.detail}"
        for o in result.outcomes
    ]
    done = sum(1 for o in result.outcomes if o.status == "done")
    lines.append(
        f"{done} done, {len(result.failed)} failed, "
        f"{len(result.outcomes) - done - len(result.failed)} skipped; "
        f"{result.api_calls} API calls"
    )
    return "\n".join(lines)


@click.command("retire")
@click.option("--family", "-f", help="Only this image family.")
@click.option("--keep", type=click.IntRange(min=0), help="Keep the newest N verified images.")
@click.option(
    "--min-age",
    "min_age",
    type=click.IntRange(0, MAX_DAYS),
    help="Keep images younger than D days.",
)
@click.option(
    "--grace",
    type=click.IntRange(0, MAX_DAYS),
    help="Days between deprecation and deregistration.",
)
@click.option(
    "--plan", "mode", flag_value="plan", default=True, help="Show what would happen (the default)."
)
@click.option(
    "--apply",
    "mode",
    flag_value="apply",
    help="Deprecate, restore, and deregister what the plan says, re-checking use first.",
)
@click.option(
    "--snapshots", is_flag=True, help="Also plan deletion of factory snapshots whose image is gone."
)
@click.option("--now", "now_text", hidden=True, help="Pretend it is this time (ISO 8601).")
@output_option
@pass_cli
def retire_command(
    ctx: CliContext,
    family: str | None,
    keep: int | None,
    min_age: int | None,
    grace: int | None,
    mode: str,
    snapshots: bool,
    now_text: str | None,
) -> None:
    """Retire old images: keep what the policy or anything in use needs, retire the rest."""
    cfg = ctx.config
    settings = RetireSettings.from_config(
        cfg,
        now=_now(now_text),
        family=family,
        snapshots=snapshots,
        keep=keep,
        min_age_days=min_age,
        grace_days=grace,
    )
    scope = RetireScope.from_config(cfg, [ctx.clients(region) for region in cfg.regions])
    result = retire_images(scope, settings, apply=mode == "apply", progress=ctx.progress())
    if mode != "apply":
        ctx.emit(result.plan, render_plan(result.plan))
        return
    ctx.emit(result, render_plan(result.plan) + "\n\n" + render_result(result))
    if result.failed:
        raise AwsError(
            f"retire: {len(result.failed)} step(s) failed (listed above); rerun to retry"
        )


COMMANDS: list[click.Command] = [retire_command]
