"""The retention plan, pure: for each image, keep it (with every reason) or move it one step.

    available --deprecate--> deprecated (factory:retire-phase=deprecated, DeprecationTime now)
              --grace days--> deregistered, with the snapshots no remaining image uses

Same facts, same plan: decisions are sorted by region, family and age, reasons by kind, so the
plan can be printed, diffed and tested without AWS.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from factory import tags
from factory.aws.images import Snapshot
from factory.aws.model import Image, parse_time
from factory.config import FactoryConfig, RetentionPolicy
from factory.retire.inuse import Usage, usage_reason

DEPRECATED = "deprecated"  # the value of factory:retire-phase while an image is in its grace
EPOCH = datetime.fromtimestamp(0, UTC)


class Action(StrEnum):
    KEEP = "keep"
    RESTORE = "restore"  # kept, but an earlier run deprecated it: undo the deprecation
    DEPRECATE = "deprecate"
    WAIT = "wait"  # deprecated, grace period not over
    DEREGISTER = "deregister"
    PROTECTED = "protected"  # due for deregistration, but deregistration protection is on


@dataclass(frozen=True)
class RetireSettings:
    """What to plan: the retention policies (with the command line's overrides), the family,
    whether to plan snapshots, and the moment the plan is for."""

    now: datetime
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    family_retention: Mapping[str, RetentionPolicy] = field(default_factory=dict)
    overrides: Mapping[str, int] = field(default_factory=dict)  # RetentionPolicy field -> value
    family: str | None = None
    snapshots: bool = False

    @classmethod
    def from_config(
        cls,
        config: FactoryConfig,
        *,
        now: datetime,
        family: str | None = None,
        snapshots: bool = False,
        keep: int | None = None,
        min_age_days: int | None = None,
        grace_days: int | None = None,
    ) -> RetireSettings:
        chosen = (("keep", keep), ("min_age_days", min_age_days), ("grace_days", grace_days))
        return cls(
            now=now,
            retention=config.retention,
            family_retention=dict(config.family_retention),
            overrides={k: v for k, v in chosen if v is not None},
            family=family,
            snapshots=snapshots,
        )

    def policy_for(self, family: str) -> RetentionPolicy:
        return replace(self.family_retention.get(family, self.retention), **self.overrides)

    @property
    def snapshot_min_age_days(self) -> int:
        """How old an orphaned snapshot must be: a build in progress may own a young one."""
        return self.policy_for(self.family or "").min_age_days


@dataclass(frozen=True)
class RetireFacts:
    """Everything the plan is made from, read in every region and account (gather_retire)."""

    images: tuple[Image, ...]  # the factory's images in its own account, every region
    usages: Mapping[str, tuple[Usage, ...]]  # AMI id -> every use found
    snapshots: tuple[Snapshot, ...] = ()  # the factory's snapshots (when asked for)
    used_snapshots: Mapping[str, Collection[str]] = field(default_factory=dict)  # region -> ids
    calls_by_operation: Mapping[str, int] = field(default_factory=dict)
    scopes: tuple[str, ...] = ()  # account/region scanned for uses
    notes: tuple[str, ...] = ()  # what could not be checked


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


# ---- what an image's tags and attributes mean for retirement ------------------------------------


def is_protected(protection: str | None, now: datetime | None = None) -> bool:
    """DeregistrationProtection as DescribeImages reports it: enabled-*, or disabled-until T
    (protection disabled with a cooldown holds until T)."""
    value = (protection or "disabled").strip()
    if value.startswith("enabled"):
        return True
    if value.startswith("disabled-until"):
        until = parse_time(value.removeprefix("disabled-until").strip())
        return until is None or (now or datetime.now(UTC)) < until
    return False


def created_at(image: Image) -> datetime:
    """When its build started (the epoch when nothing says: the oldest, retired first)."""
    return image.created_at or EPOCH


def revoked_at(image: Image) -> datetime | None:
    return parse_time(image.tags.get(tags.REVOKED_AT))


def kept_by_tag(image: Image) -> bool:
    """`factory:keep` with any value: retire never touches the image."""
    return tags.KEEP in image.tags


def deprecated_by_retire(image: Image) -> bool:
    """An earlier retire run deprecated it (and may restore or deregister it)."""
    return image.tags.get(tags.RETIRE_PHASE) == DEPRECATED


# ---- the plan ----------------------------------------------------------------------------------


def plan_retire(facts: RetireFacts, settings: RetireSettings) -> RetirePlan:
    """The plan for every image and (when asked) every factory snapshot."""
    decisions = plan_decisions(
        facts.images, facts.usages, settings.policy_for, settings.now, family=settings.family
    )
    snapshots = (
        plan_snapshots(
            facts.snapshots,
            facts.used_snapshots,
            settings.now,
            settings.snapshot_min_age_days,
        )
        if settings.snapshots
        else ()
    )
    families = sorted({i.family for i in facts.images if i.family})
    return RetirePlan(
        now=settings.now,
        family=settings.family,
        policies={f: settings.policy_for(f) for f in families},
        decisions=decisions,
        snapshots=snapshots,
        api_calls=sum(facts.calls_by_operation.values()),
        calls_by_operation=dict(facts.calls_by_operation),
        images_scanned=len(facts.images),
        scopes=facts.scopes,
        notes=tuple(sorted(set(facts.notes))),
    )


def plan_decisions(
    images: Iterable[Image],
    usages: Mapping[str, Sequence[Usage]],
    policy_for: Callable[[str], RetentionPolicy],
    now: datetime,
    *,
    family: str | None = None,
) -> tuple[Decision, ...]:
    """Keep or retire each image, with every reason; sorted by region, family, newest first.

    Images without a `factory:family` are not the factory's: they are never planned.
    """
    by_group: dict[tuple[str, str], list[Image]] = {}
    for image in images:
        if image.family and (family is None or image.family == family):
            by_group.setdefault((image.region, image.family), []).append(image)
    decisions: list[Decision] = []
    for (_region, fam), group in sorted(by_group.items()):
        policy = policy_for(fam)
        dated = sorted(
            ((created_at(i), i) for i in group), key=lambda p: (-p[0].timestamp(), p[1].ami_id)
        )
        verified = [i for _, i in dated if i.verified and i.state in ("available", "disabled")]
        newest = {i.ami_id: rank for rank, i in enumerate(verified[: policy.keep], start=1)}
        for created, image in dated:
            action, reasons, not_before = _decide(
                image, created, newest.get(image.ami_id), usages.get(image.ami_id, ()), policy, now
            )
            decisions.append(
                Decision(
                    ami_id=image.ami_id,
                    region=image.region,
                    family=fam,
                    version=image.version or "",
                    name=image.name,
                    created_at=created,
                    action=action,
                    reasons=tuple(reasons),
                    snapshot_ids=image.snapshot_ids,
                    not_before=not_before,
                )
            )
    return tuple(decisions)


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _keep_reasons(
    image: Image,
    created: datetime,
    rank: int | None,
    used: Sequence[Usage],
    policy: RetentionPolicy,
    now: datetime,
) -> list[str]:
    reasons: list[str] = []
    if kept_by_tag(image):
        reasons.append(f"tagged {tags.KEEP}")
    if image.state in ("pending", "transient"):
        reasons.append(f"not available yet (state {image.state})")
    if rank is not None:
        reasons.append(f"newest verified: {rank} of {policy.keep}")
    if now - created < timedelta(days=policy.min_age_days):
        reasons.append(f"younger than {policy.min_age_days} days (created {_day(created)})")
    revoked = revoked_at(image) or (created if image.revoked else None)
    if revoked is not None:
        until = revoked + timedelta(days=policy.audit_days)
        if now < until:
            reasons.append(
                f"revoked: kept for the {policy.audit_days}-day audit window (until {_day(until)})"
            )
    if image.public:
        reasons.append("in use: public image (launch permission group all)")
    reasons.extend(usage_reason(u) for u in sorted(set(used)))
    return reasons


def _retire_reasons(
    image: Image, created: datetime, policy: RetentionPolicy, now: datetime
) -> list[str]:
    if image.revoked:
        why = f"revoked, past its {policy.audit_days}-day audit window"
    elif image.verified:
        why = f"not among the newest {policy.keep} verified"
    else:
        why = f"status {image.status or 'unknown'}, never verified"
    return [why, f"{(now - created).days} days old, unused"]


_Step = tuple[Action, list[str], datetime | None]  # action, reasons, when deregistration is due


def _decide(
    image: Image,
    created: datetime,
    rank: int | None,
    used: Sequence[Usage],
    policy: RetentionPolicy,
    now: datetime,
) -> _Step:
    keep = _keep_reasons(image, created, rank, used, policy, now)
    ours = deprecated_by_retire(image)
    if keep:
        if ours:
            keep.append("was deprecated by an earlier retire run: restore it")
            return Action.RESTORE, keep, None
        return Action.KEEP, keep, None
    reasons = _retire_reasons(image, created, policy, now)
    if ours and image.deprecation_time is not None:
        return _decide_deprecated(image, image.deprecation_time, reasons, policy, now)
    reasons.append(f"deprecate now; deregister after {policy.grace_days} days of grace")
    if is_protected(image.protection, now):
        reasons.append(f"note: deregistration protection is {image.protection}")
    return Action.DEPRECATE, reasons, now + timedelta(days=policy.grace_days)


def _decide_deprecated(
    image: Image,
    deprecated: datetime,
    reasons: list[str],
    policy: RetentionPolicy,
    now: datetime,
) -> _Step:
    """An unused image an earlier run deprecated: wait out the grace, then deregister."""
    due = deprecated + timedelta(days=policy.grace_days)
    if now < due:
        reasons.append(
            f"deprecated {_stamp(deprecated)}; grace ({policy.grace_days} days) ends {_stamp(due)}"
        )
        return Action.WAIT, reasons, due
    if is_protected(image.protection, now):
        reasons.append(
            f"deregistration protection is {image.protection}: the factory "
            "never disables it; disable it yourself to let retire proceed"
        )
        return Action.PROTECTED, reasons, None
    reasons.append(f"deprecated {_stamp(deprecated)}; grace over")
    return Action.DEREGISTER, reasons, None


def might_be_deregistered(
    image: Image, policy_for: Callable[[str], RetentionPolicy], now: datetime
) -> bool:
    """Whether a plan could deregister the image (its grace is over): only the families with
    such an image need a first plan to find the images for the per-image checks."""
    if not image.family or not deprecated_by_retire(image) or image.deprecation_time is None:
        return False
    return now >= image.deprecation_time + timedelta(days=policy_for(image.family).grace_days)


def plan_snapshots(
    snapshots: Iterable[Snapshot],
    used_snapshot_ids: Mapping[str, Collection[str]],
    now: datetime,
    min_age_days: int,
) -> tuple[SnapshotDecision, ...]:
    """Factory snapshots no image uses any more (per region) are deleted once old enough."""
    out = []
    for snap in snapshots:
        started = snap.started_at or EPOCH
        used = snap.snapshot_id in used_snapshot_ids.get(snap.region, ())
        young = now - started < timedelta(days=min_age_days)
        if used:
            action, reason = "keep", "used by a registered image"
        elif young:
            action, reason = "keep", f"younger than {min_age_days} days (a build may own it)"
        else:
            action, reason = "delete", "orphaned: no registered image uses it"
        out.append(
            SnapshotDecision(snap.snapshot_id, snap.region, started, snap.size_gib, action, reason)
        )
    return tuple(sorted(out, key=lambda s: (s.region, s.started_at, s.snapshot_id)))


def deregistrations_due(decisions: Iterable[Decision]) -> dict[str, list[str]]:
    """Region -> the images the plan would deregister (they get the per-image checks)."""
    due: dict[str, list[str]] = {}
    for d in decisions:
        if d.action == Action.DEREGISTER:
            due.setdefault(d.region, []).append(d.ami_id)
    return due
