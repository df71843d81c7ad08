"""Apply a retire plan: each image moves one step (restore, deprecate, deregister), and the
snapshots no remaining image uses are deleted.

Deprecation is reversible (an image kept again is restored), deregistration is not: so each
deregistration is preceded by a just-in-time check (the image as it is now, a full in-use scan
at most `recheck_interval` seconds old, and the image's own instances, launch permissions and
references). Deregistration protection is reported and never disabled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from factory import tags
from factory.aws import AwsClients, images, instances
from factory.aws.model import Image
from factory.errors import AwsError
from factory.output import Progress
from factory.retire.gather import RetireScope, gather_snapshot_users
from factory.retire.inuse import (
    InUseReport,
    Usage,
    call_counts,
    calls_since,
    gather_image_references,
    gather_in_use,
    gather_launch_permissions,
    usage_reason,
)
from factory.retire.plan import (
    DEPRECATED,
    Action,
    Decision,
    RetirePlan,
    SnapshotDecision,
    deprecated_by_retire,
    is_protected,
    kept_by_tag,
)

RECHECK_INTERVAL = 30.0  # seconds a full in-use scan is trusted during --apply
# DeregisterImage of a protected image (AWS's code, and the one older endpoints give)
PROTECTION_ERRORS = frozenset({"OperationNotPermitted", "InvalidImage.DeregistrationProtected"})
SNAPSHOT_IN_USE = frozenset({"InvalidSnapshot.InUse"})


@dataclass(frozen=True)
class Outcome:
    resource: str
    region: str
    action: str
    status: str  # done | skipped | failed
    detail: str = ""


@dataclass(frozen=True)
class RetireResult:
    """The plan and what applying it did (no outcomes when only planned)."""

    plan: RetirePlan
    outcomes: tuple[Outcome, ...]
    api_calls: int

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")


def apply_retire(
    plan: RetirePlan,
    scope: RetireScope,
    *,
    recheck_interval: float = RECHECK_INTERVAL,
    progress: Progress | None = None,
) -> RetireResult:
    """Execute the plan's next step for each image; re-check use before each deregistration."""
    outcomes: list[Outcome] = []
    before = call_counts(scope.own)

    def scan() -> InUseReport:
        return gather_in_use(scope.targets(), owner_account=scope.owner_account)

    for region in sorted({d.region for d in plan.decisions} | {s.region for s in plan.snapshots}):
        clients = scope.clients_for(region)
        rows = [d for d in plan.decisions if d.region == region]
        outcomes += _restore(clients, [d for d in rows if d.action == Action.RESTORE])
        outcomes += _deprecate(clients, [d for d in rows if d.action == Action.DEPRECATE], plan.now)
        outcomes += [
            Outcome(d.ami_id, region, d.action.value, "skipped", "; ".join(d.reasons[-1:]))
            for d in rows
            if d.action == Action.PROTECTED
        ]
        outcomes += _deregister(
            clients,
            [d for d in rows if d.action == Action.DEREGISTER],
            _UseCheck(scan, recheck_interval),
            progress,
        )
        outcomes += _delete_orphans(
            clients, [s for s in plan.snapshots if s.region == region and s.action == "delete"]
        )
    calls = sum(calls_since(before, call_counts(scope.own)).values())
    if progress:
        done = sum(1 for o in outcomes if o.status == "done")
        progress.info(
            f"retire: applied {done} step(s), {len(outcomes) - done} skipped/failed, "
            f"{calls} API calls"
        )
    return RetireResult(plan=plan, outcomes=tuple(outcomes), api_calls=calls)


# ---- restore and deprecate (reversible) ------------------------------------------------------


def _deprecate_at(now: datetime) -> datetime:
    # EC2 refuses a DeprecateAt in the past and rounds to the minute: a minute ahead of "now"
    # absorbs clock skew between this machine and the endpoint.
    wall = max(now, datetime.now(UTC))
    return (wall + timedelta(minutes=1)).replace(second=0, microsecond=0)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _restore(clients: AwsClients, rows: Sequence[Decision]) -> list[Outcome]:
    out = []
    for d in rows:
        try:
            images.undeprecate(clients, d.ami_id)
        except AwsError as exc:
            out.append(Outcome(d.ami_id, clients.region, "restore", "failed", exc.message))
            continue
        out.append(Outcome(d.ami_id, clients.region, "restore", "done", "deprecation removed"))
    images.untag(clients, [o.resource for o in out if o.status == "done"], [tags.RETIRE_PHASE])
    return out


def _deprecate(clients: AwsClients, rows: Sequence[Decision], now: datetime) -> list[Outcome]:
    at = _deprecate_at(now)
    out = []
    for d in rows:
        try:
            images.deprecate(clients, d.ami_id, at)
        except AwsError as exc:
            out.append(Outcome(d.ami_id, clients.region, "deprecate", "failed", exc.message))
            continue
        out.append(
            Outcome(d.ami_id, clients.region, "deprecate", "done", f"deprecated at {_stamp(at)}")
        )
    done = [o.resource for o in out if o.status == "done"]
    images.tag(clients, done, {tags.RETIRE_PHASE: DEPRECATED})
    return out


# ---- deregister (irreversible: checked just in time) -------------------------------------------


@dataclass
class _UseCheck:
    """Everything that uses an image right now: a full scan trusted for `interval` seconds,
    plus targeted calls for the image itself (working state of one region's deregistrations)."""

    scan: Callable[[], InUseReport]
    interval: float
    by_ami: dict[str, tuple[Usage, ...]] = field(default_factory=dict)
    scanned_at: float | None = None
    references: bool = True  # False once the endpoint said it lacks DescribeImageReferences

    def refresh(self) -> None:
        self.by_ami, self.scanned_at = self.scan().by_ami(), time.monotonic()

    def uses(self, clients: AwsClients, ami_id: str) -> list[str]:
        if self.scanned_at is None or time.monotonic() - self.scanned_at > self.interval:
            self.refresh()
        reasons = [usage_reason(u) for u in self.by_ami.get(ami_id, ())]
        reasons += [
            f"in use: instance {i.instance_id}"
            for i in instances.find(clients, image_ids=[ami_id], states=instances.LIVE_STATES)
        ]
        reasons += [usage_reason(u) for u in gather_launch_permissions(clients, [ami_id])]
        if self.references:
            found, note = gather_image_references(clients, [ami_id])
            self.references = note is None
            reasons += [usage_reason(u) for u in found]
        return sorted(set(reasons))


def _deregister(
    clients: AwsClients,
    rows: Sequence[Decision],
    check: _UseCheck,
    progress: Progress | None,
) -> list[Outcome]:
    if not rows:
        return []
    users = gather_snapshot_users(clients)
    check.refresh()
    out: list[Outcome] = []
    for d in rows:
        image = images.get(clients, d.ami_id)
        why_not = "already gone" if image is None else _why_not_now(clients, image, check)
        if why_not is not None or image is None:
            out.append(Outcome(d.ami_id, clients.region, "deregister", "skipped", why_not or ""))
            continue
        outcome = _deregister_image(clients, d.ami_id)
        out.append(outcome)
        if outcome.status != "done":
            continue
        if progress:
            progress.info(f"retire: deregistered {d.ami_id} ({d.family} {d.version})")
        out += _delete_image_snapshots(clients, image, users)
    return out


def _why_not_now(clients: AwsClients, image: Image, check: _UseCheck) -> str | None:
    """Why the image must not be deregistered after all (in order of the checks), or None."""
    if is_protected(image.protection):
        return f"deregistration protection is {image.protection}; not disabled"
    if kept_by_tag(image) or not deprecated_by_retire(image):
        return "changed since the plan (factory:keep or retire phase)"
    used = check.uses(clients, image.ami_id)
    if used:
        return "in use again: " + "; ".join(used)
    return None


def _deregister_image(clients: AwsClients, ami_id: str) -> Outcome:
    region = clients.region
    try:
        deregistered = images.deregister(clients, ami_id)
    except AwsError as exc:
        if exc.code in PROTECTION_ERRORS:
            detail = f"deregistration protection ({exc.code}); not disabled"
            return Outcome(ami_id, region, "deregister", "skipped", detail)
        return Outcome(ami_id, region, "deregister", "failed", exc.message)
    if not deregistered:
        return Outcome(ami_id, region, "deregister", "skipped", "already gone")
    return Outcome(ami_id, region, "deregister", "done", "deregistered")


def _delete_image_snapshots(
    clients: AwsClients, image: Image, users: dict[str, set[str]]
) -> list[Outcome]:
    """The deregistered image's snapshots, unless another image still uses them."""
    out = []
    for snapshot_id in image.snapshot_ids:
        holders = users.get(snapshot_id, set()) - {image.ami_id}
        users[snapshot_id] = holders
        if holders:
            detail = f"still used by {', '.join(sorted(holders))}"
            out.append(Outcome(snapshot_id, clients.region, "delete-snapshot", "skipped", detail))
            continue
        out.append(_delete_snapshot(clients, snapshot_id))
    return out


# ---- snapshots ---------------------------------------------------------------------------------


def _delete_snapshot(clients: AwsClients, snapshot_id: str) -> Outcome:
    region = clients.region
    try:
        deleted = images.delete_snapshot(clients, snapshot_id)
    except AwsError as exc:
        status = "skipped" if exc.code in SNAPSHOT_IN_USE else "failed"
        return Outcome(snapshot_id, region, "delete-snapshot", status, exc.message)
    if not deleted:
        return Outcome(snapshot_id, region, "delete-snapshot", "skipped", "already gone")
    return Outcome(snapshot_id, region, "delete-snapshot", "done", "deleted")


def _delete_orphans(clients: AwsClients, rows: Sequence[SnapshotDecision]) -> list[Outcome]:
    if not rows:
        return []
    users = gather_snapshot_users(clients)  # fresh: an image registered since the plan keeps it
    out = []
    for s in rows:
        if users.get(s.snapshot_id):
            detail = f"now used by {', '.join(sorted(users[s.snapshot_id]))}"
            out.append(Outcome(s.snapshot_id, s.region, "delete-snapshot", "skipped", detail))
            continue
        out.append(_delete_snapshot(clients, s.snapshot_id))
    return out
