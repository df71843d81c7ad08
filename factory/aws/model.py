"""The typed values the gateways return: one for an AMI, one for an instance.

Every stage reads AMIs and instances as these, never as DescribeImages/DescribeInstances dicts.
The `factory:` tags are read through properties named for what they mean (family, status,
parent), so the rules about them (what "revoked" means) live in one place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from factory import tags as T


def parse_time(value: object) -> datetime | None:
    """An AWS time (ISO 8601 text, or a datetime) as an aware datetime; None if absent or bad."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def tags_of(item: Mapping[str, Any]) -> dict[str, str]:
    return {str(t["Key"]): str(t.get("Value", "")) for t in item.get("Tags") or []}


def is_revoked(image_tags: Mapping[str, str]) -> bool:
    """Whether tags mark an image revoked (channels, builds and rollouts refuse it)."""
    return image_tags.get(T.STATUS) == T.Status.REVOKED.value or T.REVOKED_AT in image_tags


@dataclass(frozen=True)
class ImageIdentity:
    """What makes an AMI this AMI: a replaced image (same name, new id) has another identity."""

    ami_id: str
    name: str
    architecture: str
    snapshot_ids: tuple[str, ...]

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
class Image:
    """An AMI as EC2 describes it, in one account and region."""

    ami_id: str
    region: str
    name: str = ""
    state: str = "available"
    state_reason: str = ""  # why it is in that state (a failed copy says why)
    owner_id: str = ""
    description: str = ""
    architecture: str = ""
    creation_date: datetime | None = None
    deprecation_time: datetime | None = None
    public: bool = False
    protection: str = "disabled"  # DeregistrationProtection: disabled | enabled | enabled-...
    snapshot_ids: tuple[str, ...] = ()  # sorted
    encrypted: bool = False
    kms_key_ids: tuple[str, ...] = ()  # the EBS mappings' named keys (empty: the default key)
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, item: Mapping[str, Any], region: str) -> Image:
        ebs = [m["Ebs"] for m in item.get("BlockDeviceMappings") or [] if m.get("Ebs")]
        return cls(
            ami_id=str(item["ImageId"]),
            region=region,
            name=str(item.get("Name", "")),
            state=str(item.get("State", "available")),
            state_reason=str((item.get("StateReason") or {}).get("Message", "")),
            owner_id=str(item.get("OwnerId", "")),
            description=str(item.get("Description") or ""),
            architecture=str(item.get("Architecture", "")),
            creation_date=parse_time(item.get("CreationDate")),
            deprecation_time=parse_time(item.get("DeprecationTime")),
            public=bool(item.get("Public")),
            protection=str(item.get("DeregistrationProtection") or "disabled"),
            snapshot_ids=tuple(sorted(str(e["SnapshotId"]) for e in ebs if e.get("SnapshotId"))),
            encrypted=any(bool(e.get("Encrypted")) for e in ebs),
            kms_key_ids=tuple(sorted({str(e["KmsKeyId"]) for e in ebs if e.get("KmsKeyId")})),
            tags=tags_of(item),
        )

    # ---- what the factory's tags say ----

    @property
    def family(self) -> str | None:
        return self.tags.get(T.FAMILY)

    @property
    def version(self) -> str | None:
        return self.tags.get(T.VERSION)

    @property
    def build_id(self) -> str | None:
        return self.tags.get(T.BUILD_ID)

    @property
    def parent(self) -> str | None:
        """The image it was built from (`factory:source-ami`)."""
        return self.tags.get(T.SOURCE_AMI)

    @property
    def revoked(self) -> bool:
        return is_revoked(self.tags)

    @property
    def status(self) -> str:
        """`factory:status` (revoked whenever the revocation tags say so); "" if untagged."""
        return T.Status.REVOKED.value if self.revoked else self.tags.get(T.STATUS, "")

    @property
    def verified(self) -> bool:
        return self.status == T.Status.VERIFIED.value

    @property
    def created_at(self) -> datetime | None:
        """When its build started (`factory:created-at`), else EC2's CreationDate."""
        return parse_time(self.tags.get(T.CREATED_AT)) or self.creation_date

    @property
    def exists(self) -> bool:
        return self.state not in {"deregistered", "disabled"}

    @property
    def protected(self) -> bool:
        return self.protection.startswith("enabled")

    def deprecated(self, now: datetime) -> bool:
        """Whether its deprecation time has passed (it still launches from templates)."""
        return self.deprecation_time is not None and self.deprecation_time <= now

    @property
    def identity(self) -> ImageIdentity:
        return ImageIdentity(self.ami_id, self.name, self.architecture, self.snapshot_ids)


@dataclass(frozen=True)
class Instance:
    """An EC2 instance as DescribeInstances describes it."""

    instance_id: str
    region: str
    image_id: str = ""
    state: str = "pending"
    state_reason: str = ""
    instance_type: str = ""
    zone: str = ""
    private_ip: str | None = None
    public_ip: str | None = None
    key_name: str | None = None
    launch_time: datetime | None = None
    subnet_id: str | None = None
    vpc_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, item: Mapping[str, Any], region: str) -> Instance:
        return cls(
            instance_id=str(item["InstanceId"]),
            region=region,
            image_id=str(item.get("ImageId", "")),
            state=str((item.get("State") or {}).get("Name", "pending")),
            state_reason=str((item.get("StateReason") or {}).get("Message", "")),
            instance_type=str(item.get("InstanceType", "")),
            zone=str((item.get("Placement") or {}).get("AvailabilityZone", "")),
            private_ip=item.get("PrivateIpAddress") or None,
            public_ip=item.get("PublicIpAddress") or None,
            key_name=item.get("KeyName") or None,
            launch_time=parse_time(item.get("LaunchTime")),
            subnet_id=item.get("SubnetId") or None,
            vpc_id=item.get("VpcId") or None,
            security_group_ids=tuple(
                str(g["GroupId"]) for g in item.get("SecurityGroups") or [] if g.get("GroupId")
            ),
            tags=tags_of(item),
        )

    @property
    def address(self) -> str | None:
        """Where this machine reaches it: its public address, else its private one."""
        return self.public_ip or self.private_ip

    @property
    def gone(self) -> bool:
        return self.state in {"shutting-down", "terminated"}

    @property
    def live(self) -> bool:
        """Anything but terminated (a stopped instance still uses its image)."""
        return self.state != "terminated"
