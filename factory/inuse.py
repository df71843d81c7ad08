"""Which AMIs are in use, and by what: the facts that keep `factory retire` from breaking things.

AMI cleaners most often break fleets by deleting an image that something still launches from:
an old launch template version, a stopped instance, a launch configuration, an SSM parameter, an
account the image was shared with or copied to. This module looks at all of them, in every
configured account and region, in parallel, with bulk paginated calls: the number of API calls
grows with pages of resources, not with the number of images. Per-image checks (launch
permissions, DescribeImageReferences) are separate functions, meant for the few images about to
be deregistered.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import botocore.exceptions
import botocore.parsers

from factory import tags
from factory.aws import AwsClients, call, error_code, paginate
from factory.errors import AwsError

AMI_ID = re.compile(r"\bami-[0-9a-f]{8,17}\b")
CHANNEL_PARAMETER = re.compile(r"^/factory/(?P<family>[^/]+)/(?P<channel>[^/]+)$")
LIVE_INSTANCE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
UNSUPPORTED_CODES = frozenset(
    {
        "InvalidAction",
        "UnsupportedOperation",
        "NotImplemented",
        "UnknownOperationException",
        "InvalidRequest",
    }
)
MAX_WORKERS = 16
MAX_NAMED_VERSIONS = 50  # versions asked for by number in one call

# What this module needs, for the factory's least-privilege policy (infra/).
PERMISSIONS = (
    "ec2:DescribeInstances",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeImages",
    "ec2:DescribeImageAttribute",
    "ec2:DescribeImageReferences",
    "autoscaling:DescribeLaunchConfigurations",
    "autoscaling:DescribeAutoScalingGroups",
    "ssm:DescribeParameters",
    "ssm:GetParametersByPath",
    "ssm:GetParameters",
    "sts:AssumeRole",
)


class UsageKind(StrEnum):
    INSTANCE = "instance"
    LAUNCH_TEMPLATE = "launch-template"
    LAUNCH_CONFIGURATION = "launch-configuration"
    AUTO_SCALING_GROUP = "auto-scaling-group"
    CHANNEL = "channel"
    SSM_PARAMETER = "ssm-parameter"
    SHARED = "shared"
    PUBLIC = "public"
    COPY = "copy"
    IMAGE_REFERENCE = "image-reference"


@dataclass(frozen=True, order=True)
class Usage:
    """One thing that uses an AMI: the reason the image is kept."""

    ami_id: str
    kind: UsageKind
    resource: str
    account: str
    region: str

    def describe(self) -> str:
        return f"in use: {self.kind.value} {self.resource} ({self.account}/{self.region})"


@dataclass(frozen=True)
class ScanTarget:
    """An account and region to look in; `environment` None is the factory's own account."""

    clients: AwsClients
    environment: str | None = None


@dataclass(frozen=True)
class InUseReport:
    """Every use found, sorted; the API calls it took; what could not be checked."""

    usages: tuple[Usage, ...]
    api_calls: int
    calls_by_operation: Mapping[str, int]
    scopes: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def by_ami(self) -> dict[str, tuple[Usage, ...]]:
        grouped: dict[str, list[Usage]] = {}
        for usage in self.usages:
            grouped.setdefault(usage.ami_id, []).append(usage)
        return {ami: tuple(found) for ami, found in grouped.items()}


@dataclass
class _Scan:
    """Mutable working state of one account/region scan (never leaves this module)."""

    account: str
    region: str
    usages: list[Usage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lt_versions: dict[tuple[str, int], str] = field(default_factory=dict)  # (lt, v) -> ami
    lt_names: dict[str, str] = field(default_factory=dict)  # name -> id
    lt_default: dict[str, int] = field(default_factory=dict)
    lt_latest: dict[str, int] = field(default_factory=dict)
    lc_images: dict[str, str] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ami_id: str, kind: UsageKind, resource: str) -> None:
        with self.lock:
            self.usages.append(Usage(ami_id, kind, resource, self.account, self.region))


def _calls(targets: Iterable[ScanTarget]) -> dict[str, int]:
    totals: dict[str, int] = {}
    seen: set[int] = set()
    for target in targets:
        counter = target.clients.counter
        if id(counter) in seen:
            continue
        seen.add(id(counter))
        with counter._lock:
            for op, n in counter.calls.items():
                totals[op] = totals.get(op, 0) + n
    return totals


def _delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {op: n - before.get(op, 0) for op, n in sorted(after.items()) if n - before.get(op, 0)}


def find_in_use(
    targets: Sequence[ScanTarget],
    *,
    owner_account: str,
    max_workers: int = MAX_WORKERS,
) -> InUseReport:
    """Scan every target (account/region) in parallel for every kind of AMI use."""
    before = _calls(targets)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(targets) or 1))) as pool:
        scans = list(pool.map(lambda t: _scan_target(t, owner_account, max_workers), targets))
    after = _calls(targets)
    calls = _delta(after, before)
    usages = sorted({u for scan in scans for u in scan.usages})
    notes = sorted({n for scan in scans for n in scan.notes})
    return InUseReport(
        usages=tuple(usages),
        api_calls=sum(calls.values()),
        calls_by_operation=calls,
        scopes=tuple(sorted(f"{s.account}/{s.region}" for s in scans)),
        notes=tuple(notes),
    )


def _scan_target(target: ScanTarget, owner_account: str, max_workers: int) -> _Scan:
    clients = target.clients
    scan = _Scan(clients.account_id, clients.region)
    ec2, ssm = clients.client("ec2"), clients.client("ssm")
    autoscaling = clients.client("autoscaling")
    jobs: list[Callable[[], None]] = [
        lambda: _scan_instances(ec2, scan),
        lambda: _scan_launch_templates(ec2, scan, max_workers),
        lambda: _scan_launch_configurations(autoscaling, scan),
        lambda: _scan_groups(autoscaling, scan),
        lambda: _scan_parameters(ssm, scan),
        lambda: _scan_copies(ec2, scan, owner_account),
    ]
    if scan.account != owner_account:
        jobs.append(lambda: _scan_shared_with(ec2, scan, owner_account))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    _resolve_groups(scan)
    return scan


# --- the scanners -------------------------------------------------------------------------


def _scan_instances(ec2: Any, scan: _Scan) -> None:
    """Instances in any state but terminated: a stopped instance starts from its image again."""
    for reservation in paginate(
        ec2,
        "DescribeInstances",
        "Reservations",
        Filters=[{"Name": "instance-state-name", "Values": list(LIVE_INSTANCE_STATES)}],
        PaginationConfig={"PageSize": 1000},
    ):
        for instance in reservation.get("Instances", []):
            ami = instance.get("ImageId")
            state = instance.get("State", {}).get("Name", "?")
            if ami and state in LIVE_INSTANCE_STATES:
                scan.add(ami, UsageKind.INSTANCE, f"{instance['InstanceId']} ({state})")


def _lt_image(data: Mapping[str, Any]) -> str | None:
    image = str(data.get("ImageId") or "")
    # "resolve:ssm:/name" images are covered by the SSM parameter scan
    return image if image.startswith("ami-") else None


def _scan_launch_templates(ec2: Any, scan: _Scan, max_workers: int) -> None:
    """Every version of every launch template: an ASG may pin an old one, rollback uses one."""
    templates = list(
        paginate(
            ec2, "DescribeLaunchTemplates", "LaunchTemplates", PaginationConfig={"PageSize": 200}
        )
    )
    if not templates:
        return
    for t in templates:
        scan.lt_names[t["LaunchTemplateName"]] = t["LaunchTemplateId"]
        scan.lt_default[t["LaunchTemplateId"]] = int(t.get("DefaultVersionNumber", 1))
        scan.lt_latest[t["LaunchTemplateId"]] = int(t.get("LatestVersionNumber", 1))

    def record(version: Mapping[str, Any]) -> None:
        lt_id, number = version["LaunchTemplateId"], int(version["VersionNumber"])
        ami = _lt_image(version.get("LaunchTemplateData", {}))
        with scan.lock:
            seen = (lt_id, number) in scan.lt_versions
            scan.lt_versions[(lt_id, number)] = ami or ""
        if seen or ami is None:
            return
        marks = []
        if number == scan.lt_default.get(lt_id):
            marks.append("default")
        if number == scan.lt_latest.get(lt_id):
            marks.append("latest")
        suffix = f" ({', '.join(marks)})" if marks else ""
        name = version.get("LaunchTemplateName", lt_id)
        scan.add(ami, UsageKind.LAUNCH_TEMPLATE, f"{name} {lt_id} version {number}{suffix}")

    # One bulk call covers each template's default and latest version ...
    for version in paginate(
        ec2,
        "DescribeLaunchTemplateVersions",
        "LaunchTemplateVersions",
        Versions=["$Latest", "$Default"],
        PaginationConfig={"PageSize": 200},
    ):
        record(version)

    # ... and only templates with other versions need a call of their own.
    def covered(lt_id: str) -> bool:
        wanted = set(range(1, scan.lt_latest[lt_id] + 1))
        return wanted <= {scan.lt_default[lt_id], scan.lt_latest[lt_id]}

    rest = sorted(lt_id for lt_id in scan.lt_latest if not covered(lt_id))

    def other_versions(lt_id: str) -> None:
        known = {scan.lt_default[lt_id], scan.lt_latest[lt_id]}
        missing = [str(v) for v in range(1, scan.lt_latest[lt_id] + 1) if v not in known]
        if len(missing) <= MAX_NAMED_VERSIONS:
            # ask only for the versions the bulk call did not return (smaller answers)
            try:
                found = call(
                    ec2, "DescribeLaunchTemplateVersions", LaunchTemplateId=lt_id, Versions=missing
                )
            except AwsError:
                pass  # a deleted version number: list what exists instead
            else:
                for version in found.get("LaunchTemplateVersions", []):
                    record(version)
                return
        for version in paginate(
            ec2,
            "DescribeLaunchTemplateVersions",
            "LaunchTemplateVersions",
            LaunchTemplateId=lt_id,
            PaginationConfig={"PageSize": 200},
        ):
            record(version)

    if rest:
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            list(pool.map(other_versions, rest))


def _scan_launch_configurations(autoscaling: Any, scan: _Scan) -> None:
    for lc in paginate(
        autoscaling,
        "DescribeLaunchConfigurations",
        "LaunchConfigurations",
        PaginationConfig={"PageSize": 100},
    ):
        ami = lc.get("ImageId")
        if ami:
            with scan.lock:
                scan.lc_images[lc["LaunchConfigurationName"]] = ami
            scan.add(ami, UsageKind.LAUNCH_CONFIGURATION, lc["LaunchConfigurationName"])


def _scan_groups(autoscaling: Any, scan: _Scan) -> None:
    groups = list(
        paginate(
            autoscaling,
            "DescribeAutoScalingGroups",
            "AutoScalingGroups",
            PaginationConfig={"PageSize": 100},
        )
    )
    with scan.lock:
        scan.groups.extend(groups)


def _lt_specs(group: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if group.get("LaunchTemplate"):
        yield "launch template", group["LaunchTemplate"]
    mixed = group.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {})
    if mixed.get("LaunchTemplateSpecification"):
        yield "mixed instances policy", mixed["LaunchTemplateSpecification"]
    for override in mixed.get("Overrides", []) or []:
        if override.get("LaunchTemplateSpecification"):
            itype = override.get("InstanceType", "?")
            yield f"mixed instances override {itype}", override["LaunchTemplateSpecification"]


def _resolve_groups(scan: _Scan) -> None:
    """Auto Scaling groups name templates and versions ($Latest, $Default, 3): resolve them."""
    for group in scan.groups:
        name = group["AutoScalingGroupName"]
        lc = group.get("LaunchConfigurationName")
        if lc and scan.lc_images.get(lc):
            scan.add(
                scan.lc_images[lc],
                UsageKind.AUTO_SCALING_GROUP,
                f"{name} via launch configuration {lc}",
            )
        for how, spec in _lt_specs(group):
            lt_id = spec.get("LaunchTemplateId") or scan.lt_names.get(
                str(spec.get("LaunchTemplateName"))
            )
            if not lt_id:
                continue
            version = str(spec.get("Version") or "$Default")
            if version == "$Latest":
                number = scan.lt_latest.get(lt_id)
            elif version == "$Default":
                number = scan.lt_default.get(lt_id)
            else:
                number = int(version) if version.isdigit() else None
            ami = scan.lt_versions.get((lt_id, number)) if number is not None else None
            if ami:
                scan.add(
                    ami, UsageKind.AUTO_SCALING_GROUP, f"{name} via {how} {lt_id} version {number}"
                )


def _parameter_usage(scan: _Scan, name: str, value: str) -> None:
    for ami in sorted(set(AMI_ID.findall(value or ""))):
        match = CHANNEL_PARAMETER.match(name)
        if match:
            scan.add(
                ami,
                UsageKind.CHANNEL,
                f"{match['family']}/{match['channel']} (SSM parameter {name})",
            )
        else:
            scan.add(ami, UsageKind.SSM_PARAMETER, name)


def _scan_parameters(ssm: Any, scan: _Scan) -> None:
    """Every SSM parameter whose value names an AMI, channels (/factory/F/C) included."""
    for parameter in paginate(
        ssm,
        "GetParametersByPath",
        "Parameters",
        Path="/",
        Recursive=True,
        PaginationConfig={"PageSize": 10},
    ):
        _parameter_usage(scan, parameter["Name"], str(parameter.get("Value", "")))
    # names outside the "/" hierarchy are not returned by path: read them by name
    flat = [
        p["Name"]
        for p in paginate(
            ssm, "DescribeParameters", "Parameters", PaginationConfig={"PageSize": 50}
        )
        if not str(p["Name"]).startswith("/")
    ]
    for start in range(0, len(flat), 10):
        found = call(ssm, "GetParameters", Names=flat[start : start + 10])
        for parameter in found.get("Parameters", []):
            _parameter_usage(scan, parameter["Name"], str(parameter.get("Value", "")))


def _scan_copies(ec2: Any, scan: _Scan, owner_account: str) -> None:
    """Copies made by promotion carry factory:promoted-from = account:region:ami."""
    for image in paginate(
        ec2,
        "DescribeImages",
        "Images",
        Owners=["self"],
        Filters=[{"Name": "tag-key", "Values": [tags.PROMOTED_FROM]}],
        PaginationConfig={"PageSize": 1000},
    ):
        source = _tag(image, tags.PROMOTED_FROM)
        parts = source.split(":") if source else []
        if len(parts) == 3 and parts[0] == owner_account and parts[2].startswith("ami-"):
            scan.add(parts[2], UsageKind.COPY, f"copied as {image['ImageId']} (from {parts[1]})")


def _scan_shared_with(ec2: Any, scan: _Scan, owner_account: str) -> None:
    """Images of the owner this account may launch: shared with it (seen from its side)."""
    for image in paginate(
        ec2,
        "DescribeImages",
        "Images",
        ExecutableUsers=["self"],
        Owners=[owner_account],
        PaginationConfig={"PageSize": 1000},
    ):
        if image.get("OwnerId") == owner_account and not image.get("Public"):
            scan.add(image["ImageId"], UsageKind.SHARED, f"with account {scan.account}")


def _tag(image: Mapping[str, Any], key: str) -> str | None:
    for tag in image.get("Tags", []) or []:
        if tag.get("Key") == key:
            return str(tag.get("Value"))
    return None


# --- per-image checks, for the few images about to be deregistered ---------------------------


def launch_permission_usages(
    clients: AwsClients, ami_ids: Collection[str], *, max_workers: int = MAX_WORKERS
) -> tuple[Usage, ...]:
    """Accounts, organisations and groups an image is shared with (one call per image)."""
    ec2 = clients.client("ec2")
    account, region = clients.account_id, clients.region

    def check(ami_id: str) -> list[Usage]:
        found = call(ec2, "DescribeImageAttribute", ImageId=ami_id, Attribute="launchPermission")
        out = []
        for permission in found.get("LaunchPermissions", []):
            who = (
                f"account {permission['UserId']}"
                if permission.get("UserId")
                else f"group {permission['Group']}"
                if permission.get("Group")
                else f"organization {permission.get('OrganizationArn')}"
                if permission.get("OrganizationArn")
                else f"organizational unit {permission.get('OrganizationalUnitArn')}"
            )
            kind = UsageKind.PUBLIC if permission.get("Group") == "all" else UsageKind.SHARED
            out.append(Usage(ami_id, kind, f"with {who}", account, region))
        return out

    if not ami_ids:
        return ()
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        results = pool.map(check, sorted(ami_ids))
    return tuple(sorted(u for batch in results for u in batch))


_UNSUPPORTED: set[tuple[str | None, str, str]] = set()  # (endpoint, account, region)


def image_reference_usages(
    clients: AwsClients, ami_ids: Collection[str], *, batch: int = 50
) -> tuple[tuple[Usage, ...], str | None]:
    """DescribeImageReferences where the endpoint has it; (usages, note if unsupported)."""
    ec2 = clients.client("ec2")
    account, region = clients.account_id, clients.region
    scope = (clients.endpoint_url, account, region)
    note = f"DescribeImageReferences not supported in {account}/{region}"
    if scope in _UNSUPPORTED:
        return (), note
    usages: list[Usage] = []
    ids = sorted(ami_ids)
    for start in range(0, len(ids), batch):
        try:
            pages = ec2.get_paginator("describe_image_references").paginate(
                ImageIds=ids[start : start + batch], IncludeAllResourceTypes=True
            )
            for page in pages:
                for ref in page.get("ImageReferences", []):
                    resource = f"{ref.get('ResourceType', '?')} {ref.get('Arn', '?')}"
                    usages.append(
                        Usage(ref["ImageId"], UsageKind.IMAGE_REFERENCE, resource, account, region)
                    )
        except (NotImplementedError, botocore.parsers.ResponseParserError):
            # moto in-process raises NotImplementedError; a server without it answers garbage
            _UNSUPPORTED.add(scope)
            return (), note
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if error_code(exc) in UNSUPPORTED_CODES or status >= 500:
                _UNSUPPORTED.add(scope)
                return (), note
            raise AwsError(f"ec2:DescribeImageReferences: {error_code(exc)}: {exc}") from None
    return tuple(sorted(usages)), None
