"""CLI command: `factory promote AMI_ID --to ENV` (copy a verified image to an environment)."""

from __future__ import annotations

import click

from factory.cli.context import CliContext, output_option, pass_cli
from factory.config import check_region
from factory.errors import ConfigError


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
    from factory.aws import AwsClients, AwsTarget
    from factory.promote import PromotionPlan, promote

    cfg = ctx.config
    environment = cfg.environments.get(env_name)
    if environment is None:
        known = ", ".join(sorted(cfg.environments)) or "none configured"
        raise ConfigError(
            f"unknown environment {env_name!r} ({known}); add [environments.{env_name}] "
            "to factory.toml"
        )
    source = ctx.clients()
    targets = {}
    for region in _regions(regions, environment.regions or cfg.regions, env_name):
        clients = AwsClients(
            AwsTarget(region, cfg.profile, environment.role_arn or cfg.role_arn, cfg.endpoint_url)
        )
        if environment.account and clients.account_id != environment.account:
            raise ConfigError(
                f"environments.{env_name}.account is {environment.account}, but its credentials "
                f"act in account {clients.account_id}; fix role_arn or account"
            )
        targets[(clients.account_id, region)] = clients
    outcome = promote(
        cfg,
        source,
        ami_id,
        environment,
        targets,
        channel=channel,
        dry_run=dry_run,
        wait=not no_wait,
        progress=ctx.progress(),
    )
    if isinstance(outcome, PromotionPlan):
        ctx.emit(outcome, outcome.describe())
        return
    progress = ctx.progress()
    for warning in outcome.warnings:
        progress.warn(warning)
    ctx.emit(outcome, outcome.describe())


COMMANDS: list[click.Command] = [promote_command]
