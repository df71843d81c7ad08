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


def test_no_world_writable_files_in_etc(root: Any) -> None:
    assert root.lines("find /etc -xdev -perm -0002 ! -type l") == []


def test_no_world_writable_system_files(root: Any) -> None:
    found = root.lines(f"find {SYSTEM_DIRS} -xdev -type f -perm -0002 2>/dev/null || true")
    assert found == []


def test_world_writable_directories_are_sticky(root: Any) -> None:
    assert root.lines("find / -xdev -type d -perm -0002 ! -perm -1000") == []


def test_no_unexpected_setuid_programs(root: Any) -> None:
    found = root.lines("find / -xdev -type f \\( -perm -4000 -o -perm -2000 \\)")
    assert sorted(set(found) - SETUID_ALLOWED) == []


def test_package_database_is_consistent(root: Any) -> None:
    audit = root.run("dpkg --audit")
    assert audit.rc == 0 and audit.stdout.strip() == "", audit.stdout
