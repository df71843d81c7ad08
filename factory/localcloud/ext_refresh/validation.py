"""What StartInstanceRefresh and RollbackInstanceRefresh accept, validated as AWS validates
it: the preferences, the desired configuration, and when a refresh may be rolled back."""

from __future__ import annotations

from typing import Any

from moto.ec2.exceptions import EC2ClientError

from factory.localcloud.app import ExtensionError, query_members
from factory.localcloud.ext_refresh.launch_templates import SSM_PREFIX
from factory.localcloud.ext_refresh.record import (
    DEFAULT_MIN_HEALTHY,
    LaunchSpec,
    Preferences,
    Refresh,
)


def _bool(value: Any) -> bool:
    return str(value).lower() == "true"


def int_param(params: dict[str, Any], key: str) -> int | None:
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
        min_healthy=int_param(params, p + "MinHealthyPercentage") or 0
        if (p + "MinHealthyPercentage") in params
        else DEFAULT_MIN_HEALTHY,
        max_healthy=int_param(params, p + "MaxHealthyPercentage"),
        instance_warmup=int_param(params, p + "InstanceWarmup"),
        checkpoints=tuple(int(v) for v in query_members(params, p + "CheckpointPercentages")),
        checkpoint_delay=int_param(params, p + "CheckpointDelay"),
        skip_matching=_bool(params.get(p + "SkipMatching", "false")),
        auto_rollback=_bool(params.get(p + "AutoRollback", "false")),
        scale_in_protected=str(params.get(p + "ScaleInProtectedInstances") or "Wait"),
        standby=str(params.get(p + "StandbyInstances") or "Wait"),
        alarms=tuple(query_members(params, p + "AlarmSpecification.Alarms")),
        bake_time=int_param(params, p + "BakeTime") or 0,
    )
    _check_preferences(prefs)
    return prefs


def _check_preferences(prefs: Preferences) -> None:
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


def desired_spec(params: dict[str, Any], ec2: Any) -> LaunchSpec | None:
    """DesiredConfiguration.LaunchTemplate.*, which must name an existing template version."""
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


def check_auto_rollback(desired: LaunchSpec | None, previous: LaunchSpec | None, ec2: Any) -> None:
    """AutoRollback needs a DesiredConfiguration, numbered versions, and no image from SSM."""
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


def check_reversible(refresh: Refresh, ec2: Any) -> None:
    """RollbackInstanceRefresh has the same needs as AutoRollback, with its own error code."""
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
