"""Drift and reconcile: each group of a fleet file against its channel.

Drift is a group whose launch template version runs another AMI than its channel's, and each
instance that runs another AMI, a revoked one, or a retired one (deprecated or deregistered).
`gather_drift` reads, `plan_drift` compares (pure); `reconcile` rolls every drifted group out to
its channel's AMI: `plan_reconcile` (pure, from the same facts) -> `apply_reconcile`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from factory.aws import AwsClients, groups, instances
from factory.aws.model import Image
from factory.errors import ConfigError, ExitCode, FactoryError, RefusedError
from factory.output import Progress
from factory.rollout.apply import apply_rollout
from factory.rollout.facts import (
    GroupLaunch,
    RolloutFacts,
    channel_ami,
    find_images,
    gather_group,
    resolve_image,
)
from factory.rollout.fleet import Fleet, FleetGroup
from factory.rollout.live import VerifyLive
from factory.rollout.plan import RefreshSettings, RolloutPlan, plan_rollout, plan_steps
from factory.rollout.result import RolloutFailed, RolloutResult
from factory.rollout.wait import InterruptChoice, RefreshPoller

ClientsFor = Callable[[str | None], AwsClients]


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
    group: GroupLaunch | None
    template_ami: str | None  # resolved (resolve:ssm:... -> the AMI)
    instance_amis: Mapping[str, str]  # instance id -> AMI id
    error: str | None = None


@dataclass(frozen=True)
class FleetFacts:
    """Every group's state, and every AMI they name (None: deregistered)."""

    fleet: str
    states: tuple[GroupState, ...]
    images: Mapping[str, Image | None]


# ---- drift ------------------------------------------------------------------------------------


def gather_state(clients: AwsClients, entry: FleetGroup) -> GroupState:
    """Read one group, its instances' AMIs and its channel from AWS."""
    region = clients.region
    try:
        want = channel_ami(clients, entry.family, entry.channel)
    except ConfigError as exc:
        return GroupState(entry, region, None, None, None, {}, error=exc.message)
    try:
        group = gather_group(clients, entry.name)
    except ConfigError as exc:
        return GroupState(entry, region, want, None, None, {}, error=exc.message)
    template_ami = group.version_image
    if template_ami:
        template_ami = resolve_image(clients, template_ami)
    amis = {
        i.instance_id: i.image_id
        for i in instances.get_many(clients, [i.instance_id for i in group.instances])
    }
    return GroupState(entry, region, want, group, template_ami, amis)


def gather_drift(fleet: Fleet, clients_for: ClientsFor) -> FleetFacts:
    """Every group's state, then every AMI they name, one DescribeImages per region."""
    states = tuple(gather_state(clients_for(entry.region), entry) for entry in fleet.groups)
    by_region: dict[str, set[str]] = {}
    for state in states:
        wanted = by_region.setdefault(state.region, set())
        if state.channel_ami:
            wanted.add(state.channel_ami)
        if state.template_ami:
            wanted.add(state.template_ami)
        wanted.update(state.instance_amis.values())
    found: dict[str, Image | None] = {}
    for region, amis in by_region.items():
        found.update(find_images(clients_for(region), sorted(amis)))
    return FleetFacts(fleet.path, states, found)


def _image_problems(ami: str, images: Mapping[str, Image | None], now: datetime) -> list[str]:
    if ami not in images:
        return []
    image = images[ami]
    if image is None or not image.exists:
        return [f"{ami} is retired (deregistered)"]
    problems = []
    if image.revoked:
        problems.append(f"{ami} is revoked")
    if image.deprecated(now):
        problems.append(f"{ami} is retired (deprecated)")
    return problems


def _group_drift(
    state: GroupState, images: Mapping[str, Image | None], now: datetime
) -> GroupDrift:
    entry = state.entry
    if state.error is not None or state.group is None:
        return GroupDrift(
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
    reasons: list[str] = []
    want = state.channel_ami
    if want is not None and state.template_ami != want:
        reasons.append(
            f"launch template runs {state.template_ami or 'no image'}, "
            f"channel {entry.family}/{entry.channel} has {want}"
        )
    if want is not None:
        reasons += [f"channel image {p}" for p in _image_problems(want, images, now)]
    drifts = []
    for member in state.group.instances:
        ami = state.instance_amis.get(member.instance_id)
        why: list[str] = []
        if ami is not None and want is not None and ami != want:
            why.append(f"runs {ami}, channel has {want}")
        if ami is not None:
            why += _image_problems(ami, images, now)
        drifts.append(InstanceDrift(member.instance_id, ami, tuple(why)))
    return GroupDrift(
        entry.name,
        state.region,
        entry.family,
        entry.channel,
        want,
        state.template_ami,
        tuple(reasons),
        tuple(drifts),
    )


def plan_drift(
    states: Sequence[GroupState],
    images: Mapping[str, Image | None],
    *,
    fleet: str = "fleet.toml",
    now: datetime | None = None,
) -> DriftReport:
    """Compare each group and instance with its channel (pure). `images` holds every AMI the
    states name; None marks one that no longer exists."""
    now = now or datetime.now(UTC)
    return DriftReport(
        fleet,
        tuple(_group_drift(state, images, now) for state in states),
        now.isoformat(timespec="seconds"),
    )


def drift(fleet: Fleet, clients_for: ClientsFor) -> DriftReport:
    """Gather every group's state and report drift."""
    facts = gather_drift(fleet, clients_for)
    return plan_drift(facts.states, facts.images, fleet=facts.fleet)


# ---- reconcile --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupReconcile:
    """One drifted group: the rollout to its channel's AMI, or why it is refused."""

    group: str
    region: str | None  # as the fleet file names it (None: the configured region)
    plan: RolloutPlan | None
    refused: str | None = None


@dataclass(frozen=True)
class ReconcilePlan:
    fleet: str
    drift: DriftReport
    groups: tuple[GroupReconcile, ...]  # in the fleet file's order
    errors: tuple[str, ...]  # drifted groups that could not be read


@dataclass(frozen=True)
class ReconcileResult:
    fleet: str
    drift: DriftReport
    rollouts: tuple[RolloutResult, ...]
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def plan_reconcile(
    facts: FleetFacts,
    base: RefreshSettings,
    *,
    force: bool = False,
    now: datetime | None = None,
) -> ReconcilePlan:
    """The drift report and a rollout plan per drifted group (pure)."""
    report = plan_drift(facts.states, facts.images, fleet=facts.fleet, now=now)
    states = {state.entry.name: state for state in facts.states}
    todo = []
    for group_drift in report.drifted:
        state = states[group_drift.group]
        if group_drift.error is not None or not group_drift.channel_ami or state.group is None:
            continue
        entry = state.entry
        ami = group_drift.channel_ami
        rollout = RolloutFacts(
            state.group, ami, facts.images.get(ami), f"channel {entry.family}/{entry.channel}"
        )
        try:
            plan = plan_rollout(rollout, entry.refresh_settings(base), force=force)
        except (ConfigError, RefusedError) as exc:
            todo.append(GroupReconcile(entry.name, entry.region, None, exc.message))
            continue
        todo.append(GroupReconcile(entry.name, entry.region, plan))
    errors = tuple(f"{g.group}: {g.error}" for g in report.drifted if g.error is not None)
    return ReconcilePlan(facts.fleet, report, tuple(todo), errors)


def _dry_run(plan: RolloutPlan) -> RolloutResult:
    return RolloutResult(
        plan.group,
        plan.region,
        plan.ami_id,
        None,
        "DryRun",
        "; ".join(plan_steps(plan)),
        plan.template_id,
        None,
        plan.current_number,
        waited=False,
        warnings=plan.warnings,
    )


def apply_reconcile(
    plan: ReconcilePlan,
    clients_for: ClientsFor,
    progress: Progress,
    *,
    parallel: int = 1,
    wait: bool = True,
    dry_run: bool = False,
    on_interrupt: InterruptChoice | None = None,
    verify_live: VerifyLive | None = None,
) -> ReconcileResult:
    """Roll each planned group out (N at a time); a group's failure is reported, not fatal."""

    def _one(item: GroupReconcile) -> RolloutResult:
        if item.plan is None:
            raise RefusedError(str(item.refused))
        if dry_run:
            return _dry_run(item.plan)
        return apply_rollout(
            item.plan,
            clients_for(item.region),
            progress,
            wait=wait,
            on_interrupt=on_interrupt,
            poller=RefreshPoller(),
            verify_live=verify_live,
        )

    errors = list(plan.errors)
    if parallel <= 1:
        results = _in_turn(plan.groups, _one, errors)
    else:
        results = _in_parallel(plan.groups, _one, errors, parallel, clients_for)
    return ReconcileResult(plan.fleet, plan.drift, tuple(results), tuple(errors))


def _in_turn(
    todo: Sequence[GroupReconcile],
    one: Callable[[GroupReconcile], RolloutResult],
    errors: list[str],
) -> list[RolloutResult]:
    results = []
    for item in todo:
        try:
            results.append(one(item))
        except FactoryError as exc:
            if exc.exit_code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
                raise
            errors.append(f"{item.group}: {exc.message}")
    return results


def _in_parallel(
    todo: Sequence[GroupReconcile],
    one: Callable[[GroupReconcile], RolloutResult],
    errors: list[str],
    parallel: int,
    clients_for: ClientsFor,
) -> list[RolloutResult]:
    results = []
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="rollout")
    futures = {pool.submit(one, item): item for item in todo}
    try:
        for future, item in futures.items():
            try:
                results.append(future.result())
            except FactoryError as exc:
                errors.append(f"{item.group}: {exc.message}")
    except KeyboardInterrupt:
        # Ctrl-C reaches the main thread only: cancel what the workers started
        for item in todo:
            groups.cancel_refresh(clients_for(item.region), item.group)
        pool.shutdown(wait=False, cancel_futures=True)
        raise FactoryError(
            "interrupted: cancelled the fleet's running instance refreshes; rerun "
            "`factory rollout --fleet` to continue",
            ExitCode.INTERRUPTED,
        ) from None
    pool.shutdown(wait=True)
    return results


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
    plan = plan_reconcile(gather_drift(fleet, clients_for), base, force=force)
    return apply_reconcile(
        plan,
        clients_for,
        progress,
        parallel=parallel,
        wait=wait,
        dry_run=dry_run,
        on_interrupt=on_interrupt,
        verify_live=verify_live,
    )


def raise_if_failed(result: ReconcileResult) -> None:
    if result.errors:
        raise RolloutFailed(
            f"{len(result.errors)} group(s) not reconciled: " + " | ".join(result.errors)
        )
