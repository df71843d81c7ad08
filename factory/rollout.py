"""Rollout by replacement: a launch template version and an Auto Scaling instance refresh.

A server is never changed in place: rolling out image B to a group creates a new version of the
group's launch template from the version it runs (only ImageId changes; user data and every other
setting are kept) and starts an instance refresh whose DesiredConfiguration names that numbered
version with AutoRollback on. AWS replaces instances in batches that keep MinHealthyPercentage of
the group healthy, rolls back by itself when replacements fail their health checks (or an alarm
fires), and points the group at the new version when the refresh succeeds. Numbered versions
only: AWS cannot roll back a group that uses $Latest/$Default, so a group that does is pinned to
the number its version resolves to first (same settings: no instance changes).

`plan_rollout(facts) -> RolloutPlan` is pure; `apply_rollout(plan, clients)` acts on it;
`wait_refresh` follows a refresh with a progress bar, polling at most once a second.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from factory import tags as T
from factory.aws import AwsClients, aws_errors, call, tags_dict
from factory.catalog import deprecation_passed, is_revoked
from factory.channels import parameter_name
from factory.errors import (
    AwsError,
    ConfigError,
    ExitCode,
    FactoryError,
    Interrupted,
    RefusedError,
)
from factory.output import Progress

# IAM permissions a rollout uses (infra/'s policies are derived from these).
PERMISSIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:UpdateAutoScalingGroup",
    "autoscaling:StartInstanceRefresh",
    "autoscaling:DescribeInstanceRefreshes",
    "autoscaling:CancelInstanceRefresh",
    "autoscaling:RollbackInstanceRefresh",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:CreateLaunchTemplateVersion",
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ssm:GetParameter",
)

ACTIVE = frozenset({"Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking"})
SSM_PREFIX = "resolve:ssm:"
VERSION_NOTE = re.compile(r"from version (\d+)")

# Polling: never more than one call a second; back off while nothing changes.
POLL_MIN = 1.0
POLL_MAX = 15.0
POLL_FACTOR = 1.5
POLL_LAG = 0.05  # while nothing changes, wait at most this fraction of the time followed so far


class RolloutFailed(FactoryError):
    """The refresh failed, was cancelled or rolled back: the message says what was restored."""

    exit_code = ExitCode.FAILED


# =============================================================================================
# facts


@dataclass(frozen=True)
class InstanceFacts:
    instance_id: str
    lifecycle_state: str
    health_status: str
    template_version: str | None  # the launch template version it was launched from
    image_id: str | None = None  # filled in by drift (DescribeInstances)


@dataclass(frozen=True)
class GroupFacts:
    """An Auto Scaling group as the rollout needs it."""

    name: str
    template_id: str | None
    template_name: str | None
    version: str | None  # as the group names it: "7", "$Latest", "$Default"
    version_number: int | None  # what that resolves to
    version_image: str | None  # ImageId of that version (may be resolve:ssm:NAME)
    version_description: str
    desired_capacity: int
    tags: Mapping[str, str]
    instances: tuple[InstanceFacts, ...]

    @property
    def stateful(self) -> bool:
        return self.tags.get(T.STATEFUL, "").strip().lower() == "true"


@dataclass(frozen=True)
class ImageFacts:
    """An AMI's state for the refusal rules (exists, status tag, revoked, retired)."""

    ami_id: str
    exists: bool
    name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    deprecation_time: str | None = None

    @property
    def status(self) -> str | None:
        return self.tags.get(T.STATUS)

    @property
    def family(self) -> str | None:
        return self.tags.get(T.FAMILY)

    @property
    def revoked(self) -> bool:
        return is_revoked(self.tags)

    def deprecated(self, now: datetime | None = None) -> bool:
        return deprecation_passed(self.deprecation_time, now or datetime.now(UTC))


def describe_group(clients: AwsClients, name: str) -> GroupFacts:
    """The group, its launch template version and instances (ConfigError if it is missing)."""
    asg = clients.client("autoscaling")
    groups = call(asg, "DescribeAutoScalingGroups", AutoScalingGroupNames=[name])[
        "AutoScalingGroups"
    ]
    if not groups:
        raise ConfigError(f"Auto Scaling group {name!r} not found in {clients.region}")
    group = groups[0]
    spec = group.get("LaunchTemplate") or (
        (group.get("MixedInstancesPolicy") or {})
        .get("LaunchTemplate", {})
        .get("LaunchTemplateSpecification")
    )
    template_id = template_name = version = image = None
    number = None
    description = ""
    if spec:
        template_id = spec.get("LaunchTemplateId")
        template_name = spec.get("LaunchTemplateName")
        version = str(spec.get("Version") or "$Default")
        lt_version = launch_template_version(clients, str(template_id), version)
        number = int(lt_version["VersionNumber"])
        image = lt_version.get("LaunchTemplateData", {}).get("ImageId")
        description = str(lt_version.get("VersionDescription") or "")
    instances = tuple(
        InstanceFacts(
            instance_id=str(i["InstanceId"]),
            lifecycle_state=str(i.get("LifecycleState", "")),
            health_status=str(i.get("HealthStatus", "")),
            template_version=str((i.get("LaunchTemplate") or {}).get("Version") or "") or None,
        )
        for i in group.get("Instances", [])
    )
    return GroupFacts(
        name=name,
        template_id=template_id,
        template_name=template_name,
        version=version,
        version_number=number,
        version_image=image,
        version_description=description,
        desired_capacity=int(group.get("DesiredCapacity", 0)),
        tags=tags_dict(group.get("Tags")),
        instances=instances,
    )


def launch_template_version(clients: AwsClients, template_id: str, version: str) -> Any:
    versions = call(
        clients.client("ec2"),
        "DescribeLaunchTemplateVersions",
        LaunchTemplateId=template_id,
        Versions=[version],
    )["LaunchTemplateVersions"]
    if not versions:
        raise AwsError(f"launch template {template_id} has no version {version}")
    return versions[0]


def describe_images(clients: AwsClients, ami_ids: Sequence[str]) -> dict[str, ImageFacts]:
    """Facts for each AMI id; a deregistered (or never existing) one has exists=False."""
    wanted = sorted({a for a in ami_ids if a})
    out = {a: ImageFacts(a, exists=False) for a in wanted}
    if not wanted:
        return out
    images = call(
        clients.client("ec2"),
        "DescribeImages",
        Filters=[{"Name": "image-id", "Values": wanted}],
        IncludeDeprecated=True,
    )["Images"]
    for image in images:
        ami = str(image["ImageId"])
        out[ami] = ImageFacts(
            ami_id=ami,
            exists=image.get("State", "available") != "deregistered",
            name=str(image.get("Name", "")),
            tags=tags_dict(image.get("Tags")),
            deprecation_time=image.get("DeprecationTime"),
        )
    return out


def resolve_ssm_image(clients: AwsClients, image_id: str) -> str:
    """`resolve:ssm:NAME` -> the AMI the parameter holds now (as EC2 does at launch)."""
    if not image_id.startswith(SSM_PREFIX):
        return image_id
    name = image_id[len(SSM_PREFIX) :]
    return str(call(clients.client("ssm"), "GetParameter", Name=name)["Parameter"]["Value"])


def channel_ami(clients: AwsClients, family: str, channel: str) -> str:
    """The AMI a channel (SSM parameter /factory/FAMILY/CHANNEL) names."""
    name = parameter_name(family, channel)
    try:
        with aws_errors(f"ssm:GetParameter {name}"):
            value = clients.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
    except AwsError as exc:
        if "ParameterNotFound" in exc.message:
            raise ConfigError(
                f"channel {family}/{channel} is not set ({name}); publish an image to it first "
                f"(factory channel set {family} {channel} AMI)"
            ) from None
        raise
    return str(value)


# =============================================================================================
# plan


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

    @property
    def actions(self) -> tuple[str, ...]:
        if self.up_to_date:
            return (f"{self.group}: already runs {self.ami_id} everywhere; nothing to do",)
        out = []
        if self.pin_current:
            out.append(
                f"pin {self.group} to launch template {self.template_id} version "
                f"{self.current_number} (it uses {self.current_version}; rollback needs a number)"
            )
        if self.new_version:
            out.append(
                f"create launch template {self.template_id} version from "
                f"{self.current_number} with ImageId {self.ami_id} (everything else kept)"
            )
        target = "the new version" if self.new_version else f"version {self.target_version}"
        out.append(
            f"start an instance refresh of {self.group} to {target}: "
            f"{self.instances_to_replace} instance(s), min healthy {self.settings.min_healthy}%, "
            f"max healthy {self.settings.max_healthy}%, auto rollback "
            f"{'on' if self.settings.auto_rollback else 'off'}"
        )
        return tuple(out)


def refuse_image(image: ImageFacts, *, allow_unverified: bool = False) -> None:
    """Rollouts take verified images only; never revoked or retired ones."""
    if not image.exists:
        raise RefusedError(
            f"{image.ami_id} does not exist (deregistered?) in this region; pick another image"
        )
    if image.revoked:
        reason = image.tags.get(T.REVOKED_REASON, "")
        raise RefusedError(
            f"{image.ami_id} is revoked{f' ({reason})' if reason else ''}: rollouts refuse it; "
            "publish a fixed image and roll that out"
        )
    if image.deprecated():
        raise RefusedError(f"{image.ami_id} is retired (deprecated); roll out a current image")
    if image.status != T.Status.VERIFIED.value and not allow_unverified:
        raise RefusedError(
            f"{image.ami_id} is not verified (factory:status="
            f"{image.status or 'missing'}); run `factory verify {image.ami_id}` first"
        )


def plan_rollout(
    group: GroupFacts,
    image: ImageFacts,
    settings: RefreshSettings,
    *,
    region: str,
    source: str = "ami",
    force: bool = False,
    target_version: int | None = None,
    allow_unverified: bool = False,
) -> RolloutPlan:
    """Decide what a rollout of `image` to `group` does (pure; raises RefusedError)."""
    settings.check()
    if group.stateful and not force:
        raise RefusedError(
            f"{group.name} is tagged {T.STATEFUL}=true (it holds data): replacing its instances "
            "needs care; rerun with --force once its data is safe"
        )
    refuse_image(image, allow_unverified=allow_unverified)
    if group.template_id is None or group.version_number is None or group.version is None:
        raise RefusedError(
            f"{group.name} has no launch template (a launch configuration?); move it to a "
            "launch template first: rollouts create launch template versions"
        )
    warnings: list[str] = []
    current_image = group.version_image
    if current_image and current_image.startswith(SSM_PREFIX) and settings.auto_rollback:
        warnings.append(
            f"launch template version {group.version_number} takes its image from "
            f"{current_image}: AWS cannot roll back from it, so auto rollback is off"
        )
        settings = replace(settings, auto_rollback=False)
    target_number: int | None
    if target_version is not None:
        target_number = target_version
        new_version = False
    else:
        new_version = current_image != image.ami_id
        target_number = None if new_version else group.version_number
    desired = None if new_version else str(target_number)
    on_target = [
        i for i in group.instances if desired is not None and i.template_version == desired
    ]
    to_replace = len(group.instances) - (len(on_target) if settings.skip_matching else 0)
    up_to_date = (
        not new_version
        and target_version is None
        and to_replace == 0
        and group.version == str(group.version_number)
    )
    if group.desired_capacity and settings.min_healthy == 100 and settings.max_healthy == 100:
        warnings.append("min healthy 100% and max healthy 100%: instances go one at a time")
    return RolloutPlan(
        group=group.name,
        region=region,
        ami_id=image.ami_id,
        source=source,
        template_id=group.template_id,
        current_version=group.version,
        current_number=group.version_number,
        current_image=current_image,
        pin_current=not group.version.isdigit(),
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


# =============================================================================================
# refresh status and waiting


@dataclass(frozen=True)
class RefreshStatus:
    """One instance refresh as DescribeInstanceRefreshes reports it."""

    refresh_id: str
    group: str
    status: str
    reason: str
    percentage: int
    instances_to_update: int
    desired_version: str | None
    start_time: str | None
    end_time: str | None
    rollback_reason: str | None = None
    rollback_percentage: int | None = None
    replaced: int = 0  # instances replaced while we watched (wait_refresh fills it in)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> RefreshStatus:
        desired = (item.get("DesiredConfiguration") or {}).get("LaunchTemplate") or {}
        rollback = item.get("RollbackDetails") or {}

        def _time(key: str) -> str | None:
            value = item.get(key)
            return value.isoformat() if isinstance(value, datetime) else value

        return cls(
            refresh_id=str(item["InstanceRefreshId"]),
            group=str(item.get("AutoScalingGroupName", "")),
            status=str(item.get("Status", "")),
            reason=str(item.get("StatusReason") or ""),
            percentage=int(item.get("PercentageComplete") or 0),
            instances_to_update=int(item.get("InstancesToUpdate") or 0),
            desired_version=str(desired["Version"]) if desired.get("Version") else None,
            start_time=_time("StartTime"),
            end_time=_time("EndTime"),
            rollback_reason=rollback.get("RollbackReason"),
            rollback_percentage=rollback.get("PercentageCompleteOnRollback"),
        )


def latest_refresh(clients: AwsClients, group: str) -> RefreshStatus | None:
    try:
        with aws_errors(f"autoscaling:DescribeInstanceRefreshes {group}"):
            items = clients.client("autoscaling").describe_instance_refreshes(
                AutoScalingGroupName=group, MaxRecords=1
            )["InstanceRefreshes"]
    except AwsError as exc:
        if "ValidationError" in exc.message and "not found" in exc.message:
            raise ConfigError(
                f"Auto Scaling group {group!r} not found in {clients.region}"
            ) from None
        raise
    return RefreshStatus.from_api(items[0]) if items else None


def get_refresh(clients: AwsClients, group: str, refresh_id: str) -> RefreshStatus:
    items = call(
        clients.client("autoscaling"),
        "DescribeInstanceRefreshes",
        AutoScalingGroupName=group,
        InstanceRefreshIds=[refresh_id],
    )["InstanceRefreshes"]
    if not items:
        raise AwsError(f"instance refresh {refresh_id} of {group} not found")
    return RefreshStatus.from_api(items[0])


@dataclass
class Poller:
    """Sleeps between polls: never more than one call a second; while nothing changes it backs
    off (x1.5 a poll) up to POLL_MAX, but never past POLL_LAG of the time followed so far, so
    noticing the end of a refresh costs at most ~5% of its duration (and a second)."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    interval: float = POLL_MIN
    _started: float | None = None
    _last_call: float | None = None
    _last_seen: Any = None

    def wait(self) -> None:
        if self._last_call is None:
            self._started = self._last_call = self.clock()
            return
        due = self._last_call + self.interval
        now = self.clock()
        if due > now:
            self.sleep(due - now)
        self._last_call = self.clock()

    def saw(self, observation: Any) -> None:
        if observation != self._last_seen:
            self._last_seen = observation
            self.interval = POLL_MIN
            return
        followed = self.clock() - (self._started if self._started is not None else self.clock())
        ceiling = max(POLL_MIN, min(POLL_MAX, POLL_LAG * followed))
        self.interval = min(ceiling, self.interval * POLL_FACTOR)


InterruptChoice = Callable[[RefreshStatus], str]  # -> "cancel" | "detach"


@dataclass(frozen=True)
class RolloutResult:
    """What a rollout (or rollback, or status follow) ended with."""

    group: str
    region: str
    ami_id: str | None
    refresh_id: str | None
    status: str
    reason: str
    launch_template_id: str | None = None
    launch_template_version: int | None = None
    previous_version: int | None = None
    waited: bool = True
    percentage: int = 0
    instances_replaced: int = 0
    restored: str | None = None
    verify_live: str | None = None  # passed | failed (rolled back) | skipped: ... | None
    verify_live_detail: str | None = None  # which instance, what ran, what failed
    api_calls: int = 0
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status in ("Successful", "UpToDate", "Pending", "InProgress", "DryRun")


def estimated_total(state: RefreshStatus) -> int:
    """Instances the refresh replaces in all: the API gives only those left and a percentage."""
    if 0 < state.percentage < 100:
        return round(state.instances_to_update * 100 / (100 - state.percentage))
    return state.instances_to_update


def wait_refresh(
    clients: AwsClients,
    group: str,
    refresh_id: str,
    progress: Progress,
    *,
    on_interrupt: InterruptChoice | None = None,
    poller: Poller | None = None,
    expected_total: int = 0,
) -> RefreshStatus:
    """Follow a refresh to its end with a progress bar; Ctrl-C asks `on_interrupt` what to do.

    "cancel" cancels the refresh and follows it to Cancelled (a second Ctrl-C detaches);
    "detach" leaves it running and raises. Returns the final status.
    """
    poller = poller or Poller()
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
                line = f"{state.status} {state.percentage}% {replaced}/{total} replaced"
                if state.status.startswith("Rollback") and state.rollback_percentage is not None:
                    line += f" (rollback {state.rollback_percentage}%)"
                if state.reason:
                    line += f" - {state.reason}"
                bar.update(completed=state.percentage, status=line)
                if not state.active:
                    if cancelling:
                        raise FactoryError(
                            f"interrupted: cancelled instance refresh {refresh_id} of {group} at "
                            f"{state.percentage}% ({state.status}); instances already replaced "
                            f"stay replaced; now: {describe_restored(clients, group)}; "
                            f"`factory rollout rollback {group}` goes back",
                            ExitCode.INTERRUPTED,
                        )
                    return replace(state, replaced=replaced)
            except KeyboardInterrupt:
                if cancelling:
                    raise _detached(group, refresh_id, "detached while cancelling") from None
                choice = (
                    on_interrupt(latest_or(clients, group, refresh_id))
                    if on_interrupt
                    else "cancel"
                )
                if choice != "cancel":
                    raise _detached(group, refresh_id, "detached") from None
                progress.warn(f"cancelling instance refresh {refresh_id} of {group}")
                cancel_refresh(clients, group)
                cancelling = True


def latest_or(clients: AwsClients, group: str, refresh_id: str) -> RefreshStatus:
    try:
        return get_refresh(clients, group, refresh_id)
    except FactoryError:
        return RefreshStatus(refresh_id, group, "Unknown", "", 0, 0, None, None, None)


def _detached(group: str, refresh_id: str, what: str) -> FactoryError:
    return FactoryError(
        f"{what} from instance refresh {refresh_id}: it keeps running; follow it with "
        f"`factory rollout status {group}` or stop it with `factory rollout rollback {group}`",
        ExitCode.INTERRUPTED,
    )


def cancel_refresh(clients: AwsClients, group: str) -> str | None:
    try:
        with aws_errors(f"autoscaling:CancelInstanceRefresh {group}"):
            response = clients.client("autoscaling").cancel_instance_refresh(
                AutoScalingGroupName=group
            )
    except AwsError as exc:
        if "ActiveInstanceRefreshNotFound" in exc.message:
            return None
        raise
    return str(response["InstanceRefreshId"])


# =============================================================================================
# apply


@dataclass(frozen=True)
class LiveVerdict:
    """What running the image's suite on a new instance said."""

    passed: bool
    detail: str  # one line: counts, failing tests or the error, where the results are


VerifyLive = Callable[[AwsClients, str, str], LiveVerdict]  # (clients, instance, ami)


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
    """Create the launch template version, start the refresh, and (by default) follow it."""
    started = time.monotonic()
    calls_before = clients.counter.total
    if plan.up_to_date:
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
    asg = clients.client("autoscaling")
    ec2 = clients.client("ec2")
    if plan.pin_current:
        call(
            asg,
            "UpdateAutoScalingGroup",
            AutoScalingGroupName=plan.group,
            LaunchTemplate={
                "LaunchTemplateId": plan.template_id,
                "Version": str(plan.current_number),
            },
        )
        progress.info(f"{plan.group}: pinned to launch template version {plan.current_number}")
    if plan.new_version:
        created = call(
            ec2,
            "CreateLaunchTemplateVersion",
            LaunchTemplateId=plan.template_id,
            SourceVersion=str(plan.current_number),
            VersionDescription=(
                f"factory rollout {plan.ami_id} ({plan.source}) from version {plan.current_number}"
            ),
            LaunchTemplateData={"ImageId": plan.ami_id},
        )["LaunchTemplateVersion"]
        target = int(created["VersionNumber"])
        progress.info(
            f"{plan.group}: launch template {plan.template_id} version {target} "
            f"({plan.ami_id}, from version {plan.current_number})"
        )
    else:
        assert plan.target_version is not None
        target = plan.target_version
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
    final = wait_refresh(
        clients,
        plan.group,
        refresh_id,
        progress,
        on_interrupt=on_interrupt,
        poller=poller,
        expected_total=plan.instances_to_replace,
    )
    result = finish(clients, base, final)
    if result.status == "Successful" and verify_live is not None:
        result = _verify_live(
            clients,
            result,
            verify_live,
            progress,
            on_interrupt=on_interrupt,
            poller=poller,
            settings=plan.settings,
        )
    result = replace(
        result,
        api_calls=clients.counter.total - calls_before,
        seconds=round(time.monotonic() - started, 1),
    )
    raise_if_failed(result)
    return result


def start_refresh(
    clients: AwsClients, group: str, template_id: str, version: int, settings: RefreshSettings
) -> str:
    asg = clients.client("autoscaling")
    try:
        with aws_errors(f"autoscaling:StartInstanceRefresh {group}"):
            response = asg.start_instance_refresh(
                AutoScalingGroupName=group,
                Strategy="Rolling",
                DesiredConfiguration={
                    "LaunchTemplate": {"LaunchTemplateId": template_id, "Version": str(version)}
                },
                Preferences=settings.preferences(),
            )
    except AwsError as exc:
        if "InstanceRefreshInProgress" in exc.message:
            raise RefusedError(
                f"{group} already has an instance refresh in progress; follow it with "
                f"`factory rollout status {group}` or stop it with "
                f"`factory rollout rollback {group}`"
            ) from None
        raise
    return str(response["InstanceRefreshId"])


def finish(clients: AwsClients, base: RolloutResult, final: RefreshStatus) -> RolloutResult:
    """The result of a finished refresh, with what the group runs now when it did not succeed."""
    replaced = max(0, final.replaced)
    result = replace(
        base,
        status=final.status,
        reason=final.reason or final.rollback_reason or "",
        percentage=final.percentage,
        instances_replaced=replaced,
    )
    if final.status == "Successful":
        group = describe_group(clients, base.group)
        if base.launch_template_version is not None and group.version != str(
            base.launch_template_version
        ):
            # AWS points the group at the desired configuration on success; make sure of it
            call(
                clients.client("autoscaling"),
                "UpdateAutoScalingGroup",
                AutoScalingGroupName=base.group,
                LaunchTemplate={
                    "LaunchTemplateId": str(base.launch_template_id),
                    "Version": str(base.launch_template_version),
                },
            )
        return result
    return replace(result, restored=describe_restored(clients, base.group))


def describe_restored(clients: AwsClients, group_name: str) -> str:
    """One line: which version and images the group's instances run now."""
    group = describe_group(clients, group_name)
    ids = [i.instance_id for i in group.instances]
    images: dict[str, int] = {}
    if ids:
        for reservation in call(clients.client("ec2"), "DescribeInstances", InstanceIds=ids)[
            "Reservations"
        ]:
            for instance in reservation["Instances"]:
                ami = str(instance.get("ImageId"))
                images[ami] = images.get(ami, 0) + 1
    runs = ", ".join(f"{n} on {ami}" for ami, n in sorted(images.items())) or "no instances"
    return (
        f"{group_name} uses launch template {group.template_id} version {group.version}; "
        f"instances: {runs}"
    )


def raise_if_failed(result: RolloutResult) -> None:
    if result.status in ("Successful", "UpToDate") or not result.waited:
        return
    what = {
        "Failed": "failed",
        "Cancelled": "was cancelled",
        "RollbackSuccessful": "failed and was rolled back",
        "RollbackFailed": "failed and its rollback failed too",
    }.get(result.status, f"ended {result.status}")
    live = " (live verification failed)" if result.verify_live == "failed" else ""
    raise RolloutFailed(
        f"rollout of {result.ami_id} to {result.group} {what}{live}: "
        f"{result.reason or 'no reason given'}; now: {result.restored or 'unknown'}"
    )


def _verify_live(
    clients: AwsClients,
    result: RolloutResult,
    verify_live: VerifyLive,
    progress: Progress,
    *,
    on_interrupt: InterruptChoice | None,
    poller: Poller | None,
    settings: RefreshSettings,
) -> RolloutResult:
    group = describe_group(clients, result.group)
    wanted = str(result.launch_template_version)
    candidates = [
        i.instance_id
        for i in group.instances
        if i.template_version == wanted and i.lifecycle_state == "InService"
    ]
    if not candidates:
        return replace(result, verify_live="skipped: no instance on the new version")
    instance_id = candidates[0]
    progress.info(f"{result.group}: running the image's test suite against {instance_id}")
    try:
        verdict = verify_live(clients, instance_id, str(result.ami_id))
    except Interrupted as exc:
        raise FactoryError(
            f"interrupted during live verification of {instance_id}: the refresh of "
            f"{result.group} succeeded and stays; `factory rollout rollback {result.group}` "
            "goes back",
            exc.exit_code,
        ) from None
    except FactoryError as exc:
        # could not check (no SSH, instance gone): not a pass; an unattended run goes back
        verdict = LiveVerdict(False, f"could not verify {instance_id}: {exc.message}")
    if verdict.passed:
        return replace(result, verify_live="passed", verify_live_detail=verdict.detail)
    progress.warn(f"{result.group}: live verification failed on {instance_id}; rolling back")
    back = rollback(
        clients,
        result.group,
        progress,
        wait=True,
        on_interrupt=on_interrupt,
        poller=poller,
        check=False,
        settings=settings,
        force=True,  # the rollout went ahead on this group: going back must too
    )
    return replace(
        result,
        status="RollbackSuccessful" if back.status == "Successful" else "RollbackFailed",
        reason=f"live verification failed on {instance_id}: {verdict.detail}",
        verify_live="failed",
        verify_live_detail=verdict.detail,
        restored=describe_restored(clients, result.group),
    )


# =============================================================================================
# rollback and status


def previous_version(group: GroupFacts) -> int | None:
    """The version the current one was rolled out from (noted in its description), else N-1."""
    match = VERSION_NOTE.search(group.version_description)
    if match:
        return int(match.group(1))
    if group.version_number is not None and group.version_number > 1:
        return group.version_number - 1
    return None


def rollback(
    clients: AwsClients,
    group_name: str,
    progress: Progress,
    *,
    wait: bool = True,
    on_interrupt: InterruptChoice | None = None,
    poller: Poller | None = None,
    settings: RefreshSettings | None = None,
    force: bool = False,
    check: bool = True,
) -> RolloutResult:
    """RollbackInstanceRefresh when a refresh is in progress, else a refresh back to the
    version the current one came from."""
    calls_before = clients.counter.total
    latest = latest_refresh(clients, group_name)
    if latest is not None and latest.status in ("Pending", "InProgress", "Baking"):
        try:
            with aws_errors(f"autoscaling:RollbackInstanceRefresh {group_name}"):
                clients.client("autoscaling").rollback_instance_refresh(
                    AutoScalingGroupName=group_name
                )
        except AwsError as exc:
            if "IrreversibleInstanceRefresh" in exc.message:
                raise RefusedError(
                    f"the refresh of {group_name} cannot be rolled back by AWS ($Latest/$Default "
                    f"or an SSM image); cancel it with Ctrl-C on `factory rollout status "
                    f"{group_name}` and roll out the previous image"
                ) from None
            raise
        progress.info(f"{group_name}: rolling back instance refresh {latest.refresh_id}")
        base = RolloutResult(
            group_name,
            clients.region,
            None,
            latest.refresh_id,
            "RollbackInProgress",
            "",
            waited=wait,
        )
        if not wait:
            return base
        final = wait_refresh(
            clients,
            group_name,
            latest.refresh_id,
            progress,
            on_interrupt=on_interrupt,
            poller=poller,
        )
        result = replace(
            finish(clients, base, final), api_calls=clients.counter.total - calls_before
        )
        if final.status == "RollbackSuccessful":
            return replace(result, status="Successful", reason="rolled back")
        if check:
            raise_if_failed(result)
        return result
    group = describe_group(clients, group_name)
    previous = previous_version(group)
    if previous is None or group.template_id is None:
        raise RefusedError(f"{group_name} has no earlier launch template version to go back to")
    version = launch_template_version(clients, group.template_id, str(previous))
    image_id = str(version.get("LaunchTemplateData", {}).get("ImageId", ""))
    ami = resolve_ssm_image(clients, image_id)
    image = describe_images(clients, [ami])[ami]
    plan = plan_rollout(
        group,
        image,
        settings or RefreshSettings(),
        region=clients.region,
        source="rollback",
        force=force,
        target_version=previous,
        allow_unverified=True,
    )
    progress.info(f"{group_name}: no refresh in progress; refreshing back to version {previous}")
    try:
        return apply_rollout(
            plan, clients, progress, wait=wait, on_interrupt=on_interrupt, poller=poller
        )
    except RolloutFailed as exc:
        if check:
            raise
        return RolloutResult(plan.group, plan.region, plan.ami_id, None, "Failed", exc.message)


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
    latest = latest_refresh(clients, group_name)
    if latest is None:
        group = describe_group(clients, group_name)
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
    final = latest
    if follow and latest.active:
        final = wait_refresh(
            clients,
            group_name,
            latest.refresh_id,
            progress,
            on_interrupt=on_interrupt,
            poller=poller,
        )
    group = describe_group(clients, group_name)
    ami = group.version_image
    result = RolloutResult(
        group_name,
        clients.region,
        ami,
        final.refresh_id,
        final.status,
        final.reason or final.rollback_reason or "",
        group.template_id,
        group.version_number,
        waited=follow and latest.active,
        percentage=final.percentage,
    )
    if not final.active and final.status != "Successful":
        result = replace(result, restored=describe_restored(clients, group_name))
    if follow and latest.active:
        raise_if_failed(result)
    return result
