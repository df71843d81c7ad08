"""Launch template behaviour rollouts depend on, patched into moto (5.2.5 lacks it):

- a version whose ImageId is `resolve:ssm:NAME[:VERSION]` launches the AMI the SSM parameter
  names (resolved at launch, as on AWS; stored as written);
- CreateLaunchTemplateVersion honours `SourceVersion` (unspecified settings are inherited);
- DescribeAutoScalingGroups/Instances report the launch template version each instance was
  launched from (moto reports the template's default version for every instance).
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from moto.autoscaling.models import FakeAutoScalingGroup, InstanceState
from moto.core.types import Base64EncodedString
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.launch_templates import LaunchTemplateVersion
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.ssm.models import ssm_backends

SSM_PREFIX = "resolve:ssm:"

_patched = False
_patch_lock = threading.Lock()


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


def version_number(template: Any, version: str) -> int:
    """The number a version ($Latest, $Default or a number) of a moto template stands for."""
    return int(template.get_version(version).number)


def patch_moto() -> None:
    """Install the patches above (idempotent, process-wide)."""
    global _patched  # noqa: PLW0603 - moto's classes are process-global
    with _patch_lock:
        if _patched:
            return
        _patched = True
    _patch_ssm_image_ids()
    _patch_source_version()
    _patch_instance_versions()


def _patch_ssm_image_ids() -> None:
    def _image_id(self: Any) -> str:
        raw = str(self.data.get("ImageId", ""))
        if raw.startswith(SSM_PREFIX):
            return resolve_image_id(raw, self.template.ec2_backend)
        return raw

    LaunchTemplateVersion.image_id = property(_image_id)  # type: ignore[assignment,method-assign]


def _patch_source_version() -> None:
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


def _patch_instance_versions() -> None:
    """Remember the version each group instance was launched from, and report it."""
    original_replace = FakeAutoScalingGroup.replace_autoscaling_group_instances

    def _replace(self: Any, count_needed: int, propagated_tags: dict[str, str]) -> None:
        before = {s.instance.id for s in self.instance_states}
        original_replace(self, count_needed, propagated_tags)
        template = self.ec2_launch_template
        if template is None:
            return
        number = version_number(template, getattr(self, "launch_template_version", "$Default"))
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
        group = self.auto_scaling_group
        template = ec2_backends[group.account_id][group.region].launch_templates.get(recorded[0])
        return {
            "LaunchTemplateId": recorded[0],
            "LaunchTemplateName": template.name
            if template is not None
            else lt["LaunchTemplateName"],
            "Version": str(recorded[1]),
        }

    InstanceState.launch_template = property(_instance_lt)  # type: ignore[assignment,method-assign]
