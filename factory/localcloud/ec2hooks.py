"""Hooks in moto's EC2 backend that make instances sandboxes and AMIs stacks of layers.

Patched at class level (moto creates backends lazily, one per account and region), so
every path that launches or ends an instance goes through them: RunInstances, Auto Scaling,
CloudFormation. Each hook calls moto's own method and then the runtime, in the request
thread: when CreateImage returns, the layer is captured; when TerminateInstances returns,
the sandbox is gone.

- every EC2 backend gets the Debian base AMI (owner 136693071363, debian-12-amd64-*);
- RunInstances: a loopback address as private and public IP, state pending until sshd answers;
- Stop/Start/Reboot/Terminate: the sandbox's processes end or come back;
- CreateImage/CopyImage/DeregisterImage: the image store's layers;
- DescribeInstanceStatus: InstanceStatus from the runtime's health (initializing/ok/impaired);
- GetConsoleOutput: the sandbox's console (boot log, host keys, user data output).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult
from moto.core.types import Base64EncodedString
from moto.core.utils import utcnow
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.models.instances import Instance, InstanceBackend
from moto.ec2.responses.general import General

from factory.localcloud.baseimage import (
    BASE_IMAGE_DESCRIPTION,
    BASE_IMAGE_NAME,
    DEBIAN_OWNER_ID,
)

if TYPE_CHECKING:
    from factory.localcloud.runtime import InstanceRuntime

RuntimeGetter = Callable[[], "InstanceRuntime | None"]

CONSOLE_LIMIT = 64 * 1024  # GetConsoleOutput returns the latest 64 KB
BASE_IMAGE_CREATED = datetime(2025, 5, 20, 21, 20, tzinfo=UTC)

_runtime: RuntimeGetter = lambda: None  # noqa: E731 - replaced by install()
_installed = False
_originals: dict[tuple[type, str], Any] = {}  # moto's own methods, by (class, name)


def base_ami_id(region: str) -> str:
    """The base AMI's id in `region`: stable, so a cloud restarted with the same state matches."""
    return "ami-0" + hashlib.sha256(f"{BASE_IMAGE_NAME}/{region}".encode()).hexdigest()[:16]


def install(runtime: RuntimeGetter) -> None:
    """Patch moto's classes once per process; hooks act through `runtime()` when it is set."""
    global _runtime, _installed  # noqa: PLW0603 - moto's backends are process-global too
    _runtime = runtime
    if not _installed:
        _installed = True
        _patch()
    for account in list(ec2_backends.keys()):
        for region in list(ec2_backends[account].keys()):
            _add_base_image(ec2_backends[account][region])


def uninstall() -> None:
    """Put moto's own methods back (for tests that share a process with plain moto)."""
    global _runtime, _installed  # noqa: PLW0603
    for (cls, name), original in reversed(_originals.items()):
        setattr(cls, name, original)
    _originals.clear()
    _runtime = lambda: None  # noqa: E731
    _installed = False


def _replace(cls: type, name: str, value: Any) -> None:
    _originals[(cls, name)] = cls.__dict__[name]
    setattr(cls, name, value)


# --- helpers ---------------------------------------------------------------------------------


def _add_base_image(backend: Any) -> None:
    ami_id = base_ami_id(backend.region_name)
    if ami_id not in backend.amis:
        ami = Ami(
            backend,
            ami_id,
            name=BASE_IMAGE_NAME,
            description=BASE_IMAGE_DESCRIPTION,
            owner_id=DEBIAN_OWNER_ID,
            public=True,
            virtualization_type="hvm",
            architecture="x86_64",
            hypervisor="xen",
            root_device_type="ebs",
            root_device_name="/dev/xvda",
            creation_date=BASE_IMAGE_CREATED,
            image_location=f"{DEBIAN_OWNER_ID}/{BASE_IMAGE_NAME}",
            region_name=f"{backend.region_name}a",
            boot_mode="uefi-preferred",
        )
        ami.ena_support = True  # type: ignore[attr-defined]
        backend.amis[ami_id] = ami
    runtime = _runtime()
    if runtime is not None:
        runtime.register_base_image(ami_id)


def image_copied(source_image_id: str, ami_id: str) -> None:
    """Give the copy `ami_id` the layers of its source, so it boots like it (any account)."""
    runtime = _runtime()
    if runtime is not None:
        runtime.image_copied(source_image_id, ami_id)


def _set_address(instance: Any, address: str) -> None:
    """Make the instance's primary interface report the sandbox's loopback address."""
    nic = instance.nics.get(0)
    if nic is None:
        return
    old = nic.private_ip_address
    if old and old != address and getattr(nic, "subnet", None) is not None:
        nic.subnet.del_subnet_ip(old)
        instance._private_ips.discard(old)
    nic.private_ip_address = address
    rest = [a for a in nic.private_ip_addresses if not a.get("Primary")]
    nic.private_ip_addresses = [{"Primary": True, "PrivateIpAddress": address}, *rest]
    nic.public_ip = address


def _set_state(instance: Any, name: str, code: int) -> None:
    instance._state.name = name
    instance._state.code = code


def _key_material(instance: Any) -> str:
    key_name = getattr(instance, "key_name", None)
    if not key_name:
        return ""
    key_pair = instance.ec2_backend.key_pairs.get(key_name)
    if key_pair is None:
        return ""
    public = key_pair.material_public
    return public.decode() if isinstance(public, bytes) else str(public)


def _launch(instance: Any) -> None:
    runtime = _runtime()
    if runtime is None:
        return
    if runtime.has_layers(instance.image_id):
        _set_state(instance, "pending", 0)
    address = runtime.launch(
        instance.id,
        instance.image_id,
        _key_material(instance),
        instance.user_data,
        on_running=lambda: _set_state(instance, "running", 16),
    )
    _set_address(instance, address)


# --- the hooks: moto's own method first (or last), then the runtime ------------------------------


def _moto(cls: type, name: str) -> Any:
    """moto's own method that a hook replaced."""
    return _originals[(cls, name)]


def _load_amis_hook(self: Any) -> None:
    _moto(AmiBackend, "_load_amis")(self)
    _add_base_image(self)


def _run_instances_hook(self: Any, *args: Any, **kwargs: Any) -> Any:
    reservation = _moto(InstanceBackend, "run_instances")(self, *args, **kwargs)
    for instance in reservation.instances:
        _launch(instance)
    runtime = _runtime()
    if runtime is not None:
        runtime.wait_booted([instance.id for instance in reservation.instances])
    return reservation


def _start_hook(self: Any) -> Any:
    previous = _moto(Instance, "start")(self)
    runtime = _runtime()
    address = runtime.address_of(self.id) if runtime is not None else None
    if runtime is not None and address is not None:
        _set_address(self, address)
        _set_state(self, "pending", 0)
        runtime.start_instance(self.id, on_running=lambda: _set_state(self, "running", 16))
        runtime.wait_booted([self.id])
    return previous


def _stop_hook(self: Any) -> Any:
    runtime = _runtime()
    if runtime is not None:
        runtime.stop_instance(self.id)
    return _moto(Instance, "stop")(self)


def _reboot_hook(self: Any) -> None:
    _moto(Instance, "reboot")(self)
    runtime = _runtime()
    if runtime is not None:
        runtime.reboot_instance(self.id)


def _terminate_hook(self: Any) -> Any:
    runtime = _runtime()
    if runtime is not None:
        runtime.terminate_instance(self.id)
    return _moto(Instance, "terminate")(self)


def _create_image_hook(self: Any, instance_id: str, *args: Any, **kwargs: Any) -> Any:
    ami = _moto(AmiBackend, "create_image")(self, instance_id, *args, **kwargs)
    instance = self.get_instance(instance_id)
    ami.root_device_name = instance.root_device_name
    ami.root_device_type = "ebs"
    ami.virtualization_type = "hvm"
    runtime = _runtime()
    if runtime is not None:
        runtime.image_created(instance_id, ami.id)
    return ami


def _copy_image_hook(self: Any, source_image_id: str, *args: Any, **kwargs: Any) -> Any:
    ami = _moto(AmiBackend, "copy_image")(self, source_image_id, *args, **kwargs)
    image_copied(source_image_id, ami.id)
    return ami


def _deregister_image_hook(self: Any, ami_id: str, *args: Any, **kwargs: Any) -> Any:
    result = _moto(AmiBackend, "deregister_image")(self, ami_id, *args, **kwargs)
    runtime = _runtime()
    if runtime is not None:
        runtime.image_deregistered(ami_id)
    return result


def _console_output_hook(self: Any) -> Any:
    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
    runtime = _runtime()
    text = runtime.console_output(instance.id) if runtime is not None else None
    if text is None:
        return _moto(General, "get_console_output")(self)
    tail = text.encode()[-CONSOLE_LIMIT:].decode("utf-8", "replace")
    return ActionResult(
        {
            "InstanceId": instance.id,
            "Timestamp": utcnow(),
            "Output": Base64EncodedString.from_raw_string(tail),
        }
    )


def _patch() -> None:
    """Every hook in place: the one list of what the runtime changes in moto's EC2."""
    _replace(AmiBackend, "_load_amis", _load_amis_hook)
    _replace(InstanceBackend, "run_instances", _run_instances_hook)
    _replace(AmiBackend, "create_image", _create_image_hook)
    _replace(AmiBackend, "copy_image", _copy_image_hook)
    _replace(AmiBackend, "deregister_image", _deregister_image_hook)
    _replace(Instance, "start", _start_hook)
    _replace(Instance, "stop", _stop_hook)
    _replace(Instance, "reboot", _reboot_hook)
    _replace(Instance, "terminate", _terminate_hook)
    _replace(Instance, "instance_status", property(_instance_status))
    _replace(Instance, "system_status", property(_system_status))
    _replace(General, "get_console_output", _console_output_hook)


def _check(status: str, detail: str) -> dict[str, Any]:
    return {"Status": status, "Details": [{"Name": "reachability", "Status": detail}]}


def _instance_status(self: Any) -> dict[str, Any]:
    if self.state_code != 16:
        return {"Status": "not-applicable"}
    runtime = _runtime()
    health = runtime.health(self.id) if runtime is not None else "ok"
    if health == "ok":
        return _check("ok", "passed")
    if health == "impaired":
        return _check("impaired", "failed")
    return _check("initializing", "initializing")


def _system_status(self: Any) -> dict[str, Any]:
    if self.state_code != 16:
        return {"Status": "not-applicable"}
    runtime = _runtime()
    if runtime is not None and runtime.system_health(self.id) == "impaired":
        return _check("impaired", "failed")
    return _check("ok", "passed")
