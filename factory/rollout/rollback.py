"""Rolling a group back: `gather_rollback` (reads) -> `plan_rollback` (pure) -> `apply_rollback`.

While a refresh is in progress AWS reverses it (RollbackInstanceRefresh); otherwise the group is
refreshed back to the launch template version its current one was rolled out from (the version's
description says "from version N"; else N-1). The plan says which, or why neither can be done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

from factory.aws import AwsClients, groups
from factory.aws.groups import Refresh, TemplateVersion
from factory.aws.model import Image
from factory.aws.wait import Poller
from factory.errors import AwsError, RefusedError
from factory.output import Progress
from factory.rollout.facts import (
    GroupLaunch,
    RolloutFacts,
    find_images,
    gather_group,
    resolve_image,
)
from factory.rollout.plan import RefreshSettings, RolloutPlan, plan_rollout
from factory.rollout.refresh import finish, in_progress_refusal, replace_instances
from factory.rollout.result import RolloutFailed, RolloutResult, raise_if_failed
from factory.rollout.wait import InterruptChoice, latest_refresh, wait_refresh

VERSION_NOTE = re.compile(r"from version (\d+)")
# the refresh states RollbackInstanceRefresh reverses (not Cancelling, not a rollback already)
REVERSIBLE = frozenset({"Pending", "InProgress", "Baking"})


class RollbackAction(StrEnum):
    ROLLBACK_REFRESH = "rollback-refresh"  # RollbackInstanceRefresh of the active refresh
    REFRESH_TO_PREVIOUS = "refresh-to-previous"  # a refresh back to the previous version
    REFUSED = "refused"


@dataclass(frozen=True)
class RollbackFacts:
    """The group, its latest refresh, and the version it would go back to (with its image)."""

    group: GroupLaunch
    latest: Refresh | None
    previous_number: int | None  # the version the current one came from
    previous: TemplateVersion | None  # None: no earlier version, or it no longer exists
    previous_ami: str | None  # its image (resolve:ssm: resolved)
    image: Image | None


@dataclass(frozen=True)
class RollbackPlan:
    """What `factory rollout rollback` will do to one group."""

    group: str
    region: str
    action: RollbackAction
    reason: str  # why this action, or why the rollback is refused
    refresh_id: str | None = None  # the refresh AWS rolls back
    refresh_status: str | None = None
    current_version: str | None = None  # as the group names it
    target_version: int | None = None  # the version a refresh goes back to
    ami_id: str | None = None  # that version's image
    refresh: RolloutPlan | None = None  # the refresh back, for refresh-to-previous

    @property
    def refused(self) -> bool:
        return self.action is RollbackAction.REFUSED


def previous_version(group: GroupLaunch) -> int | None:
    """The version the current one was rolled out from (noted in its description), else N-1."""
    match = VERSION_NOTE.search(group.version_description)
    if match:
        return int(match.group(1))
    if group.version_number is not None and group.version_number > 1:
        return group.version_number - 1
    return None


def gather_rollback(clients: AwsClients, group_name: str) -> RollbackFacts:
    """Read the group, its latest refresh and, unless AWS can reverse that refresh, the version
    to go back to and its image."""
    group = gather_group(clients, group_name)
    latest = latest_refresh(clients, group_name)
    number = previous_version(group)
    if (latest is not None and latest.status in REVERSIBLE) or number is None:
        return RollbackFacts(group, latest, number, None, None, None)
    if group.template_id is None:
        return RollbackFacts(group, latest, number, None, None, None)
    version = groups.template_version(clients, group.template_id, str(number))
    if version is None:
        return RollbackFacts(group, latest, number, None, None, None)
    ami = resolve_image(clients, version.image_id or "")
    image = find_images(clients, [ami]).get(ami) if ami else None
    return RollbackFacts(group, latest, number, version, ami, image)


def plan_rollback(
    facts: RollbackFacts, settings: RefreshSettings, *, force: bool = False
) -> RollbackPlan:
    """Decide how to roll the group back (pure): reverse the active refresh, refresh back to the
    previous version, or refuse with the reason."""
    group, latest = facts.group, facts.latest
    base = RollbackPlan(
        group.name,
        group.group.region,
        RollbackAction.REFUSED,
        "",
        refresh_id=latest.refresh_id if latest else None,
        refresh_status=latest.status if latest else None,
        current_version=group.version,
    )
    if latest is not None and latest.status in REVERSIBLE:
        return _reverse(base, latest)
    target = facts.previous_number
    if target is None or group.template_id is None:
        return replace(
            base, reason=f"{group.name} has no earlier launch template version to go back to"
        )
    if facts.previous is None or facts.previous_ami is None:
        return replace(
            base,
            reason=f"{group.name} has no launch template {group.template_id} version {target} "
            "to go back to (deleted?)",
            target_version=target,
        )
    try:
        refresh = plan_rollout(
            RolloutFacts(group, facts.previous_ami, facts.image, "rollback"),
            settings,
            force=force,
            target_version=target,
            allow_unverified=True,
        )
    except RefusedError as exc:
        return replace(base, reason=exc.message, target_version=target, ami_id=facts.previous_ami)
    if latest is not None and latest.active:  # Cancelling, or rolling back already
        return replace(
            base,
            reason=in_progress_refusal(group.name).message,
            target_version=target,
            ami_id=facts.previous_ami,
        )
    return replace(
        base,
        action=RollbackAction.REFRESH_TO_PREVIOUS,
        reason=f"no refresh in progress; refreshing back to version {target}",
        target_version=target,
        ami_id=facts.previous_ami,
        refresh=refresh,
    )


def _reverse(base: RollbackPlan, latest: Refresh) -> RollbackPlan:
    """RollbackInstanceRefresh: AWS refuses a refresh with no numbered desired version."""
    if latest.desired_version is None or not latest.desired_version.isdigit():
        return replace(base, reason=_irreversible(base.group))
    return replace(
        base,
        action=RollbackAction.ROLLBACK_REFRESH,
        reason=f"instance refresh {latest.refresh_id} is {latest.status}: AWS rolls it back",
        target_version=None,
    )


def _irreversible(group: str) -> str:
    return (
        f"the refresh of {group} cannot be rolled back by AWS ($Latest/$Default "
        f"or an SSM image); cancel it with Ctrl-C on `factory rollout status "
        f"{group}` and roll out the previous image"
    )


def apply_rollback(
    plan: RollbackPlan,
    clients: AwsClients,
    progress: Progress,
    *,
    wait: bool = True,
    on_interrupt: InterruptChoice | None = None,
    poller: Poller | None = None,
    check: bool = True,
) -> RolloutResult:
    """Do what the plan says; with `check`, a rollback that does not succeed raises."""
    if plan.action is RollbackAction.REFUSED:
        raise RefusedError(plan.reason)
    if plan.action is RollbackAction.ROLLBACK_REFRESH:
        return _reverse_refresh(
            plan,
            clients,
            progress,
            wait=wait,
            on_interrupt=on_interrupt,
            poller=poller,
            check=check,
        )
    assert plan.refresh is not None
    progress.info(f"{plan.group}: {plan.reason}")
    try:
        return replace_instances(
            plan.refresh, clients, progress, wait=wait, on_interrupt=on_interrupt, poller=poller
        )
    except RolloutFailed as exc:
        if check:
            raise
        refresh = plan.refresh
        return RolloutResult(
            refresh.group, refresh.region, refresh.ami_id, None, "Failed", exc.message
        )


def _reverse_refresh(
    plan: RollbackPlan,
    clients: AwsClients,
    progress: Progress,
    *,
    wait: bool,
    on_interrupt: InterruptChoice | None,
    poller: Poller | None,
    check: bool,
) -> RolloutResult:
    calls_before = clients.counter.total
    refresh_id = str(plan.refresh_id)
    try:
        groups.rollback_refresh(clients, plan.group)
    except AwsError as exc:
        if exc.code == "IrreversibleInstanceRefresh":
            raise RefusedError(_irreversible(plan.group)) from None
        raise
    progress.info(f"{plan.group}: rolling back instance refresh {refresh_id}")
    base = RolloutResult(
        plan.group, plan.region, None, refresh_id, "RollbackInProgress", "", waited=wait
    )
    if not wait:
        return base
    followed = wait_refresh(
        clients, plan.group, refresh_id, progress, on_interrupt=on_interrupt, poller=poller
    )
    result = replace(
        finish(clients, base, followed), api_calls=clients.counter.total - calls_before
    )
    if followed.refresh.status == "RollbackSuccessful":
        return replace(result, status="Successful", reason="rolled back")
    if check:
        raise_if_failed(result)
    return result


def roll_back(
    clients: AwsClients,
    group_name: str,
    progress: Progress,
    *,
    settings: RefreshSettings | None = None,
    force: bool = False,
    dry_run: bool = False,
    wait: bool = True,
    on_interrupt: InterruptChoice | None = None,
    poller: Poller | None = None,
    check: bool = True,
) -> RollbackPlan | RolloutResult:
    """Gather, plan and (unless `dry_run`) apply a rollback of the group."""
    plan = plan_rollback(
        gather_rollback(clients, group_name), settings or RefreshSettings(), force=force
    )
    if dry_run:
        return plan
    return apply_rollback(
        plan, clients, progress, wait=wait, on_interrupt=on_interrupt, poller=poller, check=check
    )
