"""The instance runtime: every EC2 instance of the local cloud is a sandbox running a real sshd.

`install_runtime(cloud)` hooks moto's EC2 backend (factory.localcloud.ec2hooks) so that
RunInstances, Stop/Start/Reboot/TerminateInstances, CreateImage, CopyImage and
DeregisterImage act on sandboxes and the image store synchronously, in the request that
asked for it. Instances from Auto Scaling go through the same backend calls.

Each instance gets its own loopback address 127.A.x.y (A derived from the state dir, so
several local clouds on one machine use different /16s; an address already bound is
skipped), which DescribeInstances reports as its private and public IP.

`sweep(state_dir)` removes whatever a crashed local cloud left behind: sandbox processes,
mounts, instance and layer directories. It imports nothing heavy: `factory local down` runs it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import FactoryError
from factory.localcloud.baseimage import (
    BASE_IMAGE_NAME,
    DEBIAN_12_NAME_PATTERN,
    DEBIAN_OWNER_ID,
    DEFAULT_USER,
    base_rootfs_path,
    ensure_base_rootfs,
)
from factory.localcloud.layers import BASE_LAYER, ImageStore
from factory.localcloud.sandbox import BootSpec, Sandbox, wait_all

__all__ = [
    "BASE_IMAGE_NAME",
    "DEBIAN_12_NAME_PATTERN",
    "DEBIAN_OWNER_ID",
    "DEFAULT_USER",
    "InstanceRuntime",
    "install_runtime",
    "sweep",
]

log = logging.getLogger("factory.localcloud.runtime")

INSTANCES_DIR = "instances"
LAYERS_DIR = "layers"
BOOT_TIMEOUT = 30.0
# RunInstances/StartInstances wait this long for sshd, so that clients (Packer polls every
# 15 s) usually see "running" in their first DescribeInstances; slower boots stay pending.
SYNC_BOOT_WAIT = 5.0
SSH_PORT = 22

HEALTH_PENDING = "pending"
HEALTH_OK = "ok"
HEALTH_IMPAIRED = "impaired"

OnRunning = Callable[[], None] | None  # called when an instance leaves "pending"


# --- addresses ---------------------------------------------------------------------------


def address_block(state_dir: Path) -> ipaddress.IPv4Network:
    """The /16 of 127.0.0.0/8 this local cloud's instances use, derived from its state dir."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).digest()
    second = 16 + digest[0] % 224  # 127.16.0.0 .. 127.239.0.0: clear of 127.0.0.1, 127.0.1.1
    return ipaddress.IPv4Network(f"127.{second}.0.0/16")


def port_free(address: str, port: int = SSH_PORT) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE  # EACCES (not root): cannot tell, assume free
    return True


def wildcard_listener(port: int = SSH_PORT) -> bool:
    """True when something listens on 0.0.0.0:port or [::]:port (a host sshd, say)."""
    wanted = f"{port:04X}"
    for table, wildcard in (("/proc/net/tcp", "00000000"), ("/proc/net/tcp6", "0" * 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, _, hexport = local.partition(":")
            if state == "0A" and hexport == wanted and addr == wildcard:
                return True
    return False


class AddressPool:
    """Hands out 127.A.x.y addresses round robin (a freed address is reused last)."""

    def __init__(self, block: ipaddress.IPv4Network) -> None:
        self.block = block
        self._used: set[str] = set()
        self._next = 1
        self._lock = threading.Lock()

    def allocate(self) -> str:
        with self._lock:
            size = self.block.num_addresses - 2
            for _ in range(size):
                candidate = str(self.block.network_address + self._next)
                self._next = self._next % size + 1
                if candidate in self._used or candidate.endswith((".0", ".255")):
                    continue
                if not port_free(candidate):
                    continue  # another local cloud (or anything else) has it
                self._used.add(candidate)
                return candidate
        raise FactoryError(f"no free loopback address left in {self.block}")

    def release(self, address: str) -> None:
        with self._lock:
            self._used.discard(address)

    def check_port(self, port: int = SSH_PORT) -> None:
        """Fail clearly when port 22 is taken on every address (a host sshd on 0.0.0.0)."""
        probe = str(self.block.network_address + 1)
        if port_free(probe, port):
            return
        if wildcard_listener(port):
            raise FactoryError(
                f"port {port} is taken on all addresses (an sshd listening on 0.0.0.0:{port}?): "
                f"the local cloud's instances each need port {port} on their own 127.x.y.z "
                "address; stop it (service ssh stop) or give it a specific ListenAddress"
            )


def _filesystems() -> set[str]:
    try:
        lines = Path("/proc/filesystems").read_text().splitlines()
    except OSError:
        return {"overlay"}  # cannot tell: let the mount say
    return {line.split()[-1] for line in lines if line.strip()}


# --- per-instance state --------------------------------------------------------------------


@dataclass
class InstanceRecord:
    """The runtime's view of one moto instance."""

    instance_id: str
    address: str
    sandbox: Sandbox | None  # None: the AMI has no local layers (a row only, as in plain moto)
    layers: tuple[str, ...] = ()
    authorized_keys: str = ""
    user_data_b64: str = ""
    state: str = "pending"  # pending | running | stopped | terminated
    boot_failed: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    settled: threading.Event = field(default_factory=threading.Event)  # left "pending"


def user_data_b64(value: Any) -> str:
    """moto keeps user data as a Base64EncodedString, a base64 str (templates) or bytes."""
    if value is None:
        return ""
    if hasattr(value, "as_bytes"):
        return str(value.as_bytes().decode("ascii"))
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    text = str(value)
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return base64.b64encode(text.encode()).decode("ascii")
    return text


class InstanceRuntime:
    """Sandboxes for moto's instances, and the layers behind the local AMIs."""

    def __init__(self, state_dir: Path, image_cache: Path) -> None:
        self.state_dir = state_dir
        self.image_cache = image_cache
        self.addresses = AddressPool(address_block(state_dir))
        self.store = ImageStore(state_dir / LAYERS_DIR, base_rootfs_path(image_cache))
        self.instances: dict[str, InstanceRecord] = {}
        self._lock = threading.RLock()

    # --- lifecycle of the runtime ----------------------------------------------------------

    def start(self) -> None:
        if os.geteuid() != 0:
            raise FactoryError(
                "the local cloud's instances need root (namespaces, mounts); run as root, "
                "or start only the control plane with `factory local up --no-instances`"
            )
        if shutil.which("unshare") is None:
            raise FactoryError("unshare is not installed: run `make setup` (util-linux)")
        if "overlay" not in _filesystems():
            raise FactoryError(
                "the kernel has no overlay filesystem, which instances need: run `modprobe overlay`"
            )
        self.addresses.check_port()
        sweep(self.state_dir)
        ensure_base_rootfs(self.image_cache)  # the store's base layer path: built if missing
        log.info(
            "instance runtime ready: addresses %s, base image %s",
            self.addresses.block,
            self.store.paths((BASE_LAYER,))[0],
        )

    def shutdown(self) -> None:
        with self._lock:
            records = list(self.instances.values())
        threads = [
            threading.Thread(target=self._stop_sandbox, args=(r,), daemon=True) for r in records
        ]
        for thread in threads:
            thread.start()
        wait_all(threads, 30.0)
        sweep(self.state_dir)
        self.store.clear()

    def status(self) -> dict[str, Any]:
        with self._lock:
            records = list(self.instances.values())
        return {
            "instances_running": sum(1 for r in records if r.state in ("pending", "running")),
            "sandboxes": sum(1 for r in records if r.sandbox is not None and r.sandbox.running()),
            "images": self.store.image_count(),
            "layers": self.store.layer_count(),
            "addresses": str(self.addresses.block),
            "base_image": BASE_IMAGE_NAME,
        }

    # --- images ------------------------------------------------------------------------------

    def register_base_image(self, ami_id: str) -> None:
        self.store.hold(f"ami:{ami_id}", (BASE_LAYER,))

    def image_created(self, instance_id: str, ami_id: str) -> bool:
        """CreateImage: the instance's writable layer becomes the new AMI's top layer."""
        record = self._record(instance_id)
        if record is None or record.sandbox is None:
            return False
        with record.lock:
            sandbox = record.sandbox
            if sandbox.running():
                # like CreateImage with NoReboot: copy the live upper directory
                layer = self.store.add_layer(sandbox.upper, move=False)
                layers = (layer, *record.layers)
            else:
                # stopped (as Packer leaves it): move the upper directory, and let the
                # instance continue on top of it with a fresh one; nothing is copied
                layer = self.store.add_layer(sandbox.upper, move=True)
                layers = (layer, *record.layers)
                sandbox.reset_upper()
                record.layers = layers
                self.store.hold(f"instance:{instance_id}", layers)
            self.store.hold(f"ami:{ami_id}", layers)
        log.info("CreateImage %s from %s: layers %s", ami_id, instance_id, ", ".join(layers))
        return True

    def image_copied(self, source_ami_id: str, ami_id: str) -> None:
        layers = self.store.layers_of(f"ami:{source_ami_id}")
        if layers is not None:
            self.store.hold(f"ami:{ami_id}", layers)

    def image_deregistered(self, ami_id: str) -> None:
        freed = self.store.release(f"ami:{ami_id}")
        if freed:
            log.info("DeregisterImage %s freed layers %s", ami_id, ", ".join(freed))

    def has_layers(self, ami_id: str) -> bool:
        return self.store.layers_of(f"ami:{ami_id}") is not None

    # --- instances -----------------------------------------------------------------------------

    def launch(
        self,
        instance_id: str,
        image_id: str,
        key_material: str,
        user_data: Any,
        on_running: OnRunning,
    ) -> str:
        """Allocate the address and boot the sandbox in the background; return the address."""
        address = self.addresses.allocate()
        layers = self.store.layers_of(f"ami:{image_id}")
        sandbox = None
        if layers is not None:
            sandbox = Sandbox(self.state_dir / INSTANCES_DIR / instance_id)
            self.store.hold(f"instance:{instance_id}", layers)
        else:
            log.info("%s: AMI %s has no local layers: no sandbox", instance_id, image_id)
        record = InstanceRecord(
            instance_id=instance_id,
            address=address,
            sandbox=sandbox,
            layers=layers or (),
            authorized_keys=key_material,
            user_data_b64=user_data_b64(user_data),
        )
        with self._lock:
            self.instances[instance_id] = record
        self._boot(record, on_running)
        return address

    def start_instance(self, instance_id: str, on_running: OnRunning) -> None:
        record = self._record(instance_id)
        if record is None or record.state in ("pending", "running"):
            return
        self._boot(record, on_running)

    def stop_instance(self, instance_id: str) -> None:
        record = self._record(instance_id)
        if record is None:
            return
        self._stop_sandbox(record)
        record.state = "stopped"

    def reboot_instance(self, instance_id: str) -> None:
        record = self._record(instance_id)
        if record is None or record.sandbox is None:
            return
        self._stop_sandbox(record)
        self._boot(record, None, wait=True)

    def terminate_instance(self, instance_id: str) -> None:
        record = self._record(instance_id)
        if record is None or record.state == "terminated":
            return
        with record.lock:
            if record.sandbox is not None:
                record.sandbox.remove()
            record.state = "terminated"
        self.store.release(f"instance:{instance_id}")
        self.addresses.release(record.address)
        with self._lock:
            self.instances.pop(instance_id, None)

    def address_of(self, instance_id: str) -> str | None:
        record = self._record(instance_id)
        return record.address if record is not None else None

    def health(self, instance_id: str) -> str:
        """pending | ok | impaired: ok once sshd answers and the user data exited 0."""
        record = self._record(instance_id)
        if record is None:
            return HEALTH_OK  # not ours: an instance of an AMI without layers, as moto has it
        if record.sandbox is None:
            return HEALTH_OK if record.state == "running" else HEALTH_PENDING
        if record.state != "running":
            return HEALTH_IMPAIRED if record.boot_failed else HEALTH_PENDING
        if not record.sandbox.running():
            return HEALTH_IMPAIRED
        status = record.sandbox.status()
        if status.get("sshd") != "up":
            return HEALTH_IMPAIRED if status.get("sshd") in ("failed", "exited") else HEALTH_PENDING
        user_data = status.get("user_data")
        if user_data == "running":
            return HEALTH_PENDING
        if user_data in (None, 0):
            return HEALTH_OK
        return HEALTH_IMPAIRED

    def system_health(self, instance_id: str) -> str:
        """ok, or impaired when the sandbox of a running instance died (the "host" failed)."""
        record = self._record(instance_id)
        if record is None or record.sandbox is None or record.state != "running":
            return HEALTH_OK
        return HEALTH_OK if record.sandbox.running() else HEALTH_IMPAIRED

    def push_ssh_key(self, instance_id: str, user: str, public_key: str, ttl: float) -> bool:
        """EC2 Instance Connect: offer `public_key` to `user` on the instance for `ttl` s."""
        record = self._record(instance_id)
        if record is None or record.sandbox is None:
            return False
        with record.lock:
            record.sandbox.push_ssh_key(user, public_key, time.time() + ttl)
        return True

    def console_output(self, instance_id: str) -> str | None:
        record = self._record(instance_id)
        if record is None or record.sandbox is None:
            return None
        return record.sandbox.console_output()

    # --- internals ---------------------------------------------------------------------------

    def _record(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            return self.instances.get(instance_id)

    def wait_booted(self, instance_ids: list[str], timeout: float = SYNC_BOOT_WAIT) -> None:
        """Wait (up to `timeout` in all) until these instances have left "pending"."""
        deadline = time.monotonic() + timeout
        for instance_id in instance_ids:
            record = self._record(instance_id)
            if record is not None:
                record.settled.wait(max(0.0, deadline - time.monotonic()))

    def _boot(self, record: InstanceRecord, on_running: OnRunning, *, wait: bool = False) -> None:
        record.state = "pending"
        record.boot_failed = False
        record.settled.clear()
        if record.sandbox is None:
            record.state = "running"
            if on_running is not None:
                on_running()
            record.settled.set()
            return
        spec = BootSpec(
            instance_id=record.instance_id,
            address=record.address,
            layers=tuple(self.store.paths(record.layers)),
            authorized_keys=record.authorized_keys,
            user_data_b64=record.user_data_b64,
            default_user=DEFAULT_USER,
        )
        with record.lock:
            record.sandbox.boot(spec)

        def _wait() -> None:
            assert record.sandbox is not None
            ready = record.sandbox.wait_ready(BOOT_TIMEOUT)
            if record.state != "pending":
                record.settled.set()
                return  # stopped or terminated meanwhile
            if not ready:
                record.boot_failed = True
                log.warning(
                    "%s: sandbox did not come up; see %s",
                    record.instance_id,
                    record.sandbox.dir / "console.log",
                )
            record.state = "running"
            if on_running is not None:
                on_running()
            record.settled.set()

        if wait:
            _wait()
        else:
            threading.Thread(target=_wait, name=f"boot-{record.instance_id}", daemon=True).start()

    def _stop_sandbox(self, record: InstanceRecord) -> None:
        if record.sandbox is None:
            return
        with record.lock:
            record.sandbox.stop()


_RUNTIME: InstanceRuntime | None = None


def current() -> InstanceRuntime | None:
    """The runtime installed in this process (the ec2 hooks act through it)."""
    return _RUNTIME


def install_runtime(cloud: Any) -> None:
    """Create the runtime for `cloud`, hook it into moto's EC2 backend, set `cloud.runtime`."""
    global _RUNTIME  # noqa: PLW0603 - moto's backends are process-global; so is their runtime
    # imported here: moto is heavy, and `factory local down` imports this module for sweep()
    from factory.localcloud import ec2hooks

    runtime = InstanceRuntime(Path(cloud.state_dir), Path(cloud.image_cache))
    _RUNTIME = runtime
    ec2hooks.install(current)
    cloud.runtime = runtime


# --- sweeping up after a crash ---------------------------------------------------------------


def _sandbox_pids(state_dir: Path) -> list[int]:
    """Processes whose command line names this state dir's instances (unshare, guest_init)."""
    marker = str(state_dir.resolve() / INSTANCES_DIR).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and b"guest_init" in cmdline:
            pids.append(int(entry.name))
    return pids


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    mounts = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        target = line.split()[4].replace("\\040", " ")
        if target == prefix or target.startswith(prefix + "/"):
            mounts.append(target)
    return mounts


def sweep(state_dir: Path) -> None:
    """Kill sandbox processes, unmount, delete what a crashed local cloud left in state_dir."""
    state_dir = Path(state_dir)
    if not state_dir.exists():
        return
    for _ in range(3):
        pids = _sandbox_pids(state_dir)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            _reap()
            time.sleep(0.02)
    for target in sorted(_mounts_under(state_dir), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    for name in (INSTANCES_DIR, LAYERS_DIR):
        path = state_dir / name
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    except OSError as exc:
        if exc.errno != errno.ECHILD:
            raise
