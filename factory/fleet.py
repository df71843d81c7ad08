"""The fleet file (GitOps): which family/channel each Auto Scaling group should run, and drift.

`fleet.toml` declares, per group, the image family and channel it follows:

    [defaults]            # optional: refresh settings for every group
    min_healthy = 90
    warmup = 60

    [groups.web-prod]
    family = "web"
    channel = "prod"
    region = "eu-west-1"  # optional; default: the configured region
    min_healthy = 50      # optional per-group override (also max_healthy, warmup, checkpoints)

Drift: a group whose launch template version runs another AMI than its channel's, and each
instance that runs another AMI, a revoked one, or a retired one (deprecated or deregistered).
`plan_drift(facts)` is pure; `reconcile` rolls every drifted group out to its channel's AMI.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factory.aws import AwsClients, call
from factory.config import check_region
from factory.errors import ConfigError, ExitCode, FactoryError
from factory.output import Progress
from factory.rollout import (
    SSM_PREFIX,
    GroupFacts,
    ImageFacts,
    InterruptChoice,
    Poller,
    RefreshSettings,
    RolloutFailed,
    RolloutResult,
    VerifyLive,
    apply_rollout,
    cancel_refresh,
    channel_ami,
    describe_group,
    describe_images,
    plan_rollout,
)

PERMISSIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "ec2:DescribeInstances",
    "ec2:DescribeImages",
    "ec2:DescribeLaunchTemplateVersions",
    "ssm:GetParameter",
)

_SETTING_KEYS = {"min_healthy", "max_healthy", "warmup", "checkpoints", "checkpoint_delay"}
# what AWS's instance refresh accepts for each setting (as rollout's flags check them)
_RANGES = {
    "min_healthy": (0, 100),
    "max_healthy": (100, 200),
    "warmup": (0, None),
    "checkpoint_delay": (0, None),
}
_GROUP_KEYS = {"family", "channel", "region"} | _SETTING_KEYS


# =============================================================================================
# the fleet file


@dataclass(frozen=True)
class FleetGroup:
    """One group of the fleet file."""

    name: str
    family: str
    channel: str
    region: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # overrides of RefreshSettings

    def refresh_settings(self, base: RefreshSettings) -> RefreshSettings:
        values: dict[str, Any] = {}
        for key, value in self.settings.items():
            if key == "checkpoints":
                values[key] = tuple(int(v) for v in value)
            else:
                values[key] = int(value)
        return replace(base, **values)


@dataclass(frozen=True)
class Fleet:
    path: str
    groups: tuple[FleetGroup, ...]


def _settings(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _SETTING_KEYS & table.keys():
        value = table[key]
        if key == "checkpoints":
            if (
                not isinstance(value, list)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                or any(not 1 <= v <= 100 for v in value)
                or value != sorted(set(value))
            ):
                raise ConfigError(
                    f"{where}: checkpoints must be ascending percentages 1..100, like [20, 50, 100]"
                )
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be a whole number")
        else:
            low, high = _RANGES[key]
            if value < low or (high is not None and value > high):
                bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise ConfigError(f"{where}: {key} must be {bounds}")
        out[key] = value
    return out


def _region(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: region must be a string")
    return None if value is None else check_region(value, f"{where} region")


def parse_fleet(
    text: str, path: str = "fleet.toml", channels: Sequence[str] | None = None
) -> Fleet:
    """Parse and validate a fleet file (ConfigError naming the file and key on any mistake)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown_top = set(doc) - {"defaults", "groups"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown_top))}")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: [defaults] must be a table")
    unknown = set(defaults) - _SETTING_KEYS - {"region"}
    if unknown:
        raise ConfigError(f"{path}: [defaults] has unknown key(s) {', '.join(sorted(unknown))}")
    base = _settings(defaults, f"{path} [defaults]")
    groups_table = doc.get("groups", {})
    if not isinstance(groups_table, dict) or not groups_table:
        raise ConfigError(
            f'{path}: no groups; add one like [groups.web-prod] family = "web" channel = "prod"'
        )
    groups = []
    for name, table in sorted(groups_table.items()):
        where = f"{path} [groups.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(table) - _GROUP_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("family", "channel"):
            if not isinstance(table.get(key), str) or not table[key]:
                raise ConfigError(f"{where}: {key} is required (a string)")
        if channels is not None and table["channel"] not in channels:
            raise ConfigError(
                f"{where}: unknown channel {table['channel']!r}; use one of {', '.join(channels)}"
            )
        region = _region(table.get("region", defaults.get("region")), where)
        groups.append(
            FleetGroup(
                name=name,
                family=table["family"],
                channel=table["channel"],
                region=region,
                settings={**base, **_settings(table, where)},
            )
        )
    return Fleet(path, tuple(groups))


def load_fleet(path: Path, channels: Sequence[str] | None = None) -> Fleet:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"fleet file {path} not found; pass --fleet PATH") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"fleet file {path}: {reason}; pass --fleet a TOML file") from None
    return parse_fleet(text, str(path), channels)


# =============================================================================================
# drift


@dataclass(frozen=True)
class InstanceDrift:
    instance_id: str
    ami_id: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class GroupDrift:
    """One group against its channel."""

    group: str
    region: str
    family: str
    channel: str
    channel_ami: str | None
    template_ami: str | None
    reasons: tuple[str, ...]
    instances: tuple[InstanceDrift, ...]
    error: str | None = None

    @property
    def drifted(self) -> bool:
        return bool(self.reasons) or any(i.reasons for i in self.instances)


@dataclass(frozen=True)
class DriftReport:
    fleet: str
    groups: tuple[GroupDrift, ...]
    checked_at: str

    @property
    def drifted(self) -> tuple[GroupDrift, ...]:
        return tuple(g for g in self.groups if g.drifted)


@dataclass(frozen=True)
class GroupState:
    """What drift needs to know about one group (gathered from AWS, or built by tests)."""

    entry: FleetGroup
    region: str
    channel_ami: str | None
    group: GroupFacts | None
    template_ami: str | None  # resolved (resolve:ssm:... -> the AMI)
    instance_amis: Mapping[str, str]  # instance id -> AMI id
    error: str | None = None


def _image_problems(ami: str, images: Mapping[str, ImageFacts], now: datetime) -> list[str]:
    image = images.get(ami)
    if image is None:
        return []
    if not image.exists:
        return [f"{ami} is retired (deregistered)"]
    problems = []
    if image.revoked:
        problems.append(f"{ami} is revoked")
    if image.deprecated(now):
        problems.append(f"{ami} is retired (deprecated)")
    return problems


def plan_drift(
    states: Sequence[GroupState],
    images: Mapping[str, ImageFacts],
    *,
    fleet: str = "fleet.toml",
    now: datetime | None = None,
) -> DriftReport:
    """Compare each group and instance with its channel (pure)."""
    now = now or datetime.now(UTC)
    out = []
    for state in states:
        entry = state.entry
        if state.error is not None or state.group is None:
            out.append(
                GroupDrift(
                    entry.name,
                    state.region,
                    entry.family,
                    entry.channel,
                    state.channel_ami,
                    None,
                    (state.error or "group not found",),
                    (),
                    error=state.error,
                )
            )
            continue
        reasons: list[str] = []
        want = state.channel_ami
        if want is not None and state.template_ami != want:
            reasons.append(
                f"launch template runs {state.template_ami or 'no image'}, "
                f"channel {entry.family}/{entry.channel} has {want}"
            )
        if want is not None:
            channel_problems = _image_problems(want, images, now)
            reasons += [f"channel image {p}" for p in channel_problems]
        instances = []
        for facts in state.group.instances:
            ami = state.instance_amis.get(facts.instance_id)
            why: list[str] = []
            if ami is not None and want is not None and ami != want:
                why.append(f"runs {ami}, channel has {want}")
            if ami is not None:
                why += _image_problems(ami, images, now)
            instances.append(InstanceDrift(facts.instance_id, ami, tuple(why)))
        out.append(
            GroupDrift(
                entry.name,
                state.region,
                entry.family,
                entry.channel,
                want,
                state.template_ami,
                tuple(reasons),
                tuple(instances),
            )
        )
    return DriftReport(fleet, tuple(out), now.isoformat(timespec="seconds"))


def gather_state(clients: AwsClients, entry: FleetGroup) -> GroupState:
    """Read one group, its instances' AMIs and its channel from AWS."""
    region = clients.region
    try:
        want = channel_ami(clients, entry.family, entry.channel)
    except ConfigError as exc:
        return GroupState(entry, region, None, None, None, {}, error=exc.message)
    try:
        group = describe_group(clients, entry.name)
    except ConfigError as exc:
        return GroupState(entry, region, want, None, None, {}, error=exc.message)
    template_ami = group.version_image
    if template_ami and template_ami.startswith(SSM_PREFIX):
        name = template_ami[len(SSM_PREFIX) :]
        template_ami = str(
            call(clients.client("ssm"), "GetParameter", Name=name)["Parameter"]["Value"]
        )
    amis: dict[str, str] = {}
    ids = [i.instance_id for i in group.instances]
    if ids:
        for reservation in call(clients.client("ec2"), "DescribeInstances", InstanceIds=ids)[
            "Reservations"
        ]:
            for instance in reservation["Instances"]:
                amis[str(instance["InstanceId"])] = str(instance.get("ImageId"))
    return GroupState(entry, region, want, group, template_ami, amis)


ClientsFor = Callable[[str | None], AwsClients]


def drift(fleet: Fleet, clients_for: ClientsFor) -> DriftReport:
    """Gather every group's state and report drift."""
    states = [gather_state(clients_for(entry.region), entry) for entry in fleet.groups]
    by_region: dict[str, set[str]] = {}
    for state in states:
        wanted = by_region.setdefault(state.region, set())
        if state.channel_ami:
            wanted.add(state.channel_ami)
        if state.template_ami:
            wanted.add(state.template_ami)
        wanted.update(state.instance_amis.values())
    images: dict[str, ImageFacts] = {}
    for region, amis in by_region.items():
        entry_region = region
        images.update(describe_images(clients_for(entry_region), sorted(amis)))
    return plan_drift(states, images, fleet=fleet.path)


def render_drift(report: DriftReport) -> str:
    lines = []
    for group in report.groups:
        mark = "DRIFT" if group.drifted else "ok   "
        lines.append(
            f"{mark} {group.group} ({group.region}) {group.family}/{group.channel} "
            f"channel={group.channel_ami or '-'} template={group.template_ami or '-'}"
        )
        lines += [f"      {reason}" for reason in group.reasons]
        for instance in group.instances:
            if instance.reasons:
                lines.append(f"      {instance.instance_id}: {'; '.join(instance.reasons)}")
    drifted = len(report.drifted)
    lines.append(f"{drifted} of {len(report.groups)} group(s) drifted")
    return "\n".join(lines)


# =============================================================================================
# reconcile


@dataclass(frozen=True)
class ReconcileResult:
    fleet: str
    drift: DriftReport
    rollouts: tuple[RolloutResult, ...]
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def reconcile(
    fleet: Fleet,
    clients_for: ClientsFor,
    progress: Progress,
    base: RefreshSettings,
    *,
    parallel: int = 1,
    force: bool = False,
    wait: bool = True,
    dry_run: bool = False,
    on_interrupt: InterruptChoice | None = None,
    verify_live: VerifyLive | None = None,
) -> ReconcileResult:
    """Roll every drifted group out to its channel's AMI (N at a time); with `verify_live`,
    each group's new image is tested on one of its new instances (rolled back on failure)."""
    report = drift(fleet, clients_for)
    entries = {entry.name: entry for entry in fleet.groups}
    todo = [g for g in report.drifted if g.error is None and g.channel_ami]
    errors = [f"{g.group}: {g.error}" for g in report.drifted if g.error is not None]

    def _one(group_drift: GroupDrift) -> RolloutResult:
        entry = entries[group_drift.group]
        clients = clients_for(entry.region)
        assert group_drift.channel_ami is not None
        group = describe_group(clients, entry.name)
        image = describe_images(clients, [group_drift.channel_ami])[group_drift.channel_ami]
        plan = plan_rollout(
            group,
            image,
            entry.refresh_settings(base),
            region=clients.region,
            source=f"channel {entry.family}/{entry.channel}",
            force=force,
        )
        if dry_run:
            return RolloutResult(
                plan.group,
                plan.region,
                plan.ami_id,
                None,
                "DryRun",
                "; ".join(plan.actions),
                plan.template_id,
                None,
                plan.current_number,
                waited=False,
                warnings=plan.warnings,
            )
        return apply_rollout(
            plan,
            clients,
            progress,
            wait=wait,
            on_interrupt=on_interrupt,
            poller=Poller(),
            verify_live=verify_live,
        )

    results: list[RolloutResult] = []
    if parallel <= 1:
        for group_drift in todo:
            try:
                results.append(_one(group_drift))
            except FactoryError as exc:
                if exc.exit_code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
                    raise
                errors.append(f"{group_drift.group}: {exc.message}")
    else:
        pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="rollout")
        futures = {pool.submit(_one, g): g for g in todo}
        try:
            for future, group_drift in futures.items():
                try:
                    results.append(future.result())
                except FactoryError as exc:
                    errors.append(f"{group_drift.group}: {exc.message}")
        except KeyboardInterrupt:
            # Ctrl-C reaches the main thread only: cancel what the workers started
            for group_drift in todo:
                entry = entries[group_drift.group]
                cancel_refresh(clients_for(entry.region), entry.name)
            pool.shutdown(wait=False, cancel_futures=True)
            raise FactoryError(
                "interrupted: cancelled the fleet's running instance refreshes; rerun "
                "`factory rollout --fleet` to continue",
                ExitCode.INTERRUPTED,
            ) from None
        pool.shutdown(wait=True)
    return ReconcileResult(fleet.path, report, tuple(results), tuple(errors))


def raise_if_failed(result: ReconcileResult) -> None:
    if result.errors:
        raise RolloutFailed(
            f"{len(result.errors)} group(s) not reconciled: " + " | ".join(result.errors)
        )
