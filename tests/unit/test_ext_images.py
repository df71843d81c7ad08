"""The local cloud's image lifecycle extension, over HTTP against an in-process server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import boto3
import botocore.exceptions
import pytest
from werkzeug.serving import make_server

from factory.localcloud import ACCESS_KEY_ID, SECRET_ACCESS_KEY, ext_images
from factory.localcloud.app import LocalCloudApp


@pytest.fixture(scope="module")
def ec2() -> Iterator[Any]:
    app = LocalCloudApp()
    ext_images.install(SimpleNamespace(app=app))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield boto3.client(
        "ec2",
        region_name="eu-central-1",
        endpoint_url=f"http://127.0.0.1:{server.server_port}",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    server.shutdown()


def _code(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def _describe(ec2: Any, ami: str) -> dict[str, Any]:
    return ec2.describe_images(ImageIds=[ami])["Images"][0]  # type: ignore[no-any-return]


def test_deprecation_shows_in_describe_images_and_can_be_cancelled(ec2: Any) -> None:
    ami = ec2.register_image(Name="deprecate-me")["ImageId"]
    assert "DeprecationTime" not in _describe(ec2, ami)
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2, seconds=40)
    assert ec2.enable_image_deprecation(ImageId=ami, DeprecateAt=at)["Return"] is True
    shown = _describe(ec2, ami)["DeprecationTime"]
    expected = at.replace(second=0) + timedelta(minutes=1 if at.second >= 30 else 0)
    assert shown == expected.strftime("%Y-%m-%dT%H:%M:00.000Z")
    assert ec2.disable_image_deprecation(ImageId=ami)["Return"] is True
    assert "DeprecationTime" not in _describe(ec2, ami)


def test_deprecation_refuses_the_past_and_unknown_images(ec2: Any) -> None:
    ami = ec2.register_image(Name="past")["ImageId"]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        ec2.enable_image_deprecation(ImageId=ami, DeprecateAt=datetime(2020, 1, 1, tzinfo=UTC))
    assert _code(exc) == "InvalidParameterValue"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        ec2.enable_image_deprecation(
            ImageId="ami-0000000000000dead", DeprecateAt=datetime.now(UTC) + timedelta(days=1)
        )
    assert _code(exc) == "InvalidAMIID.NotFound"


def test_deregistration_protection_blocks_deregister_until_disabled(ec2: Any) -> None:
    ami = ec2.register_image(Name="protected")["ImageId"]
    assert _describe(ec2, ami)["DeregistrationProtection"] == "disabled"
    assert ec2.enable_image_deregistration_protection(ImageId=ami)["Return"] == (
        "enabled-without-cooldown"
    )
    assert _describe(ec2, ami)["DeregistrationProtection"] == "enabled-without-cooldown"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        ec2.deregister_image(ImageId=ami)
    assert _code(exc) == ext_images.PROTECTED_ERROR
    assert ec2.disable_image_deregistration_protection(ImageId=ami)["Return"] == "disabled"
    ec2.deregister_image(ImageId=ami)
    assert (
        ec2.describe_images(Owners=["self"], Filters=[{"Name": "image-id", "Values": [ami]}])[
            "Images"
        ]
        == []
    )


def test_protection_with_cooldown_stays_for_24_hours_after_disabling(ec2: Any) -> None:
    ami = ec2.register_image(Name="cooldown")["ImageId"]
    assert (
        ec2.enable_image_deregistration_protection(ImageId=ami, WithCooldown=True)["Return"]
        == "enabled-with-cooldown"
    )
    state = ec2.disable_image_deregistration_protection(ImageId=ami)["Return"]
    assert state.startswith("disabled-until ")
    assert _describe(ec2, ami)["DeregistrationProtection"] == state
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        ec2.deregister_image(ImageId=ami)
    assert _code(exc) == ext_images.PROTECTED_ERROR


def test_shared_snapshot_survives_until_its_last_image_goes(ec2: Any) -> None:
    first = ec2.register_image(
        Name="first",
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "factory:family", "Value": "web"}]}
        ],
    )["ImageId"]
    image = _describe(ec2, first)
    assert {"Key": "factory:family", "Value": "web"} in image["Tags"]
    snap = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    second = ec2.register_image(
        Name="second",
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}],
    )["ImageId"]
    assert _describe(ec2, second)["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snap
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        ec2.delete_snapshot(SnapshotId=snap)
    assert _code(exc) == "InvalidSnapshot.InUse"
    kept = ec2.deregister_image(ImageId=first, DeleteAssociatedSnapshots=True)
    assert kept["DeleteSnapshotResults"] == [
        {"SnapshotId": snap, "ReturnCode": "warn-skipped-snapshot-in-use"}
    ]
    assert ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"]
    gone = ec2.deregister_image(ImageId=second, DeleteAssociatedSnapshots=True)
    assert gone["DeleteSnapshotResults"] == [{"SnapshotId": snap, "ReturnCode": "success"}]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        ec2.describe_snapshots(SnapshotIds=[snap])
    assert _code(exc) == "InvalidSnapshot.NotFound"


@pytest.fixture(scope="module")
def plain_moto_ec2(ec2: Any) -> Iterator[Any]:
    """The same moto backends without the fast DescribeImages handler, for comparison."""
    app = LocalCloudApp()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield boto3.client(
        "ec2",
        region_name="eu-central-1",
        endpoint_url=f"http://127.0.0.1:{server.server_port}",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    server.shutdown()


def test_fast_describe_images_matches_moto(ec2: Any, plain_moto_ec2: Any) -> None:
    tagged = ec2.register_image(
        Name="compare-me",
        Description="a & b <c>",
        TagSpecifications=[
            {
                "ResourceType": "image",
                "Tags": [
                    {"Key": "factory:family", "Value": "web"},
                    {"Key": "note", "Value": "x<y>"},
                ],
            }
        ],
    )["ImageId"]
    ec2.enable_image_deprecation(ImageId=tagged, DeprecateAt=datetime.now(UTC) + timedelta(days=1))
    ec2.enable_image_deregistration_protection(ImageId=tagged)
    ec2.modify_image_attribute(ImageId=tagged, LaunchPermission={"Add": [{"Group": "all"}]})
    for kwargs in (
        {},
        {"Owners": ["self"]},
        {"ImageIds": [tagged]},
        {"Filters": [{"Name": "tag:factory:family", "Values": ["web"]}]},
        {"Filters": [{"Name": "name", "Values": ["*Windows*"]}]},
    ):
        fast = ec2.describe_images(**kwargs)["Images"]
        slow = plain_moto_ec2.describe_images(**kwargs)["Images"]
        assert fast == slow, kwargs
        assert fast
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        ec2.describe_images(ImageIds=["ami-00000000deadbeef0"])
    assert _code(exc) == "InvalidAMIID.NotFound"


def test_describe_images_pages_with_max_results(ec2: Any) -> None:
    family = [
        ec2.register_image(
            Name=f"paged-{i}",
            TagSpecifications=[
                {"ResourceType": "image", "Tags": [{"Key": "factory:family", "Value": "paged"}]}
            ],
        )["ImageId"]
        for i in range(7)
    ]
    pages = list(
        ec2.get_paginator("describe_images").paginate(
            Filters=[{"Name": "tag:factory:family", "Values": ["paged"]}],
            PaginationConfig={"PageSize": 3},
        )
    )
    assert [len(p["Images"]) for p in pages] == [3, 3, 1]
    assert sorted(i["ImageId"] for p in pages for i in p["Images"]) == sorted(family)
