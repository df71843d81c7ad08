"""`factory promote` against the local cloud: a real image copied to another region and account.

One verified image is made from the Debian base image (boot, user data writes a marker,
CreateImage). The tests run in order: promote to another region (copy, tags, then reuse),
boot the copy there, refuse an unverified and a revoked image, promote to another account.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from imagekit import image_from_user_data, wait_healthy

from factory import tags as T
from factory.aws import AwsClients, AwsTarget, tags_dict

pytestmark = [pytest.mark.integration, pytest.mark.runtime]

REGION = "us-east-1"
TARGET = "eu-west-1"
OTHER = "210987654321"
ROLE = f"arn:aws:iam::{OTHER}:role/promote-test"


@dataclass(frozen=True)
class World:
    clients: AwsClients
    ami: str
    config: Path


def _make_image(clients: AwsClients, status: str) -> str:
    """Boot the base image, let user data mark it, CreateImage, tag it like a verified build."""
    return image_from_user_data(
        clients,
        "#!/bin/sh\necho promoted > /etc/promote-marker\n",
        f"promo-{uuid.uuid4().hex[:8]}",
        {
            T.FAMILY: "promo",
            T.VERSION: "1",
            T.STATUS: status,
            T.SUITE_DIGEST: "sha256:" + "ab" * 32,
            T.VERIFIED_AT: "2026-11-24T12:00:00Z",
        },
    )


@pytest.fixture(scope="module")
def world(local_cloud: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    clients = AwsClients(AwsTarget(REGION, endpoint_url=local_cloud.endpoint_url))
    config = tmp_path_factory.mktemp("promote-cfg") / "factory.toml"
    config.write_text(
        f'[factory]\nregions = ["{REGION}"]\nchannels = ["dev", "staging", "prod"]\n\n'
        f'[environments.staging]\nregions = ["{TARGET}"]\n\n'
        f'[environments.prod]\naccount = "{OTHER}"\nrole_arn = "{ROLE}"\n'
        f'regions = ["{TARGET}"]\n'
    )
    yield World(clients, _make_image(clients, T.Status.VERIFIED.value), config)


def _factory(world: World, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", "--config", str(world.config), *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AWS_REGION": REGION},
    )


def _copies(clients: AwsClients, origin: str) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = clients.client("ec2").describe_images(
        Owners=["self"], Filters=[{"Name": f"tag:{T.PROMOTED_FROM}", "Values": [origin]}]
    )["Images"]
    return images


def _other_account(world: World, region: str) -> AwsClients:
    return AwsClients(AwsTarget(region, role_arn=ROLE, endpoint_url=world.clients.endpoint_url))


def test_promote_to_another_region_copies_then_reuses(world: World) -> None:
    origin = f"{world.clients.account_id}:{REGION}:{world.ami}"
    target = world.clients.for_region(TARGET)
    proc = _factory(
        world, "-O", "json", "promote", world.ami, "--to", "staging", "--channel", "dev"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    [copy] = result["copies"]
    assert (copy["region"], copy["action"], copy["state"]) == (TARGET, "copied", "available")
    [image] = _copies(target, origin)
    assert image["ImageId"] == copy["ami_id"]
    source = world.clients.client("ec2").describe_images(ImageIds=[world.ami])["Images"][0]
    assert image["Name"] == source["Name"]
    tags = tags_dict(image["Tags"])
    assert tags[T.PROMOTED_FROM] == origin
    assert tags[T.STATUS] == "verified"
    assert tags[T.SUITE_DIGEST] == tags_dict(source["Tags"])[T.SUITE_DIGEST]
    channel = target.client("ssm").get_parameter(Name="/factory/promo/dev")["Parameter"]
    assert channel["Value"] == copy["ami_id"]

    again = _factory(world, "promote", world.ami, "--to", "staging")
    assert again.returncode == 0, again.stderr
    assert f"{copy['ami_id']}  reused" in again.stdout
    assert len(_copies(target, origin)) == 1


def test_an_instance_of_the_promoted_copy_boots_in_the_other_region(world: World) -> None:
    target = world.clients.for_region(TARGET)
    [image] = _copies(target, f"{world.clients.account_id}:{REGION}:{world.ami}")
    ec2 = target.client("ec2")
    instance = ec2.run_instances(
        ImageId=image["ImageId"], MinCount=1, MaxCount=1, InstanceType="t3.micro"
    )["Instances"][0]["InstanceId"]
    try:
        wait_healthy(ec2, [instance])
    finally:
        ec2.terminate_instances(InstanceIds=[instance])


@pytest.mark.parametrize("status", ["candidate", "revoked"])
def test_unverified_or_revoked_images_are_refused(world: World, status: str) -> None:
    ami = _make_image(world.clients, status)
    proc = _factory(world, "promote", ami, "--to", "staging")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1
    origin = f"{world.clients.account_id}:{REGION}:{ami}"
    assert _copies(world.clients.for_region(TARGET), origin) == []


def test_promote_to_another_account(world: World) -> None:
    origin = f"{world.clients.account_id}:{REGION}:{world.ami}"
    other = _other_account(world, TARGET)
    assert other.account_id == OTHER
    proc = _factory(world, "-O", "json", "promote", world.ami, "--to", "prod")
    assert proc.returncode == 0, proc.stderr
    [copy] = json.loads(proc.stdout)["copies"]
    assert (copy["account"], copy["action"]) == (OTHER, "copied")
    [image] = _copies(other, origin)
    assert image["OwnerId"] == OTHER
    assert tags_dict(image["Tags"])[T.STATUS] == "verified"
    again = _factory(world, "-O", "json", "promote", world.ami, "--to", "prod")
    assert [c["action"] for c in json.loads(again.stdout)["copies"]] == ["reused"]
    # the copy is the other account's own image: it boots there (the share already withdrawn),
    # with what the source's user data wrote (user data that fails leaves the instance impaired)
    ec2 = other.client("ec2")
    instance = ec2.run_instances(
        ImageId=image["ImageId"],
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        UserData="#!/bin/sh\ngrep -qx promoted /etc/promote-marker\n",
    )["Instances"][0]["InstanceId"]
    try:
        wait_healthy(ec2, [instance])
        console = ec2.get_console_output(InstanceId=instance).get("Output", "")
        assert "BEGIN SSH HOST KEY FINGERPRINTS" in console  # a sandbox booted, not moto's stub
    finally:
        ec2.terminate_instances(InstanceIds=[instance])
