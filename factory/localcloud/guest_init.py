"""PID 1 of one sandboxed instance (run by `unshare` with `python -I -S`: stdlib only).

In its own pid, mount, UTS and IPC namespaces it mounts the overlay of the image's layers,
sets up /proc, /dev, /run, chroots, does what cloud-init does on first boot (per-instance
SSH host keys printed to the console, the launch key pair for the default user), starts
sshd on the instance's loopback address, runs the user data, and reaps orphans. SIGTERM
stops every process of the instance; when this process exits the kernel kills any rest,
and the private mounts go with the namespace.

Progress is written as JSON to `status.json` in the instance's host directory (opened
before the chroot), which the runtime reads for health and DescribeInstanceStatus.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import encodings.idna  # noqa: F401 - imported before the chroot: socket needs it later
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLOUD_DIR = "/var/lib/cloud"
SSHD_WAIT = 20.0
STOP_GRACE = 3.0


class Shutdown(Exception):
    pass


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, options: str | None = None
) -> None:
    rc = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        options.encode() if options else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")


def console(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Status:
    """status.json in the instance's host directory, written atomically through a dir fd."""

    def __init__(self, dir_fd: int, instance_id: str) -> None:
        self.dir_fd = dir_fd
        self.state: dict[str, Any] = {
            "instance_id": instance_id,
            "sshd": "starting",
            "user_data": None,
            "boot": time.time(),
        }
        self.lock = threading.Lock()

    def update(self, **changes: Any) -> None:
        with self.lock:
            self.state.update(changes)
            data = json.dumps(self.state).encode()
            fd = os.open(
                "status.json.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=self.dir_fd
            )
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.rename(
                "status.json.tmp", "status.json", src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd
            )


def setup_root(cfg: dict[str, Any]) -> None:
    root = cfg["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    lower = ":".join(cfg["layers"])
    mount(
        "overlay",
        root,
        "overlay",
        0,
        f"lowerdir={lower},upperdir={cfg['upper']},workdir={cfg['work']},index=off",
    )
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    with contextlib.suppress(OSError):  # optional: nothing at boot needs it
        mount("sysfs", f"{root}/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    dev = f"{root}/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        with open(f"{dev}/{name}", "w"):
            pass
        mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    os.makedirs(f"{dev}/pts", exist_ok=True)
    mount(
        "devpts",
        f"{dev}/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.makedirs(f"{dev}/shm", exist_ok=True)
    mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dev}/{name}")
    mount("tmpfs", f"{root}/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    for path in ("run/sshd", "run/lock"):
        os.makedirs(f"{root}/{path}", exist_ok=True)
    os.chmod(f"{root}/run/lock", 0o1777)  # noqa: S103 - /run/lock is world-writable, sticky
    if cfg.get("metadata"):
        # the instance's view of the metadata service: the host writes, the guest only reads
        target = f"{root}{cfg['metadata_mount']}"
        os.makedirs(target, exist_ok=True)
        mount(cfg["metadata"], target, None, MS_BIND)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def read_file(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def write_file(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def user_entry(name: str) -> tuple[int, int, str] | None:
    for line in (read_file("/etc/passwd") or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and fields[0] == name:
            return int(fields[2]), int(fields[3]), fields[5]
    return None


def first_boot(cfg: dict[str, Any]) -> None:
    """Per-instance setup, as cloud-init does when it sees a new instance id."""
    for name in os.listdir("/etc/ssh"):
        if name.startswith("ssh_host_"):
            os.unlink(f"/etc/ssh/{name}")
    comment = f"root@{cfg['hostname']}"
    keygens = [
        subprocess.Popen(
            [
                "ssh-keygen",
                "-q",
                "-t",
                kind,
                "-N",
                "",
                "-C",
                comment,
                "-f",
                f"/etc/ssh/ssh_host_{kind}_key",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        for kind in cfg["host_key_types"]
    ]
    for proc in keygens:
        proc.wait()
    write_file("/etc/machine-id", os.urandom(16).hex() + "\n", 0o444)
    # cloud-init's manage_etc_hosts, as on Debian's AMIs (sudo resolves the hostname)
    write_file("/etc/hostname", cfg["hostname"] + "\n")
    write_file(
        "/etc/hosts",
        f"127.0.0.1 localhost\n{cfg['address']} {cfg['hostname']}\n"
        "::1 localhost ip6-localhost ip6-loopback\n",
    )
    user = user_entry(cfg["default_user"])
    if user is not None and cfg.get("authorized_keys"):
        uid, gid, home = user
        ssh_dir = f"{home}/.ssh"
        os.makedirs(ssh_dir, exist_ok=True)
        write_file(f"{ssh_dir}/authorized_keys", cfg["authorized_keys"].strip() + "\n", 0o600)
        os.chmod(ssh_dir, 0o700)
        os.chown(ssh_dir, uid, gid)
        os.chown(f"{ssh_dir}/authorized_keys", uid, gid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{CLOUD_DIR}/data/user-data-result")
    write_file(f"{CLOUD_DIR}/data/instance-id", cfg["instance_id"] + "\n")


def print_host_keys(cfg: dict[str, Any]) -> None:
    """The blocks EC2 consoles show (cloud-init's keys-to-console), to pin the host key."""
    fingerprints, keys = [], []
    for kind in cfg["host_key_types"]:
        pub = f"/etc/ssh/ssh_host_{kind}_key.pub"
        out = subprocess.run(
            ["ssh-keygen", "-l", "-f", pub], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out:
            fingerprints.append(out)
        text = read_file(pub)
        if text:
            keys.append(text)
    console("#" * 61)
    console("-----BEGIN SSH HOST KEY FINGERPRINTS-----")
    for line in fingerprints:
        console(line)
    console("-----END SSH HOST KEY FINGERPRINTS-----")
    console("#" * 61)
    console("-----BEGIN SSH HOST KEY KEYS-----")
    for line in keys:
        console(line)
    console("-----END SSH HOST KEY KEYS-----")


def wait_listening(address: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect((address, 22))
                if sock.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.01)
    return False


def start_user_data(cfg: dict[str, Any]) -> subprocess.Popen[bytes] | None:
    script = base64.b64decode(cfg["user_data"]) if cfg.get("user_data") else b""
    if not script:
        return None
    if not script.startswith(b"#!"):
        console("localcloud: user data is not a #! script: ignored (as cloud-init does)")
        return None
    path = f"{CLOUD_DIR}/instance/scripts/part-001"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(script)
    os.chmod(path, 0o700)
    console(f"localcloud: running user data ({len(script)} bytes)")
    return _spawn_logged(path)


def _spawn_logged(path: str) -> subprocess.Popen[bytes]:
    """Start a boot script in its own session, its output teed to the console and the log."""
    proc = subprocess.Popen(
        [path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd="/",
        start_new_session=True,
    )
    tee = threading.Thread(target=_tee_output, args=(proc,), daemon=True)
    tee.start()
    proc.tee = tee  # type: ignore[attr-defined]
    return proc


def start_rc_local() -> None:
    """Run /etc/rc.local at every boot, as systemd's rc-local compatibility unit does."""
    path = "/etc/rc.local"
    if not os.access(path, os.X_OK):
        return
    console("localcloud: running /etc/rc.local")
    _spawn_logged(path)


def _tee_output(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    with open("/var/log/cloud-init-output.log", "ab") as log:
        for line in iter(proc.stdout.readline, b""):
            log.write(line)
            log.flush()
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


def _on_signal(signum: int, _frame: object) -> None:
    raise Shutdown(signum)


def main(cfg_path: str) -> int:
    with open(cfg_path) as handle:
        cfg = json.load(handle)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    dir_fd = os.open(cfg["dir"], os.O_RDONLY | os.O_DIRECTORY)
    status = Status(dir_fd, cfg["instance_id"])
    try:
        sshd, user_data = boot(cfg, dir_fd, status)
        supervise(sshd, user_data, status)
    except Shutdown:
        console("localcloud: stopping")
    except Exception as exc:  # noqa: BLE001 - one line on the console, then the instance stops
        console(f"localcloud: boot failed: {exc}")
        status.update(sshd="failed")
        stop_all()
        return 1
    stop_all()
    return 0


def boot(
    cfg: dict[str, Any], dir_fd: int, status: Status
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None]:
    """Mount, chroot, first-boot setup, sshd, user data: what cloud-init and systemd do."""
    # the host's /proc is still mounted here: /proc/self is our pid as the host sees it
    pid_fd = os.open("init.pid", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    os.write(pid_fd, os.readlink("/proc/self").encode())
    os.close(pid_fd)
    sshd_log = os.open("sshd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644, dir_fd=dir_fd)
    console(f"localcloud: booting {cfg['instance_id']} at {cfg['address']}")
    setup_root(cfg)
    os.chroot(cfg["root"])
    os.chdir("/")
    _libc.sethostname(cfg["hostname"].encode(), len(cfg["hostname"]))
    os.environ.clear()
    os.environ.update({"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"})
    if cfg.get("resolv_conf"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink("/etc/resolv.conf")
        write_file("/etc/resolv.conf", cfg["resolv_conf"])
    fresh = read_file(f"{CLOUD_DIR}/data/instance-id") != cfg["instance_id"]
    if fresh:
        first_boot(cfg)
    print_host_keys(cfg)
    sshd = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-o", f"ListenAddress={cfg['address']}:22"],
        stdin=subprocess.DEVNULL,
        stdout=sshd_log,
        stderr=sshd_log,
    )
    if not wait_listening(cfg["address"], sshd, SSHD_WAIT):
        console("localcloud: sshd did not start (see sshd.log)")
        status.update(sshd="failed")
    else:
        console(f"localcloud: sshd listening on {cfg['address']}:22")
        status.update(sshd="up")
    start_rc_local()
    user_data = start_user_data(cfg) if fresh else None
    if user_data is not None:
        status.update(user_data="running")
    else:
        previous = read_file(f"{CLOUD_DIR}/data/user-data-result")
        status.update(user_data=int(previous) if previous else None)
    return sshd, user_data


def supervise(
    sshd: subprocess.Popen[bytes], user_data: subprocess.Popen[bytes] | None, status: Status
) -> None:
    """Reap every process (we are pid 1), noting when the user data or sshd ends."""
    while True:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            signal.pause()
            continue
        if user_data is not None and pid == user_data.pid:
            code = os.waitstatus_to_exitcode(wait_status)
            user_data.tee.join(5.0)  # type: ignore[attr-defined]
            write_file(f"{CLOUD_DIR}/data/user-data-result", f"{code}\n")
            console(f"localcloud: user data exited {code}")
            status.update(user_data=code)
            user_data = None
        elif pid == sshd.pid:
            console("localcloud: sshd exited")
            status.update(sshd="exited")


def stop_all() -> None:
    """SIGTERM every process of the namespace, then SIGKILL what is left."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.kill(-1, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)
    os.sync()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
