"""Replacing a group's instances: pin the group to a numbered version, create the new launch
template version, start the instance refresh, follow it, and settle what the group runs.

A new version is made from the version the group runs with only ImageId changed (user data and
every other setting are kept). The refresh names that numbered version as its
DesiredConfiguration with AutoRollback on: AWS replaces instances in batches that keep
MinHealthyPercentage healthy, rolls back by itself when replacements fail their health checks
(or an alarm fires), and points the group at the new version when the refresh succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from factory.aws import AwsClients, groups
from factory.aws.wait import Poller
from factory.errors import AwsError, RefusedError
from factory.output import Progress
from factory.rollout.facts import describe_restored, read_group
from factory.rollout.plan import RefreshSettings, RolloutPlan
from factory.rollout.result import RolloutResult, raise_if_failed
from factory.rollout.wait import FollowedRefresh, InterruptChoice, wait_refresh

AfterSuccess = Callable[[RolloutResult], RolloutResult]  # a check once the refresh succeeded


def version_description(plan: RolloutPlan) -> str:
    """The new version's description: where it came from (rollback reads "from version N")."""
    return f"factory rollout {plan.ami_id} ({plan.source}) from version {plan.current_number}"


def launch_target(plan: RolloutPlan, clients: AwsClients, progress: Progress) -> int:
    """Pin the group when it names $Latest/$Default, create the new version when the plan says
    so; the version number to refresh to."""
    if plan.pin_current:
        groups.use_template(clients, plan.group, plan.template_id, plan.current_number)
        progress.info(f"{plan.group}: pinned to launch template version {plan.current_number}")
    if not plan.new_version:
        assert plan.target_version is not None
        return plan.target_version
    created = groups.create_template_version(
        clients,
        plan.template_id,
        source_version=plan.current_number,
        description=version_description(plan),
        data={"ImageId": plan.ami_id},
    )
    progress.info(
        f"{plan.group}: launch template {plan.template_id} version {created.number} "
        f"({plan.ami_id}, from version {plan.current_number})"
    )
    return created.number


def in_progress_refusal(group: str) -> RefusedError:
    return RefusedError(
        f"{group} already has an instance refresh in progress; follow it with "
        f"`factory rollout status {group}` or stop it with "
        f"`factory rollout rollback {group}`"
    )


def start_refresh(
    clients: AwsClients, group: str, template_id: str, version: int, settings: RefreshSettings
) -> str:
    try:
        return groups.start_refresh(
            clients,
            group,
            template_id=template_id,
            version=version,
            preferences=settings.preferences(),
        )
    except AwsError as exc:
        if exc.code == "InstanceRefreshInProgress":
            raise in_progress_refusal(group) from None
        raise


def finish(clients: AwsClients, base: RolloutResult, followed: FollowedRefresh) -> RolloutResult:
    """The result of a finished refresh, with what the group runs now when it did not succeed."""
    final = followed.refresh
    result = replace(
        base,
        status=final.status,
        reason=final.reason or final.rollback_reason or "",
        percentage=final.percentage,
        instances_replaced=max(0, followed.replaced),
    )
    if final.status != "Successful":
        return replace(result, restored=describe_restored(clients, base.group))
    template = read_group(clients, base.group).template
    wanted = base.launch_template_version
    if wanted is not None and (template is None or template.version != str(wanted)):
        # AWS points the group at the desired configuration on success; make sure of it
        groups.use_template(clients, base.group, str(base.launch_template_id), wanted)
    return result


def _up_to_date(plan: RolloutPlan) -> RolloutResult:
    return RolloutResult(
        plan.group,
        plan.region,
        plan.ami_id,
        None,
        "UpToDate",
        f"{plan.group} already runs {plan.ami_id}",
        plan.template_id,
        plan.current_number,
        plan.current_number,
        warnings=plan.warnings,
    )


def replace_instances(
    plan: RolloutPlan,
    clients: AwsClients,
    progress: Progress,
    *,
    wait: bool = True,
    on_interrupt: InterruptChoice | None = None,
    poller: Poller | None = None,
    after_success: AfterSuccess | None = None,
) -> RolloutResult:
    """Create the launch template version, start the refresh, and (by default) follow it;
    `after_success` checks a successful refresh further. A followed refresh that did not
    succeed raises RolloutFailed."""
    if plan.up_to_date:
        return _up_to_date(plan)
    started = time.monotonic()
    calls_before = clients.counter.total
    target = launch_target(plan, clients, progress)
    refresh_id = start_refresh(clients, plan.group, plan.template_id, target, plan.settings)
    progress.info(f"{plan.group}: instance refresh {refresh_id} started (to version {target})")
    base = RolloutResult(
        plan.group,
        plan.region,
        plan.ami_id,
        refresh_id,
        "Pending",
        "",
        plan.template_id,
        target,
        plan.current_number,
        waited=wait,
        warnings=plan.warnings,
    )
    if not wait:
        return replace(base, api_calls=clients.counter.total - calls_before)
    followed = wait_refresh(
        clients,
        plan.group,
        refresh_id,
        progress,
        on_interrupt=on_interrupt,
        poller=poller,
        expected_total=plan.instances_to_replace,
    )
    result = finish(clients, base, followed)
    if result.status == "Successful" and after_success is not None:
        result = after_success(result)
    result = replace(
        result,
        api_calls=clients.counter.total - calls_before,
        seconds=round(time.monotonic() - started, 1),
    )
    raise_if_failed(result)
    return result
