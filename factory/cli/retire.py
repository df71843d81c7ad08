"""CLI commands: `factory retire` (plan by default; --apply executes the next step)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import click

from factory.aws import AwsClients, AwsTarget
from factory.cli.context import CliContext, output_option, pass_cli
from factory.config import MAX_DAYS, RetentionPolicy
from factory.errors import AwsError, ConfigError
from factory.inuse import ScanTarget, find_in_use
from factory.retire import (
    apply_retire,
    build_plan,
    parse_time,
    render_plan,
    render_result,
    unique_targets,
)


def _now(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    moment = parse_time(value)
    if moment is None:
        raise ConfigError(f"--now {value!r} is not an ISO 8601 time; use e.g. 2026-01-31T12:00Z")
    return moment


def _environment_targets(ctx: CliContext) -> list[ScanTarget]:
    """Clients for every configured environment account and region (assumed roles)."""
    cfg = ctx.config
    out = []
    for name, env in sorted(cfg.environments.items()):
        for region in env.regions or cfg.regions:
            clients = AwsClients(
                AwsTarget(region, cfg.profile, env.role_arn or cfg.role_arn, cfg.endpoint_url)
            )
            out.append(ScanTarget(clients, environment=name))
    return out


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
    overrides: dict[str, Any] = {
        k: v
        for k, v in (("keep", keep), ("min_age_days", min_age), ("grace_days", grace))
        if v is not None
    }

    def policy_for(fam: str) -> RetentionPolicy:
        return replace(cfg.retention_for(fam), **overrides)

    now = _now(now_text)
    own = [ctx.clients(region) for region in cfg.regions]
    others = _environment_targets(ctx)
    progress = ctx.progress()
    plan = build_plan(
        own,
        others,
        policy_for,
        now=now,
        family=family,
        snapshots=snapshots,
        snapshot_min_age_days=policy_for(family or "").min_age_days,
        progress=progress,
    )
    if mode != "apply":
        ctx.emit(plan, render_plan(plan))
        return
    owner = own[0].account_id
    targets = unique_targets([ScanTarget(c) for c in own] + others)
    result = apply_retire(
        plan,
        {c.region: c for c in own},
        recheck=lambda: find_in_use(targets, owner_account=owner),
        progress=progress,
    )
    ctx.emit(result, render_plan(plan) + "\n\n" + render_result(result))
    if result.failed:
        raise AwsError(
            f"retire: {len(result.failed)} step(s) failed (listed above); rerun to retry"
        )


COMMANDS: list[click.Command] = [retire_command]
