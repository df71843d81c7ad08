"""Local cloud extension: EC2 Instance Connect's SendSSHPublicKey (moto accepts and forgets it).

AWS keeps a pushed key for 60 seconds and serves it to the instance through its metadata
service, where the ec2-instance-connect package's sshd hook (AuthorizedKeysCommand) reads it.
Here the key goes to the instance's metadata directory (see sandbox.py), which the base image's
hook reads; so a key works for 60 s, for that user only, on that instance only, and only on an
image that has the hook, as on AWS. Validation follows the API reference: instance id, user
name and key formats (RSA of 2048 bits or more, ED25519), a running instance, and the
Availability Zone when given.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from factory.localcloud.app import ActionRequest, ActionResponse, ExtensionError

KEY_TTL = 60.0  # seconds a pushed key stays, as AWS documents
INSTANCE_ID = re.compile(r"^i-[a-f0-9]+$")
OS_USER = re.compile(
    r"(^[A-Za-z_][A-Za-z0-9\@\._-]{0,30}[A-Za-z0-9\$_-]?$)"
    r"|(^(?=.{2,32}$)[0-9]{1,32}[A-Za-z\@\._-][A-Za-z0-9\@\._-]*[A-Za-z0-9\$_-]?$)"
)
ZONE = re.compile(r"^(\w+-){2,3}\d+\w+$")
MIN_RSA_BITS = 2048


def _invalid(message: str) -> ExtensionError:
    return ExtensionError("InvalidArgsException", message)


def _check_key(material: str) -> None:
    if not 80 <= len(material) <= 4096:
        raise _invalid("SSHPublicKey must be between 80 and 4096 characters long")
    try:
        key = load_ssh_public_key(material.strip().encode())
    except (ValueError, TypeError):
        raise _invalid("SSHPublicKey is not an OpenSSH public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise _invalid(f"RSA keys must be at least {MIN_RSA_BITS} bits")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise _invalid("SSHPublicKey must be an RSA or ED25519 key")


def send_ssh_public_key(request: ActionRequest) -> ActionResponse:
    from moto.ec2.models import ec2_backends

    params: dict[str, Any] = request.params
    instance_id = str(params.get("InstanceId") or "")
    user = str(params.get("InstanceOSUser") or "")
    material = str(params.get("SSHPublicKey") or "")
    zone = params.get("AvailabilityZone")
    if not INSTANCE_ID.match(instance_id) or not 10 <= len(instance_id) <= 32:
        raise _invalid(f"InstanceId {instance_id!r} is not an instance id")
    if not OS_USER.match(user) or len(user) > 32:
        raise _invalid(f"InstanceOSUser {user!r} is not a valid user name")
    if zone is not None and not ZONE.match(str(zone)):
        raise _invalid(f"AvailabilityZone {zone!r} is not an Availability Zone")
    _check_key(material)
    backend = ec2_backends[request.account_id][request.region]
    instance = backend.get_instance_by_id(instance_id)
    if instance is None:
        raise ExtensionError(
            "EC2InstanceNotFoundException", f"Instance {instance_id} was not found"
        )
    if zone is not None and str(zone) != instance.placement.zone:
        raise _invalid(f"Instance {instance_id} is not in Availability Zone {zone}")
    state = instance.state
    if state != "running":
        raise ExtensionError(
            "EC2InstanceStateInvalidException",
            f"Instance {instance_id} is {state}: connecting to a stopped or terminated "
            "instance is not supported",
        )
    from factory.localcloud import runtime

    current = runtime.current()
    if current is not None:
        current.push_ssh_key(instance_id, user, material.strip(), KEY_TTL)
    body = {"RequestId": str(uuid.uuid4()), "Success": True}
    return ActionResponse(json.dumps(body), content_type="application/x-amz-json-1.1")


def install(cloud: Any) -> None:
    cloud.app.register("ec2-instance-connect", "SendSSHPublicKey", send_ssh_public_key)
