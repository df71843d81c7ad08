"""One instance's sandbox, seen from the host: its directory, its namespace's init, its state.

Directory (under STATE_DIR/instances/<instance-id>/): `upper/` and `work/` (the overlay's
writable layer, kept across stop/start), `root/` (mount point, only mounted inside the
sandbox's private mount namespace), `metadata/` (what the instance metadata service would
serve, seen read-only in the guest at METADATA_MOUNT: today the keys EC2 Instance Connect
pushed), `boot.json` (what guest_init is told), `console.log`, `sshd.log`, `status.json` and
`init.pid` (written by guest_init).

The sandbox runs as `unshare --pid --mount --uts --ipc --fork -- python guest_init.py`.
`unshare --fork` does not pass SIGTERM on to its child, so stopping signals the
namespace's pid 1 (guest_init, its host pid recorded in init.pid); when it exits the
kernel kills whatever is left in the namespace, and its mounts go with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

GUEST_INIT = Path(__file__).with_name("guest_init.py")
HOST_KEY_TYPES = ("ecdsa", "ed25519")
STOP_TIMEOUT = 10.0
# Where the guest sees `metadata/` (read-only), laid out as IMDS paths are:
# managed-ssh-keys/active-keys/<user> is what EC2 Instance Connect's sshd hook reads.
METADATA_MOUNT = "/run/localcloud/meta-data"
ACTIVE_KEYS = "managed-ssh-keys/active-keys"


@dataclass(frozen=True)
class BootSpec:
    """What one boot of an instance needs."""

    instance_id: str
    address: str
    layers: tuple[Path, ...]  # top first
    authorized_keys: str
    user_data_b64: str
    default_user: str

    @property
    def hostname(self) -> str:
        return "ip-" + self.address.replace(".", "-")


def unshare_argv(boot_json: Path) -> list[str]:
    # setpriv --pdeathsig: if the local cloud dies (even by SIGKILL), unshare is killed, and
    # --kill-child takes the sandbox's init, hence its whole pid namespace, with it
    wrapper = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
    return [
        *wrapper,
        "unshare",
        "--pid",
        "--mount",
        "--uts",
        "--ipc",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "--",
        sys.executable,
        "-I",
        "-S",
        str(GUEST_INIT),
        str(boot_json),
    ]


class Sandbox:
    """Start, stop and inspect one instance's sandbox (not thread-safe: the runtime locks)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    def boot(self, spec: BootSpec) -> None:
        """Start the sandbox; returns at once (wait_ready waits for sshd)."""
        for name in ("upper", "work", "root", "metadata"):
            (self.dir / name).mkdir(parents=True, exist_ok=True)
        (self.dir / "metadata").chmod(0o755)
        for name in ("status.json", "init.pid"):
            (self.dir / name).unlink(missing_ok=True)
        config = {
            "instance_id": spec.instance_id,
            "address": spec.address,
            "hostname": spec.hostname,
            "layers": [str(p) for p in spec.layers],
            "upper": str(self.dir / "upper"),
            "work": str(self.dir / "work"),
            "root": str(self.dir / "root"),
            "metadata": str(self.dir / "metadata"),
            "metadata_mount": METADATA_MOUNT,
            "dir": str(self.dir),
            "authorized_keys": spec.authorized_keys,
            "user_data": spec.user_data_b64,
            "default_user": spec.default_user,
            "host_key_types": list(HOST_KEY_TYPES),
            # instances share the host's network: its resolver works for them too (as the VPC
            # resolver DHCP hands out does on EC2), so provisioners can apt-get
            "resolv_conf": _host_resolv_conf(),
        }
        boot_json = self.dir / "boot.json"
        boot_json.write_text(json.dumps(config))
        boot_json.chmod(0o600)
        with (self.dir / "console.log").open("ab") as console:
            self.proc = _spawn(unshare_argv(boot_json), console)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def wait_ready(self, timeout: float) -> bool:
        """Wait until sshd answers (True) or the sandbox failed or timed out (False)."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            state = self.status().get("sshd")
            if state == "up":
                return True
            if state == "failed" or not self.running():
                return False
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        return False

    def init_pid(self) -> int | None:
        try:
            return int((self.dir / "init.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End every process of the instance; the writable layer stays."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            pid = self.init_pid()
            if pid is None:
                # init has not recorded itself yet: killing unshare kills its child (--kill-child)
                proc.kill()
            else:
                _signal(pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if pid is not None:
                    _signal(pid, signal.SIGKILL)
                proc.kill()
                proc.wait(5)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def reset_upper(self) -> None:
        """A fresh, empty writable layer (after the old one became an image layer)."""
        shutil.rmtree(self.dir / "work", ignore_errors=True)
        (self.dir / "upper").mkdir(parents=True, exist_ok=True)
        (self.dir / "work").mkdir(parents=True, exist_ok=True)

    def push_ssh_key(self, user: str, public_key: str, expires_at: float) -> None:
        """Offer `public_key` to `user` until `expires_at` (EC2 Instance Connect's push).

        One line per key, `<expiry epoch> <key>`; expired lines are dropped on each push. The
        file is replaced atomically: sshd's hook may be reading it at any moment.
        """
        keys_dir = self.dir / "metadata" / ACTIVE_KEYS
        keys_dir.mkdir(parents=True, exist_ok=True)
        for directory in (keys_dir, keys_dir.parent):
            directory.chmod(0o755)
        path = keys_dir / user
        now = time.time()
        lines = []
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                expiry, _, key = line.partition(" ")
                with contextlib.suppress(ValueError):
                    if float(expiry) > now and key != public_key:
                        lines.append(line)
        lines.append(f"{int(expires_at)} {public_key}")
        staging = keys_dir / f".{user}.{os.getpid()}.{threading.get_ident()}"
        staging.write_text("\n".join(lines) + "\n")
        staging.chmod(0o644)
        staging.replace(path)

    def console_output(self) -> str:
        try:
            return (self.dir / "console.log").read_text(errors="replace")
        except OSError:
            return ""


_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawn(argv: list[str], console: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start a sandbox from one long-lived thread: a parent-death signal fires when the
    *thread* that forked exits, and the local cloud's request threads are short-lived."""
    global _spawner  # noqa: PLW0603 - one spawner thread per process
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawner")
    future = _spawner.submit(
        subprocess.Popen,
        argv,
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=console,
        close_fds=True,
    )
    return future.result()


def _host_resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def wait_all(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
