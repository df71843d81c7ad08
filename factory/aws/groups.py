"""Auto Scaling groups, their launch templates and launch configurations, and instance refreshes.

Launch templates are EC2 calls but belong to the group they configure: rollout, drift and
the in-use scan read them together.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from factory.aws.api import call, module_permissions, paginate, requires
from factory.aws.model import parse_time, tags_of
from factory.aws.session import AwsClients

# DescribeInstanceRefreshes for a group that does not exist: ValidationError "... not found"
NO_ACTIVE_REFRESH = ("ActiveInstanceRefreshNotFound",)
ACTIVE_REFRESH = frozenset({"Pending", "InProgress", "Cancelling", "RollbackInProgress", "Baking"})


@dataclass(frozen=True)
class TemplateRef:
    """A launch template as a group names it: by id or name, and a version ("7", "$Latest")."""

    template_id: str | None
    name: str | None
    version: str  # as the group names it; "$Default" when it names none

    @classmethod
    def from_api(cls, spec: Mapping[str, Any]) -> TemplateRef:
        return cls(
            template_id=spec.get("LaunchTemplateId") or None,
            name=spec.get("LaunchTemplateName") or None,
            version=str(spec.get("Version") or "$Default"),
        )


@dataclass(frozen=True)
class GroupInstance:
    instance_id: str
    lifecycle_state: str
    health_status: str
    template_version: str | None  # the launch template version it was launched from
    zone: str = ""


@dataclass(frozen=True)
class Group:
    """An Auto Scaling group as DescribeAutoScalingGroups describes it."""

    name: str
    region: str
    template: TemplateRef | None  # its launch template (or the mixed-instances policy's)
    template_overrides: tuple[tuple[str, TemplateRef], ...] = ()  # (instance type, template)
    launch_configuration: str | None = None
    desired_capacity: int = 0
    min_size: int = 0
    max_size: int = 0
    health_check_type: str = "EC2"
    target_group_arns: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    instances: tuple[GroupInstance, ...] = ()
    mixed_instances_policy: bool = False  # `template` is the mixed instances policy's

    @classmethod
    def from_api(cls, item: Mapping[str, Any], region: str) -> Group:
        mixed = (item.get("MixedInstancesPolicy") or {}).get("LaunchTemplate") or {}
        spec = item.get("LaunchTemplate") or mixed.get("LaunchTemplateSpecification")
        overrides = tuple(
            (
                str(o.get("InstanceType", "?")),
                TemplateRef.from_api(o["LaunchTemplateSpecification"]),
            )
            for o in mixed.get("Overrides") or []
            if o.get("LaunchTemplateSpecification")
        )
        return cls(
            name=str(item["AutoScalingGroupName"]),
            region=region,
            template=TemplateRef.from_api(spec) if spec else None,
            template_overrides=overrides,
            launch_configuration=item.get("LaunchConfigurationName") or None,
            desired_capacity=int(item.get("DesiredCapacity") or 0),
            min_size=int(item.get("MinSize") or 0),
            max_size=int(item.get("MaxSize") or 0),
            health_check_type=str(item.get("HealthCheckType") or "EC2"),
            target_group_arns=tuple(str(a) for a in item.get("TargetGroupARNs") or []),
            tags=tags_of(item),
            instances=tuple(
                GroupInstance(
                    instance_id=str(i["InstanceId"]),
                    lifecycle_state=str(i.get("LifecycleState", "")),
                    health_status=str(i.get("HealthStatus", "")),
                    template_version=str((i.get("LaunchTemplate") or {}).get("Version") or "")
                    or None,
                    zone=str(i.get("AvailabilityZone", "")),
                )
                for i in item.get("Instances") or []
            ),
            mixed_instances_policy=bool(spec) and not item.get("LaunchTemplate"),
        )


@requires("autoscaling:DescribeAutoScalingGroups")
def get(clients: AwsClients, name: str) -> Group | None:
    found = call(
        clients.client("autoscaling"),
        "DescribeAutoScalingGroups",
        about=name,
        AutoScalingGroupNames=[name],
    )["AutoScalingGroups"]
    return Group.from_api(found[0], clients.region) if found else None


@requires("autoscaling:DescribeAutoScalingGroups")
def find_all(clients: AwsClients) -> Iterator[Group]:
    for item in paginate(
        clients.client("autoscaling"),
        "DescribeAutoScalingGroups",
        "AutoScalingGroups",
        PaginationConfig={"PageSize": 100},
    ):
        yield Group.from_api(item, clients.region)


@requires("autoscaling:UpdateAutoScalingGroup")
def use_template(clients: AwsClients, group: str, template_id: str, version: int) -> None:
    """Point the group at a numbered launch template version."""
    call(
        clients.client("autoscaling"),
        "UpdateAutoScalingGroup",
        about=group,
        AutoScalingGroupName=group,
        LaunchTemplate={"LaunchTemplateId": template_id, "Version": str(version)},
    )


# ---- launch templates and configurations ------------------------------------------------------


@dataclass(frozen=True)
class LaunchTemplate:
    template_id: str
    name: str
    default_version: int
    latest_version: int


@dataclass(frozen=True)
class TemplateVersion:
    """One launch template version; `image_id` may be `resolve:ssm:NAME`."""

    template_id: str
    template_name: str
    number: int
    description: str = ""
    image_id: str | None = None
    default: bool = False
    data: Mapping[str, Any] = field(default_factory=dict)  # LaunchTemplateData as AWS gives it

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> TemplateVersion:
        data = item.get("LaunchTemplateData") or {}
        return cls(
            template_id=str(item["LaunchTemplateId"]),
            template_name=str(item.get("LaunchTemplateName", "")),
            number=int(item["VersionNumber"]),
            description=str(item.get("VersionDescription") or ""),
            image_id=data.get("ImageId") or None,
            default=bool(item.get("DefaultVersion")),
            data=data,
        )


@dataclass(frozen=True)
class LaunchConfiguration:
    name: str
    image_id: str | None


@requires("ec2:DescribeLaunchTemplates")
def templates(clients: AwsClients) -> Iterator[LaunchTemplate]:
    for item in paginate(
        clients.client("ec2"),
        "DescribeLaunchTemplates",
        "LaunchTemplates",
        PaginationConfig={"PageSize": 200},
    ):
        yield LaunchTemplate(
            template_id=str(item["LaunchTemplateId"]),
            name=str(item["LaunchTemplateName"]),
            default_version=int(item.get("DefaultVersionNumber") or 1),
            latest_version=int(item.get("LatestVersionNumber") or 1),
        )


@requires("ec2:DescribeLaunchTemplateVersions")
def template_version(clients: AwsClients, template_id: str, version: str) -> TemplateVersion | None:
    """One version ("7", "$Latest", "$Default"), or None when the template has no such version."""
    found = call(
        clients.client("ec2"),
        "DescribeLaunchTemplateVersions",
        ok=("InvalidLaunchTemplateId.VersionNotFound", "InvalidLaunchTemplateId.NotFound"),
        about=f"{template_id} version {version}",
        LaunchTemplateId=template_id,
        Versions=[version],
    )
    items = (found or {}).get("LaunchTemplateVersions") or []
    return TemplateVersion.from_api(items[0]) if items else None


@requires("ec2:DescribeLaunchTemplateVersions")
def template_versions(
    clients: AwsClients,
    *,
    template_id: str | None = None,
    versions: Sequence[str] | None = None,
) -> Iterator[TemplateVersion]:
    """Versions of one template (all, or the named ones), or `versions` ($Latest, $Default) of
    every template when no template is named."""
    kwargs: dict[str, Any] = {}
    if template_id is not None:
        kwargs["LaunchTemplateId"] = template_id
    if versions is not None:
        kwargs["Versions"] = list(versions)
    if template_id is None or versions is None:
        kwargs["PaginationConfig"] = {"PageSize": 200}
        items: Iterator[Any] = paginate(
            clients.client("ec2"),
            "DescribeLaunchTemplateVersions",
            "LaunchTemplateVersions",
            **kwargs,
        )
    else:
        items = iter(
            call(clients.client("ec2"), "DescribeLaunchTemplateVersions", **kwargs)[
                "LaunchTemplateVersions"
            ]
        )
    for item in items:
        yield TemplateVersion.from_api(item)


@requires("ec2:CreateLaunchTemplateVersion")
def create_template_version(
    clients: AwsClients,
    template_id: str,
    *,
    source_version: int,
    description: str,
    data: Mapping[str, Any],
) -> TemplateVersion:
    """A new version from `source_version` with `data` changed (everything else is kept)."""
    created = call(
        clients.client("ec2"),
        "CreateLaunchTemplateVersion",
        about=template_id,
        LaunchTemplateId=template_id,
        SourceVersion=str(source_version),
        VersionDescription=description[:255],
        LaunchTemplateData=dict(data),
    )["LaunchTemplateVersion"]
    return TemplateVersion.from_api(created)


@requires("autoscaling:DescribeLaunchConfigurations")
def launch_configurations(clients: AwsClients) -> Iterator[LaunchConfiguration]:
    for item in paginate(
        clients.client("autoscaling"),
        "DescribeLaunchConfigurations",
        "LaunchConfigurations",
        PaginationConfig={"PageSize": 100},
    ):
        yield LaunchConfiguration(str(item["LaunchConfigurationName"]), item.get("ImageId") or None)


# ---- instance refreshes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Refresh:
    """One instance refresh as DescribeInstanceRefreshes reports it."""

    refresh_id: str
    group: str
    status: str
    reason: str = ""
    percentage: int = 0
    instances_to_update: int = 0
    desired_version: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    rollback_reason: str | None = None
    rollback_percentage: int | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_REFRESH

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> Refresh:
        desired = (item.get("DesiredConfiguration") or {}).get("LaunchTemplate") or {}
        rollback = item.get("RollbackDetails") or {}
        return cls(
            refresh_id=str(item["InstanceRefreshId"]),
            group=str(item.get("AutoScalingGroupName", "")),
            status=str(item.get("Status", "")),
            reason=str(item.get("StatusReason") or ""),
            percentage=int(item.get("PercentageComplete") or 0),
            instances_to_update=int(item.get("InstancesToUpdate") or 0),
            desired_version=str(desired["Version"]) if desired.get("Version") else None,
            start_time=parse_time(item.get("StartTime")),
            end_time=parse_time(item.get("EndTime")),
            rollback_reason=rollback.get("RollbackReason"),
            rollback_percentage=rollback.get("PercentageCompleteOnRollback"),
        )


@requires("autoscaling:StartInstanceRefresh")
def start_refresh(
    clients: AwsClients,
    group: str,
    *,
    template_id: str,
    version: int,
    preferences: Mapping[str, Any],
    strategy: str = "Rolling",
) -> str:
    """Start a refresh to a numbered template version; its id. One already running raises an
    AwsError with code InstanceRefreshInProgress."""
    response = call(
        clients.client("autoscaling"),
        "StartInstanceRefresh",
        about=group,
        AutoScalingGroupName=group,
        Strategy=strategy,
        DesiredConfiguration={
            "LaunchTemplate": {"LaunchTemplateId": template_id, "Version": str(version)}
        },
        Preferences=dict(preferences),
    )
    return str(response["InstanceRefreshId"])


@requires("autoscaling:DescribeInstanceRefreshes")
def refreshes(
    clients: AwsClients, group: str, *, refresh_ids: Sequence[str] | None = None, limit: int = 1
) -> list[Refresh]:
    """The newest refreshes of a group (or the named ones), newest first. A group that does
    not exist raises an AwsError with code ValidationError."""
    kwargs: dict[str, Any] = {"AutoScalingGroupName": group}
    if refresh_ids is not None:
        kwargs["InstanceRefreshIds"] = list(refresh_ids)
    else:
        kwargs["MaxRecords"] = limit
    found = call(clients.client("autoscaling"), "DescribeInstanceRefreshes", about=group, **kwargs)
    return [Refresh.from_api(item) for item in found.get("InstanceRefreshes", [])]


@requires("autoscaling:CancelInstanceRefresh")
def cancel_refresh(clients: AwsClients, group: str) -> str | None:
    """Cancel the group's active refresh; its id, or None when none was running."""
    response = call(
        clients.client("autoscaling"),
        "CancelInstanceRefresh",
        ok=NO_ACTIVE_REFRESH,
        about=group,
        AutoScalingGroupName=group,
    )
    return str(response["InstanceRefreshId"]) if response else None


@requires("autoscaling:RollbackInstanceRefresh")
def rollback_refresh(clients: AwsClients, group: str) -> str:
    """Roll back the group's active refresh. AWS refuses one it cannot reverse with the code
    IrreversibleInstanceRefresh ($Latest/$Default or an SSM image)."""
    response = call(
        clients.client("autoscaling"),
        "RollbackInstanceRefresh",
        about=group,
        AutoScalingGroupName=group,
    )
    return str(response.get("InstanceRefreshId", ""))


PERMISSIONS = module_permissions(__name__)
