"""Retire old images safely: a retention plan, then deprecation, then deregistration.

`plan_retire` is pure: given the images, what uses them and the retention policy, it decides for
each image to keep it (with every reason) or to move it one step along its retirement:

    available --deprecate--> deprecated (factory:retire-phase=deprecated, DeprecationTime now)
              --grace days--> deregistered, with the snapshots no remaining image uses

Deprecation is reversible (an image kept again is restored), deregistration is not: so the
expensive per-image checks (launch permissions, DescribeImageReferences) run for the images
about to be deregistered, and `apply_retire` checks again immediately before each
deregistration. Deregistration protection is reported and never disabled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import botocore.exceptions

from factory import tags
from factory.aws import AwsClients, call, error_code, paginate, tag_list, tags_dict
from factory.config import RetentionPolicy
from factory.errors import AwsError
from factory.inuse import (
    InUseReport,
    ScanTarget,
    Usage,
    find_in_use,
    image_reference_usages,
    launch_permission_usages,
)
from factory.output import Progress

DEPRECATED = "deprecated"
PROTECTION_ERRORS = frozenset({"OperationNotPermitted", "InvalidImage.DeregistrationProtected"})
SNAPSHOT_TAG_FILTER = f"{tags.PREFIX}*"
RECHECK_INTERVAL = 30.0  # seconds a full in-use scan is trusted during --apply

PERMISSIONS = (
    "ec2:DescribeImages",
    "ec2:DescribeSnapshots",
    "ec2:DescribeInstances",
    "ec2:EnableImageDeprecation",
    "ec2:DisableImageDeprecation",
    "ec2:CreateTags",
    "ec2:DeleteTags",
    "ec2:DeregisterImage",
    "ec2:DeleteSnapshot",
)


class Action(StrEnum):
    KEEP = "keep"
    RESTORE = "restore"  # kept, but an earlier run deprecated it: undo the deprecation
    DEPRECATE = "deprecate"
    WAIT = "wait"  # deprecated, grace period not over
    DEREGISTER = "deregister"
    PROTECTED = "protected"  # due for deregistration, but deregistration protection is on


RETIRING = frozenset({Action.DEPRECATE, Action.WAIT, Action.DEREGISTER, Action.PROTECTED})


@dataclass(frozen=True)
class ImageFacts:
    """What retire needs to know about one of the factory's images."""

    ami_id: str
    region: str
    family: str
    created_at: datetime
    name: str = ""
    version: str = ""
    status: str | None = None
    state: str = "available"
    keep_tag: bool = False
    revoked_at: datetime | None = None
    deprecation_time: datetime | None = None
    retire_phase: str | None = None
    protection: str = "disabled"
    public: bool = False
    snapshot_ids: tuple[str, ...] = ()

    @property
    def protected(self) -> bool:
        return is_protected(self.protection)


@dataclass(frozen=True)
class SnapshotFacts:
    snapshot_id: str
    region: str
    started_at: datetime
    size_gib: int = 0
    description: str = ""


@dataclass(frozen=True)
class Decision:
    """One row of the plan: an image, what happens to it and why."""

    ami_id: str
    region: str
    family: str
    version: str
    name: str
    created_at: datetime
    action: Action
    reasons: tuple[str, ...]
    snapshot_ids: tuple[str, ...] = ()
    not_before: datetime | None = None  # WAIT/DEPRECATE: when deregistration becomes due

    @property
    def kept(self) -> bool:
        return self.action in (Action.KEEP, Action.RESTORE)


@dataclass(frozen=True)
class SnapshotDecision:
    snapshot_id: str
    region: str
    started_at: datetime
    size_gib: int
    action: str  # "delete" | "keep"
    reason: str


@dataclass(frozen=True)
class RetirePlan:
    """The whole plan: deterministic, printable, testable, and what apply executes."""

    now: datetime
    family: str | None
    policies: Mapping[str, RetentionPolicy]
    decisions: tuple[Decision, ...]
    snapshots: tuple[SnapshotDecision, ...] = ()
    api_calls: int = 0
    calls_by_operation: Mapping[str, int] = field(default_factory=dict)
    images_scanned: int = 0
    scopes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    counts: Mapping[str, int] = field(default_factory=dict)  # filled in: action -> images

    def __post_init__(self) -> None:
        if self.counts:
            return
        out = {a.value: 0 for a in Action}
        for decision in self.decisions:
            out[decision.action.value] += 1
        out["snapshots-delete"] = sum(1 for s in self.snapshots if s.action == "delete")
        object.__setattr__(self, "counts", out)


@dataclass(frozen=True)
class Outcome:
    resource: str
    region: str
    action: str
    status: str  # done | skipped | failed
    detail: str = ""


@dataclass(frozen=True)
class RetireResult:
    plan: RetirePlan
    outcomes: tuple[Outcome, ...]
    api_calls: int

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")


# --- small pure helpers -------------------------------------------------------------------


def is_protected(protection: str | None, now: datetime | None = None) -> bool:
    """DeregistrationProtection as DescribeImages reports it: enabled-*, or disabled-until T."""
    value = (protection or "disabled").strip()
    if value.startswith("enabled"):
        return True
    if value.startswith("disabled-until"):
        until = parse_time(value.removeprefix("disabled-until").strip())
        return until is None or (now or datetime.now(UTC)) < until
    return False


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def image_facts(image: Mapping[str, Any], region: str) -> ImageFacts | None:
    """ImageFacts from a DescribeImages entry; None for images that are not the factory's."""
    image_tags = tags_dict(image.get("Tags"))
    family = image_tags.get(tags.FAMILY)
    if not family:
        return None
    created = parse_time(image_tags.get(tags.CREATED_AT)) or parse_time(image.get("CreationDate"))
    snapshots = tuple(
        sorted(
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", []) or []
            if m.get("Ebs", {}).get("SnapshotId")
        )
    )
    return ImageFacts(
        ami_id=image["ImageId"],
        region=region,
        family=family,
        created_at=created or datetime.fromtimestamp(0, UTC),
        name=str(image.get("Name", "")),
        version=image_tags.get(tags.VERSION, ""),
        status=image_tags.get(tags.STATUS),
        state=str(image.get("State", "available")),
        keep_tag=tags.KEEP in image_tags,
        revoked_at=parse_time(image_tags.get(tags.REVOKED_AT)),
        deprecation_time=parse_time(image.get("DeprecationTime")),
        retire_phase=image_tags.get(tags.RETIRE_PHASE),
        protection=str(image.get("DeregistrationProtection") or "disabled"),
        public=bool(image.get("Public")),
        snapshot_ids=snapshots,
    )


# --- the plan (pure) ----------------------------------------------------------------------


def plan_retire(
    images: Iterable[ImageFacts],
    usages: Mapping[str, Sequence[Usage]],
    policy_for: Callable[[str], RetentionPolicy],
    now: datetime,
    *,
    family: str | None = None,
) -> tuple[Decision, ...]:
    """Keep or retire each image, with every reason; sorted by region, family, newest first."""
    by_group: dict[tuple[str, str], list[ImageFacts]] = {}
    for image in images:
        if family is None or image.family == family:
            by_group.setdefault((image.region, image.family), []).append(image)
    decisions: list[Decision] = []
    for (_region, fam), group in sorted(by_group.items()):
        policy = policy_for(fam)
        group.sort(key=lambda i: (-i.created_at.timestamp(), i.ami_id))
        verified = [
            i
            for i in group
            if i.status == tags.Status.VERIFIED
            and i.revoked_at is None
            and i.state in ("available", "disabled")
        ]
        newest = {i.ami_id: rank for rank, i in enumerate(verified[: policy.keep], start=1)}
        for image in group:
            decisions.append(
                _decide(image, newest.get(image.ami_id), usages.get(image.ami_id, ()), policy, now)
            )
    return tuple(decisions)


def _keep_reasons(
    image: ImageFacts,
    rank: int | None,
    used: Sequence[Usage],
    policy: RetentionPolicy,
    now: datetime,
) -> list[str]:
    reasons: list[str] = []
    if image.keep_tag:
        reasons.append(f"tagged {tags.KEEP}")
    if image.state in ("pending", "transient"):
        reasons.append(f"not available yet (state {image.state})")
    if rank is not None:
        reasons.append(f"newest verified: {rank} of {policy.keep}")
    age = now - image.created_at
    if age < timedelta(days=policy.min_age_days):
        reasons.append(
            f"younger than {policy.min_age_days} days (created {_day(image.created_at)})"
        )
    revoked = image.revoked_at or (
        image.created_at if image.status == tags.Status.REVOKED else None
    )
    if revoked is not None:
        until = revoked + timedelta(days=policy.audit_days)
        if now < until:
            reasons.append(
                f"revoked: kept for the {policy.audit_days}-day audit window (until {_day(until)})"
            )
    if image.public:
        reasons.append("in use: public image (launch permission group all)")
    reasons.extend(u.describe() for u in sorted(set(used)))
    return reasons


def _retire_reasons(image: ImageFacts, policy: RetentionPolicy, now: datetime) -> list[str]:
    age = (now - image.created_at).days
    if image.status == tags.Status.REVOKED or image.revoked_at is not None:
        why = f"revoked, past its {policy.audit_days}-day audit window"
    elif image.status == tags.Status.VERIFIED:
        why = f"not among the newest {policy.keep} verified"
    else:
        why = f"status {image.status or 'unknown'}, never verified"
    return [why, f"{age} days old, unused"]


def _decide(
    image: ImageFacts,
    rank: int | None,
    used: Sequence[Usage],
    policy: RetentionPolicy,
    now: datetime,
) -> Decision:
    base = Decision(
        ami_id=image.ami_id,
        region=image.region,
        family=image.family,
        version=image.version,
        name=image.name,
        created_at=image.created_at,
        action=Action.KEEP,
        reasons=(),
        snapshot_ids=image.snapshot_ids,
    )
    keep = _keep_reasons(image, rank, used, policy, now)
    ours = image.retire_phase == DEPRECATED
    if keep:
        if ours:
            keep.append("was deprecated by an earlier retire run: restore it")
            return replace(base, action=Action.RESTORE, reasons=tuple(keep))
        return replace(base, reasons=tuple(keep))
    reasons = _retire_reasons(image, policy, now)
    grace = timedelta(days=policy.grace_days)
    if ours and image.deprecation_time is not None:
        due = image.deprecation_time + grace
        if now < due:
            reasons.append(
                f"deprecated {_stamp(image.deprecation_time)}; "
                f"grace ({policy.grace_days} days) ends {_stamp(due)}"
            )
            return replace(base, action=Action.WAIT, reasons=tuple(reasons), not_before=due)
        if image.protected:
            reasons.append(
                f"deregistration protection is {image.protection}: the factory "
                "never disables it; disable it yourself to let retire proceed"
            )
            return replace(base, action=Action.PROTECTED, reasons=tuple(reasons))
        reasons.append(f"deprecated {_stamp(image.deprecation_time)}; grace over")
        return replace(base, action=Action.DEREGISTER, reasons=tuple(reasons))
    reasons.append(f"deprecate now; deregister after {policy.grace_days} days of grace")
    if image.protected:
        reasons.append(f"note: deregistration protection is {image.protection}")
    return replace(base, action=Action.DEPRECATE, reasons=tuple(reasons), not_before=now + grace)


def plan_snapshots(
    snapshots: Iterable[SnapshotFacts],
    used_snapshot_ids: Mapping[str, set[str]],
    now: datetime,
    min_age_days: int,
) -> tuple[SnapshotDecision, ...]:
    """Factory snapshots no image uses any more (per region) are deleted once old enough."""
    out = []
    for snap in snapshots:
        used = snap.snapshot_id in used_snapshot_ids.get(snap.region, set())
        young = now - snap.started_at < timedelta(days=min_age_days)
        if used:
            action, reason = "keep", "used by a registered image"
        elif young:
            action, reason = "keep", f"younger than {min_age_days} days (a build may own it)"
        else:
            action, reason = "delete", "orphaned: no registered image uses it"
        out.append(
            SnapshotDecision(
                snap.snapshot_id, snap.region, snap.started_at, snap.size_gib, action, reason
            )
        )
    return tuple(sorted(out, key=lambda s: (s.region, s.started_at, s.snapshot_id)))


# --- facts from AWS -----------------------------------------------------------------------


def list_factory_images(clients: AwsClients, family: str | None = None) -> list[ImageFacts]:
    """The factory's own images in one region: one call per 1,000 images."""
    key_filter = (
        {"Name": f"tag:{tags.FAMILY}", "Values": [family]}
        if family
        else {"Name": "tag-key", "Values": [tags.FAMILY]}
    )
    out = []
    for image in paginate(
        clients.client("ec2"),
        "DescribeImages",
        "Images",
        Owners=["self"],
        Filters=[key_filter],
        IncludeDeprecated=True,
        IncludeDisabled=True,
        PaginationConfig={"PageSize": 1000},
    ):
        facts = image_facts(image, clients.region)
        if facts is not None:
            out.append(facts)
    return out


def snapshot_users(clients: AwsClients) -> dict[str, set[str]]:
    """snapshot id -> the ids of every own image (factory's or not) that uses it."""
    users: dict[str, set[str]] = {}
    for image in paginate(
        clients.client("ec2"),
        "DescribeImages",
        "Images",
        Owners=["self"],
        IncludeDeprecated=True,
        IncludeDisabled=True,
        PaginationConfig={"PageSize": 1000},
    ):
        for mapping in image.get("BlockDeviceMappings", []) or []:
            snap = mapping.get("Ebs", {}).get("SnapshotId")
            if snap:
                users.setdefault(snap, set()).add(image["ImageId"])
    return users


def list_factory_snapshots(clients: AwsClients) -> list[SnapshotFacts]:
    account = clients.account_id
    out = []
    for snap in paginate(
        clients.client("ec2"),
        "DescribeSnapshots",
        "Snapshots",
        OwnerIds=[account],
        Filters=[{"Name": "tag-key", "Values": [SNAPSHOT_TAG_FILTER]}],
        PaginationConfig={"PageSize": 1000},
    ):
        if snap.get("OwnerId", account) != account:
            continue
        if not any(tags.is_factory_tag(t["Key"]) for t in snap.get("Tags", []) or []):
            continue
        out.append(
            SnapshotFacts(
                snapshot_id=snap["SnapshotId"],
                region=clients.region,
                started_at=parse_time(snap.get("StartTime")) or datetime.fromtimestamp(0, UTC),
                size_gib=int(snap.get("VolumeSize", 0)),
                description=str(snap.get("Description", "")),
            )
        )
    return out


def _total_calls(clients: Iterable[AwsClients]) -> dict[str, int]:
    totals: dict[str, int] = {}
    seen: set[int] = set()
    for c in clients:
        if id(c.counter) in seen:
            continue
        seen.add(id(c.counter))
        with c.counter._lock:
            for op, n in c.counter.calls.items():
                totals[op] = totals.get(op, 0) + n
    return totals


def build_plan(
    own: Sequence[AwsClients],
    others: Sequence[ScanTarget],
    policy_for: Callable[[str], RetentionPolicy],
    *,
    now: datetime,
    family: str | None = None,
    snapshots: bool = False,
    snapshot_min_age_days: int = 7,
    progress: Progress | None = None,
) -> RetirePlan:
    """Gather the facts in every region and account (in parallel), then plan."""
    everyone = [*own, *(t.clients for t in others)]
    before = _total_calls(everyone)
    owner = own[0].account_id
    targets = [ScanTarget(c) for c in own] + list(others)
    targets = unique_targets(targets)
    with ThreadPoolExecutor(max_workers=max(2, len(own) + 1)) as pool:
        inuse_future = pool.submit(find_in_use, targets, owner_account=owner)
        image_futures = {c.region: pool.submit(list_factory_images, c, family) for c in own}
        snap_futures = (
            {
                c.region: (pool.submit(list_factory_snapshots, c), pool.submit(snapshot_users, c))
                for c in own
            }
            if snapshots
            else {}
        )
        report: InUseReport = inuse_future.result()
        images = [i for f in image_futures.values() for i in f.result()]
        snapshot_facts = [s for a, _ in snap_futures.values() for s in a.result()]
        used_snaps = {r: set(b.result()) for r, (_, b) in snap_futures.items()}
    if progress:
        progress.info(
            f"retire: {len(images)} images in {len(own)} region(s); "
            f"{len(report.usages)} uses found in {len(report.scopes)} scope(s)"
        )
    usages: dict[str, list[Usage]] = {k: list(v) for k, v in report.by_ami().items()}
    decisions = plan_retire(images, usages, policy_for, now, family=family)

    # Deregistration is the irreversible step: check those images one by one as well.
    notes = list(report.notes)
    due: dict[str, list[str]] = {}
    for d in decisions:
        if d.action == Action.DEREGISTER:
            due.setdefault(d.region, []).append(d.ami_id)
    if due:
        for c in own:
            ids = due.get(c.region, [])
            if not ids:
                continue
            for usage in launch_permission_usages(c, ids):
                usages.setdefault(usage.ami_id, []).append(usage)
            refs, note = image_reference_usages(c, ids)
            for usage in refs:
                usages.setdefault(usage.ami_id, []).append(usage)
            if note:
                notes.append(note)
        decisions = plan_retire(images, usages, policy_for, now, family=family)

    snapshot_plan = (
        plan_snapshots(snapshot_facts, used_snaps, now, snapshot_min_age_days) if snapshots else ()
    )
    calls = {op: n - before.get(op, 0) for op, n in sorted(_total_calls(everyone).items())}
    calls = {op: n for op, n in calls.items() if n}
    if progress:
        progress.info(
            f"retire: plan made with {sum(calls.values())} API calls "
            f"({', '.join(f'{k} {v}' for k, v in calls.items())})"
        )
    families = sorted({i.family for i in images})
    return RetirePlan(
        now=now,
        family=family,
        policies={f: policy_for(f) for f in families},
        decisions=decisions,
        snapshots=snapshot_plan,
        api_calls=sum(calls.values()),
        calls_by_operation=calls,
        images_scanned=len(images),
        scopes=report.scopes,
        notes=tuple(sorted(set(notes))),
    )


def unique_targets(targets: Sequence[ScanTarget]) -> list[ScanTarget]:
    seen: set[tuple[str, str]] = set()
    out = []
    for target in targets:
        key = (target.clients.account_id, target.clients.region)
        if key not in seen:
            seen.add(key)
            out.append(target)
    return out


# --- apply --------------------------------------------------------------------------------


def _deprecate_at(now: datetime) -> datetime:
    # EC2 refuses a DeprecateAt in the past and rounds to the minute: a minute ahead of "now"
    # absorbs clock skew between this machine and the endpoint.
    wall = max(now, datetime.now(UTC))
    return (wall + timedelta(minutes=1)).replace(second=0, microsecond=0)


def apply_retire(
    plan: RetirePlan,
    clients_for: Mapping[str, AwsClients],
    *,
    recheck: Callable[[], InUseReport],
    recheck_interval: float = RECHECK_INTERVAL,
    progress: Progress | None = None,
) -> RetireResult:
    """Execute the plan's next step for each image; re-check use before each deregistration."""
    outcomes: list[Outcome] = []
    before = _total_calls(clients_for.values())
    for region in sorted({d.region for d in plan.decisions} | {s.region for s in plan.snapshots}):
        clients = clients_for[region]
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
            recheck,
            recheck_interval,
            progress,
        )
        outcomes += _delete_orphans(
            clients, [s for s in plan.snapshots if s.region == region and s.action == "delete"]
        )
    calls = sum(_total_calls(clients_for.values()).values()) - sum(before.values())
    if progress:
        done = sum(1 for o in outcomes if o.status == "done")
        progress.info(
            f"retire: applied {done} step(s), {len(outcomes) - done} skipped/failed, "
            f"{calls} API calls"
        )
    return RetireResult(plan=plan, outcomes=tuple(outcomes), api_calls=calls)


def _batches(items: Sequence[str], size: int = 500) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _restore(clients: AwsClients, rows: Sequence[Decision]) -> list[Outcome]:
    ec2 = clients.client("ec2")
    out = []
    for d in rows:
        try:
            call(ec2, "DisableImageDeprecation", ImageId=d.ami_id)
            out.append(Outcome(d.ami_id, clients.region, "restore", "done", "deprecation removed"))
        except AwsError as exc:
            out.append(Outcome(d.ami_id, clients.region, "restore", "failed", exc.message))
    ids = [o.resource for o in out if o.status == "done"]
    for batch in _batches(ids):
        call(ec2, "DeleteTags", Resources=batch, Tags=[{"Key": tags.RETIRE_PHASE}])
    return out


def _deprecate(clients: AwsClients, rows: Sequence[Decision], now: datetime) -> list[Outcome]:
    ec2 = clients.client("ec2")
    at = _deprecate_at(now)
    out = []
    for d in rows:
        try:
            call(ec2, "EnableImageDeprecation", ImageId=d.ami_id, DeprecateAt=at)
            out.append(
                Outcome(
                    d.ami_id, clients.region, "deprecate", "done", f"deprecated at {_stamp(at)}"
                )
            )
        except AwsError as exc:
            out.append(Outcome(d.ami_id, clients.region, "deprecate", "failed", exc.message))
    ids = [o.resource for o in out if o.status == "done"]
    for batch in _batches(ids):
        call(ec2, "CreateTags", Resources=batch, Tags=tag_list({tags.RETIRE_PHASE: DEPRECATED}))
    return out


def _current_image(ec2: Any, ami_id: str) -> Mapping[str, Any] | None:
    try:
        found = ec2.describe_images(
            ImageIds=[ami_id], IncludeDeprecated=True, IncludeDisabled=True
        )["Images"]
    except botocore.exceptions.ClientError as exc:
        if str(error_code(exc)).startswith("InvalidAMIID"):
            return None
        raise AwsError(f"ec2:DescribeImages {ami_id}: {error_code(exc)}") from None
    return found[0] if found else None


def _still_used(clients: AwsClients, ami_id: str, report: InUseReport) -> list[str]:
    """Everything that uses the image right now (targeted calls + the recent full scan)."""
    ec2 = clients.client("ec2")
    reasons = [u.describe() for u in report.by_ami().get(ami_id, ())]
    for reservation in paginate(
        ec2,
        "DescribeInstances",
        "Reservations",
        Filters=[
            {"Name": "image-id", "Values": [ami_id]},
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "shutting-down", "stopping", "stopped"],
            },
        ],
    ):
        for instance in reservation.get("Instances", []):
            reasons.append(f"in use: instance {instance['InstanceId']}")
    reasons += [u.describe() for u in launch_permission_usages(clients, [ami_id])]
    refs, _note = image_reference_usages(clients, [ami_id])
    reasons += [u.describe() for u in refs]
    return sorted(set(reasons))


def _deregister(  # noqa: PLR0912 - each early exit is a safety check, in order
    clients: AwsClients,
    rows: Sequence[Decision],
    recheck: Callable[[], InUseReport],
    interval: float,
    progress: Progress | None,
) -> list[Outcome]:
    if not rows:
        return []
    ec2 = clients.client("ec2")
    region = clients.region
    users = snapshot_users(clients)
    report, scanned_at = recheck(), time.monotonic()
    out: list[Outcome] = []
    for d in rows:
        if time.monotonic() - scanned_at > interval:
            report, scanned_at = recheck(), time.monotonic()
        image = _current_image(ec2, d.ami_id)
        if image is None:
            out.append(Outcome(d.ami_id, region, "deregister", "skipped", "already gone"))
            continue
        current = tags_dict(image.get("Tags"))
        protection = str(image.get("DeregistrationProtection") or "disabled")
        if is_protected(protection):
            out.append(
                Outcome(
                    d.ami_id,
                    region,
                    "deregister",
                    "skipped",
                    f"deregistration protection is {protection}; not disabled",
                )
            )
            continue
        if tags.KEEP in current or current.get(tags.RETIRE_PHASE) != DEPRECATED:
            out.append(
                Outcome(
                    d.ami_id,
                    region,
                    "deregister",
                    "skipped",
                    "changed since the plan (factory:keep or retire phase)",
                )
            )
            continue
        used = _still_used(clients, d.ami_id, report)
        if used:
            out.append(
                Outcome(
                    d.ami_id, region, "deregister", "skipped", "in use again: " + "; ".join(used)
                )
            )
            continue
        try:
            ec2.deregister_image(ImageId=d.ami_id)
        except botocore.exceptions.ClientError as exc:
            code = str(error_code(exc))
            message = exc.response.get("Error", {}).get("Message", "")
            if code in PROTECTION_ERRORS or "protect" in message.lower():
                out.append(
                    Outcome(
                        d.ami_id,
                        region,
                        "deregister",
                        "skipped",
                        f"deregistration protection ({code}); not disabled",
                    )
                )
            else:
                out.append(Outcome(d.ami_id, region, "deregister", "failed", f"{code}: {message}"))
            continue
        out.append(Outcome(d.ami_id, region, "deregister", "done", "deregistered"))
        if progress:
            progress.info(f"retire: deregistered {d.ami_id} ({d.family} {d.version})")
        snaps = [
            s.get("Ebs", {}).get("SnapshotId") for s in image.get("BlockDeviceMappings", []) or []
        ]
        for snap in sorted({s for s in snaps if s}):
            holders = users.get(snap, set()) - {d.ami_id}
            users[snap] = holders
            if holders:
                out.append(
                    Outcome(
                        snap,
                        region,
                        "delete-snapshot",
                        "skipped",
                        f"still used by {', '.join(sorted(holders))}",
                    )
                )
                continue
            out.append(_delete_snapshot(ec2, snap, region))
    return out


def _delete_snapshot(ec2: Any, snapshot_id: str, region: str) -> Outcome:
    try:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    except botocore.exceptions.ClientError as exc:
        code = str(error_code(exc))
        gone_or_used = code in ("InvalidSnapshot.InUse", "InvalidSnapshot.NotFound")
        status = "skipped" if gone_or_used else "failed"
        return Outcome(
            snapshot_id,
            region,
            "delete-snapshot",
            status,
            f"{code}: {exc.response.get('Error', {}).get('Message', '')}",
        )
    return Outcome(snapshot_id, region, "delete-snapshot", "done", "deleted")


def _delete_orphans(clients: AwsClients, rows: Sequence[SnapshotDecision]) -> list[Outcome]:
    if not rows:
        return []
    users = snapshot_users(clients)  # fresh: an image registered since the plan keeps its snapshot
    out = []
    for s in rows:
        if users.get(s.snapshot_id):
            out.append(
                Outcome(
                    s.snapshot_id,
                    s.region,
                    "delete-snapshot",
                    "skipped",
                    f"now used by {', '.join(sorted(users[s.snapshot_id]))}",
                )
            )
            continue
        out.append(_delete_snapshot(clients.client("ec2"), s.snapshot_id, s.region))
    return out


# --- text rendering -----------------------------------------------------------------------


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
