"""The Auto Scaling group in moto as a refresh acts on it: find it, launch replacements into it
through moto's own group launch path, take old instances out and terminate them, read which
launch template version an instance runs, and whether a CloudWatch alarm fires.

The emulation reaches moto's backends directly (it runs inside the local cloud's process), so
replacements are real sandboxed instances when the instance runtime is on.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from moto.autoscaling.models import autoscaling_backends
from moto.cloudwatch.models import cloudwatch_backends
from moto.ec2.models import ec2_backends

from factory.localcloud.app import ExtensionError
from factory.localcloud.ext_refresh.launch_templates import resolve_image_id, version_number
from factory.localcloud.ext_refresh.record import LaunchSpec

_locks_guard = threading.Lock()


def backends(account_id: str, region: str) -> tuple[Any, Any]:
    """moto's Auto Scaling and EC2 backends of one account and region."""
    return autoscaling_backends[account_id][region], ec2_backends[account_id][region]


def find_group(account_id: str, region: str, name: str) -> Any:
    backend, _ = backends(account_id, region)
    group = backend.autoscaling_groups.get(name)
    if group is None:
        raise ExtensionError("ValidationError", f"AutoScalingGroup name not found - {name}")
    return group


def _instance_spec(state: Any) -> tuple[str, int] | None:
    """(template id, version number) an instance was launched from, when known."""
    return getattr(state.instance, "_factory_launch_spec", None)


def group_spec(group: Any) -> LaunchSpec | None:
    """The launch template version the group launches from now."""
    template = group.ec2_launch_template
    if template is None:
        return None
    version = getattr(group, "provided_launch_template_version", None) or "$Default"
    return LaunchSpec(template.id, template.name, str(version))


def matches(state: Any, spec: LaunchSpec, ec2: Any) -> bool:
    """Whether an instance already runs this launch template version (SkipMatching)."""
    template = ec2.launch_templates.get(spec.template_id)
    if template is None:
        return False
    number = version_number(template, spec.version)
    recorded = _instance_spec(state)
    if recorded is not None:
        return recorded == (spec.template_id, number)
    image = resolve_image_id(template.get_version(number).data.get("ImageId", ""), ec2)
    return bool(state.instance.image_id == image)


def in_service(group: Any) -> int:
    return sum(1 for s in group.instance_states if s.lifecycle_state == "InService")


def _group_lock(group: Any) -> threading.RLock:
    """One lock per group: launches swap the group's launch template for a moment."""
    with _locks_guard:
        lock = getattr(group, "_factory_refresh_lock", None)
        if lock is None:
            lock = threading.RLock()
            group._factory_refresh_lock = lock
        return lock


def launch(group: Any, spec: LaunchSpec, count: int) -> list[str]:
    """Launch `count` instances into the group from `spec` (moto's own group launch path)."""
    if count <= 0:
        return []
    _, ec2 = backends(group.account_id, group.region)
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


def terminate(
    group: Any, instance_ids: Sequence[str], detached: threading.Event | None = None
) -> None:
    """Take instances out of the group and terminate them (no replacement launched);
    `detached` is set once they are out of the group (terminating takes a while longer)."""
    if not instance_ids:
        if detached is not None:
            detached.set()
        return
    _, ec2 = backends(group.account_id, group.region)
    wanted = set(instance_ids)
    with _group_lock(group):
        group.instance_states = [s for s in group.instance_states if s.instance.id not in wanted]
    if detached is not None:
        detached.set()
    ec2.terminate_instances(list(wanted))


def set_group_spec(group: Any, spec: LaunchSpec) -> None:
    """The group launches from `spec` from now on (the refresh's end, or its rollback's)."""
    _, ec2 = backends(group.account_id, group.region)
    with _group_lock(group):
        group.ec2_launch_template = ec2.launch_templates[spec.template_id]
        group.launch_template_version = spec.version
        group.provided_launch_template_version = spec.version


def alarm_in_alarm(account_id: str, region: str, names: Sequence[str]) -> str | None:
    """The first of these CloudWatch alarms in ALARM state (AlarmSpecification), if any."""
    if not names:
        return None

    alarms = cloudwatch_backends[account_id][region].alarms
    for name in names:
        alarm = alarms.get(name)
        if alarm is not None and alarm.state_value == "ALARM":
            return name
    return None
