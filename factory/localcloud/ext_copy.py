"""Local cloud extension: CopyImage of an AMI another account shared with the caller.

moto 5.2.5 looks the source image up only in the caller's own account, so the copy step of a
cross-account promotion fails with InvalidAMIID.NotFound. AWS lets the caller copy an AMI it
does not own when (EC2 User Guide, "Copy an Amazon EC2 AMI", cross-account copying; EC2 API
Reference, CopyImage):

- it has launch permission on the AMI: its account id, or the public group `all`; otherwise the
  image is invisible to it and CopyImage fails with `InvalidAMIID.NotFound`;
- it can read the AMI's storage: createVolumePermission on every backing EBS snapshot (its
  account id or `all`); otherwise CopyImage fails with `InvalidRequest`, "You do not have
  permission to access the storage of this ami.";
- the copy belongs to the caller, with new snapshots in the caller's account, and lives on after
  the share is withdrawn; launch permissions and user-defined tags are not copied. With
  `CopyImageTags` only the caller's own tags would be copied: of a shared AMI (tags attached by
  another account) only those with the `ec2:SharedTag/` prefix, never `aws:` system tags.
  `TagSpecifications` tag the new image (`image`) and its snapshots (`snapshot`);
- the source may be in another Region (`SourceRegion`); the copy is made where the request goes.

moto's CopyImage response is patched in this process (idempotently, like ext_images does for
RegisterImage) rather than replaced by an app handler, which could not pass a request on to moto:
when the source is in the caller's own backend, moto's own method runs unchanged (and with it
ec2hooks' CopyImage hook); only a source found in another account's backend takes the path
here. The runtime then gives the copy the source's filesystem layers (`ec2hooks.image_copied`),
so it boots.
Not emulated: KMS key grants on encrypted snapshots, billing product codes, organisation and OU
launch permissions.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError, InvalidAMIIdError, InvalidTaggableResourceType
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.utils import random_ami_id

from factory.localcloud import ec2hooks

STORAGE_DENIED = "You do not have permission to access the storage of this ami."
SHARED_TAG_PREFIX = "ec2:SharedTag/"
# what describes how an image boots, kept from the source (moto's own copy keeps fewer)
_BOOT_ATTRIBUTES = (
    "root_device_name",
    "root_device_type",
    "hypervisor",
    "sriov",
    "boot_mode",
    "ena_support",
)

_original: Any = None  # moto's own AmisResponse.copy_image while patched
_patch_lock = threading.Lock()


def install(cloud: Any) -> None:
    """Patch moto's CopyImage once per process (no new action: CopyImage is moto's)."""
    patch_moto()


def patch_moto() -> None:
    """Route CopyImage of another account's image here; safe to call repeatedly."""
    global _original  # noqa: PLW0603 - one process-wide patch of a third-party module
    with _patch_lock:
        if _original is not None:
            return
        original = AmisResponse.copy_image

        def copy_image(self: Any) -> Any:
            source_id = str(self._get_param("SourceImageId") or "")
            source_region = str(self._get_param("SourceRegion") or "")
            found = shared_source(self.current_account, source_region, source_id)
            if found is None:
                return original(self)  # the caller's own image (or none): moto as it is
            self.error_on_dryrun()
            ami = copy_shared_image(
                self.ec2_backend,
                found,
                name=self._get_param("Name"),
                description=self._get_param("Description"),
                copy_tags=bool(self._get_bool_param("CopyImageTags", False)),
                tag_specifications=self._get_param("TagSpecifications", []),
                encrypted=bool(self._get_bool_param("Encrypted", False)),
                kms_key_id=self._get_param("KmsKeyId"),
            )
            return ActionResult({"ImageId": ami.id})

        AmisResponse.copy_image = copy_image  # type: ignore[method-assign]
        _original = original


def uninstall() -> None:
    """Put moto's own CopyImage back (for tests that share a process with plain moto)."""
    global _original  # noqa: PLW0603
    with _patch_lock:
        if _original is not None:
            AmisResponse.copy_image = _original  # type: ignore[method-assign]
            _original = None


def shared_source(account: str, region: str, ami_id: str) -> Any | None:
    """The image `ami_id` in `region` if another account holds it and `account` does not."""
    if not ami_id or not region:
        return None
    own = _existing(account, region)
    if own is not None and (ami_id in own.amis or ami_id in own.deleted_amis):
        return None
    for owner in list(ec2_backends.keys()):
        if owner == account:
            continue
        backend = _existing(owner, region)
        if backend is not None and ami_id in backend.amis:
            return backend.amis[ami_id]
    return None


def _existing(account: str, region: str) -> Any | None:
    """moto's backend for account and region if it exists (looking must not create one)."""
    regions = dict.get(ec2_backends, account)
    if regions is None or region not in dict.keys(regions):
        return None
    return regions[region]


def check_permissions(account: str, source: Any) -> None:
    """Raise AWS's error unless `account` may launch `source` and read its snapshots."""
    launch = source.launch_permissions
    if {"Group": "all"} not in launch and {"UserId": account} not in launch:
        raise InvalidAMIIdError(source.id)
    snapshot = getattr(source, "ebs_snapshot", None)
    if snapshot is None or snapshot.owner_id == account:
        return
    if account not in snapshot.create_volume_permission_userids and (
        "all" not in snapshot.create_volume_permission_groups
    ):
        raise EC2ClientError("InvalidRequest", STORAGE_DENIED)


def _requested_tags(specs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """(image tags, snapshot tags) from CopyImage's TagSpecifications."""
    image: dict[str, str] = {}
    snapshot: dict[str, str] = {}
    for spec in specs:
        kind = spec.get("ResourceType")
        if kind not in ("image", "snapshot"):
            raise InvalidTaggableResourceType(str(kind))
        target = image if kind == "image" else snapshot
        for tag in spec.get("Tags", []):
            target[str(tag["Key"])] = str(tag.get("Value", ""))
    return image, snapshot


def copy_shared_image(
    backend: Any,
    source: Any,
    *,
    name: str | None = None,
    description: str | None = None,
    copy_tags: bool = False,
    tag_specifications: list[dict[str, Any]] | None = None,
    encrypted: bool = False,
    kms_key_id: str | None = None,
) -> Any:
    """CopyImage of another account's `source` into `backend` (the caller's account and region)."""
    account = str(backend.account_id)
    check_permissions(account, source)
    image_tags, snapshot_tags = _requested_tags(tag_specifications or [])
    if copy_tags:
        shared = {
            str(tag["key"]): str(tag["value"])
            for tag in source.get_tags()
            if str(tag["key"]).startswith(SHARED_TAG_PREFIX)
        }
        image_tags = {**shared, **image_tags}
    ami_id = random_ami_id()
    source_snapshot = getattr(source, "ebs_snapshot", None)
    ami = Ami(
        backend,
        ami_id,
        source_ami=source,
        name=name,
        description=description,
        owner_id=account,
        region_name=f"{backend.region_name}a",
        snapshot_description=(
            f"Copied for DestinationAmi {ami_id} from SourceAmi {source.id} for SourceSnapshot "
            f"{getattr(source_snapshot, 'id', '')}"
        ),
    )
    for attribute in _BOOT_ATTRIBUTES:
        if hasattr(source, attribute):
            setattr(ami, attribute, getattr(source, attribute))
    snapshot = ami.ebs_snapshot
    if encrypted or kms_key_id or getattr(source_snapshot, "encrypted", False):
        snapshot.encrypted = True
        snapshot.kms_key_id = kms_key_id or getattr(source_snapshot, "kms_key_id", None)
    for key, value in image_tags.items():
        ami.add_tag(key, value)
    for key, value in snapshot_tags.items():
        snapshot.add_tag(key, value)
    backend.amis[ami_id] = ami
    ec2hooks.image_copied(source.id, ami_id)
    return ami
