"""What a rollout reads: the group with the launch template version it runs, the image to roll
out (or a channel's), and what the group's instances run now.

Reads only. The group's launch template reference may say `$Latest` or `$Default`; a rollout
works with the numbered version that resolves to, so the two travel together (`GroupLaunch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from factory import tags as T
from factory.aws import AwsClients, groups, images, instances, parameters
from factory.aws.groups import Group, GroupInstance, TemplateVersion
from factory.aws.model import Image
from factory.channels import channel_state
from factory.errors import AwsError, ConfigError

SSM_PREFIX = "resolve:ssm:"


@dataclass(frozen=True)
class GroupLaunch:
    """A group and the numbered launch template version its reference resolves to now: what
    its next instance launches from (`template_version` is None without a launch template)."""

    group: Group
    template_version: TemplateVersion | None

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def template_id(self) -> str | None:
        return self.group.template.template_id if self.group.template else None

    @property
    def version(self) -> str | None:
        """The version as the group names it: "7", "$Latest", "$Default"."""
        return self.group.template.version if self.group.template else None

    @property
    def version_number(self) -> int | None:
        return self.template_version.number if self.template_version else None

    @property
    def version_image(self) -> str | None:
        """The version's ImageId (may be `resolve:ssm:NAME`)."""
        return self.template_version.image_id if self.template_version else None

    @property
    def version_description(self) -> str:
        return self.template_version.description if self.template_version else ""

    @property
    def instances(self) -> tuple[GroupInstance, ...]:
        return self.group.instances

    @property
    def stateful(self) -> bool:
        return self.group.tags.get(T.STATEFUL, "").strip().lower() == "true"


@dataclass(frozen=True)
class RolloutFacts:
    """Everything `plan_rollout` decides on: the group, and the image (None: not found here)."""

    group: GroupLaunch
    ami_id: str
    image: Image | None
    source: str  # "ami" | "channel FAMILY/CHANNEL" | "rollback"


def read_group(clients: AwsClients, name: str) -> Group:
    """The group (ConfigError naming the region when it does not exist)."""
    group = groups.get(clients, name)
    if group is None:
        raise ConfigError(f"Auto Scaling group {name!r} not found in {clients.region}")
    return group


def gather_group(clients: AwsClients, name: str) -> GroupLaunch:
    """The group and the launch template version its reference resolves to."""
    group = read_group(clients, name)
    if group.template is None:
        return GroupLaunch(group, None)
    template_id = str(group.template.template_id)
    version = groups.template_version(clients, template_id, group.template.version)
    if version is None:
        raise AwsError(f"launch template {template_id} has no version {group.template.version}")
    return GroupLaunch(group, version)


def resolve_image(clients: AwsClients, image_id: str) -> str:
    """`resolve:ssm:NAME` -> the AMI the parameter holds now (as EC2 does at launch)."""
    if not image_id.startswith(SSM_PREFIX):
        return image_id
    name = image_id[len(SSM_PREFIX) :]
    parameter = parameters.get(clients, name)
    if parameter is None:
        raise AwsError(
            f"ssm:GetParameter {name}: ParameterNotFound: the launch template's image "
            f"({image_id}) names a parameter that does not exist",
            code="ParameterNotFound",
        )
    return parameter.value


def channel_ami(clients: AwsClients, family: str, channel: str) -> str:
    """The AMI a channel (SSM parameter /factory/FAMILY/CHANNEL) names."""
    state = channel_state(clients, family, channel)
    if state.ami_id is None:
        raise ConfigError(
            f"channel {family}/{channel} is not set ({state.parameter}); publish an image to it "
            f"first (factory channel set {family} {channel} AMI)"
        )
    return state.ami_id


def find_images(clients: AwsClients, ami_ids: list[str]) -> Mapping[str, Image | None]:
    """Each AMI id -> its image, or None when this region does not know it (deregistered)."""
    found = images.get_many(clients, ami_ids)
    return {ami: found.get(ami) for ami in ami_ids if ami}


def gather_rollout(
    clients: AwsClients,
    group_name: str,
    *,
    ami_id: str | None = None,
    channel: tuple[str, str] | None = None,
) -> RolloutFacts:
    """The group and the image to roll out: `ami_id`, or what `channel` (family, channel)
    names now."""
    source = "ami"
    if channel is not None:
        family, name = channel
        ami_id = channel_ami(clients, family, name)
        source = f"channel {family}/{name}"
    if not ami_id:
        raise ConfigError("give exactly one of --ami AMI or --channel FAMILY/CHANNEL")
    group = gather_group(clients, group_name)
    return RolloutFacts(group, ami_id, find_images(clients, [ami_id])[ami_id], source)


def describe_restored(clients: AwsClients, group_name: str) -> str:
    """One line: which version and images the group's instances run now."""
    group = read_group(clients, group_name)
    counts: dict[str, int] = {}
    for instance in instances.get_many(clients, [i.instance_id for i in group.instances]):
        counts[instance.image_id] = counts.get(instance.image_id, 0) + 1
    runs = ", ".join(f"{n} on {ami}" for ami, n in sorted(counts.items())) or "no instances"
    template = group.template
    return (
        f"{group_name} uses launch template {template.template_id if template else None} "
        f"version {template.version if template else None}; instances: {runs}"
    )
