"""The rollout plan (pure): the refusal rules, the refresh settings, and what a rollout of an
image to a group will do.

Numbered versions only: AWS cannot roll back a group that uses $Latest/$Default, so a group
that does is pinned to the number its version resolves to first (same settings: no instance
changes). A launch template version whose image comes from `resolve:ssm:` cannot be rolled back
by AWS either: auto rollback is turned off, with a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from factory import tags as T
from factory.aws.model import Image
from factory.errors import ConfigError, RefusedError
from factory.rollout.facts import SSM_PREFIX, GroupLaunch, RolloutFacts


@dataclass(frozen=True)
class RefreshSettings:
    """The instance refresh preferences a rollout asks for."""

    min_healthy: int = 90
    max_healthy: int = 100
    warmup: int | None = None
    checkpoints: tuple[int, ...] = ()
    checkpoint_delay: int | None = None
    alarms: tuple[str, ...] = ()
    skip_matching: bool = True
    auto_rollback: bool = True

    def check(self) -> None:
        if not 0 <= self.min_healthy <= 100:
            raise ConfigError("--min-healthy must be between 0 and 100")
        if not 100 <= self.max_healthy <= 200:
            raise ConfigError("--max-healthy must be between 100 and 200")
        if self.max_healthy - self.min_healthy > 100:
            raise ConfigError("--max-healthy minus --min-healthy can't be more than 100")
        if any(not 1 <= c <= 100 for c in self.checkpoints) or list(self.checkpoints) != sorted(
            set(self.checkpoints)
        ):
            raise ConfigError("--checkpoints must be ascending percentages 1..100, like 20,50,100")
        if self.checkpoint_delay is not None and not self.checkpoints:
            raise ConfigError("--checkpoint-delay needs --checkpoints")

    def preferences(self) -> dict[str, Any]:
        """The StartInstanceRefresh Preferences structure."""
        prefs: dict[str, Any] = {
            "MinHealthyPercentage": self.min_healthy,
            "MaxHealthyPercentage": self.max_healthy,
            "SkipMatching": self.skip_matching,
            "AutoRollback": self.auto_rollback,
        }
        if self.warmup is not None:
            prefs["InstanceWarmup"] = self.warmup
        if self.checkpoints:
            prefs["CheckpointPercentages"] = list(self.checkpoints)
            if self.checkpoint_delay is not None:
                prefs["CheckpointDelay"] = self.checkpoint_delay
        if self.alarms:
            prefs["AlarmSpecification"] = {"Alarms": list(self.alarms)}
        return prefs


@dataclass(frozen=True)
class RolloutPlan:
    """What `factory rollout` will do to one group."""

    group: str
    region: str
    ami_id: str
    source: str  # "ami" | "channel FAMILY/CHANNEL" | "rollback"
    template_id: str
    current_version: str  # as the group names it
    current_number: int
    current_image: str | None
    pin_current: bool  # the group uses $Latest/$Default: pin it to current_number first
    new_version: bool  # create a version from current_number with ImageId = ami_id
    target_version: int | None  # an existing version to refresh to (rollback), else None
    settings: RefreshSettings
    instances_to_replace: int
    up_to_date: bool
    warnings: tuple[str, ...] = ()


def plan_steps(plan: RolloutPlan) -> tuple[str, ...]:
    """The plan's steps, one line each (the dry run shows them; a fleet's dry run reports them)."""
    if plan.up_to_date:
        return (f"{plan.group}: already runs {plan.ami_id} everywhere; nothing to do",)
    out = []
    if plan.pin_current:
        out.append(
            f"pin {plan.group} to launch template {plan.template_id} version "
            f"{plan.current_number} (it uses {plan.current_version}; rollback needs a number)"
        )
    if plan.new_version:
        out.append(
            f"create launch template {plan.template_id} version from "
            f"{plan.current_number} with ImageId {plan.ami_id} (everything else kept)"
        )
    target = "the new version" if plan.new_version else f"version {plan.target_version}"
    out.append(
        f"start an instance refresh of {plan.group} to {target}: "
        f"{plan.instances_to_replace} instance(s), min healthy {plan.settings.min_healthy}%, "
        f"max healthy {plan.settings.max_healthy}%, auto rollback "
        f"{'on' if plan.settings.auto_rollback else 'off'}"
    )
    return tuple(out)


def refuse_image(
    ami_id: str, image: Image | None, *, allow_unverified: bool = False, now: datetime | None = None
) -> None:
    """Rollouts take verified images only; never revoked or retired ones."""
    if image is None or not image.exists:
        raise RefusedError(
            f"{ami_id} does not exist (deregistered?) in this region; pick another image"
        )
    if image.revoked:
        reason = image.tags.get(T.REVOKED_REASON, "")
        raise RefusedError(
            f"{ami_id} is revoked{f' ({reason})' if reason else ''}: rollouts refuse it; "
            "publish a fixed image and roll that out"
        )
    if image.deprecated(now or datetime.now(UTC)):
        raise RefusedError(f"{ami_id} is retired (deprecated); roll out a current image")
    if image.status != T.Status.VERIFIED.value and not allow_unverified:
        raise RefusedError(
            f"{ami_id} is not verified (factory:status="
            f"{image.status or 'missing'}); run `factory verify {ami_id}` first"
        )


def refuse_group(group: GroupLaunch, *, force: bool) -> None:
    """A stateful group holds data: replacing its instances takes --force."""
    if group.stateful and not force:
        raise RefusedError(
            f"{group.name} is tagged {T.STATEFUL}=true (it holds data): replacing its instances "
            "needs care; rerun with --force once its data is safe"
        )


def _require_template(group: GroupLaunch) -> tuple[str, str, int]:
    if group.template_id is None or group.version_number is None or group.version is None:
        raise RefusedError(
            f"{group.name} has no launch template (a launch configuration?); move it to a "
            "launch template first: rollouts create launch template versions"
        )
    return group.template_id, group.version, group.version_number


def plan_rollout(
    facts: RolloutFacts,
    settings: RefreshSettings,
    *,
    force: bool = False,
    target_version: int | None = None,
    allow_unverified: bool = False,
) -> RolloutPlan:
    """Decide what a rollout of the image to the group does (pure; raises RefusedError)."""
    settings.check()
    group = facts.group
    refuse_group(group, force=force)
    refuse_image(facts.ami_id, facts.image, allow_unverified=allow_unverified)
    template_id, version, number = _require_template(group)
    warnings: list[str] = []
    current_image = group.version_image
    if current_image and current_image.startswith(SSM_PREFIX) and settings.auto_rollback:
        warnings.append(
            f"launch template version {number} takes its image from "
            f"{current_image}: AWS cannot roll back from it, so auto rollback is off"
        )
        settings = replace(settings, auto_rollback=False)
    target_number: int | None
    if target_version is not None:
        new_version, target_number = False, target_version
    else:
        new_version = current_image != facts.ami_id
        target_number = None if new_version else number
    desired = None if new_version else str(target_number)
    on_target = [
        i for i in group.instances if desired is not None and i.template_version == desired
    ]
    to_replace = len(group.instances) - (len(on_target) if settings.skip_matching else 0)
    up_to_date = (
        not new_version and target_version is None and to_replace == 0 and version == str(number)
    )
    if group.group.desired_capacity and settings.min_healthy == settings.max_healthy == 100:
        warnings.append("min healthy 100% and max healthy 100%: instances go one at a time")
    return RolloutPlan(
        group=group.name,
        region=group.group.region,
        ami_id=facts.ami_id,
        source=facts.source,
        template_id=template_id,
        current_version=version,
        current_number=number,
        current_image=current_image,
        pin_current=not version.isdigit(),
        new_version=new_version,
        target_version=target_number,
        settings=settings,
        instances_to_replace=to_replace,
        up_to_date=up_to_date,
        warnings=tuple(warnings),
    )


def batch_bound(capacity: int, min_healthy: int, max_healthy: int = 100) -> int:
    """How many batches a refresh of `capacity` instances takes at most (the benchmark's bound)."""
    if capacity <= 0:
        return 0
    floor_ = math.ceil(capacity * min_healthy / 100)
    ceiling = max(capacity, math.floor(capacity * max_healthy / 100))
    return math.ceil(capacity / max(1, ceiling - floor_))
