"""Test helpers: factory-tagged AMIs as a build would leave them, registered through the EC2 API;
and, for the local cloud's tiers, waiting for conditions and for instances to be healthy."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from factory import tags as T
from factory.aws import AwsClients, tag_list
from factory.aws.wait import Poller, TimedOut, wait_until
from factory.provenance import BuildFacts, FileDigest, sha256_file

_counter = itertools.count(1)
V = TypeVar("V")


def wait_for(
    probe: Callable[[], V | None],
    timeout: float = 20.0,
    what: str | Callable[[], str] = "condition",
    *,
    interval: float = 0.1,
) -> V:
    """Poll `probe` every `interval` s until it returns something truthy (returned); fail the
    test after `timeout` s saying what did not happen (`what`, or a function giving it with the
    state last seen). The factory's own wait helper paces the polls."""
    try:
        return wait_until(
            lambda: value if (value := probe()) else None,
            timeout=timeout,
            what=what,
            poller=Poller(interval=interval, max_interval=interval),
        )
    except TimedOut as error:
        raise AssertionError(f"timed out waiting for {error.message}") from None


def instance_health(ec2: Any, instance_ids: Sequence[str]) -> dict[str, str]:
    """Instance id -> DescribeInstanceStatus's instance status (ok, impaired, initializing)."""
    if not instance_ids:
        return {}
    statuses = ec2.describe_instance_status(
        InstanceIds=list(instance_ids), IncludeAllInstances=True
    )["InstanceStatuses"]
    return {s["InstanceId"]: s["InstanceStatus"]["Status"] for s in statuses}


def wait_healthy(ec2: Any, instance_ids: Sequence[str], timeout: float = 60.0) -> None:
    """Until every instance is `ok` (the local cloud: sshd up and user data exited 0)."""
    wait_for(
        lambda: all(instance_health(ec2, instance_ids).get(i) == "ok" for i in instance_ids),
        timeout,
        f"{', '.join(instance_ids)} healthy",
    )


def image_from_user_data(
    clients: AwsClients, user_data: str, name: str, image_tags: dict[str, str]
) -> str:
    """Boot the base image, let `user_data` change it, CreateImage (no reboot), tag the AMI."""
    ec2 = clients.client("ec2")
    instance = ec2.run_instances(
        ImageId=debian_base(ec2),
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        UserData=user_data,
    )["Instances"][0]["InstanceId"]
    try:
        wait_healthy(ec2, [instance])
        ami = str(ec2.create_image(InstanceId=instance, Name=name, NoReboot=True)["ImageId"])
    finally:
        ec2.terminate_instances(InstanceIds=[instance])
    ec2.create_tags(Resources=[ami], Tags=tag_list(image_tags))
    return ami


def debian_base(ec2: Any) -> str:
    """The local cloud's Debian 12 base image in this client's account and region."""
    from factory.localcloud.baseimage import DEBIAN_12_NAME_PATTERN, DEBIAN_OWNER_ID

    images = ec2.describe_images(
        Owners=[DEBIAN_OWNER_ID], Filters=[{"Name": "name", "Values": [DEBIAN_12_NAME_PATTERN]}]
    )["Images"]
    assert len(images) == 1, [i["ImageId"] for i in images]
    return str(images[0]["ImageId"])


def register_base(clients: AwsClients, name: str = "debian-12-amd64-test") -> str:
    """A non-factory image (the root base image)."""
    return register(clients, name, {})


def register(clients: AwsClients, name: str, image_tags: dict[str, str]) -> str:
    ec2 = clients.client("ec2")
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    volume = ec2.create_volume(AvailabilityZone=zone, Size=8)["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ami = ec2.register_image(
        Name=f"{name}-{next(_counter)}",
        Architecture="x86_64",
        RootDeviceName="/dev/xvda",
        VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
    )["ImageId"]
    if image_tags:
        ec2.create_tags(Resources=[ami], Tags=tag_list(image_tags))
    return str(ami)


def build_tags(
    family: str,
    version: str,
    source_ami: str,
    *,
    status: T.Status = T.Status.VERIFIED,
    created: datetime | None = None,
    build_id: str | None = None,
) -> dict[str, str]:
    created = created or datetime.now(UTC)
    return {
        T.FAMILY: family,
        T.VERSION: version,
        T.BUILD_ID: build_id or f"{family}-{version}-build",
        T.GIT_COMMIT: "0123456789abcdef0123456789abcdef01234567",
        T.GIT_DIRTY: "false",
        T.TEMPLATE_DIGEST: "ab" * 32,
        T.SOURCE_AMI: source_ami,
        T.PACKER_VERSION: "1.6.6",
        T.FACTORY_VERSION: "0.1.0",
        T.STATUS: status.value,
        T.CREATED_AT: created.isoformat(timespec="seconds"),
    }


def register_factory_image(
    clients: AwsClients,
    family: str,
    version: str,
    source_ami: str,
    *,
    status: T.Status = T.Status.VERIFIED,
    age_days: float = 0,
) -> str:
    created = datetime.now(UTC) - timedelta(days=age_days)
    return register(
        clients,
        f"{family}-{version}",
        build_tags(family, version, source_ami, status=status, created=created),
    )


def make_repo(root: Path, family: str = "web") -> dict[str, list[Path]]:
    """A small repository: a template, two provisioners and a test suite."""
    files = {
        "template": [
            root / "templates" / family / "image.pkr.hcl.j2",
            root / "templates" / family / "vars.json",
        ],
        "provisioner": [root / "provisioners" / "base.sh", root / "provisioners" / f"{family}.sh"],
        "test-suite": [root / "templates" / family / "tests" / "test_image.py"],
    }
    for paths in files.values():
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"# {path.name}\necho {path.stem}\n")
    return files


def facts_for(
    root: Path,
    files: dict[str, list[Path]],
    family: str,
    version: str,
    source_ami: str,
    image_tags: dict[str, str],
) -> BuildFacts:
    digests = tuple(
        FileDigest(p.relative_to(root).as_posix(), sha256_file(p), role)
        for role, paths in files.items()
        for p in paths
    )
    return BuildFacts(
        family=family,
        version=version,
        build_id=image_tags[T.BUILD_ID],
        source_ami=source_ami,
        files=digests,
        git_commit=image_tags[T.GIT_COMMIT],
        git_dirty=False,
        packer_version=image_tags[T.PACKER_VERSION],
        factory_version=image_tags[T.FACTORY_VERSION],
        template_digest=image_tags[T.TEMPLATE_DIGEST],
    )


JUNIT_PASS = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="0" skipped="1" tests="5" time="1.2">
<testcase classname="test_image" name="test_sshd" time="0.1"/></testsuite></testsuites>
"""

JUNIT_FAIL = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="2" skipped="0" tests="5" time="1.2">
</testsuite></testsuites>
"""


def tags_of(clients: AwsClients, ami_id: str) -> dict[str, str]:
    image: dict[str, Any] = clients.client("ec2").describe_images(ImageIds=[ami_id])["Images"][0]
    return {t["Key"]: t["Value"] for t in image.get("Tags", [])}
