"""EC2 images and their snapshots: describe, tag, deprecate, share, copy, deregister.

The only module that calls DescribeImages. Every function takes the `AwsClients` of the
account and region it acts in and returns typed values (`Image`, `Snapshot`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from factory.aws.api import call, module_permissions, paginate, requires, tag_filters, tag_list
from factory.aws.model import Image, parse_time, tags_of
from factory.aws.session import AwsClients
from factory.errors import AwsError, UnsupportedOperation

NOT_FOUND = ("InvalidAMIID.*",)
SNAPSHOT_GONE = ("InvalidSnapshot.NotFound",)
TAG_BATCH = 1000  # CreateTags/DeleteTags: resources per call
PAGE = 1000  # DescribeImages/DescribeSnapshots: the largest page AWS gives


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    region: str
    owner_id: str = ""
    started_at: datetime | None = None
    size_gib: int = 0
    description: str = ""
    encrypted: bool = False
    kms_key_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, item: Mapping[str, Any], region: str) -> Snapshot:
        return cls(
            snapshot_id=str(item["SnapshotId"]),
            region=region,
            owner_id=str(item.get("OwnerId", "")),
            started_at=parse_time(item.get("StartTime")),
            size_gib=int(item.get("VolumeSize") or 0),
            description=str(item.get("Description") or ""),
            encrypted=bool(item.get("Encrypted")),
            kms_key_id=item.get("KmsKeyId") or None,
            tags=tags_of(item),
        )


@dataclass(frozen=True)
class LaunchPermission:
    """Who may launch an image: an account, a group (`all`: public), an organisation or OU."""

    user_id: str | None = None
    group: str | None = None
    organization_arn: str | None = None
    organizational_unit_arn: str | None = None

    @property
    def public(self) -> bool:
        return self.group == "all"

    def describe(self) -> str:
        if self.user_id:
            return f"account {self.user_id}"
        if self.group:
            return f"group {self.group}"
        if self.organization_arn:
            return f"organization {self.organization_arn}"
        return f"organizational unit {self.organizational_unit_arn}"


@dataclass(frozen=True)
class ImageReference:
    """A resource that uses an image, as DescribeImageReferences reports it."""

    ami_id: str
    resource_type: str
    arn: str


# ---- reads -----------------------------------------------------------------------------------


@requires("ec2:DescribeImages")
def get(clients: AwsClients, ami_id: str) -> Image | None:
    """One image (any owner, deprecated or disabled too), or None if it does not exist."""
    found = call(
        clients.client("ec2"),
        "DescribeImages",
        ok=NOT_FOUND,
        about=ami_id,
        ImageIds=[ami_id],
        IncludeDeprecated=True,
        IncludeDisabled=True,
    )
    items = (found or {}).get("Images") or []
    return Image.from_api(items[0], clients.region) if items else None


@requires("ec2:DescribeImages")
def get_many(clients: AwsClients, ami_ids: Collection[str]) -> dict[str, Image]:
    """The images among `ami_ids` that exist, by id, in one call (a filter: no error for gone
    ones)."""
    wanted = sorted({a for a in ami_ids if a})
    if not wanted:
        return {}
    images = paginate(
        clients.client("ec2"),
        "DescribeImages",
        "Images",
        Filters=[{"Name": "image-id", "Values": wanted}],
        IncludeDeprecated=True,
        IncludeDisabled=True,
    )
    return {i.ami_id: i for i in (Image.from_api(item, clients.region) for item in images)}


@requires("ec2:DescribeImages")
def find(
    clients: AwsClients,
    *,
    owners: Sequence[str] = ("self",),
    tags: Mapping[str, str | None] | None = None,
    name: str | None = None,
    state: str | None = None,
    executable_by: str | None = None,
    include_deprecated: bool = False,
) -> Iterator[Image]:
    """Images by owner and filters: `tags` values match exactly, None asks only for the key.

    An owner always sees its own deprecated images; `include_deprecated` also asks for other
    owners' deprecated and disabled ones.
    """
    filters = tag_filters(tags or {})
    if name is not None:
        filters.append({"Name": "name", "Values": [name]})
    if state is not None:
        filters.append({"Name": "state", "Values": [state]})
    kwargs: dict[str, Any] = {"Owners": list(owners), "IncludeDeprecated": include_deprecated}
    if filters:
        kwargs["Filters"] = filters
    if executable_by is not None:
        kwargs["ExecutableUsers"] = [executable_by]
    if include_deprecated:
        kwargs["IncludeDisabled"] = True
    for item in paginate(
        clients.client("ec2"),
        "DescribeImages",
        "Images",
        PaginationConfig={"PageSize": PAGE},
        **kwargs,
    ):
        yield Image.from_api(item, clients.region)


@requires("ec2:DescribeSnapshots")
def snapshots(
    clients: AwsClients,
    *,
    snapshot_ids: Sequence[str] | None = None,
    owner: str | None = None,
    tag_key: str | None = None,
) -> Iterator[Snapshot]:
    kwargs: dict[str, Any] = {}
    if snapshot_ids is not None:
        if not snapshot_ids:
            return
        kwargs["SnapshotIds"] = list(snapshot_ids)
    else:
        kwargs["PaginationConfig"] = {"PageSize": PAGE}
    if owner is not None:
        kwargs["OwnerIds"] = [owner]
    if tag_key is not None:
        kwargs["Filters"] = [{"Name": "tag-key", "Values": [tag_key]}]
    for item in paginate(clients.client("ec2"), "DescribeSnapshots", "Snapshots", **kwargs):
        yield Snapshot.from_api(item, clients.region)


@requires("ec2:DescribeImageAttribute")
def launch_permissions(clients: AwsClients, ami_id: str) -> tuple[LaunchPermission, ...]:
    found = call(
        clients.client("ec2"),
        "DescribeImageAttribute",
        about=ami_id,
        ImageId=ami_id,
        Attribute="launchPermission",
    )
    return tuple(
        LaunchPermission(
            user_id=p.get("UserId"),
            group=p.get("Group"),
            organization_arn=p.get("OrganizationArn"),
            organizational_unit_arn=p.get("OrganizationalUnitArn"),
        )
        for p in found.get("LaunchPermissions", [])
    )


@requires("ec2:DescribeImageReferences")
def references(clients: AwsClients, ami_ids: Sequence[str]) -> list[ImageReference]:
    """What uses these images (instances, launch templates, SSM parameters, recipes).

    Raises UnsupportedOperation where the endpoint lacks the call (older regions, the local
    cloud), also when it answers with a server error for it.
    """
    if not ami_ids:
        return []
    try:
        items = list(
            paginate(
                clients.client("ec2"),
                "DescribeImageReferences",
                "ImageReferences",
                ImageIds=list(ami_ids),
                IncludeAllResourceTypes=True,
            )
        )
    except UnsupportedOperation:
        raise
    except AwsError as exc:
        # an endpoint without the call may answer garbage or a server error instead of saying so
        if exc.code in {"ResponseParserError", "InternalError", "InternalFailure"}:
            raise UnsupportedOperation(exc.message, code=exc.code) from None
        raise
    return [
        ImageReference(str(r["ImageId"]), str(r.get("ResourceType", "?")), str(r.get("Arn", "?")))
        for r in items
    ]


# ---- changes ---------------------------------------------------------------------------------


@requires("ec2:CreateTags")
def tag(clients: AwsClients, resource_ids: Sequence[str], tags: Mapping[str, str]) -> None:
    """Add or overwrite tags on images and snapshots (batched)."""
    for start in range(0, len(resource_ids), TAG_BATCH):
        call(
            clients.client("ec2"),
            "CreateTags",
            Resources=list(resource_ids[start : start + TAG_BATCH]),
            Tags=tag_list(tags),
        )


@requires("ec2:DeleteTags")
def untag(clients: AwsClients, resource_ids: Sequence[str], keys: Collection[str]) -> None:
    for start in range(0, len(resource_ids), TAG_BATCH):
        call(
            clients.client("ec2"),
            "DeleteTags",
            Resources=list(resource_ids[start : start + TAG_BATCH]),
            Tags=[{"Key": k} for k in sorted(keys)],
        )


@requires("ec2:EnableImageDeprecation")
def deprecate(clients: AwsClients, ami_id: str, at: datetime) -> None:
    """Deprecate at `at` (AWS rounds to the minute and refuses the past: pass a future time)."""
    call(
        clients.client("ec2"),
        "EnableImageDeprecation",
        about=ami_id,
        ImageId=ami_id,
        DeprecateAt=at.astimezone(UTC),
    )


@requires("ec2:DisableImageDeprecation")
def undeprecate(clients: AwsClients, ami_id: str) -> None:
    call(clients.client("ec2"), "DisableImageDeprecation", about=ami_id, ImageId=ami_id)


@requires("ec2:DeregisterImage")
def deregister(clients: AwsClients, ami_id: str, *, delete_snapshots: bool = False) -> bool:
    """Deregister; False if it was already gone. Errors (protection) carry AWS's code."""
    kwargs: dict[str, Any] = {"ImageId": ami_id}
    if delete_snapshots:
        kwargs["DeleteAssociatedSnapshots"] = True
    done = call(clients.client("ec2"), "DeregisterImage", ok=NOT_FOUND, about=ami_id, **kwargs)
    return done is not None


@requires("ec2:DeleteSnapshot")
def delete_snapshot(clients: AwsClients, snapshot_id: str) -> bool:
    """Delete; False if it was already gone. One in use raises (code InvalidSnapshot.InUse)."""
    done = call(
        clients.client("ec2"),
        "DeleteSnapshot",
        ok=SNAPSHOT_GONE,
        about=snapshot_id,
        SnapshotId=snapshot_id,
    )
    return done is not None


@requires("ec2:ModifyImageAttribute", "ec2:ModifySnapshotAttribute")
def share(clients: AwsClients, image: Image, account: str, *, add: bool = True) -> None:
    """Let `account` launch the image and create volumes from its snapshots (or stop it)."""
    ec2 = clients.client("ec2")
    call(
        ec2,
        "ModifyImageAttribute",
        about=image.ami_id,
        ImageId=image.ami_id,
        LaunchPermission={"Add" if add else "Remove": [{"UserId": account}]},
    )
    for snapshot_id in image.snapshot_ids:
        call(
            ec2,
            "ModifySnapshotAttribute",
            about=snapshot_id,
            SnapshotId=snapshot_id,
            Attribute="createVolumePermission",
            OperationType="add" if add else "remove",
            UserIds=[account],
        )


@requires("ec2:CopyImage", "ec2:CreateTags")
def copy(
    clients: AwsClients,
    *,
    source_ami: str,
    source_region: str,
    name: str,
    description: str = "",
    tags: Mapping[str, str] | None = None,
    kms_key_id: str | None = None,
) -> str:
    """CopyImage into the clients' account and region; the new AMI's id (tagged at creation)."""
    kwargs: dict[str, Any] = {
        "SourceImageId": source_ami,
        "SourceRegion": source_region,
        "Name": name,
    }
    if tags:
        kwargs["TagSpecifications"] = [{"ResourceType": "image", "Tags": tag_list(tags)}]
    if description:
        kwargs["Description"] = description
    if kms_key_id:
        kwargs["Encrypted"] = True
        kwargs["KmsKeyId"] = kms_key_id
    about = f"{source_ami} -> {clients.account_id}/{clients.region}"
    return str(call(clients.client("ec2"), "CopyImage", about=about, **kwargs)["ImageId"])


PERMISSIONS = module_permissions(__name__)
