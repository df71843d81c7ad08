"""The image catalog: the factory's AMIs as their `factory:` tags describe them.

State lives in AWS: the catalog is read from DescribeImages (tag-filtered, paginated) in every
configured region, joined with channel membership from SSM. Lineage follows the
`factory:source-ami` tag; revocation tags an image (and, with cascade, its descendants)
revoked and asks EC2 to deprecate it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from factory import tags as T
from factory.aws import AwsClients, aws_errors, call, error_code, paginate, tag_list, tags_dict
from factory.errors import AwsError, ConfigError, RefusedError

# IAM permissions the catalog uses (infra/'s policies are derived from these).
PERMISSIONS = (
    "ec2:DescribeImages",
    "ec2:CreateTags",
    "ec2:EnableImageDeprecation",
    "ssm:GetParametersByPath",
)


def is_revoked(image_tags: Mapping[str, str]) -> bool:
    """Whether an image's tags mark it revoked (channels, builds and rollouts refuse it)."""
    return image_tags.get(T.STATUS) == T.Status.REVOKED.value or T.REVOKED_AT in image_tags


def deprecation_passed(deprecation_time: str | None, now: datetime) -> bool:
    """Whether an image's DeprecationTime (ISO 8601, as EC2 gives it) is at or before `now`."""
    moment = _parse_time(deprecation_time)
    return moment is not None and moment <= now


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ImageIdentity:
    """What makes an AMI this AMI: a replaced image (same name, new id) has another identity."""

    ami_id: str
    name: str
    architecture: str
    snapshot_ids: tuple[str, ...]

    @classmethod
    def from_image(cls, image: Mapping[str, Any]) -> ImageIdentity:
        snapshots = sorted(
            str(m["Ebs"]["SnapshotId"])
            for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        )
        return cls(
            ami_id=str(image["ImageId"]),
            name=str(image.get("Name", "")),
            architecture=str(image.get("Architecture", "")),
            snapshot_ids=tuple(snapshots),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ami_id": self.ami_id,
            "architecture": self.architecture,
            "name": self.name,
            "snapshot_ids": list(self.snapshot_ids),
        }

    @property
    def digest(self) -> str:
        """sha256 over the canonical JSON of the identity fields."""
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ImageRecord:
    """One factory image as the catalog sees it."""

    ami_id: str
    region: str
    name: str
    family: str | None
    version: str | None
    status: str
    parent: str | None
    created_at: datetime | None
    age_days: float | None
    channels: tuple[str, ...]  # names of the family's channels that point at it
    in_use: bool | None  # filled in by the retire issue (DescribeImageReferences); None: unknown
    revoked: bool
    identity: ImageIdentity = field(metadata={"internal": True})
    tags: Mapping[str, str] = field(metadata={"internal": True})


def _record(
    image: Mapping[str, Any],
    region: str,
    channels: Mapping[str, tuple[str, ...]],
    now: datetime,
) -> ImageRecord:
    image_tags = tags_dict(image.get("Tags"))
    created = _parse_time(image_tags.get(T.CREATED_AT)) or _parse_time(image.get("CreationDate"))
    status = image_tags.get(T.STATUS, "unknown")
    if is_revoked(image_tags):
        status = T.Status.REVOKED.value
    return ImageRecord(
        ami_id=str(image["ImageId"]),
        region=region,
        name=str(image.get("Name", "")),
        family=image_tags.get(T.FAMILY),
        version=image_tags.get(T.VERSION),
        status=status,
        parent=image_tags.get(T.SOURCE_AMI),
        created_at=created,
        age_days=round((now - created).total_seconds() / 86400, 2) if created else None,
        channels=channels.get(str(image["ImageId"]), ()),
        in_use=None,
        revoked=is_revoked(image_tags),
        identity=ImageIdentity.from_image(image),
        tags=image_tags,
    )


def describe_image(clients: AwsClients, ami_id: str) -> dict[str, Any] | None:
    """One image (any owner) or None if it does not exist (any more)."""
    ec2 = clients.client("ec2")
    try:
        with aws_errors(f"ec2:DescribeImages {ami_id}"):
            images = ec2.describe_images(ImageIds=[ami_id])["Images"]
    except AwsError as exc:
        if "InvalidAMIID" in exc.message:
            return None
        raise
    return dict(images[0]) if images else None


def channel_membership(clients: AwsClients) -> dict[str, tuple[str, ...]]:
    """AMI id -> channels (`family/channel`) whose SSM parameter points at it, in one region."""
    found: dict[str, list[str]] = {}
    for param in paginate(
        clients.client("ssm"), "GetParametersByPath", "Parameters", Path="/factory", Recursive=True
    ):
        parts = str(param["Name"]).strip("/").split("/")
        if len(parts) == 3 and parts[0] == "factory":
            found.setdefault(str(param["Value"]), []).append(f"{parts[1]}/{parts[2]}")
    return {ami: tuple(sorted(names)) for ami, names in found.items()}


def list_images(
    clients: AwsClients,
    *,
    regions: Sequence[str] | None = None,
    family: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    now: datetime | None = None,
) -> list[ImageRecord]:
    """The factory's images (tagged `factory:family`) across `regions`, newest first."""
    now = now or datetime.now(UTC)
    if status is not None and status not in {s.value for s in T.Status}:
        raise ConfigError(
            f"unknown status {status!r}; use one of {', '.join(s.value for s in T.Status)}"
        )
    filters = [{"Name": "tag-key", "Values": [T.FAMILY]}]
    if family:
        filters.append({"Name": f"tag:{T.FAMILY}", "Values": [family]})
    records: list[ImageRecord] = []
    for region in regions or (clients.region,):
        regional = clients if region == clients.region else clients.for_region(region)
        membership = channel_membership(regional)
        for image in paginate(
            regional.client("ec2"), "DescribeImages", "Images", Owners=["self"], Filters=filters
        ):
            record = _record(image, region, membership, now)
            if status and record.status != status:
                continue
            if channel and not any(c.split("/", 1)[1] == channel for c in record.channels):
                continue
            records.append(record)
    epoch = datetime.min.replace(tzinfo=UTC)
    records.sort(key=lambda r: (r.created_at or epoch, r.ami_id), reverse=True)
    return records


def with_usage(
    records: Sequence[ImageRecord], used: Mapping[str, Sequence[object]]
) -> list[ImageRecord]:
    """Fill `in_use` from an in-use scan (factory.inuse: AMI id -> its usages)."""
    return [replace(r, in_use=bool(used.get(r.ami_id))) for r in records]


def find_image(clients: AwsClients, ami_id: str) -> ImageRecord:
    """The catalog record of one image in the clients' region, or a ConfigError."""
    image = describe_image(clients, ami_id)
    if image is None:
        raise ConfigError(f"image {ami_id} not found in {clients.region}; check the id and region")
    return _record(image, clients.region, channel_membership(clients), datetime.now(UTC))


def refuse_revoked_parent(clients: AwsClients, source_ami: str) -> None:
    """For builds: raise RefusedError if the source (parent) image is revoked."""
    image = describe_image(clients, source_ami)
    if image is not None and is_revoked(tags_dict(image.get("Tags"))):
        reason = tags_dict(image.get("Tags")).get(T.REVOKED_REASON, "no reason recorded")
        raise RefusedError(
            f"source image {source_ami} is revoked ({reason}); build from another parent"
        )


# ---- lineage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineageNode:
    """An image in a lineage tree; non-factory images (the base) have no family."""

    ami_id: str
    name: str
    family: str | None
    version: str | None
    status: str
    exists: bool = True


@dataclass(frozen=True)
class LineageTree:
    """An image's ancestors (parent first, the root base image last) and descendants."""

    image: LineageNode
    ancestors: tuple[LineageNode, ...]
    descendants: tuple[DescendantNode, ...]


@dataclass(frozen=True)
class DescendantNode:
    node: LineageNode
    children: tuple[DescendantNode, ...]


def _node(record: ImageRecord) -> LineageNode:
    return LineageNode(record.ami_id, record.name, record.family, record.version, record.status)


def _node_for(clients: AwsClients, ami_id: str) -> tuple[LineageNode, str | None]:
    image = describe_image(clients, ami_id)
    if image is None:
        return LineageNode(ami_id, "", None, None, "deregistered", exists=False), None
    image_tags = tags_dict(image.get("Tags"))
    status = T.Status.REVOKED.value if is_revoked(image_tags) else image_tags.get(T.STATUS, "")
    node = LineageNode(
        ami_id,
        str(image.get("Name", "")),
        image_tags.get(T.FAMILY),
        image_tags.get(T.VERSION),
        status or ("external" if T.FAMILY not in image_tags else "unknown"),
    )
    return node, image_tags.get(T.SOURCE_AMI)


def children_index(records: Iterable[ImageRecord]) -> dict[str, list[ImageRecord]]:
    index: dict[str, list[ImageRecord]] = {}
    for record in records:
        if record.parent:
            index.setdefault(record.parent, []).append(record)
    return index


def descendants_of(ami_id: str, records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """Every image whose lineage leads to `ami_id` (breadth first)."""
    index = children_index(records)
    out: list[ImageRecord] = []
    seen = {ami_id}
    queue = [ami_id]
    while queue:
        current = queue.pop(0)
        for child in index.get(current, []):
            if child.ami_id not in seen:
                seen.add(child.ami_id)
                out.append(child)
                queue.append(child.ami_id)
    return out


def lineage(
    clients: AwsClients, ami_id: str, *, regions: Sequence[str] | None = None
) -> LineageTree:
    """Ancestors via `factory:source-ami` (up to the first non-factory image) and descendants."""
    node, parent = _node_for(clients, ami_id)
    if not node.exists:
        raise ConfigError(f"image {ami_id} not found in {clients.region}; check the id and region")
    ancestors: list[LineageNode] = []
    seen = {ami_id}
    while parent and parent not in seen and len(ancestors) < 100:
        seen.add(parent)
        ancestor, parent = _node_for(clients, parent)
        ancestors.append(ancestor)
    records = list_images(clients, regions=regions)
    index = children_index(records)

    def _subtree(parent_id: str, visited: frozenset[str]) -> tuple[DescendantNode, ...]:
        return tuple(
            DescendantNode(_node(child), _subtree(child.ami_id, visited | {child.ami_id}))
            for child in sorted(index.get(parent_id, []), key=lambda r: r.ami_id)
            if child.ami_id not in visited
        )

    return LineageTree(node, tuple(ancestors), _subtree(ami_id, frozenset({ami_id})))


# ---- revocation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevokeTarget:
    ami_id: str
    region: str
    family: str | None
    already_revoked: bool
    channels: tuple[str, ...]  # channels still pointing at it: roll them back


@dataclass(frozen=True)
class RevokePlan:
    ami_id: str
    reason: str
    cascade: bool
    at: datetime
    targets: tuple[RevokeTarget, ...]


@dataclass(frozen=True)
class RevokedImage:
    ami_id: str
    region: str
    tagged: bool
    deprecation: str  # "enabled at <time>" | "unsupported by this endpoint: ..." | "skipped"
    channels: tuple[str, ...]


@dataclass(frozen=True)
class RevokeResult:
    ami_id: str
    reason: str
    at: datetime
    images: tuple[RevokedImage, ...]
    warnings: tuple[str, ...]


def plan_revoke(
    image: ImageRecord,
    catalog: Sequence[ImageRecord],
    *,
    reason: str,
    cascade: bool,
    at: datetime,
) -> RevokePlan:
    """Which images to revoke: the image, and with `cascade` every descendant in `catalog`."""
    if not reason.strip():
        raise ConfigError("a revocation needs a reason; pass --reason")
    images = [image, *(descendants_of(image.ami_id, catalog) if cascade else [])]
    targets = tuple(
        RevokeTarget(r.ami_id, r.region, r.family, r.revoked, r.channels) for r in images
    )
    return RevokePlan(image.ami_id, reason.strip(), cascade, at, targets)


def _deprecate_at(at: datetime) -> datetime:
    # AWS refuses a time in the past and rounds to the minute: the next whole minute.
    return (at + timedelta(minutes=1)).replace(second=0, microsecond=0)


def apply_revoke(plan: RevokePlan, clients: AwsClients) -> RevokeResult:
    """Tag each target revoked (reason, time) and enable EC2 image deprecation on it."""
    done: list[RevokedImage] = []
    warnings: list[str] = []
    at_text = plan.at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    for target in plan.targets:
        regional = clients if target.region == clients.region else clients.for_region(target.region)
        ec2 = regional.client("ec2")
        call(
            ec2,
            "CreateTags",
            Resources=[target.ami_id],
            Tags=tag_list(
                {
                    T.STATUS: T.Status.REVOKED.value,
                    T.REVOKED_REASON: plan.reason[:255],
                    T.REVOKED_AT: at_text,
                }
            ),
        )
        deprecate_at = _deprecate_at(plan.at.astimezone(UTC))
        try:
            ec2.enable_image_deprecation(ImageId=target.ami_id, DeprecateAt=deprecate_at)
            deprecation = f"enabled at {deprecate_at.isoformat()}"
        except Exception as exc:
            if not _unsupported(exc):
                with aws_errors(f"ec2:EnableImageDeprecation {target.ami_id}"):
                    raise
                raise
            deprecation = "unsupported by this endpoint"
            warnings.append(
                f"{target.ami_id}: EnableImageDeprecation is not supported by this endpoint; "
                "the image is tagged revoked but not deprecated in EC2"
            )
        for channel in target.channels:
            family, name = channel.split("/", 1)
            warnings.append(
                f"{target.ami_id} is still in channel {channel}: run "
                f"`factory channel rollback {family} {name}` or `factory channel set`"
            )
        done.append(RevokedImage(target.ami_id, target.region, True, deprecation, target.channels))
    return RevokeResult(plan.ami_id, plan.reason, plan.at, tuple(done), tuple(warnings))


def _unsupported(exc: BaseException) -> bool:
    """True if the endpoint says the API is not implemented (moto), nothing else."""
    if isinstance(exc, NotImplementedError):  # moto in-process
        return True
    code = error_code(exc) or ""
    text = str(exc)
    return code in {"InvalidAction", "NotImplemented", "UnsupportedOperation"} or (
        "not been implemented" in text or "not yet implemented" in text
    )
