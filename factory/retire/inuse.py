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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

from factory import tags
from factory.aws import AwsClients, groups, images, instances, parameters
from factory.aws.groups import Group, TemplateRef, TemplateVersion
from factory.errors import AwsError, UnsupportedOperation

AMI_ID = re.compile(r"\bami-[0-9a-f]{8,17}\b")
CHANNEL_PARAMETER = re.compile(r"^/factory/(?P<family>[^/]+)/(?P<channel>[^/]+)$")
MAX_WORKERS = 16
MAX_NAMED_VERSIONS = 50  # versions asked for by number in one call
REFERENCE_BATCH = 50  # images per DescribeImageReferences call
PARAMETER_PAGE = 10  # GetParametersByPath: the largest page SSM gives
# A version deleted since the template was listed: list the versions that exist instead.
VERSION_GONE = frozenset({"InvalidLaunchTemplateId.VersionNotFound"})


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


def usage_reason(usage: Usage) -> str:
    """The keep reason a use gives (it appears in the plan's reasons and in apply's skips)."""
    return f"in use: {usage.kind.value} {usage.resource} ({usage.account}/{usage.region})"


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

    clients: AwsClients
    account: str
    region: str
    usages: list[Usage] = field(default_factory=list)
    lt_versions: dict[tuple[str, int], str] = field(default_factory=dict)  # (lt, v) -> ami
    lt_names: dict[str, str] = field(default_factory=dict)  # name -> id
    lt_default: dict[str, int] = field(default_factory=dict)
    lt_latest: dict[str, int] = field(default_factory=dict)
    lc_images: dict[str, str] = field(default_factory=dict)
    groups: list[Group] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ami_id: str, kind: UsageKind, resource: str) -> None:
        with self.lock:
            self.usages.append(Usage(ami_id, kind, resource, self.account, self.region))


# ---- API calls made (logged, in --output json, and what the benchmark reads) -------------------


def call_counts(clients: Iterable[AwsClients]) -> dict[str, int]:
    """Calls made so far through these clients, by operation (each session counted once)."""
    totals: dict[str, int] = {}
    seen: set[int] = set()
    for each in clients:
        counter = each.counter
        if id(counter) in seen:
            continue
        seen.add(id(counter))
        with counter._lock:
            for op, n in counter.calls.items():
                totals[op] = totals.get(op, 0) + n
    return totals


def calls_since(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """The calls made between two `call_counts`, by operation (sorted, zeros left out)."""
    return {op: n - before.get(op, 0) for op, n in sorted(after.items()) if n - before.get(op, 0)}


# ---- the full scan -----------------------------------------------------------------------------


def gather_in_use(
    targets: Sequence[ScanTarget],
    *,
    owner_account: str,
    max_workers: int = MAX_WORKERS,
) -> InUseReport:
    """Scan every target (account/region) in parallel for every kind of AMI use."""
    everyone = [t.clients for t in targets]
    before = call_counts(everyone)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(targets) or 1))) as pool:
        scans = list(pool.map(lambda t: _scan_target(t, owner_account, max_workers), targets))
    calls = calls_since(before, call_counts(everyone))
    return InUseReport(
        usages=tuple(sorted({u for scan in scans for u in scan.usages})),
        api_calls=sum(calls.values()),
        calls_by_operation=calls,
        scopes=tuple(sorted(f"{s.account}/{s.region}" for s in scans)),
    )


def _scan_target(target: ScanTarget, owner_account: str, max_workers: int) -> _Scan:
    clients = target.clients
    scan = _Scan(clients, clients.account_id, clients.region)
    jobs: list[Callable[[], None]] = [
        lambda: _scan_instances(scan),
        lambda: _scan_launch_templates(scan, max_workers),
        lambda: _scan_launch_configurations(scan),
        lambda: _scan_groups(scan),
        lambda: _scan_parameters(scan),
        lambda: _scan_copies(scan, owner_account),
    ]
    if scan.account != owner_account:
        jobs.append(lambda: _scan_shared_with(scan, owner_account))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    _resolve_groups(scan)
    return scan


# ---- the scanners ------------------------------------------------------------------------------


def _scan_instances(scan: _Scan) -> None:
    """Instances in any state but terminated: a stopped instance starts from its image again."""
    for instance in instances.find_all(scan.clients):
        if instance.image_id and instance.state in instances.LIVE_STATES:
            scan.add(
                instance.image_id,
                UsageKind.INSTANCE,
                f"{instance.instance_id} ({instance.state})",
            )


def _template_image(version: TemplateVersion) -> str | None:
    image = version.image_id or ""
    # "resolve:ssm:/name" images are covered by the SSM parameter scan
    return image if image.startswith("ami-") else None


def _record_version(scan: _Scan, version: TemplateVersion) -> None:
    """One launch template version's image, marked default and/or latest (once per version)."""
    lt_id, number = version.template_id, version.number
    ami = _template_image(version)
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
    name = version.template_name or lt_id
    scan.add(ami, UsageKind.LAUNCH_TEMPLATE, f"{name} {lt_id} version {number}{suffix}")


def _scan_launch_templates(scan: _Scan, max_workers: int) -> None:
    """Every version of every launch template: an ASG may pin an old one, rollback uses one."""
    templates = list(groups.templates(scan.clients))
    if not templates:
        return
    for t in templates:
        scan.lt_names[t.name] = t.template_id
        scan.lt_default[t.template_id] = t.default_version
        scan.lt_latest[t.template_id] = t.latest_version
    # One bulk call covers each template's default and latest version ...
    for version in groups.template_versions(scan.clients, versions=["$Latest", "$Default"]):
        _record_version(scan, version)
    # ... and only templates with other versions need a call of their own.
    rest = sorted(
        lt_id
        for lt_id, latest in scan.lt_latest.items()
        if set(range(1, latest + 1)) - {scan.lt_default[lt_id], latest}
    )
    if rest:
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            list(pool.map(lambda lt_id: _scan_other_versions(scan, lt_id), rest))


def _scan_other_versions(scan: _Scan, lt_id: str) -> None:
    """The versions of one template the bulk call did not return."""
    known = {scan.lt_default[lt_id], scan.lt_latest[lt_id]}
    missing = [str(v) for v in range(1, scan.lt_latest[lt_id] + 1) if v not in known]
    if len(missing) <= MAX_NAMED_VERSIONS:
        # ask only for the versions the bulk call did not return (smaller answers)
        try:
            found = list(
                groups.template_versions(scan.clients, template_id=lt_id, versions=missing)
            )
        except AwsError as exc:
            if exc.code not in VERSION_GONE:
                raise
        else:
            for version in found:
                _record_version(scan, version)
            return
    for version in groups.template_versions(scan.clients, template_id=lt_id):
        _record_version(scan, version)


def _scan_launch_configurations(scan: _Scan) -> None:
    for lc in groups.launch_configurations(scan.clients):
        if lc.image_id:
            with scan.lock:
                scan.lc_images[lc.name] = lc.image_id
            scan.add(lc.image_id, UsageKind.LAUNCH_CONFIGURATION, lc.name)


def _scan_groups(scan: _Scan) -> None:
    found = list(groups.find_all(scan.clients))
    with scan.lock:
        scan.groups.extend(found)


def _templates_of(group: Group) -> Iterable[tuple[str, TemplateRef]]:
    """How the group names launch templates: its own, its mixed instances policy's, overrides."""
    if group.template is not None:
        how = "mixed instances policy" if group.mixed_instances_policy else "launch template"
        yield how, group.template
    for instance_type, ref in group.template_overrides:
        yield f"mixed instances override {instance_type}", ref


def _resolve_groups(scan: _Scan) -> None:
    """Auto Scaling groups name templates and versions ($Latest, $Default, 3): resolve them."""
    for group in scan.groups:
        lc = group.launch_configuration
        if lc and scan.lc_images.get(lc):
            scan.add(
                scan.lc_images[lc],
                UsageKind.AUTO_SCALING_GROUP,
                f"{group.name} via launch configuration {lc}",
            )
        for how, ref in _templates_of(group):
            lt_id = ref.template_id or scan.lt_names.get(str(ref.name))
            if not lt_id:
                continue
            if ref.version == "$Latest":
                number = scan.lt_latest.get(lt_id)
            elif ref.version == "$Default":
                number = scan.lt_default.get(lt_id)
            else:
                number = int(ref.version) if ref.version.isdigit() else None
            ami = scan.lt_versions.get((lt_id, number)) if number is not None else None
            if ami:
                scan.add(
                    ami,
                    UsageKind.AUTO_SCALING_GROUP,
                    f"{group.name} via {how} {lt_id} version {number}",
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


def _scan_parameters(scan: _Scan) -> None:
    """Every SSM parameter whose value names an AMI, channels (/factory/F/C) included."""
    for parameter in parameters.by_path(scan.clients, "/", page_size=PARAMETER_PAGE):
        _parameter_usage(scan, parameter.name, parameter.value)
    # names outside the "/" hierarchy are not returned by path: read them by name
    flat = [name for name in parameters.names(scan.clients) if not name.startswith("/")]
    for parameter in parameters.get_many(scan.clients, flat):
        _parameter_usage(scan, parameter.name, parameter.value)


def _scan_copies(scan: _Scan, owner_account: str) -> None:
    """Copies made by promotion carry factory:promoted-from = account:region:ami."""
    for image in images.find(scan.clients, tags={tags.PROMOTED_FROM: None}):
        source = image.tags.get(tags.PROMOTED_FROM)
        parts = source.split(":") if source else []
        if len(parts) == 3 and parts[0] == owner_account and parts[2].startswith("ami-"):
            scan.add(parts[2], UsageKind.COPY, f"copied as {image.ami_id} (from {parts[1]})")


def _scan_shared_with(scan: _Scan, owner_account: str) -> None:
    """Images of the owner this account may launch: shared with it (seen from its side)."""
    for image in images.find(scan.clients, owners=[owner_account], executable_by="self"):
        if image.owner_id == owner_account and not image.public:
            scan.add(image.ami_id, UsageKind.SHARED, f"with account {scan.account}")


# ---- per-image checks, for the few images about to be deregistered -----------------------------


def gather_launch_permissions(
    clients: AwsClients, ami_ids: Collection[str], *, max_workers: int = MAX_WORKERS
) -> tuple[Usage, ...]:
    """Accounts, organisations and groups an image is shared with (one call per image)."""
    account, region = clients.account_id, clients.region

    def check(ami_id: str) -> list[Usage]:
        return [
            Usage(
                ami_id,
                UsageKind.PUBLIC if permission.public else UsageKind.SHARED,
                f"with {permission.describe()}",
                account,
                region,
            )
            for permission in images.launch_permissions(clients, ami_id)
        ]

    if not ami_ids:
        return ()
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        results = pool.map(check, sorted(ami_ids))
    return tuple(sorted(u for batch in results for u in batch))


def references_unsupported_note(clients: AwsClients) -> str:
    return f"DescribeImageReferences not supported in {clients.account_id}/{clients.region}"


def gather_image_references(
    clients: AwsClients, ami_ids: Collection[str], *, batch: int = REFERENCE_BATCH
) -> tuple[tuple[Usage, ...], str | None]:
    """DescribeImageReferences where the endpoint has it; (usages, a note if it does not)."""
    account, region = clients.account_id, clients.region
    usages: list[Usage] = []
    ids = sorted(ami_ids)
    for start in range(0, len(ids), batch):
        try:
            found = images.references(clients, ids[start : start + batch])
        except UnsupportedOperation:
            return (), references_unsupported_note(clients)
        usages += [
            Usage(
                ref.ami_id,
                UsageKind.IMAGE_REFERENCE,
                f"{ref.resource_type} {ref.arn}",
                account,
                region,
            )
            for ref in found
        ]
    return tuple(sorted(usages)), None
