"""Local cloud extension: Auto Scaling instance refresh (moto 5.2.5 has none), as AWS documents it.

Actions: StartInstanceRefresh, DescribeInstanceRefreshes, CancelInstanceRefresh,
RollbackInstanceRefresh. Each refresh runs in a background thread of the local-cloud process,
acting on moto's Auto Scaling and EC2 backends directly, so replacements are real sandboxed
instances (the instance runtime) and their health is the runtime's health.

Semantics kept from AWS's documentation:

- batches: healthy capacity (old instances in service + replacements that passed their health
  check and their warmup) never drops below MinHealthyPercentage of the desired capacity
  (rounded up), and the group never holds more than MaxHealthyPercentage (default 100, rounded
  down). A batch is `max_total - min_healthy` instances (at least one: 100/100 replaces one at a
  time, 0 replaces all at once); while there is room above the desired capacity the batch's
  replacements are launched before the old instances go (launch before terminate);
- InstanceWarmup: after a replacement is healthy the refresh waits this long before counting it
  (default: the group's DefaultInstanceWarmup, else its HealthCheckGracePeriod);
- CheckpointPercentages / CheckpointDelay (default 3600 s): batches stop at each checkpoint and
  the refresh waits there (StatusReason says so);
- SkipMatching: instances already on the desired launch template version are not replaced;
- ScaleInProtectedInstances Refresh | Ignore | Wait (default; fails after an hour) and
  StandbyInstances Terminate | Ignore | Wait (default; fails after an hour);
- a replacement that is impaired, or not healthy within the health timeout, fails the refresh;
  with AutoRollback the previous configuration is restored by replacing the new instances again
  (RollbackInProgress -> RollbackSuccessful | RollbackFailed);
- AlarmSpecification: an alarm in ALARM state fails the refresh (and rolls back with AutoRollback);
- the group takes the DesiredConfiguration when the refresh succeeds; BakeTime -> Baking;
- AutoRollback and RollbackInstanceRefresh need a DesiredConfiguration, and refuse a group or
  launch template version of $Latest/$Default or an image from `resolve:ssm:`.

Also patched into moto here, because rollouts depend on them:

- a launch template version whose ImageId is `resolve:ssm:NAME[:VERSION]` launches the AMI the
  SSM parameter names (resolved at launch, as on AWS);
- CreateLaunchTemplateVersion honours `SourceVersion` (unspecified settings are inherited);
- DescribeAutoScalingGroups/Instances report the launch template version each instance was
  launched from (moto reports the template's default version for every instance).
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moto.autoscaling.models import FakeAutoScalingGroup, InstanceState, autoscaling_backends
from moto.cloudwatch.models import cloudwatch_backends
from moto.core.types import Base64EncodedString
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.launch_templates import LaunchTemplateVersion
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.ssm.models import ssm_backends

from factory.localcloud.app import (
    ActionRequest,
    ActionResponse,
    ExtensionError,
    query_members,
    query_response,
    xml_escape,
)

log = logging.getLogger("factory.localcloud.refresh")

AUTOSCALING_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"

PENDING = "Pending"
IN_PROGRESS = "InProgress"
SUCCESSFUL = "Successful"
FAILED = "Failed"
CANCELLING = "Cancelling"
CANCELLED = "Cancelled"
ROLLBACK_IN_PROGRESS = "RollbackInProgress"
ROLLBACK_SUCCESSFUL = "RollbackSuccessful"
ROLLBACK_FAILED = "RollbackFailed"
BAKING = "Baking"
ACTIVE = frozenset({PENDING, IN_PROGRESS, CANCELLING, ROLLBACK_IN_PROGRESS, BAKING})
TERMINAL = frozenset({SUCCESSFUL, FAILED, CANCELLED, ROLLBACK_SUCCESSFUL, ROLLBACK_FAILED})

DEFAULT_MIN_HEALTHY = 90
DEFAULT_MAX_HEALTHY = 100
DEFAULT_CHECKPOINT_DELAY = 3600
SSM_PREFIX = "resolve:ssm:"

# Module settings (tests shorten them): the loop's tick, how long a replacement may stay
# unhealthy, and how long Wait waits for protected or standby instances (AWS: one hour).
TICK = 0.2
HEALTH_TIMEOUT = 300.0
WAIT_TIMEOUT = 3600.0

HealthFn = Callable[[str], str]  # instance id -> "pending" | "ok" | "impaired"


# =============================================================================================
# pure batch logic


def min_healthy_count(capacity: int, percent: int) -> int:
    """Instances that must stay healthy: a percentage of desired capacity, rounded up."""
    return min(capacity, math.ceil(capacity * percent / 100))


def max_total_count(capacity: int, percent: int) -> int:
    """Instances the group may hold during the refresh: rounded down, never below capacity."""
    return max(capacity, math.floor(capacity * percent / 100))


def batch_size(capacity: int, min_percent: int, max_percent: int) -> int:
    """How many instances one batch replaces (100/100 -> one at a time, 0 -> all at once)."""
    if capacity <= 0:
        return 1
    width = max_total_count(capacity, max_percent) - min_healthy_count(capacity, min_percent)
    return max(1, width)


def checkpoint_cap(total: int, percentages: Sequence[int], done: int) -> int:
    """Replacements allowed before the next checkpoint stops the refresh (total if none)."""
    for percent in sorted(percentages):
        target = math.ceil(total * percent / 100)
        if target > done:
            return target
    return total


def reached_checkpoint(total: int, percentages: Sequence[int], done: int) -> int | None:
    """The checkpoint percentage `done` replacements land exactly on, if any (not 100%)."""
    for percent in sorted(percentages):
        if percent < 100 and done < total and math.ceil(total * percent / 100) == done:
            return percent
    return None


def percentage_complete(done: int, total: int) -> int:
    return 100 if total <= 0 else min(100, math.floor(100 * done / total))


@dataclass(frozen=True)
class BatchStep:
    """What to do when a batch starts: terminate these old instances now, launch `launch` new
    ones, and terminate `later` more old instances once the replacements are ready."""

    terminate_now: int
    launch: int
    terminate_later: int


def plan_batch(
    *,
    remaining: int,
    capacity: int,
    current_total: int,
    healthy: int,
    min_percent: int,
    max_percent: int,
    cap: int,
    unhealthy: int = 0,
) -> BatchStep:
    """The next batch, keeping healthy >= min and the group's size <= max (pure).

    `remaining` old instances still to replace, `cap` replacements allowed before the next
    checkpoint, `current_total` instances in the group now, `healthy` of them healthy;
    `unhealthy` of the remaining ones are not healthy (listed first): replacing them costs no
    healthy capacity, so they go first and do not wait for slack.
    """
    size = min(remaining, cap, max(unhealthy, batch_size(capacity, min_percent, max_percent)))
    if size <= 0:
        return BatchStep(0, 0, 0)
    room = max(0, max_total_count(capacity, max_percent) - current_total)
    floor_ = min_healthy_count(capacity, min_percent)
    may_drop = max(0, healthy - floor_)
    first = min(size, unhealthy)  # unhealthy ones: terminated at once, healthy count unchanged
    early = min(size - first, room)  # launched on top: their old ones go once they are ready
    now = first + min(size - first - early, may_drop)
    if now + early == 0:
        now = 1  # no room and no slack (min 100, max 100): one at a time, as AWS does
    launch = now + early
    return BatchStep(terminate_now=now, launch=launch, terminate_later=early)


# =============================================================================================
# the refresh record


@dataclass(frozen=True)
class LaunchSpec:
    """A launch template and version (a number, $Latest or $Default)."""

    template_id: str
    template_name: str
    version: str

    @property
    def pinned(self) -> bool:
        return self.version.isdigit()


@dataclass
class Preferences:
    min_healthy: int = DEFAULT_MIN_HEALTHY
    max_healthy: int | None = None
    instance_warmup: int | None = None
    checkpoints: tuple[int, ...] = ()
    checkpoint_delay: int | None = None
    skip_matching: bool = False
    auto_rollback: bool = False
    scale_in_protected: str = "Wait"
    standby: str = "Wait"
    alarms: tuple[str, ...] = ()
    bake_time: int = 0

    @property
    def max_percent(self) -> int:
        return self.max_healthy if self.max_healthy is not None else DEFAULT_MAX_HEALTHY


@dataclass
class Refresh:
    """One instance refresh and its live state (guarded by `lock`)."""

    refresh_id: str
    group_name: str
    account_id: str
    region: str
    preferences: Preferences
    desired: LaunchSpec | None
    previous: LaunchSpec | None
    strategy: str = "Rolling"
    status: str = PENDING
    status_reason: str = ""
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    end_time: datetime | None = None
    total: int = 0
    done: int = 0
    rollback_reason: str | None = None
    rollback_start: datetime | None = None
    rollback_total: int = 0
    rollback_done: int = 0
    cancel_requested: bool = False
    rollback_requested: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def reversible(self) -> bool:
        return (
            self.desired is not None
            and self.desired.pinned
            and self.previous is not None
            and self.previous.pinned
        )


# =============================================================================================
# moto access


def _backends(account_id: str, region: str) -> tuple[Any, Any]:

    return autoscaling_backends[account_id][region], ec2_backends[account_id][region]


def _group(account_id: str, region: str, name: str) -> Any:
    backend, _ = _backends(account_id, region)
    group = backend.autoscaling_groups.get(name)
    if group is None:
        raise ExtensionError("ValidationError", f"AutoScalingGroup name not found - {name}")
    return group


def _version_number(template: Any, version: str) -> int:
    return int(template.get_version(version).number)


def _instance_spec(state: Any) -> tuple[str, int] | None:
    """(template id, version number) an instance was launched from, when known."""
    return getattr(state.instance, "_factory_launch_spec", None)


def _group_spec(group: Any) -> LaunchSpec | None:
    template = group.ec2_launch_template
    if template is None:
        return None
    version = getattr(group, "provided_launch_template_version", None) or "$Default"
    return LaunchSpec(template.id, template.name, str(version))


def _matches(state: Any, spec: LaunchSpec, ec2: Any) -> bool:
    """Whether an instance already runs this launch template version (SkipMatching)."""
    template = ec2.launch_templates.get(spec.template_id)
    if template is None:
        return False
    number = _version_number(template, spec.version)
    recorded = _instance_spec(state)
    if recorded is not None:
        return recorded == (spec.template_id, number)
    image = resolve_image_id(template.get_version(number).data.get("ImageId", ""), ec2)
    return bool(state.instance.image_id == image)


_locks_guard = threading.Lock()


def _group_lock(group: Any) -> threading.RLock:
    """One lock per group: launches swap the group's launch template for a moment."""
    with _locks_guard:
        lock = getattr(group, "_factory_refresh_lock", None)
        if lock is None:
            lock = threading.RLock()
            group._factory_refresh_lock = lock
        return lock


def _launch(group: Any, spec: LaunchSpec, count: int) -> list[str]:
    """Launch `count` instances into the group from `spec` (moto's own group launch path)."""
    if count <= 0:
        return []
    _, ec2 = _backends(group.account_id, group.region)
    with _group_lock(group):
        saved = (
            group.ec2_launch_template,
            getattr(group, "launch_template_version", None),
            getattr(group, "provided_launch_template_version", None),
        )
        group.ec2_launch_template = ec2.launch_templates[spec.template_id]
        group.launch_template_version = spec.version
        group.provided_launch_template_version = spec.version
        before = {s.instance.id for s in group.instance_states}
        try:
            group.replace_autoscaling_group_instances(count, group.get_propagated_tags())
        finally:
            (
                group.ec2_launch_template,
                group.launch_template_version,
                group.provided_launch_template_version,
            ) = saved
        return [s.instance.id for s in group.instance_states if s.instance.id not in before]


def _terminate(
    group: Any, instance_ids: Sequence[str], detached: threading.Event | None = None
) -> None:
    """Take instances out of the group and terminate them (no replacement launched);
    `detached` is set once they are out of the group (terminating takes a while longer)."""
    if not instance_ids:
        if detached is not None:
            detached.set()
        return
    _, ec2 = _backends(group.account_id, group.region)
    wanted = set(instance_ids)
    with _group_lock(group):
        group.instance_states = [s for s in group.instance_states if s.instance.id not in wanted]
    if detached is not None:
        detached.set()
    ec2.terminate_instances(list(wanted))


def _set_group_spec(group: Any, spec: LaunchSpec) -> None:
    _, ec2 = _backends(group.account_id, group.region)
    with _group_lock(group):
        group.ec2_launch_template = ec2.launch_templates[spec.template_id]
        group.launch_template_version = spec.version
        group.provided_launch_template_version = spec.version


def _alarm_in_alarm(account_id: str, region: str, names: Sequence[str]) -> str | None:
    if not names:
        return None

    alarms = cloudwatch_backends[account_id][region].alarms
    for name in names:
        alarm = alarms.get(name)
        if alarm is not None and alarm.state_value == "ALARM":
            return name
    return None


# =============================================================================================
# the engine: one thread per refresh


class Failure(Exception):
    pass


class Stopped(Exception):
    pass


@dataclass
class _Replacement:
    instance_id: str
    launched: float
    healthy_at: float | None = None


class RefreshEngine:
    """Drives one refresh to its end; `health` is the instance runtime's health."""

    def __init__(self, refresh: Refresh, health: HealthFn, sleep: Callable[[float], None]) -> None:
        self.refresh = refresh
        self.health = health
        self.sleep = sleep

    # --- helpers ------------------------------------------------------------------------------

    def _group(self) -> Any:
        r = self.refresh
        return _group(r.account_id, r.region, r.group_name)

    def _set(self, status: str | None = None, reason: str | None = None) -> None:
        with self.refresh.lock:
            if status is not None:
                self.refresh.status = status
            if reason is not None:
                self.refresh.status_reason = reason

    def _warmup(self, group: Any) -> float:
        prefs = self.refresh.preferences
        if prefs.instance_warmup is not None:
            return float(prefs.instance_warmup)
        default = getattr(group, "default_instance_warmup", None)
        if default not in (None, -1):
            return float(default)
        return float(group.health_check_grace_period or 0)

    def _check_interrupts(self, rolling_back: bool) -> None:
        r = self.refresh
        with r.lock:
            if not rolling_back and r.rollback_requested:
                raise Stopped("rollback")
            if not rolling_back and r.cancel_requested:
                raise Stopped("cancel")
        alarm = _alarm_in_alarm(r.account_id, r.region, r.preferences.alarms)
        if alarm is not None and not rolling_back:
            raise Failure(f"CloudWatch alarm {alarm} is in ALARM state.")

    def _eligible(
        self, group: Any, target: LaunchSpec, skip_matching: bool
    ) -> tuple[list[str], list[str], list[str]]:
        """(instances to replace now, instances waited for, standby instances to terminate)."""
        prefs = self.refresh.preferences
        _, ec2 = _backends(group.account_id, group.region)
        replace: list[str] = []
        waiting: list[str] = []
        standby_terminate: list[str] = []
        for state in list(group.instance_states):
            if skip_matching and _matches(state, target, ec2):
                continue
            if state.lifecycle_state == "Standby":
                if prefs.standby == "Ignore":
                    continue
                if prefs.standby == "Terminate":
                    standby_terminate.append(state.instance.id)
                else:
                    waiting.append(state.instance.id)
                continue
            if state.lifecycle_state != "InService":
                continue
            if state.protected_from_scale_in:
                if prefs.scale_in_protected == "Ignore":
                    continue
                if prefs.scale_in_protected == "Wait":
                    waiting.append(state.instance.id)
                    continue
            replace.append(state.instance.id)
        return replace, waiting, standby_terminate

    # --- main loop ------------------------------------------------------------------------------

    def run(self) -> None:
        r = self.refresh
        try:
            self._set(IN_PROGRESS, "")
            self._replace_all(r.desired, rolling_back=False)
            with r.lock:
                if r.desired is not None:
                    _set_group_spec(self._group(), r.desired)
            if r.preferences.bake_time > 0:
                self._bake()
            self._finish(SUCCESSFUL, "")
        except Stopped as stop:
            if str(stop) == "cancel":
                self._set(CANCELLING, "Cancelling the instance refresh.")
                self._trim()
                self._finish(CANCELLED, "The instance refresh was cancelled.")
            else:
                self._rollback(r.rollback_requested or "Rollback requested.")
        except Failure as failure:
            reason = str(failure)
            if r.preferences.auto_rollback and r.reversible:
                self._rollback(reason)
            else:
                self._finish(FAILED, reason)
        except Exception as exc:  # the emulation must end every refresh with a status
            log.exception("instance refresh %s crashed", r.refresh_id)
            self._finish(FAILED, f"Internal error in the local cloud: {exc}")

    def _finish(self, status: str, reason: str) -> None:
        with self.refresh.lock:
            self.refresh.status = status
            self.refresh.status_reason = reason
            self.refresh.end_time = datetime.now(UTC)
        log.info("instance refresh %s: %s %s", self.refresh.refresh_id, status, reason)

    def _trim(self) -> None:
        """After a cancel mid-batch: back to the desired capacity, dropping old instances
        (launched-before-terminate replacements stay; replaced instances are not rolled back)."""
        group = self._group()
        target = self.refresh.desired or _group_spec(group)
        _, ec2 = _backends(group.account_id, group.region)
        in_service = [s for s in group.instance_states if s.lifecycle_state == "InService"]
        surplus = len(in_service) - int(group.desired_capacity or 0)
        if surplus <= 0 or target is None:
            return
        old = [s.instance.id for s in in_service if not _matches(s, target, ec2)]
        _terminate(group, old[:surplus])

    def _bake(self) -> None:
        self._set(BAKING, "Waiting for bake time to end.")
        deadline = time.monotonic() + self.refresh.preferences.bake_time
        while time.monotonic() < deadline:
            self._check_interrupts(rolling_back=False)
            self.sleep(TICK)

    def _rollback(self, reason: str) -> None:
        r = self.refresh
        with r.lock:
            r.status = ROLLBACK_IN_PROGRESS
            r.status_reason = reason
            r.rollback_reason = reason
            r.rollback_start = datetime.now(UTC)
        try:
            assert r.previous is not None
            self._replace_all(r.previous, rolling_back=True)
            _set_group_spec(self._group(), r.previous)
            self._finish(ROLLBACK_SUCCESSFUL, f"Rollback completed. Reason for rollback: {reason}")
        except (Failure, Stopped) as failure:
            self._finish(
                ROLLBACK_FAILED, f"Rollback failed: {failure}. Reason for rollback: {reason}"
            )
        except Exception as exc:
            log.exception("rollback of %s crashed", r.refresh_id)
            self._finish(ROLLBACK_FAILED, f"Internal error in the local cloud: {exc}")

    def _replace_all(self, target: LaunchSpec | None, *, rolling_back: bool) -> None:  # noqa: PLR0915 - one loop, AWS's rules in order
        """Replace every eligible instance of the group with `target`, batch by batch."""
        r = self.refresh
        prefs = r.preferences
        group = self._group()
        if target is None:
            target = _group_spec(group)
            if target is None:
                raise Failure("The group has no launch template: nothing to refresh to.")
        skip = prefs.skip_matching or rolling_back  # a rollback replaces only new instances
        pending, waiting, standby = self._eligible(group, target, skip)
        _terminate(group, standby)
        total = len(pending) + len(waiting) + len(standby)
        with r.lock:
            if rolling_back:
                r.rollback_total, r.rollback_done = total, 0
            else:
                r.total, r.done = total, 0
        done = 0
        wait_started = time.monotonic()
        capacity = int(group.desired_capacity or 0)
        # standby instances terminated above are replaced only when capacity needs them
        missing = capacity - sum(
            1 for s in group.instance_states if s.lifecycle_state == "InService"
        )
        if missing > 0 and standby:
            self._run_batch(
                group, target, [], min(missing, len(standby)), [], rolling_back=rolling_back
            )
        done += len(standby)
        self._progress(done, total, rolling_back)
        while True:
            self._check_interrupts(rolling_back)
            group = self._group()
            capacity = int(group.desired_capacity or 0)
            live = {s.instance.id for s in group.instance_states}
            pending = [i for i in pending if i in live]
            if waiting:
                now_pending, now_waiting, _ = self._eligible(group, target, skip)
                freed = [i for i in waiting if i in now_pending]
                waiting = [i for i in waiting if i in now_waiting]
                pending += freed
                if not pending and waiting:
                    if time.monotonic() - wait_started > WAIT_TIMEOUT:
                        raise Failure(
                            f"Timed out waiting for instances {', '.join(waiting)} to leave "
                            "Standby or lose scale-in protection."
                        )
                    self._set(
                        reason="Waiting for instances that are in Standby or protected "
                        "from scale in."
                    )
                    self.sleep(TICK)
                    continue
            if not pending:
                break
            healthy = self._healthy_count(group)
            sick = [i for i in pending if self.health(i) != "ok"]
            pending = sick + [i for i in pending if i not in sick]
            cap = checkpoint_cap(total, () if rolling_back else prefs.checkpoints, done) - done
            step = plan_batch(
                remaining=len(pending),
                capacity=capacity,
                current_total=sum(
                    1 for s in group.instance_states if s.lifecycle_state == "InService"
                ),
                healthy=healthy,
                min_percent=prefs.min_healthy,
                max_percent=prefs.max_percent,
                cap=max(1, cap),
                unhealthy=len(sick),
            )
            now_ids = pending[: step.terminate_now]
            later_ids = pending[step.terminate_now : step.terminate_now + step.terminate_later]
            pending = pending[step.terminate_now + step.terminate_later :]
            self._run_batch(
                group, target, now_ids, step.launch, later_ids, rolling_back=rolling_back
            )
            done += step.terminate_now + step.terminate_later
            self._progress(done, total, rolling_back)
            percent = None if rolling_back else reached_checkpoint(total, prefs.checkpoints, done)
            if percent is not None and (pending or waiting):
                delay = (
                    prefs.checkpoint_delay
                    if prefs.checkpoint_delay is not None
                    else DEFAULT_CHECKPOINT_DELAY
                )
                self._set(reason=f"Waiting at checkpoint {percent}% for {delay} seconds.")
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    self._check_interrupts(rolling_back)
                    self.sleep(TICK)
                self._set(reason="")

    def _healthy_count(self, group: Any) -> int:
        return sum(
            1
            for s in group.instance_states
            if s.lifecycle_state == "InService" and self.health(s.instance.id) == "ok"
        )

    def _progress(self, done: int, total: int, rolling_back: bool) -> None:
        with self.refresh.lock:
            if rolling_back:
                self.refresh.rollback_done = done
            else:
                self.refresh.done = done

    def _run_batch(
        self,
        group: Any,
        target: LaunchSpec,
        terminate_now: list[str],
        launch: int,
        later_ids: list[str],
        *,
        rolling_back: bool,
    ) -> None:
        """Terminate, launch, wait until the replacements are healthy and warm, terminate the
        rest of the batch's old instances."""
        # terminate and launch at the same time, as AWS does ("terminate and launch")
        detached = threading.Event()
        stopper = threading.Thread(
            target=_terminate, args=(group, terminate_now, detached), daemon=True
        )
        stopper.start()
        detached.wait(10)
        try:
            new_ids = _launch(group, target, launch)
        finally:
            stopper.join()
        phase = "Rolling back" if rolling_back else "Replacing"
        self._set(
            reason=f"{phase}: launched {', '.join(new_ids) or 'nothing'}; "
            f"terminated {', '.join(terminate_now) or 'nothing yet'}."
        )
        warmup = self._warmup(group)
        replacements = [_Replacement(i, time.monotonic()) for i in new_ids]
        while True:
            self._check_interrupts(rolling_back)
            now = time.monotonic()
            ready = 0
            for rep in replacements:
                if rep.healthy_at is None:
                    state = self.health(rep.instance_id)
                    if state == "impaired":
                        raise Failure(
                            f"Instance {rep.instance_id} failed its health check (impaired) "
                            "after launch."
                        )
                    if state == "ok":
                        rep.healthy_at = now
                    elif now - rep.launched > HEALTH_TIMEOUT:
                        raise Failure(
                            f"Instance {rep.instance_id} did not become healthy within "
                            f"{HEALTH_TIMEOUT:.0f} seconds."
                        )
                if rep.healthy_at is not None and now - rep.healthy_at >= warmup:
                    ready += 1
            if ready == len(replacements):
                break
            if all(rep.healthy_at is not None for rep in replacements):
                self._set(reason=f"{phase}: waiting for instance warmup ({warmup:.0f} s).")
            self.sleep(TICK)
        _terminate(group, later_ids)


# =============================================================================================
# registry and handlers


@dataclass
class RefreshRegistry:
    refreshes: dict[tuple[str, str, str], list[Refresh]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    health: HealthFn = lambda _instance_id: "ok"
    sleep: Callable[[float], None] = time.sleep

    def of_group(self, account: str, region: str, group: str) -> list[Refresh]:
        with self.lock:
            return list(self.refreshes.get((account, region, group), []))

    def active(self, account: str, region: str, group: str) -> Refresh | None:
        for refresh in self.of_group(account, region, group):
            with refresh.lock:
                if refresh.status in ACTIVE:
                    return refresh
        return None

    def add(self, refresh: Refresh) -> None:
        with self.lock:
            key = (refresh.account_id, refresh.region, refresh.group_name)
            self.refreshes.setdefault(key, []).insert(0, refresh)

    def start(self, refresh: Refresh) -> None:
        engine = RefreshEngine(refresh, self.health, self.sleep)
        thread = threading.Thread(
            target=engine.run, name=f"refresh-{refresh.refresh_id[:8]}", daemon=True
        )
        thread.start()


REGISTRY = RefreshRegistry()


def _bool(value: Any) -> bool:
    return str(value).lower() == "true"


def _int(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ExtensionError("ValidationError", f"{key} must be an integer") from None


def parse_preferences(params: dict[str, Any]) -> Preferences:
    """Preferences.* query parameters, validated as AWS validates them."""
    p = "Preferences."
    prefs = Preferences(
        min_healthy=_int(params, p + "MinHealthyPercentage") or 0
        if (p + "MinHealthyPercentage") in params
        else DEFAULT_MIN_HEALTHY,
        max_healthy=_int(params, p + "MaxHealthyPercentage"),
        instance_warmup=_int(params, p + "InstanceWarmup"),
        checkpoints=tuple(int(v) for v in query_members(params, p + "CheckpointPercentages")),
        checkpoint_delay=_int(params, p + "CheckpointDelay"),
        skip_matching=_bool(params.get(p + "SkipMatching", "false")),
        auto_rollback=_bool(params.get(p + "AutoRollback", "false")),
        scale_in_protected=str(params.get(p + "ScaleInProtectedInstances") or "Wait"),
        standby=str(params.get(p + "StandbyInstances") or "Wait"),
        alarms=tuple(query_members(params, p + "AlarmSpecification.Alarms")),
        bake_time=_int(params, p + "BakeTime") or 0,
    )
    if not 0 <= prefs.min_healthy <= 100:
        raise ExtensionError("ValidationError", "MinHealthyPercentage must be between 0 and 100")
    if prefs.max_healthy is not None:
        if not 100 <= prefs.max_healthy <= 200:
            raise ExtensionError(
                "ValidationError", "MaxHealthyPercentage must be between 100 and 200"
            )
        if prefs.max_healthy - prefs.min_healthy > 100:
            raise ExtensionError(
                "ValidationError",
                "The difference between MaxHealthyPercentage and MinHealthyPercentage "
                "can't be greater than 100",
            )
    if any(not 1 <= c <= 100 for c in prefs.checkpoints) or list(prefs.checkpoints) != sorted(
        prefs.checkpoints
    ):
        raise ExtensionError(
            "ValidationError", "CheckpointPercentages must be ascending values from 1 to 100"
        )
    if prefs.checkpoint_delay is not None and not prefs.checkpoints:
        raise ExtensionError("ValidationError", "CheckpointDelay requires CheckpointPercentages")
    if prefs.scale_in_protected not in ("Refresh", "Ignore", "Wait"):
        raise ExtensionError("ValidationError", "ScaleInProtectedInstances: Refresh|Ignore|Wait")
    if prefs.standby not in ("Terminate", "Ignore", "Wait"):
        raise ExtensionError("ValidationError", "StandbyInstances: Terminate|Ignore|Wait")
    return prefs


def _desired_spec(params: dict[str, Any], ec2: Any) -> LaunchSpec | None:
    p = "DesiredConfiguration.LaunchTemplate."
    template_id = params.get(p + "LaunchTemplateId")
    template_name = params.get(p + "LaunchTemplateName")
    if not template_id and not template_name:
        if any(k.startswith("DesiredConfiguration.") for k in params):
            raise ExtensionError(
                "ValidationError", "DesiredConfiguration needs a LaunchTemplate (id or name)"
            )
        return None
    template = None
    if template_id:
        template = ec2.launch_templates.get(template_id)
    else:
        template = next((t for t in ec2.launch_templates.values() if t.name == template_name), None)
    if template is None:
        raise ExtensionError(
            "ValidationError", f"Launch template {template_id or template_name} does not exist"
        )
    version = str(params.get(p + "Version") or "$Default")
    try:
        template.get_version(version)
    except (EC2ClientError, ValueError, IndexError):
        raise ExtensionError(
            "ValidationError", f"Launch template {template.id} has no version {version}"
        ) from None
    return LaunchSpec(template.id, template.name, version)


def _uses_ssm(spec: LaunchSpec | None, ec2: Any) -> bool:
    if spec is None:
        return False
    template = ec2.launch_templates.get(spec.template_id)
    if template is None:
        return False
    image = str(template.get_version(spec.version).data.get("ImageId", ""))
    return image.startswith(SSM_PREFIX)


def start_instance_refresh(request: ActionRequest) -> ActionResponse:
    params = request.params
    name = str(params.get("AutoScalingGroupName") or "")
    group = _group(request.account_id, request.region, name)
    _, ec2 = _backends(request.account_id, request.region)
    if REGISTRY.active(request.account_id, request.region, name) is not None:
        raise ExtensionError(
            "InstanceRefreshInProgress",
            f"An Instance Refresh is already in progress and blocks the execution of this "
            f"Instance Refresh for {name}.",
        )
    prefs = parse_preferences(params)
    desired = _desired_spec(params, ec2)
    previous = _group_spec(group)
    if prefs.auto_rollback:
        if desired is None:
            raise ExtensionError("ValidationError", "AutoRollback requires a DesiredConfiguration.")
        if not desired.pinned or previous is None or not previous.pinned:
            raise ExtensionError(
                "ValidationError",
                "AutoRollback is not supported when the Auto Scaling group or the desired "
                "configuration uses the launch template's $Latest or $Default version.",
            )
        if _uses_ssm(desired, ec2) or _uses_ssm(previous, ec2):
            raise ExtensionError(
                "ValidationError",
                "AutoRollback is not supported for a launch template whose ImageId is an "
                "AWS Systems Manager parameter.",
            )
    refresh = Refresh(
        refresh_id=str(uuid.uuid4()),
        group_name=name,
        account_id=request.account_id,
        region=request.region,
        preferences=prefs,
        desired=desired,
        previous=previous,
        strategy=str(params.get("Strategy") or "Rolling"),
    )
    REGISTRY.add(refresh)
    REGISTRY.start(refresh)
    return query_response(
        AUTOSCALING_NS,
        "StartInstanceRefresh",
        f"<InstanceRefreshId>{refresh.refresh_id}</InstanceRefreshId>",
    )


def describe_instance_refreshes(request: ActionRequest) -> ActionResponse:
    params = request.params
    name = str(params.get("AutoScalingGroupName") or "")
    _group(request.account_id, request.region, name)
    wanted = set(query_members(params, "InstanceRefreshIds"))
    refreshes = [
        r
        for r in REGISTRY.of_group(request.account_id, request.region, name)
        if not wanted or r.refresh_id in wanted
    ]
    limit = _int(params, "MaxRecords") or 50
    start = int(params.get("NextToken") or 0)
    page = refreshes[start : start + limit]
    members = "".join(f"<member>{refresh_xml(r)}</member>" for r in page)
    token = f"<NextToken>{start + limit}</NextToken>" if start + limit < len(refreshes) else ""
    return query_response(
        AUTOSCALING_NS,
        "DescribeInstanceRefreshes",
        f"<InstanceRefreshes>{members}</InstanceRefreshes>{token}",
    )


def cancel_instance_refresh(request: ActionRequest) -> ActionResponse:
    name = str(request.params.get("AutoScalingGroupName") or "")
    _group(request.account_id, request.region, name)
    refresh = REGISTRY.active(request.account_id, request.region, name)
    if refresh is None or refresh.status in (ROLLBACK_IN_PROGRESS, CANCELLING):
        raise ExtensionError(
            "ActiveInstanceRefreshNotFound",
            f"No in progress or pending Instance Refresh found for Auto Scaling group {name}",
        )
    with refresh.lock:
        refresh.cancel_requested = True
        refresh.status = CANCELLING
        refresh.status_reason = "Cancelling the instance refresh."
    return query_response(
        AUTOSCALING_NS,
        "CancelInstanceRefresh",
        f"<InstanceRefreshId>{refresh.refresh_id}</InstanceRefreshId>",
    )


def rollback_instance_refresh(request: ActionRequest) -> ActionResponse:
    name = str(request.params.get("AutoScalingGroupName") or "")
    _group(request.account_id, request.region, name)
    _, ec2 = _backends(request.account_id, request.region)
    refresh = REGISTRY.active(request.account_id, request.region, name)
    if refresh is None or refresh.status in (ROLLBACK_IN_PROGRESS, CANCELLING):
        raise ExtensionError(
            "ActiveInstanceRefreshNotFound",
            f"No in progress or pending Instance Refresh found for Auto Scaling group {name}",
        )
    if (
        not refresh.reversible
        or _uses_ssm(refresh.desired, ec2)
        or _uses_ssm(refresh.previous, ec2)
    ):
        raise ExtensionError(
            "IrreversibleInstanceRefresh",
            "The instance refresh cannot be rolled back: it has no desired configuration, or "
            "uses $Latest/$Default or an image from an SSM parameter.",
        )
    with refresh.lock:
        refresh.rollback_requested = "Rollback initiated by user."
    return query_response(
        AUTOSCALING_NS,
        "RollbackInstanceRefresh",
        f"<InstanceRefreshId>{refresh.refresh_id}</InstanceRefreshId>",
    )


# --- XML ---------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _spec_xml(spec: LaunchSpec) -> str:
    return (
        "<LaunchTemplate>"
        f"<LaunchTemplateId>{spec.template_id}</LaunchTemplateId>"
        f"<LaunchTemplateName>{xml_escape(spec.template_name)}</LaunchTemplateName>"
        f"<Version>{xml_escape(spec.version)}</Version>"
        "</LaunchTemplate>"
    )


def _prefs_xml(prefs: Preferences) -> str:
    parts = [f"<MinHealthyPercentage>{prefs.min_healthy}</MinHealthyPercentage>"]
    if prefs.max_healthy is not None:
        parts.append(f"<MaxHealthyPercentage>{prefs.max_healthy}</MaxHealthyPercentage>")
    if prefs.instance_warmup is not None:
        parts.append(f"<InstanceWarmup>{prefs.instance_warmup}</InstanceWarmup>")
    if prefs.checkpoints:
        members = "".join(f"<member>{c}</member>" for c in prefs.checkpoints)
        parts.append(f"<CheckpointPercentages>{members}</CheckpointPercentages>")
        delay = prefs.checkpoint_delay
        parts.append(
            f"<CheckpointDelay>{DEFAULT_CHECKPOINT_DELAY if delay is None else delay}"
            "</CheckpointDelay>"
        )
    parts.append(f"<SkipMatching>{str(prefs.skip_matching).lower()}</SkipMatching>")
    parts.append(f"<AutoRollback>{str(prefs.auto_rollback).lower()}</AutoRollback>")
    parts.append(
        f"<ScaleInProtectedInstances>{prefs.scale_in_protected}</ScaleInProtectedInstances>"
    )
    parts.append(f"<StandbyInstances>{prefs.standby}</StandbyInstances>")
    if prefs.alarms:
        members = "".join(f"<member>{xml_escape(a)}</member>" for a in prefs.alarms)
        parts.append(f"<AlarmSpecification><Alarms>{members}</Alarms></AlarmSpecification>")
    parts.append(f"<BakeTime>{prefs.bake_time}</BakeTime>")
    return "".join(parts)


def refresh_xml(refresh: Refresh) -> str:
    with refresh.lock:
        r = copy.copy(refresh)
    percent = percentage_complete(r.done, r.total)
    to_update = max(0, r.total - r.done)
    parts = [
        f"<InstanceRefreshId>{r.refresh_id}</InstanceRefreshId>",
        f"<AutoScalingGroupName>{xml_escape(r.group_name)}</AutoScalingGroupName>",
        f"<Status>{r.status}</Status>",
    ]
    if r.status_reason:
        parts.append(f"<StatusReason>{xml_escape(r.status_reason)}</StatusReason>")
    parts.append(f"<StartTime>{_iso(r.start_time)}</StartTime>")
    if r.end_time is not None:
        parts.append(f"<EndTime>{_iso(r.end_time)}</EndTime>")
    parts += [
        f"<PercentageComplete>{percent}</PercentageComplete>",
        f"<InstancesToUpdate>{to_update}</InstancesToUpdate>",
        "<ProgressDetails><LivePoolProgress>"
        f"<PercentageComplete>{percent}</PercentageComplete>"
        f"<InstancesToUpdate>{to_update}</InstancesToUpdate>"
        "</LivePoolProgress></ProgressDetails>",
        f"<Preferences>{_prefs_xml(r.preferences)}</Preferences>",
        f"<Strategy>{r.strategy}</Strategy>",
    ]
    if r.desired is not None:
        parts.append(f"<DesiredConfiguration>{_spec_xml(r.desired)}</DesiredConfiguration>")
    if r.rollback_reason is not None and r.rollback_start is not None:
        rb_percent = percentage_complete(r.rollback_done, r.rollback_total)
        rb_left = max(0, r.rollback_total - r.rollback_done)
        parts.append(
            "<RollbackDetails>"
            f"<RollbackReason>{xml_escape(r.rollback_reason)}</RollbackReason>"
            f"<RollbackStartTime>{_iso(r.rollback_start)}</RollbackStartTime>"
            f"<PercentageCompleteOnRollback>{rb_percent}</PercentageCompleteOnRollback>"
            f"<InstancesToUpdateOnRollback>{rb_left}</InstancesToUpdateOnRollback>"
            "<ProgressDetailsOnRollback><LivePoolProgress>"
            f"<PercentageComplete>{rb_percent}</PercentageComplete>"
            f"<InstancesToUpdate>{rb_left}</InstancesToUpdate>"
            "</LivePoolProgress></ProgressDetailsOnRollback>"
            "</RollbackDetails>"
        )
    return "".join(parts)


# =============================================================================================
# moto patches: resolve:ssm image ids, SourceVersion, per-instance launch template versions


def resolve_image_id(image_id: str, ec2: Any) -> str:
    """`resolve:ssm:NAME[:VERSION]` -> the AMI id the parameter holds (else unchanged)."""
    if not image_id.startswith(SSM_PREFIX):
        return image_id

    name = image_id[len(SSM_PREFIX) :]
    backend = ssm_backends[ec2.account_id][ec2.region_name]
    parameter = backend.get_parameter(name)
    if parameter is None:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"Parameter {name} not found: cannot resolve the launch template's image",
        )
    return str(parameter.value)


_patched = False
_patch_lock = threading.Lock()


def patch_moto() -> None:
    """Install the moto patches above (idempotent, process-wide)."""
    global _patched  # noqa: PLW0603 - moto's classes are process-global
    with _patch_lock:
        if _patched:
            return
        _patched = True

    def _image_id(self: Any) -> str:
        raw = str(self.data.get("ImageId", ""))
        if raw.startswith(SSM_PREFIX):
            return resolve_image_id(raw, self.template.ec2_backend)
        return raw

    LaunchTemplateVersion.image_id = property(_image_id)  # type: ignore[assignment,method-assign]

    original_create = LaunchTemplates.create_launch_template_version

    def _create_version(self: Any) -> Any:
        source = self._get_param("SourceVersion")
        if not source:
            return original_create(self)
        name = self._get_param("LaunchTemplateName")
        tmpl_id = self._get_param("LaunchTemplateId")
        template = (
            self.ec2_backend.get_launch_template(tmpl_id)
            if tmpl_id
            else self.ec2_backend.get_launch_template_by_name(name)
        )
        base = copy.deepcopy(template.get_version(source).data)
        base.update(self._get_param("LaunchTemplateData", {}))
        if isinstance(base.get("UserData"), str):
            # moto parses new user data into its Base64EncodedString only without SourceVersion;
            # launching from a version holding a plain str fails an assertion in moto
            base["UserData"] = Base64EncodedString(base["UserData"])
        original_get = self._get_param

        def _get_param(key: str, default: Any = None) -> Any:
            if key == "LaunchTemplateData":
                return base
            return original_get(key, default)

        self._get_param = _get_param
        try:
            return original_create(self)
        finally:
            del self._get_param

    LaunchTemplates.create_launch_template_version = _create_version  # type: ignore[method-assign]

    original_replace = FakeAutoScalingGroup.replace_autoscaling_group_instances

    def _replace(self: Any, count_needed: int, propagated_tags: dict[str, str]) -> None:
        before = {s.instance.id for s in self.instance_states}
        original_replace(self, count_needed, propagated_tags)
        template = self.ec2_launch_template
        if template is None:
            return
        number = _version_number(template, getattr(self, "launch_template_version", "$Default"))
        for state in self.instance_states:
            if state.instance.id not in before:
                state.instance._factory_launch_spec = (template.id, number)

    FakeAutoScalingGroup.replace_autoscaling_group_instances = _replace  # type: ignore[method-assign]

    original_lt = InstanceState.launch_template

    def _instance_lt(self: Any) -> dict[str, Any] | None:
        recorded = getattr(self.instance, "_factory_launch_spec", None)
        lt = original_lt.fget(self)  # type: ignore[attr-defined]
        if recorded is None or lt is None:
            return lt  # type: ignore[no-any-return]
        _, ec2 = _backends(self.auto_scaling_group.account_id, self.auto_scaling_group.region)
        template = ec2.launch_templates.get(recorded[0])
        return {
            "LaunchTemplateId": recorded[0],
            "LaunchTemplateName": template.name
            if template is not None
            else lt["LaunchTemplateName"],
            "Version": str(recorded[1]),
        }

    InstanceState.launch_template = property(_instance_lt)  # type: ignore[assignment,method-assign]


def install(cloud: Any) -> None:
    """Patch moto and register the instance refresh actions; health comes from the runtime."""
    patch_moto()

    def _health(instance_id: str) -> str:
        runtime = getattr(cloud, "runtime", None)
        if runtime is None:
            return "ok"  # --no-instances: an instance is healthy once launched
        return str(runtime.health(instance_id))

    REGISTRY.health = _health
    app = cloud.app
    app.register("autoscaling", "StartInstanceRefresh", start_instance_refresh)
    app.register("autoscaling", "DescribeInstanceRefreshes", describe_instance_refreshes)
    app.register("autoscaling", "CancelInstanceRefresh", cancel_instance_refresh)
    app.register("autoscaling", "RollbackInstanceRefresh", rollback_instance_refresh)
