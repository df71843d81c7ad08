"""The instance runtime over HTTP: sandboxes with a real sshd, images made of layers, Packer.

Uses the session's local cloud (tests/conftest.py) for the instance and image tests, and
clouds of its own for teardown checks (down, and a SIGKILLed server swept by `down`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import signal
import socket
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import paramiko
import pytest
from imagekit import debian_base, wait_for

from factory.aws import AwsClients
from factory.localcloud import control
from factory.localcloud.runtime import address_block

pytestmark = [pytest.mark.integration, pytest.mark.runtime]

REPO = Path(__file__).resolve().parents[2]
IMAGE_CACHE = Path(
    os.environ.get("FACTORY_LOCAL_IMAGE_CACHE", REPO / ".factory" / "cache" / "images")
)


# --- helpers ---------------------------------------------------------------------------------


def _key_pair(ec2: Any) -> tuple[str, paramiko.PKey]:
    name = f"rt-{uuid.uuid4().hex[:8]}"
    material = ec2.create_key_pair(KeyName=name)["KeyMaterial"]
    return name, paramiko.RSAKey.from_private_key(io.StringIO(material))


def _instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    return dict(
        ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    )


def _run(
    ec2: Any, key_name: str, image_id: str | None = None, user_data: str = ""
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"UserData": user_data} if user_data else {}
    run = ec2.run_instances(
        ImageId=image_id or debian_base(ec2),
        MinCount=1,
        MaxCount=1,
        KeyName=key_name,
        InstanceType="t3.micro",
        **kwargs,
    )
    instance_id = run["Instances"][0]["InstanceId"]
    return wait_for(
        lambda: (i := _instance(ec2, instance_id))["State"]["Name"] == "running" and i,
        what=f"{instance_id} running",
    )


def console_host_keys(console: str) -> set[str]:
    """SHA256 fingerprints from the console's SSH HOST KEY FINGERPRINTS block."""
    block = console.rsplit("-----BEGIN SSH HOST KEY FINGERPRINTS-----", maxsplit=1)[-1]
    block = block.split("-----END SSH HOST KEY FINGERPRINTS-----")[0]
    return {
        word for line in block.splitlines() for word in line.split() if word.startswith("SHA256:")
    }


class PinnedHostKey(paramiko.MissingHostKeyPolicy):
    """Accept the server's key only when its fingerprint is one the console printed."""

    def __init__(self, fingerprints: set[str]) -> None:
        self.fingerprints = fingerprints

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
        if f"SHA256:{digest}" not in self.fingerprints:
            raise paramiko.SSHException(f"host key SHA256:{digest} not in the console output")


def _console(ec2: Any, instance_id: str) -> str:
    output = ec2.get_console_output(InstanceId=instance_id).get("Output", "")
    return output if "\n" in output or not output else base64.b64decode(output).decode()


def _ssh(ec2: Any, instance: dict[str, Any], key: paramiko.PKey) -> paramiko.SSHClient:
    fingerprints = wait_for(
        lambda: console_host_keys(_console(ec2, instance["InstanceId"])),
        what="host key fingerprints in the console",
    )
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(PinnedHostKey(fingerprints))
    client.connect(
        instance["PublicIpAddress"],
        username="admin",
        pkey=key,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def _exec(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=60)
    out = stdout.read().decode() + stderr.read().decode()
    return stdout.channel.recv_exit_status(), out


def _port_open(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1):
            return True
    except OSError:
        return False


def _status(ec2: Any, instance_id: str) -> str | None:
    statuses = ec2.describe_instance_status(InstanceIds=[instance_id])["InstanceStatuses"]
    return str(statuses[0]["InstanceStatus"]["Status"]) if statuses else None


def _sandbox_processes(state_dir: Path) -> list[int]:
    """guest_init and sshd processes that belong to the local cloud in `state_dir`."""
    marker = str(state_dir.resolve() / "instances").encode()
    listen = f"ListenAddress=127.{address_block(state_dir).network_address.packed[1]}.".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (marker in cmdline and b"guest_init" in cmdline) or (
            b"sshd" in cmdline and listen in cmdline
        ):
            pids.append(int(entry.name))
    return pids


def _overlay_mounts(state_dir: Path) -> int:
    """Overlay mounts of this local cloud's instances, in any mount namespace on this machine
    (other local clouds may run at the same time: only those whose upper dir is ours count)."""
    marker = str(state_dir.resolve())
    seen = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            lines = (entry / "mountinfo").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if " - overlay " in line and marker in line:
                seen.add(line.split(" - ", 1)[1])
    return len(seen)


@pytest.fixture
def ec2(clients: AwsClients) -> Any:
    return clients.client("ec2")


@pytest.fixture
def key(ec2: Any) -> tuple[str, paramiko.PKey]:
    return _key_pair(ec2)


# --- instances ---------------------------------------------------------------------------------


def test_base_image_is_found_by_the_debian_filter(ec2: Any) -> None:
    image = ec2.describe_images(ImageIds=[debian_base(ec2)])["Images"][0]
    assert image["OwnerId"] == "136693071363"
    assert image["Name"].startswith("debian-12-amd64-")
    assert image["Architecture"] == "x86_64"
    assert image["RootDeviceName"] == "/dev/xvda"


def test_instance_boots_with_key_user_data_and_printed_host_keys(
    ec2: Any, key: tuple[str, paramiko.PKey]
) -> None:
    user_data = "#!/bin/sh\necho user-data-says-hello\necho ran > /root/user-data-marker\n"
    instance = _run(ec2, key[0], user_data=user_data)  # how fast: bench/localcloud.py
    address = instance["PrivateIpAddress"]
    assert address.startswith("127.") and instance["PublicIpAddress"] == address
    wait_for(lambda: _status(ec2, instance["InstanceId"]) == "ok", what="status ok")
    console = _console(ec2, instance["InstanceId"])
    assert "-----BEGIN SSH HOST KEY KEYS-----" in console
    assert "user-data-says-hello" in console
    with _ssh(ec2, instance, key[1]) as client:
        assert _exec(client, "whoami") == (0, "admin\n")
        assert _exec(client, "sudo -n cat /root/user-data-marker") == (0, "ran\n")
        # the host's resolver, as DHCP would hand it out (provisioners can apt-get)
        assert _exec(client, "cat /etc/resolv.conf")[1] == Path("/etc/resolv.conf").read_text()
        code, hostname = _exec(client, "hostname")
        assert hostname.strip() == "ip-" + address.replace(".", "-")
        # its own pid namespace: init is pid 1, and no host process is visible
        code, ps = _exec(client, "ps -eo pid=,comm= | wc -l")
        assert code == 0 and int(ps) < 20
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    assert not _port_open(address)


def test_each_instance_has_its_own_host_keys_and_address(
    ec2: Any, key: tuple[str, paramiko.PKey]
) -> None:
    run = ec2.run_instances(ImageId=debian_base(ec2), MinCount=3, MaxCount=3, KeyName=key[0])
    ids = [i["InstanceId"] for i in run["Instances"]]
    try:
        instances = [
            wait_for(
                lambda i=i: _instance(ec2, i)["State"]["Name"] == "running" and _instance(ec2, i)
            )
            for i in ids
        ]
        assert len({i["PrivateIpAddress"] for i in instances}) == 3
        fingerprints = [frozenset(console_host_keys(_console(ec2, i))) for i in ids]
        assert len(set(fingerprints)) == 3
        for instance in instances:
            assert _port_open(instance["PrivateIpAddress"])
    finally:
        ec2.terminate_instances(InstanceIds=ids)


def test_failing_user_data_makes_the_instance_impaired(
    ec2: Any, key: tuple[str, paramiko.PKey]
) -> None:
    instance = _run(ec2, key[0], user_data="#!/bin/sh\necho about-to-fail\nexit 3\n")
    try:
        wait_for(lambda: _status(ec2, instance["InstanceId"]) == "impaired", what="impaired")
        status = ec2.describe_instance_status(InstanceIds=[instance["InstanceId"]])
        details = status["InstanceStatuses"][0]["InstanceStatus"]["Details"]
        assert details[0]["Status"] == "failed"
        assert "exited 3" in _console(ec2, instance["InstanceId"])
        assert _port_open(instance["PrivateIpAddress"])  # sshd runs: only the user data failed
    finally:
        ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])


def test_stop_keeps_the_disk_start_brings_it_back_terminate_removes_it(
    ec2: Any, key: tuple[str, paramiko.PKey], local_cloud: control.LocalCloudStatus
) -> None:
    instance = _run(ec2, key[0])
    instance_id, address = instance["InstanceId"], instance["PrivateIpAddress"]
    instance_dir = local_cloud.state_dir / "instances" / instance_id
    with _ssh(ec2, instance, key[1]) as client:
        assert _exec(client, "echo kept | sudo tee /etc/kept-across-stop")[0] == 0
    ec2.stop_instances(InstanceIds=[instance_id])
    assert _instance(ec2, instance_id)["State"]["Name"] == "stopped"
    assert not _port_open(address)
    assert not any(
        str(instance_dir).encode() in Path(f"/proc/{p}/cmdline").read_bytes()
        for p in _sandbox_processes(local_cloud.state_dir)
        if Path(f"/proc/{p}").exists()
    )
    assert (instance_dir / "upper" / "etc" / "kept-across-stop").is_file()
    ec2.start_instances(InstanceIds=[instance_id])
    restarted = wait_for(
        lambda: (i := _instance(ec2, instance_id))["State"]["Name"] == "running" and i
    )
    assert restarted["PublicIpAddress"] == address
    with _ssh(ec2, restarted, key[1]) as client:
        assert _exec(client, "cat /etc/kept-across-stop") == (0, "kept\n")
    ec2.terminate_instances(InstanceIds=[instance_id])
    assert _instance(ec2, instance_id)["State"]["Name"] == "terminated"
    assert not _port_open(address)
    assert not instance_dir.exists()


# --- images ------------------------------------------------------------------------------------


def _layers(local_cloud: control.LocalCloudStatus) -> set[str]:
    path = local_cloud.state_dir / "layers"
    return {p.name for p in path.iterdir()} if path.exists() else set()


def test_create_image_copy_and_deregister(
    ec2: Any, key: tuple[str, paramiko.PKey], local_cloud: control.LocalCloudStatus
) -> None:
    builder = _run(ec2, key[0])
    with _ssh(ec2, builder, key[1]) as client:
        assert (
            _exec(client, "echo layer-one | sudo tee /etc/from-builder && sudo rm /etc/issue")[0]
            == 0
        )
    layers_before = _layers(local_cloud)
    # from a running instance: the live upper directory is copied
    live_ami = ec2.create_image(
        InstanceId=builder["InstanceId"], Name=f"live-{uuid.uuid4().hex[:6]}"
    )["ImageId"]
    # from the stopped instance, as Packer does: the upper directory is moved, then terminate
    ec2.stop_instances(InstanceIds=[builder["InstanceId"]])
    ami = ec2.create_image(InstanceId=builder["InstanceId"], Name=f"img-{uuid.uuid4().hex[:6]}")[
        "ImageId"
    ]
    ec2.terminate_instances(InstanceIds=[builder["InstanceId"]])
    new_layers = _layers(local_cloud) - layers_before
    assert len(new_layers) == 2
    assert ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] == "available"

    copy = ec2.copy_image(SourceImageId=ami, SourceRegion="us-east-1", Name="copied")["ImageId"]
    ec2.deregister_image(ImageId=ami)
    assert _layers(local_cloud) - layers_before == new_layers  # the copy still uses the layer

    for image_id in (copy, live_ami):
        child = _run(ec2, key[0], image_id=image_id)
        with _ssh(ec2, child, key[1]) as client:
            assert _exec(client, "cat /etc/from-builder") == (0, "layer-one\n")
            assert _exec(client, "test -e /etc/issue")[0] == 1  # the deletion (a whiteout) too
            # fresh per-instance state, not the builder's
            assert (
                _exec(client, "cat /var/lib/cloud/data/instance-id")[1].strip()
                == child["InstanceId"]
            )
        ec2.terminate_instances(InstanceIds=[child["InstanceId"]])
    ec2.deregister_image(ImageId=copy)
    ec2.deregister_image(ImageId=live_ami)
    assert _layers(local_cloud) - layers_before == set()


def test_auto_scaling_instances_are_sandboxes(
    clients: AwsClients, ec2: Any, key: tuple[str, paramiko.PKey]
) -> None:
    autoscaling = clients.client("autoscaling")
    name = f"rt-asg-{uuid.uuid4().hex[:6]}"
    user_data = base64.b64encode(b"#!/bin/sh\necho from-asg > /etc/asg-marker\n").decode()
    ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={
            "ImageId": debian_base(ec2),
            "InstanceType": "t3.micro",
            "KeyName": key[0],
            "UserData": user_data,
        },
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=2,
        MaxSize=2,
        DesiredCapacity=2,
        LaunchTemplate={"LaunchTemplateName": name, "Version": "1"},
        AvailabilityZones=["us-east-1a"],
    )
    try:
        group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        ids = [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]
        assert len(ids) == 2
        for instance_id in ids:
            instance = wait_for(
                lambda i=instance_id: (x := _instance(ec2, i))["State"]["Name"] == "running" and x
            )
            wait_for(lambda i=instance_id: _status(ec2, i) == "ok", what="asg instance ok")
            with _ssh(ec2, instance, key[1]) as client:
                assert _exec(client, "cat /etc/asg-marker") == (0, "from-asg\n")
    finally:
        autoscaling.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    for instance_id in ids:
        address = _instance(ec2, instance_id)["PrivateIpAddress"]
        assert _instance(ec2, instance_id)["State"]["Name"] == "terminated"
        assert not _port_open(address)


# --- Packer --------------------------------------------------------------------------------------

PACKER_HCL = textwrap.dedent("""\
    variable "endpoint" { type = string }
    variable "access_key" { type = string }
    variable "secret_key" { type = string }
    variable "ami_name" { type = string }

    source "amazon-ebs" "runtime" {
      region                  = "us-east-1"
      custom_endpoint_ec2     = var.endpoint
      skip_region_validation  = true
      skip_metadata_api_check = true
      access_key              = var.access_key
      secret_key              = var.secret_key
      instance_type           = "t3.micro"
      ami_name                = var.ami_name
      ssh_username            = "admin"
      ssh_timeout             = "2m"
      source_ami_filter {
        filters     = { name = "debian-12-amd64-*" }
        owners      = ["136693071363"]
        most_recent = true
      }
    }

    build {
      sources = ["source.amazon-ebs.runtime"]
      provisioner "shell" {
        inline = ["echo written-by-packer | sudo tee /etc/packer-provisioned"]
      }
    }
""")


def test_packer_build_over_ssh_produces_an_ami_holding_the_provisioned_file(
    ec2: Any,
    key: tuple[str, paramiko.PKey],
    local_cloud: control.LocalCloudStatus,
    tmp_path: Path,
) -> None:
    (tmp_path / "build.pkr.hcl").write_text(PACKER_HCL)
    name = f"runtime-packer-{uuid.uuid4().hex[:8]}"
    env = control.env_vars(local_cloud)
    result = subprocess.run(
        [
            "packer",
            "build",
            "-machine-readable",
            "-color=false",
            "-var",
            f"endpoint={local_cloud.endpoint_url}",
            "-var",
            f"access_key={env['AWS_ACCESS_KEY_ID']}",
            "-var",
            f"secret_key={env['AWS_SECRET_ACCESS_KEY']}",
            "-var",
            f"ami_name={name}",
            "build.pkr.hcl",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CHECKPOINT_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "written-by-packer" in result.stdout
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": [name]}])["Images"]
    assert len(images) == 1
    # Packer terminated its builder: no sandbox of it is left
    builders = ec2.describe_instances(
        Filters=[
            {"Name": "tag:Name", "Values": ["Packer Builder"]},
            {"Name": "instance-state-name", "Values": ["running", "pending", "stopped"]},
        ]
    )["Reservations"]
    assert builders == []
    child = _run(ec2, key[0], image_id=images[0]["ImageId"])
    try:
        with _ssh(ec2, child, key[1]) as client:
            assert _exec(client, "cat /etc/packer-provisioned") == (0, "written-by-packer\n")
    finally:
        ec2.terminate_instances(InstanceIds=[child["InstanceId"]])


# --- teardown leaves nothing behind --------------------------------------------------------------


@pytest.fixture
def own_cloud(tmp_path: Path) -> Iterator[tuple[Path, control.LocalCloudStatus]]:
    state = tmp_path / "cloud"
    status = control.up(state, image_cache=IMAGE_CACHE)
    try:
        yield state, status
    finally:
        control.down(state)


def _own_ec2(status: control.LocalCloudStatus) -> Any:
    env = control.env_vars(status)
    return boto3.client(
        "ec2",
        endpoint_url=status.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _launch_some(ec2: Any, count: int) -> list[str]:
    run = ec2.run_instances(ImageId=debian_base(ec2), MinCount=count, MaxCount=count)
    ids = [i["InstanceId"] for i in run["Instances"]]
    for instance_id in ids:
        wait_for(lambda i=instance_id: _instance(ec2, i)["State"]["Name"] == "running")
    return ids


def test_down_leaves_no_process_mount_or_directory(
    own_cloud: tuple[Path, control.LocalCloudStatus],
) -> None:
    state, status = own_cloud
    assert _overlay_mounts(state) == 0
    assert _sandbox_processes(state) == []
    ec2 = _own_ec2(status)
    ids = _launch_some(ec2, 4)
    addresses = [_instance(ec2, i)["PrivateIpAddress"] for i in ids]
    assert len(_sandbox_processes(state)) >= 8  # an init and an sshd each
    assert _overlay_mounts(state) == 4
    control.down(state)
    assert _sandbox_processes(state) == []
    assert _overlay_mounts(state) == 0
    assert not any(_port_open(a) for a in addresses)
    assert not (state / "instances").exists()
    assert not (state / "layers").exists()


def test_a_killed_server_takes_its_sandboxes_with_it(
    own_cloud: tuple[Path, control.LocalCloudStatus],
) -> None:
    state, status = own_cloud
    ec2 = _own_ec2(status)
    ids = _launch_some(ec2, 3)
    addresses = [_instance(ec2, i)["PrivateIpAddress"] for i in ids]
    assert len(_sandbox_processes(state)) >= 6
    assert _overlay_mounts(state) == 3
    assert status.pid is not None
    os.kill(status.pid, signal.SIGKILL)
    wait_for(lambda: not control.status(state).running, what="server gone")
    # no `down` yet: the sandboxes die with the server (parent-death signal, pid namespaces)
    wait_for(lambda: _sandbox_processes(state) == [], timeout=15, what="sandboxes gone")
    assert _overlay_mounts(state) == 0
    assert not any(_port_open(a) for a in addresses)
    # and `down` sweeps what the crash left on disk
    assert (state / "instances").exists()
    control.down(state)
    assert not (state / "instances").exists()
    assert _sandbox_processes(state) == []
