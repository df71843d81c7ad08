"""File system: nothing system-wide writable by everyone, no unexpected set-uid programs."""

from __future__ import annotations

from typing import Any

SYSTEM_DIRS = "/etc /usr /boot /opt /var/lib"
# set-uid/set-gid programs a Debian cloud image is expected to ship
SETUID_ALLOWED = frozenset({
    "/usr/bin/chage", "/usr/bin/chfn", "/usr/bin/chsh", "/usr/bin/crontab", "/usr/bin/expiry",
    "/usr/bin/gpasswd", "/usr/bin/mount", "/usr/bin/newgrp", "/usr/bin/passwd", "/usr/bin/su",
    "/usr/bin/sudo", "/usr/bin/umount", "/usr/bin/ssh-agent", "/usr/bin/wall", "/usr/bin/write",
    "/usr/bin/bsd-write", "/usr/bin/fusermount", "/usr/bin/fusermount3", "/usr/bin/at",
    "/usr/bin/dotlockfile", "/usr/bin/pkexec", "/usr/sbin/unix_chkpwd", "/usr/sbin/pam_extrausers_chkpwd",
    "/usr/lib/openssh/ssh-keysign", "/usr/lib/dbus-1.0/dbus-daemon-launch-helper",
    "/usr/lib/polkit-1/polkit-agent-helper-1", "/usr/sbin/postdrop", "/usr/sbin/postqueue",
    "/usr/lib/x86_64-linux-gnu/utempter/utempter", "/usr/sbin/mount.nfs", "/usr/sbin/exim4",
})


def _under(path: str, dirs: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in dirs.split())


def test_no_world_writable_files_in_etc(scan: Any) -> None:
    assert [path for _kind, _mode, path in scan.world_writable if _under(path, "/etc")] == []


def test_no_world_writable_system_files(scan: Any) -> None:
    found = [p for kind, _m, p in scan.world_writable if kind == "f" and _under(p, SYSTEM_DIRS)]
    assert found == []


def test_world_writable_directories_are_sticky(scan: Any) -> None:
    """/tmp-like directories only: anyone may create, only owners may delete."""
    found = [p for kind, mode, p in scan.world_writable if kind == "d" and int(mode, 8) & 0o1000 == 0]
    assert found == []


def test_no_unexpected_setuid_programs(scan: Any) -> None:
    assert sorted(set(scan.setid) - SETUID_ALLOWED) == []


def test_no_files_without_an_owner(scan: Any) -> None:
    """Files of a deleted (build) user or group would be adopted by the next one made."""
    assert list(scan.unowned) == []


def test_package_database_is_consistent(root: Any) -> None:
    audit = root.run("dpkg --audit")
    assert audit.rc == 0 and audit.stdout.strip() == "", audit.stdout
