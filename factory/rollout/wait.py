"""Following an instance refresh: the poller's pace, the progress line, and Ctrl-C (cancel the
refresh, or detach and leave it running).

Polling never makes more than one call a second and backs off while nothing changes, but never
past 5% of the time followed so far: noticing the end of a refresh costs at most ~5% of its
duration (and a second).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from factory.aws import AwsClients, groups
from factory.aws.groups import Refresh
from factory.aws.wait import Poller
from factory.errors import AwsError, ExitCode, FactoryError
from factory.output import Progress
from factory.rollout.facts import describe_restored, gather_group
from factory.rollout.result import RolloutResult, raise_if_failed

POLL_MIN = 1.0  # never more than one call a second
POLL_MAX = 15.0
POLL_FACTOR = 1.5
POLL_LAG = 0.05  # while nothing changes, wait at most this fraction of the time followed so far

InterruptChoice = Callable[[Refresh], str]  # -> "cancel" | "detach"


@dataclass
class RefreshPoller(Poller):
    """The pace a refresh is followed at (see the module's docstring)."""

    interval: float = POLL_MIN
    max_interval: float = POLL_MAX
    factor: float = POLL_FACTOR
    lag: float | None = POLL_LAG


@dataclass(frozen=True)
class FollowedRefresh:
    """A refresh followed to its end, and how many instances it replaced while we watched."""

    refresh: Refresh
    replaced: int


def latest_refresh(clients: AwsClients, group: str) -> Refresh | None:
    found = groups.refreshes(clients, group, limit=1)
    return found[0] if found else None


def get_refresh(clients: AwsClients, group: str, refresh_id: str) -> Refresh:
    found = groups.refreshes(clients, group, refresh_ids=[refresh_id])
    if not found:
        raise AwsError(f"instance refresh {refresh_id} of {group} not found")
    return found[0]


def estimated_total(state: Refresh) -> int:
    """Instances the refresh replaces in all: the API gives only those left and a percentage."""
    if 0 < state.percentage < 100:
        return round(state.instances_to_update * 100 / (100 - state.percentage))
    return state.instances_to_update


def _progress_line(state: Refresh, total: int, replaced: int) -> str:
    line = f"{state.status} {state.percentage}% {replaced}/{total} replaced"
    if state.status.startswith("Rollback") and state.rollback_percentage is not None:
        line += f" (rollback {state.rollback_percentage}%)"
    if state.reason:
        line += f" - {state.reason}"
    return line


def wait_refresh(
    clients: AwsClients,
    group: str,
    refresh_id: str,
    progress: Progress,
    *,
    on_interrupt: InterruptChoice | None = None,
    poller: Poller | None = None,
    expected_total: int = 0,
) -> FollowedRefresh:
    """Follow a refresh to its end with a progress bar; Ctrl-C asks `on_interrupt` what to do.

    "cancel" cancels the refresh and follows it to Cancelled (a second Ctrl-C detaches);
    "detach" leaves it running and raises.
    """
    poller = poller or RefreshPoller()
    total = expected_total
    with progress.task(f"{group}: refresh {refresh_id[:8]}", total=100) as bar:
        cancelling = False
        while True:
            try:
                poller.wait()
                state = get_refresh(clients, group, refresh_id)
                poller.saw(
                    (state.status, state.percentage, state.instances_to_update, state.reason)
                )
                total = max(total, estimated_total(state))
                replaced = max(0, total - state.instances_to_update)
                bar.update(
                    completed=state.percentage, status=_progress_line(state, total, replaced)
                )
                if state.active:
                    continue
                if cancelling:
                    raise _cancelled(clients, group, refresh_id, state)
                return FollowedRefresh(state, replaced)
            except KeyboardInterrupt:
                if cancelling:
                    raise _detached(group, refresh_id, "detached while cancelling") from None
                choice = (
                    on_interrupt(_latest_or(clients, group, refresh_id))
                    if on_interrupt
                    else "cancel"
                )
                if choice != "cancel":
                    raise _detached(group, refresh_id, "detached") from None
                progress.warn(f"cancelling instance refresh {refresh_id} of {group}")
                groups.cancel_refresh(clients, group)
                cancelling = True


def _latest_or(clients: AwsClients, group: str, refresh_id: str) -> Refresh:
    try:
        return get_refresh(clients, group, refresh_id)
    except FactoryError:
        return Refresh(refresh_id, group, "Unknown")


def _cancelled(clients: AwsClients, group: str, refresh_id: str, state: Refresh) -> FactoryError:
    return FactoryError(
        f"interrupted: cancelled instance refresh {refresh_id} of {group} at "
        f"{state.percentage}% ({state.status}); instances already replaced "
        f"stay replaced; now: {describe_restored(clients, group)}; "
        f"`factory rollout rollback {group}` goes back",
        ExitCode.INTERRUPTED,
    )


def _detached(group: str, refresh_id: str, what: str) -> FactoryError:
    return FactoryError(
        f"{what} from instance refresh {refresh_id}: it keeps running; follow it with "
        f"`factory rollout status {group}` or stop it with `factory rollout rollback {group}`",
        ExitCode.INTERRUPTED,
    )


def follow_status(
    clients: AwsClients,
    group_name: str,
    progress: Progress,
    *,
    follow: bool = True,
    on_interrupt: InterruptChoice | None = None,
    poller: Poller | None = None,
) -> RolloutResult:
    """The group's latest refresh; followed to its end when it is still running."""
    group = gather_group(clients, group_name)
    latest = latest_refresh(clients, group_name)
    if latest is None:
        return RolloutResult(
            group_name,
            clients.region,
            None,
            None,
            "None",
            "no instance refresh yet",
            group.template_id,
            group.version_number,
            waited=False,
        )
    final, followed = latest, follow and latest.active
    if followed:
        final = wait_refresh(
            clients,
            group_name,
            latest.refresh_id,
            progress,
            on_interrupt=on_interrupt,
            poller=poller,
        ).refresh
        group = gather_group(clients, group_name)
    result = RolloutResult(
        group_name,
        clients.region,
        group.version_image,
        final.refresh_id,
        final.status,
        final.reason or final.rollback_reason or "",
        group.template_id,
        group.version_number,
        waited=followed,
        percentage=final.percentage,
    )
    if not final.active and final.status != "Successful":
        result = replace(result, restored=describe_restored(clients, group_name))
    if followed:
        raise_if_failed(result)
    return result
