"""moto's EC2 backend with the runtime's hooks, in-process (mock_aws), without sandboxes.

AMIs without local layers (moto's defaults) launch no sandbox, so these tests need no root:
they check the wiring (base AMI in every region, loopback addresses, image store reference
counts, status and console fallbacks). Real sandboxes are tested in tests/integration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.ec2.models.instances import Instance

from factory.localcloud import ec2hooks, runtime
from factory.localcloud.baseimage import DEBIAN_12_NAME_PATTERN, DEBIAN_OWNER_ID
from factory.localcloud.layers import BASE_LAYER


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[runtime.InstanceRuntime]:
    # the session's local cloud fixture exports AWS_ENDPOINT_URL: boto3 would go there, not to moto
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    (tmp_path / "base").mkdir()
    instance_runtime = runtime.InstanceRuntime(tmp_path / "state", tmp_path / "cache")
    instance_runtime.store._paths[BASE_LAYER] = tmp_path / "base"
    with mock_aws():
        ec2hooks.install(lambda: instance_runtime)
        try:
            yield instance_runtime
        finally:
            ec2hooks.uninstall()


def _client(region: str = "us-east-1") -> object:
    return boto3.client("ec2", region_name=region)


def _debian_filter(ec2: object) -> list[dict[str, object]]:
    return ec2.describe_images(  # type: ignore[attr-defined,no-any-return]
        Owners=[DEBIAN_OWNER_ID], Filters=[{"Name": "name", "Values": [DEBIAN_12_NAME_PATTERN]}]
    )["Images"]


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3"])
def test_base_ami_is_found_by_the_debian_owner_filter_in_any_region(
    rt: runtime.InstanceRuntime, region: str
) -> None:
    images = _debian_filter(_client(region))
    assert len(images) == 1
    image = images[0]
    assert image["ImageId"] == ec2hooks.base_ami_id(region)
    assert image["OwnerId"] == DEBIAN_OWNER_ID
    assert image["Name"].startswith("debian-12-amd64-")
    assert image["Architecture"] == "x86_64"
    assert image["RootDeviceName"] == "/dev/xvda"
    assert image["RootDeviceType"] == "ebs"
    assert image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"].startswith("snap-")
    assert rt.has_layers(image["ImageId"])


def test_other_accounts_see_the_base_ami_too(rt: runtime.InstanceRuntime) -> None:
    sts = boto3.client("sts", region_name="us-east-1")
    assert sts.get_caller_identity()["Account"] == "123456789012"
    assert rt.has_layers(ec2hooks.base_ami_id("us-east-1")) or _debian_filter(_client())


def test_instance_of_an_ami_without_layers_gets_a_loopback_address(
    rt: runtime.InstanceRuntime,
) -> None:
    ec2 = _client()
    moto_ami = next(
        i["ImageId"]
        for i in ec2.describe_images(Owners=["amazon"])["Images"]  # type: ignore[attr-defined]
    )
    run = ec2.run_instances(ImageId=moto_ami, MinCount=2, MaxCount=2)  # type: ignore[attr-defined]
    ids = [i["InstanceId"] for i in run["Instances"]]
    described = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]  # type: ignore[attr-defined]
    addresses = {i["PrivateIpAddress"] for i in described}
    assert len(addresses) == 2
    for inst in described:
        assert ipaddress.ip_address(inst["PrivateIpAddress"]) in rt.addresses.block
        assert inst["PublicIpAddress"] == inst["PrivateIpAddress"]
        assert inst["State"]["Name"] == "running"
        assert rt.health(inst["InstanceId"]) == "ok"
    statuses = ec2.describe_instance_status(InstanceIds=ids)["InstanceStatuses"]  # type: ignore[attr-defined]
    assert {s["InstanceStatus"]["Status"] for s in statuses} == {"ok"}
    # no sandbox: moto's own console output
    assert ec2.get_console_output(InstanceId=ids[0])["Output"]  # type: ignore[attr-defined]
    ec2.stop_instances(InstanceIds=[ids[0]])  # type: ignore[attr-defined]
    ec2.start_instances(InstanceIds=[ids[0]])  # type: ignore[attr-defined]
    again = ec2.describe_instances(InstanceIds=[ids[0]])["Reservations"][0]["Instances"][0]  # type: ignore[attr-defined]
    assert again["PublicIpAddress"] == again["PrivateIpAddress"] in addresses
    ec2.terminate_instances(InstanceIds=ids)  # type: ignore[attr-defined]
    assert rt.status()["instances_running"] == 0
    assert rt.address_of(ids[0]) is None


def test_copy_and_deregister_keep_layer_references(rt: runtime.InstanceRuntime) -> None:
    ec2 = _client()
    base = ec2hooks.base_ami_id("us-east-1")
    copy = ec2.copy_image(SourceImageId=base, SourceRegion="us-east-1", Name="copy")["ImageId"]  # type: ignore[attr-defined]
    assert rt.store.layers_of(f"ami:{copy}") == (BASE_LAYER,)
    ec2.deregister_image(ImageId=copy)  # type: ignore[attr-defined]
    assert rt.store.layers_of(f"ami:{copy}") is None
    assert rt.has_layers(base)


def test_uninstall_restores_moto() -> None:
    before = Instance.__dict__["terminate"]
    ec2hooks.install(lambda: None)
    assert Instance.__dict__["terminate"] is not before
    ec2hooks.uninstall()
    assert Instance.__dict__["terminate"] is before
