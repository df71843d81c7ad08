"""Applying a rollout plan, and the whole chain `factory rollout ASG` runs:
`gather_rollout` (reads) -> `plan_rollout` (pure) -> `apply_rollout`.
"""

from __future__ import annotations

from functools import partial

from factory.aws import AwsClients
from factory.aws.wait import Poller
from factory.output import Progress
from factory.rollout.facts import gather_rollout
from factory.rollout.live import VerifyLive, verify_after_refresh
from factory.rollout.plan import RefreshSettings, RolloutPlan, plan_rollout
from factory.rollout.refresh import replace_instances
from factory.rollout.result import RolloutResult
from factory.rollout.wait import InterruptChoice


def apply_rollout(
    plan: RolloutPlan,
    clients: AwsClients,
    progress: Progress,
    *,
    wait: bool = True,
    on_interrupt: InterruptChoice | None = None,
    verify_live: VerifyLive | None = None,
    poller: Poller | None = None,
) -> RolloutResult:
    """Create the launch template version, start the refresh, and (by default) follow it; with
    `verify_live`, test the image on a new instance once it succeeded (rolled back on failure)."""
    check = (
        partial(
            verify_after_refresh,
            clients,
            verify_live=verify_live,
            progress=progress,
            on_interrupt=on_interrupt,
            poller=poller,
            settings=plan.settings,
        )
        if verify_live is not None
        else None
    )
    return replace_instances(
        plan,
        clients,
        progress,
        wait=wait,
        on_interrupt=on_interrupt,
        poller=poller,
        after_success=check,
    )


def roll_out(
    clients: AwsClients,
    group: str,
    settings: RefreshSettings,
    progress: Progress,
    *,
    ami_id: str | None = None,
    channel: tuple[str, str] | None = None,
    force: bool = False,
    dry_run: bool = False,
    wait: bool = True,
    on_interrupt: InterruptChoice | None = None,
    verify_live: VerifyLive | None = None,
) -> RolloutPlan | RolloutResult:
    """Roll `ami_id`, or what `channel` (family, channel) names, out to the group: the plan
    when `dry_run`, else what applying it did."""
    plan = plan_rollout(
        gather_rollout(clients, group, ami_id=ami_id, channel=channel), settings, force=force
    )
    if dry_run:
        return plan
    for warning in plan.warnings:
        progress.warn(warning)
    return apply_rollout(
        plan, clients, progress, wait=wait, on_interrupt=on_interrupt, verify_live=verify_live
    )
