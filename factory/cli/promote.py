"""CLI command: `factory promote AMI_ID --to ENV` (copy a verified image to an environment)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from factory.cli.context import CliContext, output_option, pass_cli
from factory.config import check_region
from factory.errors import ConfigError

if TYPE_CHECKING:  # factory.promote imports boto3: only a command that runs pays for it
    from factory.promote import PromotionPlan, PromotionResult


def _regions(value: str | None, allowed: tuple[str, ...], env: str) -> tuple[str, ...]:
    if value is None:
        return allowed
    wanted = tuple(dict.fromkeys(r.strip() for r in value.split(",") if r.strip()))
    if not wanted:
        raise ConfigError("--regions is empty; name at least one region, e.g. eu-west-1")
    for region in wanted:
        check_region(region, "--regions")
        if region not in allowed:
            raise ConfigError(
                f"--regions: {region} is not a region of environment {env} "
                f"({', '.join(allowed)}); add it to [environments.{env}] regions"
            )
    return wanted


def plan_text(plan: PromotionPlan) -> str:
    """The plan as `--dry-run` prints it: one line per target account and region."""
    lines = [
        f"promote {plan.source_ami} ({plan.name}, {plan.source_account}/{plan.source_region}) "
        f"to {plan.environment}"
    ]
    for step in plan.steps:
        where = f"{step.account}/{step.region}"
        if step.action == "reuse":
            lines.append(f"  {where}: reuse {step.ami_id} (already promoted)")
        elif step.action == "source":
            lines.append(f"  {where}: the image itself lives here; nothing to copy")
        else:
            extra = []
            if step.share:
                extra.append(f"share launch and snapshot permission with {step.account}")
            if step.kms_key:
                extra.append(f"encrypt with {step.kms_key}")
            suffix = f" ({'; '.join(extra)})" if extra else ""
            lines.append(f"  {where}: copy{suffix}")
    if plan.channel:
        lines.append(f"  then set channel {plan.family}/{plan.channel} in each region")
    return "\n".join(lines)


def result_text(result: PromotionResult) -> str:
    """Each copy, each channel set, and where the promotion was attested."""
    lines = [
        f"{c.account}/{c.region}  {c.ami_id}  {c.action}  {c.state}  {c.seconds:.1f}s"
        for c in result.copies
    ]
    lines += [
        f"{s.account}/{s.region}  {s.parameter} -> {s.ami_id}{'' if s.changed else ' (unchanged)'}"
        for s in result.channels
    ]
    if result.attestation:
        lines.append(f"promotion attested in {result.attestation}")
    return "\n".join(lines)


@click.command("promote")
@click.argument("ami_id")
@click.option("--to", "env_name", required=True, help="Target environment ([environments.NAME]).")
@click.option("--regions", help="Only these of the environment's regions (comma separated).")
@click.option("--channel", help="Then point this channel of the family at each copy.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--no-wait", is_flag=True, help="Start the copies; do not wait until available.")
@output_option
@pass_cli
def promote_command(
    ctx: CliContext,
    ami_id: str,
    env_name: str,
    regions: str | None,
    channel: str | None,
    dry_run: bool,
    no_wait: bool,
) -> None:
    """Copy verified AMI_ID into an environment's account and regions (dev -> staging -> prod).

    Each target account owns an independent copy with the source's name, description and
    factory tags (the verified verdict included) plus factory:promoted-from; an existing copy
    is reused. --channel then publishes each copy in its own account and region.
    """
    from factory.environments import environment, environment_regions
    from factory.promote import PromotionPlan, environment_targets, promote

    cfg = ctx.config
    env = environment(cfg, env_name)
    targets = environment_targets(
        cfg, env, _regions(regions, environment_regions(cfg, env), env_name)
    )
    outcome = promote(
        cfg,
        ctx.clients(),
        ami_id,
        env,
        targets,
        channel=channel,
        dry_run=dry_run,
        wait=not no_wait,
        progress=ctx.progress(),
    )
    if isinstance(outcome, PromotionPlan):
        ctx.emit(outcome, plan_text(outcome))
        return
    progress = ctx.progress()
    for warning in outcome.warnings:
        progress.warn(warning)
    ctx.emit(outcome, result_text(outcome))


COMMANDS: list[click.Command] = [promote_command]
