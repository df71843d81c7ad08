"""The local cloud's EC2 Instance Connect: validation as AWS documents it, keys that expire.

The handler runs against moto in-process with a recording runtime; the sshd hook (the base
image's AuthorizedKeysCommand script) runs for real with `sh` on a keys file written by the
sandbox's push, so expiry and per-user files are checked end to end without a 60 s wait.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from moto import mock_aws

from factory.localcloud import baseimage, runtime
from factory.localcloud import ext_connect as X
from factory.localcloud.app import ActionRequest, ExtensionError
from factory.localcloud.sandbox import ACTIVE_KEYS, METADATA_MOUNT, Sandbox

ACCOUNT = "123456789012"
REGION = "us-east-1"


def _openssh(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


ED25519 = _openssh(ed25519.Ed25519PrivateKey.generate()) + " me@laptop"
RSA_2048 = _openssh(rsa.generate_private_key(public_exponent=65537, key_size=2048))
RSA_1024 = _openssh(rsa.generate_private_key(public_exponent=65537, key_size=1024))
ECDSA = _openssh(ec.generate_private_key(ec.SECP256R1()))


class RecordingRuntime:
    def __init__(self) -> None:
        self.pushed: list[tuple[str, str, str, float]] = []

    def push_ssh_key(self, instance_id: str, user: str, public_key: str, ttl: float) -> bool:
        self.pushed.append((instance_id, user, public_key, ttl))
        return True


@pytest.fixture
def instance(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, RecordingRuntime]]:
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    recorder = RecordingRuntime()
    monkeypatch.setattr(runtime, "_RUNTIME", recorder)
    with mock_aws():
        ec2 = boto3.client("ec2", REGION)
        ami = ec2.register_image(Name="img", RootDeviceName="/dev/xvda")["ImageId"]
        instance_id = ec2.run_instances(
            ImageId=ami,
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": "us-east-1b"},
        )["Instances"][0]["InstanceId"]
        yield instance_id, recorder


def _send(**params: Any) -> dict[str, Any]:
    request = ActionRequest(
        "ec2-instance-connect", "SendSSHPublicKey", REGION, ACCOUNT, params, "json"
    )
    return dict(json.loads(X.send_ssh_public_key(request).body))


def test_push_reaches_the_runtime_for_60_seconds(instance: tuple[str, RecordingRuntime]) -> None:
    instance_id, recorder = instance
    for key in (ED25519, RSA_2048):
        response = _send(
            InstanceId=instance_id,
            InstanceOSUser="admin",
            SSHPublicKey=key,
            AvailabilityZone="us-east-1b",
        )
        assert response["Success"] is True and response["RequestId"]
    assert recorder.pushed == [
        (instance_id, "admin", ED25519, 60.0),
        (instance_id, "admin", RSA_2048, 60.0),
    ]


@pytest.mark.parametrize(
    ("changes", "code", "message"),
    [
        ({"InstanceId": "i-0123456789abcdef0"}, "EC2InstanceNotFoundException", "not found"),
        ({"InstanceId": "web-1"}, "InvalidArgsException", "not an instance id"),
        ({"InstanceOSUser": "ad min"}, "InvalidArgsException", "not a valid user name"),
        ({"InstanceOSUser": "x" * 33}, "InvalidArgsException", "not a valid user name"),
        ({"SSHPublicKey": RSA_1024}, "InvalidArgsException", "at least 2048 bits"),
        ({"SSHPublicKey": ECDSA}, "InvalidArgsException", "RSA or ED25519"),
        ({"SSHPublicKey": "ssh-ed25519 " + "A" * 80}, "InvalidArgsException", "not an OpenSSH"),
        ({"SSHPublicKey": "ssh-ed25519 AAAA"}, "InvalidArgsException", "between 80 and 4096"),
        ({"AvailabilityZone": "us-east-1a"}, "InvalidArgsException", "not in Availability Zone"),
    ],
)
def test_invalid_pushes_are_refused_and_push_nothing(
    instance: tuple[str, RecordingRuntime], changes: dict[str, str], code: str, message: str
) -> None:
    instance_id, recorder = instance
    params = {"InstanceId": instance_id, "InstanceOSUser": "admin", "SSHPublicKey": ED25519}
    with pytest.raises(ExtensionError) as refused:
        _send(**(params | changes))
    assert refused.value.code == code
    assert message in refused.value.message
    assert recorder.pushed == []


def test_stopped_instance_is_refused(instance: tuple[str, RecordingRuntime]) -> None:
    instance_id, recorder = instance
    boto3.client("ec2", REGION).stop_instances(InstanceIds=[instance_id])
    with pytest.raises(ExtensionError) as refused:
        _send(InstanceId=instance_id, InstanceOSUser="admin", SSHPublicKey=ED25519)
    assert refused.value.code == "EC2InstanceStateInvalidException"
    assert recorder.pushed == []


# --- the sandbox's keys file and the image's sshd hook ------------------------------------------


def _hook(tmp_path: Path, sandbox: Sandbox, user: str) -> list[str]:
    """Run the base image's AuthorizedKeysCommand on the sandbox's metadata directory."""
    script = tmp_path / "eic_run_authorized_keys"
    script.write_text(baseimage.EIC_SCRIPT.replace(METADATA_MOUNT, str(sandbox.dir / "metadata")))
    out = subprocess.run(
        ["sh", str(script), user], capture_output=True, text=True, check=True, timeout=10
    )
    return out.stdout.splitlines()


def test_hook_offers_only_unexpired_keys_of_that_user(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "i-1")
    now = time.time()
    sandbox.push_ssh_key("admin", ED25519, now + 60)
    sandbox.push_ssh_key("admin", RSA_2048, now - 1)  # already expired
    sandbox.push_ssh_key("deploy", RSA_2048, now + 60)
    assert _hook(tmp_path, sandbox, "admin") == [ED25519]
    assert _hook(tmp_path, sandbox, "deploy") == [RSA_2048]
    assert _hook(tmp_path, sandbox, "root") == []  # nothing pushed for root


def test_push_prunes_expired_lines_and_renews_a_repeated_key(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "i-1")
    now = time.time()
    sandbox.push_ssh_key("admin", RSA_2048, now - 5)
    sandbox.push_ssh_key("admin", ED25519, now + 10)
    sandbox.push_ssh_key("admin", ED25519, now + 60)
    keys_file = sandbox.dir / "metadata" / ACTIVE_KEYS / "admin"
    lines = keys_file.read_text().splitlines()
    assert lines == [f"{int(now + 60)} {ED25519}"]
    # sshd runs the hook as nobody: world-readable file, traversable directories
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o644
    assert stat.S_IMODE(keys_file.parent.stat().st_mode) == 0o755
    assert [p.name for p in keys_file.parent.iterdir()] == ["admin"]  # no staging files left


def test_base_image_wires_the_hook_into_sshd(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
    baseimage.install_instance_connect(root)
    script = root / baseimage.EIC_COMMAND.lstrip("/")
    assert os.access(script, os.X_OK)
    assert stat.S_IMODE(script.stat().st_mode) & 0o022 == 0  # sshd refuses a writable hook
    config = (root / "etc/ssh/sshd_config.d/60-ec2-instance-connect.conf").read_text()
    assert f"AuthorizedKeysCommand {baseimage.EIC_COMMAND} %u" in config
    assert "AuthorizedKeysCommandUser nobody" in config
    assert f"{METADATA_MOUNT}/{ACTIVE_KEYS}/$1" in script.read_text()
