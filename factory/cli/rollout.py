"""CLI: `factory rollout [start] ...`, `factory rollout status ASG`, `factory rollout rollback
ASG [--dry-run]`, and `factory drift`.

`rollout` is a group whose default subcommand is `start`: `factory rollout web-asg --ami X`
means `factory rollout start web-asg --ami X`, and `factory rollout --fleet fleet.toml` means
`factory rollout start --fleet fleet.toml`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from factory.aws.groups import Refresh
from factory.channels import check_channel
from factory.cli.context import CliContext, output_option, pass_cli
from factory.errors import ConfigError, ExitCode, FactoryError, RefusedError
from factory.output import Progress
from factory.rollout import (
    DriftReport,
    InterruptChoice,
    ReconcileResult,
    RefreshSettings,
    RollbackAction,
    RollbackPlan,
    RolloutPlan,
    RolloutResult,
    VerifyLive,
    drift,
    follow_status,
    live_verifier,
    load_fleet,
    plan_steps,
    raise_if_fleet_failed,
    reconcile,
    roll_back,
    roll_out,
)


class RolloutGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to `start`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["start", *args]
        return super().parse_args(ctx, args)


def _checkpoints(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter("use comma-separated percentages, like 20,50,100") from None


def interrupt_choice(policy: str, progress: Progress) -> InterruptChoice:
    """What Ctrl-C during a wait does: ask on a terminal; otherwise the policy (ask -> cancel)."""

    def _choose(state: Refresh) -> str:
        if policy in ("cancel", "detach"):
            return policy
        if not sys.stdin.isatty():
            progress.warn(
                "interrupted without a terminal to ask: cancelling the refresh (pass "
                "--on-interrupt detach to leave it running instead)"
            )
            return "cancel"
        try:
            return str(
                click.prompt(
                    f"\nrefresh {state.refresh_id} is {state.status} at {state.percentage}%: "
                    "cancel it, or detach and let it run?",
                    type=click.Choice(["cancel", "detach"]),
                    default="cancel",
                    err=True,
                )
            )
        except (click.exceptions.Abort, KeyboardInterrupt, EOFError):
            return "detach"  # a second Ctrl-C at the question: leave it alone, say how to follow

    return _choose


def render_plan(plan: RolloutPlan) -> str:
    lines = [f"rollout plan for {plan.group} ({plan.region}): {plan.ami_id} from {plan.source}"]
    lines += [f"  - {step}" for step in plan_steps(plan)]
    lines += [f"  warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


def render_rollback_plan(plan: RollbackPlan) -> str:
    head = f"rollback plan for {plan.group} ({plan.region}):"
    if plan.action is RollbackAction.ROLLBACK_REFRESH:
        return (
            f"{head} roll back instance refresh {plan.refresh_id} ({plan.refresh_status}) "
            "with RollbackInstanceRefresh"
        )
    if plan.refused or plan.refresh is None:
        return f"{head} refused: {plan.reason}"
    lines = [
        f"{head} refresh back to launch template version {plan.target_version} "
        f"({plan.ami_id}); it uses version {plan.current_version} now"
    ]
    lines += [f"  - {step}" for step in plan_steps(plan.refresh)]
    lines += [f"  warning: {w}" for w in plan.refresh.warnings]
    return "\n".join(lines)


def render_drift(report: DriftReport) -> str:
    lines = []
    for group in report.groups:
        mark = "DRIFT" if group.drifted else "ok   "
        lines.append(
            f"{mark} {group.group} ({group.region}) {group.family}/{group.channel} "
            f"channel={group.channel_ami or '-'} template={group.template_ami or '-'}"
        )
        lines += [f"      {reason}" for reason in group.reasons]
        for instance in group.instances:
            if instance.reasons:
                lines.append(f"      {instance.instance_id}: {'; '.join(instance.reasons)}")
    drifted = len(report.drifted)
    lines.append(f"{drifted} of {len(report.groups)} group(s) drifted")
    return "\n".join(lines)


def render_result(result: RolloutResult) -> str:
    if result.status == "UpToDate":
        return f"{result.group}: up to date ({result.ami_id})"
    if result.status == "None":
        return f"{result.group}: no instance refresh yet"
    if not result.waited and result.status in ("Pending", "InProgress", "RollbackInProgress"):
        return (
            f"{result.refresh_id}\n"
            f"# {result.group}: refresh started; follow it with "
            f"`factory rollout status {result.group}`"
        )
    lines = [
        f"{result.group}: {result.status} {result.percentage}% "
        f"(refresh {result.refresh_id}, launch template {result.launch_template_id} "
        f"version {result.launch_template_version})"
    ]
    if result.reason:
        lines.append(f"  reason: {result.reason}")
    if result.restored:
        lines.append(f"  now: {result.restored}")
    if result.verify_live:
        detail = f" ({result.verify_live_detail})" if result.verify_live_detail else ""
        lines.append(f"  live verification: {result.verify_live}{detail}")
    if result.seconds:
        lines.append(f"  {result.seconds:.1f}s, {result.api_calls} API calls")
    lines += [f"  warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def render_reconcile(result: ReconcileResult) -> str:
    lines = [render_drift(result.drift)]
    lines += [render_result(r) for r in result.rollouts]
    lines += [f"error: {e}" for e in result.errors]
    return "\n".join(lines)


@click.group("rollout", cls=RolloutGroup)
def rollout_group() -> None:
    """Roll images out by replacing instances: `factory rollout [start] ASG --ami AMI`,
    `factory rollout --fleet fleet.toml`, `factory rollout status ASG`,
    `factory rollout rollback ASG`."""


def _settings(
    min_healthy: int,
    max_healthy: int,
    warmup: int | None,
    checkpoints: tuple[int, ...],
    checkpoint_delay: int | None,
    alarms: tuple[str, ...],
    skip_matching: bool,
) -> RefreshSettings:
    settings = RefreshSettings(
        min_healthy=min_healthy,
        max_healthy=max_healthy,
        warmup=warmup,
        checkpoints=checkpoints,
        checkpoint_delay=checkpoint_delay,
        alarms=alarms,
        skip_matching=skip_matching,
    )
    settings.check()
    return settings


def refresh_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--min-healthy",
                type=click.IntRange(0, 100),
                default=90,
                show_default=True,
                help="Percent of the group kept healthy.",
            ),
            click.option(
                "--max-healthy",
                type=click.IntRange(100, 200),
                default=100,
                show_default=True,
                help="Percent the group may grow to (over 100: launch before terminate).",
            ),
            click.option(
                "--warmup",
                type=click.IntRange(min=0),
                help="Seconds a new instance warms up before it counts (default: the group's).",
            ),
            click.option(
                "--checkpoints",
                callback=_checkpoints,
                help="Pause at these percentages, e.g. 20,50,100.",
            ),
            click.option(
                "--checkpoint-delay",
                type=click.IntRange(min=0),
                help="Seconds to wait at each checkpoint (AWS default 3600).",
            ),
            click.option(
                "--alarm",
                "alarms",
                multiple=True,
                help="CloudWatch alarm that fails (and rolls back) the refresh; repeatable.",
            ),
            click.option(
                "--skip-matching/--no-skip-matching",
                default=True,
                show_default=True,
                help="Leave instances already on the target version alone.",
            ),
            click.option(
                "--no-wait",
                is_flag=True,
                help="Print the refresh id and return; follow with `rollout status`.",
            ),
            click.option(
                "--on-interrupt",
                type=click.Choice(["ask", "cancel", "detach"]),
                default="ask",
                show_default=True,
                help="What Ctrl-C does while waiting (ask: prompt on a terminal, else cancel).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


@rollout_group.command("start")
@click.argument("asg", required=False)
@click.option("--ami", help="The image to roll out (must be verified, not revoked).")
@click.option("--channel", help="Roll out what FAMILY/CHANNEL names, e.g. web/prod.")
@click.option(
    "--fleet",
    "fleet_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Reconcile every drifted group of this fleet file.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="With --fleet: groups rolled out at once.",
)
@refresh_options
@click.option("--dry-run", is_flag=True, help="Show the plan; change nothing.")
@click.option("--force", is_flag=True, help="Roll out to a group tagged factory:stateful=true.")
@click.option(
    "--verify-live",
    is_flag=True,
    help="After success, run the image's test suite on a new instance; roll back if it fails.",
)
@click.option(
    "--ssh-user",
    default="admin",
    show_default=True,
    help="With --verify-live: the image's login user.",
)
@click.option(
    "--ssh-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --verify-live: the private key of the group's key pair (default: a one-off key "
    "pushed with EC2 Instance Connect).",
)
@click.option(
    "--live-timeout",
    type=click.FloatRange(min=1),
    default=180,
    show_default=True,
    help="With --verify-live: seconds to reach the instance over SSH.",
)
@output_option
@pass_cli
def start_command(
    ctx: CliContext,
    asg: str | None,
    ami: str | None,
    channel: str | None,
    fleet_path: Path | None,
    parallel: int,
    min_healthy: int,
    max_healthy: int,
    warmup: int | None,
    checkpoints: tuple[int, ...],
    checkpoint_delay: int | None,
    alarms: tuple[str, ...],
    skip_matching: bool,
    no_wait: bool,
    on_interrupt: str,
    dry_run: bool,
    force: bool,
    verify_live: bool,
    ssh_user: str,
    ssh_key: Path | None,
    live_timeout: float,
) -> None:
    """Roll an image out to ASG (--ami or --channel), or every drifted group of --fleet."""
    if (ssh_key is not None or ssh_user != "admin") and not verify_live:
        raise ConfigError("--ssh-user and --ssh-key go with --verify-live; add it or drop them")
    if verify_live and no_wait:
        raise ConfigError("--verify-live runs after the refresh succeeds: drop --no-wait")
    settings = _settings(
        min_healthy, max_healthy, warmup, checkpoints, checkpoint_delay, alarms, skip_matching
    )
    progress = ctx.progress()
    choice = interrupt_choice(on_interrupt, progress)
    verify_fn = (
        _live_verifier(ctx, progress, ssh_user, ssh_key, live_timeout) if verify_live else None
    )
    if fleet_path is not None:
        if asg or ami or channel:
            raise ConfigError("--fleet reconciles the file's groups: drop ASG, --ami, --channel")
        reconciled = reconcile(
            load_fleet(fleet_path, ctx.config.channels),
            ctx.clients,
            progress,
            settings,
            parallel=parallel,
            force=force,
            wait=not no_wait,
            dry_run=dry_run,
            on_interrupt=choice,
            verify_live=verify_fn,
        )
        ctx.emit(reconciled, render_reconcile(reconciled))
        raise_if_fleet_failed(reconciled)
        return
    if not asg:
        raise ConfigError("name the group: factory rollout ASG --ami AMI (or --fleet fleet.toml)")
    if bool(ami) == bool(channel):
        raise ConfigError("give exactly one of --ami AMI or --channel FAMILY/CHANNEL")
    outcome = roll_out(
        ctx.clients(),
        asg,
        settings,
        progress,
        ami_id=ami,
        channel=_family_channel(channel, ctx.config.channels) if channel else None,
        force=force,
        dry_run=dry_run,
        wait=not no_wait,
        on_interrupt=choice,
        verify_live=verify_fn,
    )
    if isinstance(outcome, RolloutPlan):
        ctx.emit(outcome, render_plan(outcome))
    else:
        ctx.emit(outcome, render_result(outcome))


def _live_verifier(
    ctx: CliContext, progress: Progress, ssh_user: str, ssh_key: Path | None, timeout: float
) -> VerifyLive:
    """--verify-live: the verify stage's suite on a new instance (a bad key is refused now)."""
    return live_verifier(
        templates_dir=ctx.config.templates_dir,
        output_dir=ctx.config.state_dir / "verify",
        ssh_user=ssh_user,
        ssh_key=ssh_key,
        timeout=timeout,
        progress=progress,
    )


def _family_channel(value: str, channels: tuple[str, ...]) -> tuple[str, str]:
    """--channel FAMILY/CHANNEL, the channel one of factory.toml's."""
    family, _, channel = value.partition("/")
    if not family or not channel:
        raise ConfigError("--channel takes FAMILY/CHANNEL, e.g. web/prod")
    check_channel(channel, channels)
    return family, channel


@rollout_group.command("status")
@click.argument("asg")
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="Follow a running refresh to its end.",
)
@click.option(
    "--on-interrupt",
    type=click.Choice(["ask", "cancel", "detach"]),
    default="detach",
    show_default=True,
    help="What Ctrl-C does while following.",
)
@output_option
@pass_cli
def status_command(ctx: CliContext, asg: str, follow: bool, on_interrupt: str) -> None:
    """Show (and follow) the group's latest instance refresh."""
    progress = ctx.progress()
    result = follow_status(
        ctx.clients(),
        asg,
        progress,
        follow=follow,
        on_interrupt=interrupt_choice(on_interrupt, progress),
    )
    ctx.emit(result, render_result(result))


@rollout_group.command("rollback")
@click.argument("asg")
@refresh_options
@click.option("--force", is_flag=True, help="Also for a group tagged factory:stateful=true.")
@click.option("--dry-run", is_flag=True, help="Show the plan; change nothing.")
@output_option
@pass_cli
def rollback_command(
    ctx: CliContext,
    asg: str,
    min_healthy: int,
    max_healthy: int,
    warmup: int | None,
    checkpoints: tuple[int, ...],
    checkpoint_delay: int | None,
    alarms: tuple[str, ...],
    skip_matching: bool,
    no_wait: bool,
    on_interrupt: str,
    force: bool,
    dry_run: bool,
) -> None:
    """Roll back: RollbackInstanceRefresh while a refresh runs, else refresh to the previous
    launch template version."""
    settings = _settings(
        min_healthy, max_healthy, warmup, checkpoints, checkpoint_delay, alarms, skip_matching
    )
    progress = ctx.progress()
    outcome = roll_back(
        ctx.clients(),
        asg,
        progress,
        settings=settings,
        force=force,
        dry_run=dry_run,
        wait=not no_wait,
        on_interrupt=interrupt_choice(on_interrupt, progress),
    )
    if isinstance(outcome, RolloutResult):
        ctx.emit(outcome, render_result(outcome))
        return
    ctx.emit(outcome, render_rollback_plan(outcome))
    if outcome.refused:
        raise RefusedError(outcome.reason)


@click.command("drift")
@click.option(
    "--fleet",
    "fleet_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("fleet.toml"),
    show_default=True,
    help="The fleet file.",
)
@click.option("--exit-code", is_flag=True, help="Exit 1 when anything drifted.")
@output_option
@pass_cli
def drift_command(ctx: CliContext, fleet_path: Path, exit_code: bool) -> None:
    """Report groups and instances whose AMI differs from their channel, is revoked or retired."""
    report = drift(load_fleet(fleet_path, ctx.config.channels), ctx.clients)
    ctx.emit(report, render_drift(report))
    if exit_code and report.drifted:
        raise FactoryError(
            f"{len(report.drifted)} group(s) drifted; `factory rollout --fleet {fleet_path}` "
            "reconciles them",
            ExitCode.FAILED,
        )


COMMANDS: list[click.Command] = [rollout_group, drift_command]
