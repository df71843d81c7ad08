"""The image catalog: the factory's AMIs as their `factory:` tags describe them.

State lives in AWS: the catalog is read from DescribeImages (tag-filtered, paginated) in every
configured region, joined with channel membership from SSM. Lineage follows the
`factory:source-ami` tag; revocation tags an image (and, with cascade, its descendants)
revoked and asks EC2 to deprecate it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from factory import tags as T
from factory.aws import AwsClients, images, parameters
from factory.aws.model import Image, ImageIdentity, is_revoked
from factory.errors import ConfigError, RefusedError, UnsupportedOperation

__all__ = ["ImageIdentity", "ImageRecord", "is_revoked"]

CHANNEL_ROOT = "/factory"


@dataclass(frozen=True)
class ImageRecord:
    """One factory image as the catalog lists it: the AMI and the channels that point at it."""

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
    in_use: bool | None  # from an in-use scan (factory.inuse); None: unknown
    revoked: bool
    image: Image = field(metadata={"internal": True})

    @classmethod
    def of(cls, image: Image, channels: tuple[str, ...], now: datetime) -> ImageRecord:
        created = image.created_at
        return cls(
            ami_id=image.ami_id,
            region=image.region,
            name=image.name,
            family=image.family,
            version=image.version,
            status=image.status or "unknown",
            parent=image.parent,
            created_at=created,
            age_days=round((now - created).total_seconds() / 86400, 2) if created else None,
            channels=channels,
            in_use=None,
            revoked=image.revoked,
            image=image,
        )

    @property
    def tags(self) -> Mapping[str, str]:
        return self.image.tags

    @property
    def identity(self) -> ImageIdentity:
        return self.image.identity


def channel_membership(clients: AwsClients) -> dict[str, tuple[str, ...]]:
    """AMI id -> channels (`family/channel`) whose SSM parameter points at it, in one region."""
    found: dict[str, list[str]] = {}
    for param in parameters.by_path(clients, CHANNEL_ROOT):
        parts = param.name.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "factory":
            found.setdefault(param.value, []).append(f"{parts[1]}/{parts[2]}")
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
    records: list[ImageRecord] = []
    for region in regions or (clients.region,):
        regional = clients if region == clients.region else clients.for_region(region)
        membership = channel_membership(regional)
        for image in images.find(regional, tags={T.FAMILY: family}):
            record = ImageRecord.of(image, membership.get(image.ami_id, ()), now)
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
    image = images.get(clients, ami_id)
    if image is None:
        raise ConfigError(f"image {ami_id} not found in {clients.region}; check the id and region")
    return ImageRecord.of(image, channel_membership(clients).get(ami_id, ()), datetime.now(UTC))


def refuse_revoked_parent(clients: AwsClients, source_ami: str) -> None:
    """For builds: raise RefusedError if the source (parent) image is revoked."""
    image = images.get(clients, source_ami)
    if image is not None and image.revoked:
        reason = image.tags.get(T.REVOKED_REASON, "no reason recorded")
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
    image = images.get(clients, ami_id)
    if image is None:
        return LineageNode(ami_id, "", None, None, "deregistered", exists=False), None
    node = LineageNode(
        ami_id,
        image.name,
        image.family,
        image.version,
        image.status or ("external" if image.family is None else "unknown"),
    )
    return node, image.parent


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
    revoked_tags = {
        T.STATUS: T.Status.REVOKED.value,
        T.REVOKED_REASON: plan.reason[:255],
        T.REVOKED_AT: at_text,
    }
    for target in plan.targets:
        regional = clients if target.region == clients.region else clients.for_region(target.region)
        images.tag(regional, [target.ami_id], revoked_tags)
        deprecate_at = _deprecate_at(plan.at.astimezone(UTC))
        try:
            images.deprecate(regional, target.ami_id, deprecate_at)
            deprecation = f"enabled at {deprecate_at.isoformat()}"
        except UnsupportedOperation:
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


def revoke_image(
    clients: AwsClients,
    ami_id: str,
    *,
    reason: str,
    cascade: bool,
    regions: Sequence[str],
    dry_run: bool = False,
    now: datetime | None = None,
) -> RevokePlan | RevokeResult:
    """Revoke an image (and with `cascade` its descendants in `regions`): the plan, or what
    was done."""
    image = find_image(clients, ami_id)
    catalog = list_images(clients, regions=regions) if cascade else []
    plan = plan_revoke(image, catalog, reason=reason, cascade=cascade, at=now or datetime.now(UTC))
    return plan if dry_run else apply_revoke(plan, clients)
