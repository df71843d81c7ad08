"""The base image: a minimal Debian 12 root filesystem made with debootstrap, built once, cached.

Several local clouds (one per test process, one per developer shell) share one cache, so
creation is guarded by an flock and built in a temporary directory that is renamed into
place only when complete. The finished tree is never written to again: it is the bottom
(read-only) layer of every instance's overlay.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from factory.errors import FactoryError
from factory.localcloud.sandbox import ACTIVE_KEYS, METADATA_MOUNT

log = logging.getLogger("factory.localcloud.baseimage")

# Debian's official AMIs: owner 136693071363, names like debian-12-amd64-20250520-2120.
# Templates pin `owners = [DEBIAN_OWNER_ID]` and filter on `name = DEBIAN_12_NAME_PATTERN`,
# which finds the real image on AWS and this one in the local cloud.
DEBIAN_OWNER_ID = "136693071363"
DEBIAN_12_NAME_PATTERN = "debian-12-amd64-*"
BASE_IMAGE_NAME = "debian-12-amd64-20250520-2120"
BASE_IMAGE_DESCRIPTION = "Debian 12 (20250520-2120)"
DEFAULT_USER = "admin"  # the login user of Debian's cloud images

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("openssh-server", "python3", "sudo", "ca-certificates")
# Bump when the customisation below changes: the cache key, so old caches are not reused.
BASE_IMAGE_VERSION = "2"
COMPLETE_MARKER = ".localcloud-complete"
DEBOOTSTRAP_TIMEOUT = 1200.0


def base_rootfs_path(cache: Path) -> Path:
    """Where the finished base root filesystem lives in `cache` (it may not exist yet)."""
    return cache / f"debian-12-{SUITE}-v{BASE_IMAGE_VERSION}"


def is_cached(cache: Path) -> bool:
    return (base_rootfs_path(cache) / COMPLETE_MARKER).is_file()


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_base_rootfs(cache: Path, *, rebuild: bool = False, mirror: str | None = None) -> Path:
    """Return the cached base root filesystem, building it first if needed (about a minute)."""
    target = base_rootfs_path(cache)
    if not rebuild and is_cached(cache):
        return target
    with _flock(cache / ".base.lock"):
        if not rebuild and is_cached(cache):  # another process built it while we waited
            return target
        if os.geteuid() != 0:
            raise FactoryError("building the base image needs root (debootstrap, chroot)")
        if shutil.which("debootstrap") is None:
            raise FactoryError(
                "debootstrap is not installed: run `make setup` (or apt-get install debootstrap)"
            )
        build = cache / f".build-{os.getpid()}-{int(time.time())}"
        shutil.rmtree(build, ignore_errors=True)
        mirror = mirror or os.environ.get("FACTORY_DEBIAN_MIRROR") or DEFAULT_MIRROR
        log.info("building the base image with debootstrap into %s (about a minute)", build)
        started = time.monotonic()
        try:
            _run(debootstrap_argv(build, mirror), timeout=DEBOOTSTRAP_TIMEOUT)
            customize(build)
            (build / COMPLETE_MARKER).write_text(f"{BASE_IMAGE_NAME}\n")
            if target.exists():
                stale = cache / f".stale-{os.getpid()}-{int(time.time())}"
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            build.rename(target)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        log.info("base image ready in %.0fs: %s", time.monotonic() - started, target)
    return target


def debootstrap_argv(target: Path, mirror: str) -> list[str]:
    return [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(target),
        mirror,
    ]


SUDOERS = (
    "# Created by the local cloud, as cloud-init does on Debian's AMIs\n"
    f"{DEFAULT_USER} ALL=(ALL) NOPASSWD:ALL\n"
)
SSHD_CONFIG = """\
# The local cloud: keys only, as on Debian's AMIs; no reverse DNS (there is no resolver).
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
"""
# EC2 Instance Connect, as the ec2-instance-connect package sets it up on Amazon Linux and
# Ubuntu AMIs: sshd asks a command for keys pushed with SendSSHPublicKey, each valid 60 s.
# The real hook reads IMDS (managed-ssh-keys/active-keys/USER); this one reads the local
# cloud's metadata directory, which the host fills and the guest sees read-only.
EIC_COMMAND = "/usr/share/ec2-instance-connect/eic_run_authorized_keys"
EIC_SSHD_CONFIG = f"""\
AuthorizedKeysCommand {EIC_COMMAND} %u
AuthorizedKeysCommandUser nobody
"""
EIC_SCRIPT = f"""\
#!/bin/sh
# EC2 Instance Connect (local cloud): print USER's pushed keys that have not expired.
keys="{METADATA_MOUNT}/{ACTIVE_KEYS}/$1"
[ -r "$keys" ] || exit 0
now=$(date +%s)
while read -r expires key; do
    case "$expires" in ''|*[!0-9]*) continue ;; esac
    [ "$expires" -gt "$now" ] && printf '%s\\n' "$key"
done < "$keys"
exit 0
"""


def customize(root: Path) -> None:
    """Add what boot needs: the `admin` user with passwordless sudo, sshd settings, no host keys."""
    _run(
        [
            "chroot",
            str(root),
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "--groups",
            "sudo",
            "--comment",
            "Debian",
            DEFAULT_USER,
        ]
    )
    sudoers = root / "etc/sudoers.d/90-cloud-init-users"
    sudoers.write_text(SUDOERS)
    sudoers.chmod(0o440)
    (root / "etc/ssh/sshd_config.d/localcloud.conf").write_text(SSHD_CONFIG)
    install_instance_connect(root)
    # host keys are made per instance at first boot, as cloud-init does
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # pam_loginuid needs audit support a sandbox may lack: make it optional, not fatal
    pam_sshd = root / "etc/pam.d/sshd"
    pam_sshd.write_text(
        pam_sshd.read_text().replace(
            "session    required     pam_loginuid.so", "session    optional     pam_loginuid.so"
        )
    )
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/hosts").write_text(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
    )
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/machine-id").write_text("")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/cloud").mkdir(parents=True, exist_ok=True)


def install_instance_connect(root: Path) -> None:
    """The sshd hook for EC2 Instance Connect (root-owned, not writable by others: sshd
    refuses an AuthorizedKeysCommand anyone else could change)."""
    script = root / EIC_COMMAND.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.parent.chmod(0o755)
    script.write_text(EIC_SCRIPT)
    script.chmod(0o755)
    (root / "etc/ssh/sshd_config.d/60-ec2-instance-connect.conf").write_text(EIC_SSHD_CONFIG)


def _run(argv: list[str], timeout: float = 300.0) -> None:
    # The local cloud runs below factory.process (its own process, no CLI signals to forward).
    try:
        proc = subprocess.run(  # noqa: PLW1510 - checked below, with the tool's output
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise FactoryError(f"{argv[0]} timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise FactoryError(f"{' '.join(argv[:2])} failed (exit {proc.returncode}): {tail}")


def main(argv: list[str] | None = None) -> int:
    """`python -m factory.localcloud.baseimage [--rebuild] [--cache DIR]`: build the base image."""
    import argparse

    parser = argparse.ArgumentParser(prog="factory.localcloud.baseimage")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="image cache (default: FACTORY_LOCAL_IMAGE_CACHE or .factory/local/images)",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild even when cached")
    parser.add_argument("--mirror", default=None, help=f"Debian mirror (default {DEFAULT_MIRROR})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = args.cache or Path(
        os.environ.get("FACTORY_LOCAL_IMAGE_CACHE") or ".factory/local/images"
    )
    try:
        path = ensure_base_rootfs(cache.resolve(), rebuild=args.rebuild, mirror=args.mirror)
    except FactoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
