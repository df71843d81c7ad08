"""Channels: SSM parameters `/factory/FAMILY/CHANNEL` (data type aws:ec2:image) naming an AMI.

Launch templates resolve them natively (`resolve:ssm:/factory/web/prod`). Every change is a
new parameter version; who, when and why go in that version's Description as JSON (labels
would stop SSM from dropping the oldest of its 100 versions). Rollback returns to the AMI the
channel held before the current one, following earlier rollbacks back through the history.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from factory import tags as T
from factory.aws import AwsClients, parameters
from factory.aws.parameters import Parameter
from factory.catalog import CHANNEL_ROOT, ImageRecord, find_image
from factory.errors import ConfigError, RefusedError

PREFIX = CHANNEL_ROOT
DATA_TYPE = "aws:ec2:image"


def parameter_name(family: str, channel: str) -> str:
    return f"{PREFIX}/{family}/{channel}"


def check_channel(channel: str, channels: Sequence[str]) -> None:
    if channel not in channels:
        raise ConfigError(
            f"unknown channel {channel!r}; use one of {', '.join(channels)} "
            "(or add it to factory.channels in factory.toml)"
        )


@dataclass(frozen=True)
class ChannelVersion:
    """One version of a channel parameter: the AMI and who set it, when and why."""

    version: int
    ami_id: str
    at: datetime | None
    by: str
    reason: str
    action: str  # set | rollback
    rollback_to: int | None = None  # for a rollback: the version it restored


@dataclass(frozen=True)
class ChannelState:
    family: str
    channel: str
    parameter: str
    ami_id: str | None
    version: int | None
    history: tuple[ChannelVersion, ...]  # newest first


def _version(param: Parameter) -> ChannelVersion:
    note: dict[str, Any] = {}
    try:
        parsed = json.loads(param.description or "{}")
        if isinstance(parsed, dict):
            note = parsed
    except ValueError:
        note = {"reason": param.description}
    rollback_to = note.get("rollback_to")
    return ChannelVersion(
        version=param.version,
        ami_id=param.value,
        at=param.modified_at,
        by=str(note.get("by") or param.modified_by or "unknown"),
        reason=str(note.get("reason", "")),
        action=str(note.get("action", "set")),
        rollback_to=int(rollback_to) if rollback_to is not None else None,
    )


def channel_history(clients: AwsClients, family: str, channel: str) -> tuple[ChannelVersion, ...]:
    """All versions of a channel, newest first; empty if it was never set."""
    params = parameters.history(clients, parameter_name(family, channel))
    return tuple(sorted((_version(p) for p in params), key=lambda v: v.version, reverse=True))


def channel_state(clients: AwsClients, family: str, channel: str) -> ChannelState:
    history = channel_history(clients, family, channel)
    current = history[0] if history else None
    return ChannelState(
        family,
        channel,
        parameter_name(family, channel),
        current.ami_id if current else None,
        current.version if current else None,
        history,
    )


def show_channels(
    clients: AwsClients, channels: Sequence[str], family: str | None = None
) -> tuple[ChannelState, ...]:
    """Every channel parameter under /factory (or one family's), with its history."""
    found: set[tuple[str, str]] = set()
    path = f"{PREFIX}/{family}" if family else PREFIX
    for param in parameters.by_path(clients, path):
        parts = param.name.strip("/").split("/")
        if len(parts) == 3 and parts[2] in channels:
            found.add((parts[1], parts[2]))
    order = {name: i for i, name in enumerate(channels)}
    return tuple(
        channel_state(clients, fam, chan)
        for fam, chan in sorted(found, key=lambda fc: (fc[0], order[fc[1]]))
    )


def channel_targets(
    clients: AwsClients, channels: Sequence[str], families: Sequence[str] | None = None
) -> dict[tuple[str, str], str]:
    """(family, channel) -> AMI id for every channel that is set (rollout/retire read this)."""
    out: dict[tuple[str, str], str] = {}
    for param in parameters.by_path(clients, PREFIX):
        parts = param.name.strip("/").split("/")
        if len(parts) != 3 or parts[2] not in channels:
            continue
        if families is not None and parts[1] not in families:
            continue
        out[(parts[1], parts[2])] = param.value
    return out


# ---- set and rollback -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelPlan:
    """What a `channel set` or `rollback` will write."""

    family: str
    channel: str
    parameter: str
    ami_id: str
    previous_ami: str | None
    action: str  # set | rollback
    reason: str
    by: str
    at: datetime
    rollback_to: int | None = None
    no_change: bool = False


@dataclass(frozen=True)
class ChannelChange:
    family: str
    channel: str
    parameter: str
    ami_id: str
    previous_ami: str | None
    version: int | None
    action: str
    changed: bool


def refuse_unpublishable(image: ImageRecord, family: str) -> None:
    """Channels take only verified, unrevoked images of their own family."""
    if image.revoked:
        reason = image.tags.get(T.REVOKED_REASON, "no reason recorded")
        raise RefusedError(f"{image.ami_id} is revoked ({reason}); it cannot be published")
    if image.status != T.Status.VERIFIED.value:
        raise RefusedError(
            f"{image.ami_id} is {image.status}, not verified; run `factory verify "
            f"{image.ami_id}` first"
        )
    if image.family != family:
        raise RefusedError(
            f"{image.ami_id} belongs to family {image.family or '(none)'}, not {family}; "
            "publish it to its own family's channel"
        )


def plan_channel_set(
    family: str,
    channel: str,
    image: ImageRecord,
    current: ChannelState,
    *,
    reason: str,
    by: str,
    at: datetime,
) -> ChannelPlan:
    refuse_unpublishable(image, family)
    return ChannelPlan(
        family=family,
        channel=channel,
        parameter=parameter_name(family, channel),
        ami_id=image.ami_id,
        previous_ami=current.ami_id,
        action="set",
        reason=reason,
        by=by,
        at=at,
        no_change=current.ami_id == image.ami_id,
    )


def rollback_target(history: Sequence[ChannelVersion]) -> ChannelVersion:
    """The version a rollback restores: the one before the current position.

    A rollback's position is the version it restored, so repeated rollbacks walk back
    through history instead of toggling between two AMIs.
    """
    if not history:
        raise RefusedError("the channel was never set; nothing to roll back to")
    by_version = {v.version: v for v in history}
    current = history[0]
    position = current.version
    while by_version[position].action == "rollback" and by_version[position].rollback_to:
        target = by_version[position].rollback_to
        if target not in by_version or target >= position:
            break
        position = target
    for version in history:
        if version.version < position and version.ami_id != current.ami_id:
            return version
    raise RefusedError(
        f"no earlier AMI in the channel's history (it holds {current.ami_id} since version "
        f"{position}); set one with `factory channel set`"
    )


def plan_channel_rollback(
    family: str,
    channel: str,
    current: ChannelState,
    target_image: ImageRecord,
    target: ChannelVersion,
    *,
    reason: str,
    by: str,
    at: datetime,
) -> ChannelPlan:
    try:
        refuse_unpublishable(target_image, family)
    except RefusedError as exc:
        raise RefusedError(f"cannot roll back to version {target.version}: {exc.message}") from None
    return ChannelPlan(
        family=family,
        channel=channel,
        parameter=parameter_name(family, channel),
        ami_id=target.ami_id,
        previous_ami=current.ami_id,
        action="rollback",
        reason=reason or f"rollback to version {target.version}",
        by=by,
        at=at,
        rollback_to=target.version,
    )


def apply_channel(plan: ChannelPlan, clients: AwsClients) -> ChannelChange:
    """Write the channel parameter (a new version) with who/when/why in its Description."""
    if plan.no_change:
        state = channel_state(clients, plan.family, plan.channel)
        return ChannelChange(
            plan.family,
            plan.channel,
            plan.parameter,
            plan.ami_id,
            plan.previous_ami,
            state.version,
            plan.action,
            changed=False,
        )
    note: dict[str, Any] = {
        "action": plan.action,
        "by": plan.by,
        "at": plan.at.astimezone(UTC).isoformat(timespec="seconds"),
        "reason": plan.reason,
    }
    if plan.rollback_to is not None:
        note["rollback_to"] = plan.rollback_to
    description = json.dumps(note, separators=(",", ":"))
    if len(description) > 1024:  # SSM's limit: shorten the reason, keep the JSON valid
        note["reason"] = plan.reason[: 1024 - (len(description) - len(plan.reason)) - 3] + "..."
        description = json.dumps(note, separators=(",", ":"))
    version = parameters.put(
        clients, plan.parameter, plan.ami_id, description=description, data_type=DATA_TYPE
    )
    return ChannelChange(
        plan.family,
        plan.channel,
        plan.parameter,
        plan.ami_id,
        plan.previous_ami,
        version,
        plan.action,
        changed=True,
    )


def caller(clients: AwsClients) -> str:
    """Who is making the change (the caller's ARN)."""
    return clients.caller_arn


def set_channel(
    clients: AwsClients,
    channels: Sequence[str],
    family: str,
    channel: str,
    ami_id: str,
    *,
    reason: str = "",
    dry_run: bool = False,
) -> ChannelPlan | ChannelChange:
    """Gather facts, plan (refusing unverified/revoked images) and apply unless dry_run."""
    check_channel(channel, channels)
    plan = plan_channel_set(
        family,
        channel,
        find_image(clients, ami_id),
        channel_state(clients, family, channel),
        reason=reason,
        by=caller(clients),
        at=datetime.now(UTC),
    )
    return plan if dry_run else apply_channel(plan, clients)


def rollback_channel(
    clients: AwsClients,
    channels: Sequence[str],
    family: str,
    channel: str,
    *,
    reason: str = "",
    dry_run: bool = False,
) -> ChannelPlan | ChannelChange:
    check_channel(channel, channels)
    state = channel_state(clients, family, channel)
    if not state.history:
        raise RefusedError(
            f"{state.parameter} was never set; nothing to roll back to (publish an image with "
            f"`factory channel set {family} {channel} AMI_ID`)"
        )
    target = rollback_target(state.history)
    plan = plan_channel_rollback(
        family,
        channel,
        state,
        find_image(clients, target.ami_id),
        target,
        reason=reason,
        by=caller(clients),
        at=datetime.now(UTC),
    )
    return plan if dry_run else apply_channel(plan, clients)
