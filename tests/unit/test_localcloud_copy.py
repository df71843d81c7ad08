"""CopyImage of an AMI shared from another account, over HTTP against an in-process local cloud.

The owner account is the local cloud's default; the caller is another account reached through
STS AssumeRole (moto derives the account from the access key, as AWS does).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import boto3
import botocore.exceptions
import pytest
from werkzeug.serving import make_server

from factory.localcloud import ACCESS_KEY_ID, ACCOUNT_ID, SECRET_ACCESS_KEY, ec2hooks, ext_copy
from factory.localcloud.app import LocalCloudApp

SOURCE_REGION = "ap-southeast-2"
TARGET_REGION = "ca-central-1"
CALLER = "246813579024"
STRANGER = "135792468013"


@dataclass(frozen=True)
class Cloud:
    endpoint: str

    def client(self, region: str, account: str | None = None) -> Any:
        keys = {"aws_access_key_id": ACCESS_KEY_ID, "aws_secret_access_key": SECRET_ACCESS_KEY}
        if account is not None:
            sts = boto3.client("sts", region_name=region, endpoint_url=self.endpoint, **keys)
            creds = sts.assume_role(
                RoleArn=f"arn:aws:iam::{account}:role/copier", RoleSessionName="copy-test"
            )["Credentials"]
            keys = {
                "aws_access_key_id": creds["AccessKeyId"],
                "aws_secret_access_key": creds["SecretAccessKey"],
                "aws_session_token": creds["SessionToken"],
            }
        return boto3.client("ec2", region_name=region, endpoint_url=self.endpoint, **keys)


class FakeRuntime:
    def __init__(self) -> None:
        self.copied: list[tuple[str, str]] = []

    def image_copied(self, source: str, ami_id: str) -> None:
        self.copied.append((source, ami_id))


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    app = LocalCloudApp()
    ext_copy.install(SimpleNamespace(app=app))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Cloud(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        ext_copy.uninstall()  # later tests use plain moto (mock_aws), without the extension


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    fake = FakeRuntime()
    monkeypatch.setattr(ec2hooks, "_runtime", lambda: fake)
    return fake


def _code(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def _image(ec2: Any, **tags: str) -> tuple[str, str]:
    """A registered image of the owner account with tags; (AMI id, its snapshot id)."""
    ami = ec2.register_image(Name=f"shared-{uuid.uuid4().hex[:8]}")["ImageId"]
    if tags:
        ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert {t["Key"]: t["Value"] for t in image.get("Tags", [])} == tags
    return ami, image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]


def _share(ec2: Any, ami: str, snapshot: str, account: str, *, storage: bool = True) -> None:
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"UserId": account}]})
    if storage:
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot,
            Attribute="createVolumePermission",
            OperationType="add",
            UserIds=[account],
        )


def _unshare(ec2: Any, ami: str, snapshot: str, account: str) -> None:
    ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Remove": [{"UserId": account}]})
    ec2.modify_snapshot_attribute(
        SnapshotId=snapshot,
        Attribute="createVolumePermission",
        OperationType="remove",
        UserIds=[account],
    )


def test_a_shared_image_is_copied_into_the_callers_account(
    cloud: Cloud, runtime: FakeRuntime
) -> None:
    owner = cloud.client(SOURCE_REGION)
    ami, snapshot = _image(owner, team="web", **{"ec2:SharedTag/tier": "gold"})
    _share(owner, ami, snapshot, CALLER)
    caller = cloud.client(TARGET_REGION, CALLER)
    copy_id = caller.copy_image(
        SourceImageId=ami,
        SourceRegion=SOURCE_REGION,
        Name="promoted",
        Description="a copy",
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "stage", "Value": "prod"}]},
            {"ResourceType": "snapshot", "Tags": [{"Key": "stage", "Value": "prod-disk"}]},
        ],
    )["ImageId"]
    assert copy_id != ami
    [image] = caller.describe_images(Owners=["self"], ImageIds=[copy_id])["Images"]
    assert (image["OwnerId"], image["Name"], image["Description"]) == (
        CALLER,
        "promoted",
        "a copy",
    )
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == {"stage": "prod"}  # not the source's
    new_snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert new_snapshot != snapshot
    [snap] = caller.describe_snapshots(SnapshotIds=[new_snapshot])["Snapshots"]
    assert snap["OwnerId"] == CALLER
    assert {t["Key"]: t["Value"] for t in snap["Tags"]} == {"stage": "prod-disk"}
    assert runtime.copied == [(ami, copy_id)]  # the copy gets the source's layers
    # the owner's account is unchanged: the copy is not there
    assert (
        owner.describe_images(Owners=["self"], Filters=[{"Name": "image-id", "Values": [copy_id]}])[
            "Images"
        ]
        == []
    )


def test_copy_image_tags_copies_only_shared_tags_of_another_accounts_image(
    cloud: Cloud, runtime: FakeRuntime
) -> None:
    owner = cloud.client(SOURCE_REGION)
    ami, snapshot = _image(owner, team="web", **{"ec2:SharedTag/tier": "gold"})
    _share(owner, ami, snapshot, CALLER)
    caller = cloud.client(SOURCE_REGION, CALLER)  # same region, other account
    copy_id = caller.copy_image(
        SourceImageId=ami, SourceRegion=SOURCE_REGION, Name="tagged", CopyImageTags=True
    )["ImageId"]
    [image] = caller.describe_images(ImageIds=[copy_id])["Images"]
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == {"ec2:SharedTag/tier": "gold"}
    assert image["OwnerId"] == CALLER
    assert runtime.copied == [(ami, copy_id)]


def test_a_public_image_can_be_copied_by_any_account(cloud: Cloud, runtime: FakeRuntime) -> None:
    owner = cloud.client(SOURCE_REGION)
    ami, snapshot = _image(owner)
    owner.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]})
    owner.modify_snapshot_attribute(
        SnapshotId=snapshot,
        Attribute="createVolumePermission",
        OperationType="add",
        GroupNames=["all"],
    )
    copy_id = cloud.client(TARGET_REGION, STRANGER).copy_image(
        SourceImageId=ami, SourceRegion=SOURCE_REGION, Name="public-copy"
    )["ImageId"]
    assert runtime.copied == [(ami, copy_id)]


def test_without_launch_permission_the_image_does_not_exist_for_the_caller(
    cloud: Cloud, runtime: FakeRuntime
) -> None:
    owner = cloud.client(SOURCE_REGION)
    ami, snapshot = _image(owner)
    _share(owner, ami, snapshot, CALLER)  # shared with CALLER, not with STRANGER
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        cloud.client(TARGET_REGION, STRANGER).copy_image(
            SourceImageId=ami, SourceRegion=SOURCE_REGION, Name="nope"
        )
    assert _code(exc) == "InvalidAMIID.NotFound"
    assert ami in exc.value.response["Error"]["Message"]
    assert runtime.copied == []


def test_without_snapshot_permission_the_storage_is_refused(
    cloud: Cloud, runtime: FakeRuntime
) -> None:
    owner = cloud.client(SOURCE_REGION)
    ami, snapshot = _image(owner)
    _share(owner, ami, snapshot, CALLER, storage=False)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        cloud.client(TARGET_REGION, CALLER).copy_image(
            SourceImageId=ami, SourceRegion=SOURCE_REGION, Name="nope"
        )
    assert _code(exc) == "InvalidRequest"
    assert exc.value.response["Error"]["Message"] == ext_copy.STORAGE_DENIED
    assert runtime.copied == []


def test_the_copy_stays_after_the_share_is_withdrawn(cloud: Cloud, runtime: FakeRuntime) -> None:
    owner = cloud.client(SOURCE_REGION)
    ami, snapshot = _image(owner)
    _share(owner, ami, snapshot, CALLER)
    caller = cloud.client(TARGET_REGION, CALLER)
    copy_id = caller.copy_image(SourceImageId=ami, SourceRegion=SOURCE_REGION, Name="kept")[
        "ImageId"
    ]
    _unshare(owner, ami, snapshot, CALLER)
    [image] = caller.describe_images(ImageIds=[copy_id])["Images"]
    assert (image["OwnerId"], image["State"]) == (CALLER, "available")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        caller.copy_image(SourceImageId=ami, SourceRegion=SOURCE_REGION, Name="again")
    assert _code(exc) == "InvalidAMIID.NotFound"
    assert runtime.copied == [(ami, copy_id)]


def test_a_copy_in_the_same_account_is_moto_s_own(cloud: Cloud, runtime: FakeRuntime) -> None:
    owner = cloud.client(SOURCE_REGION)
    ami, _snapshot = _image(owner, team="web")
    copy_id = cloud.client(TARGET_REGION).copy_image(
        SourceImageId=ami, SourceRegion=SOURCE_REGION, Name="same-account"
    )["ImageId"]
    [image] = cloud.client(TARGET_REGION).describe_images(ImageIds=[copy_id])["Images"]
    assert (image["OwnerId"], image["Name"]) == (ACCOUNT_ID, "same-account")
    assert "Tags" not in image or image["Tags"] == []
    assert runtime.copied == []  # moto's own path: ec2hooks' CopyImage hook (not installed here)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        cloud.client(TARGET_REGION).copy_image(
            SourceImageId="ami-0123456789abcdef0", SourceRegion=SOURCE_REGION, Name="missing"
        )
    assert _code(exc) == "InvalidAMIID.NotFound"
