"""Fixtures for the golden-image suite every family runs (`factory verify`, factory/verify.py).

The suite logs in as the image's login user over one pinned SSH connection and reads the
system as root through sudo (passwordless for that user, as on Debian's AMIs). The AMI's
tags, the login user and the verifier's public key come from the `image` fixture
(factory.verify_plugin). Checks ask the instance (`sshd -T`, `find`, `apt-config dump`), so
they see the effective state, not the files a provisioner meant to write.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

NO_LOGIN_SHELLS = frozenset(
    {"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false", "/bin/sync", ""}
)


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @property
    def can_log_in(self) -> bool:
        return self.shell not in NO_LOGIN_SHELLS


class RootShell:
    """Commands as root (sudo) on the instance; arguments are shell-quoted by testinfra."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def run(self, command: str, *args: str) -> Any:
        with self.host.sudo():
            return self.host.run(command, *args)

    def lines(self, command: str, *args: str) -> list[str]:
        """The non-empty output lines of a command that must succeed."""
        result = self.run(command, *args)
        assert result.rc == 0, f"{result.command!r} exited {result.rc}: {result.stderr.strip()}"
        return [line for line in result.stdout.splitlines() if line.strip()]

    def existing(self, paths: Iterable[str]) -> list[str]:
        """Which of `paths` exist (one command for all of them)."""
        quoted = " ".join(shlex.quote(p) for p in paths)
        if not quoted:
            return []
        return self.lines(f'for p in {quoted}; do [ -e "$p" ] && echo "$p"; done; true')


@pytest.fixture(scope="module")
def root(host: Any) -> RootShell:
    return RootShell(host)


@dataclass(frozen=True)
class Scan:
    """One walk of the root file system (`find / -xdev`) for every check that needs one."""

    setid: tuple[str, ...]  # set-uid or set-gid regular files
    world_writable: tuple[tuple[str, str, str], ...]  # (type f/d/..., octal mode, path)
    authorized_keys: tuple[str, ...]
    unowned: tuple[str, ...]

    @staticmethod
    def command(uids: set[int], gids: set[int]) -> str:
        # numeric owner tests: -nouser/-nogroup look every file's owner up (~6x slower)
        known_uid = " -o ".join(f"-uid {u}" for u in sorted(uids))
        known_gid = " -o ".join(f"-gid {g}" for g in sorted(gids))
        return (
            "find / -xdev"
            " \\( -type f \\( -perm -4000 -o -perm -2000 \\) -printf 'setid %p\\n' \\)"
            " , \\( -perm -0002 ! -type l -printf 'ww %y %m %p\\n' \\)"
            " , \\( -type f \\( -name authorized_keys -o -name authorized_keys2 \\)"
            " -printf 'authorized_keys %p\\n' \\)"
            f" , \\( \\( ! \\( {known_uid} \\) -o ! \\( {known_gid} \\) \\)"
            " -printf 'unowned %p\\n' \\)"
        )

    @classmethod
    def run(cls, root: RootShell, uids: set[int], gids: set[int]) -> Scan:
        found: dict[str, list[Any]] = {"setid": [], "ww": [], "authorized_keys": [],
                                       "unowned": []}
        for line in root.lines(cls.command(uids, gids)):
            kind, _, rest = line.partition(" ")
            if kind == "ww":
                kind_of, mode, path = rest.split(" ", 2)
                found["ww"].append((kind_of, mode, path))
            else:
                found[kind].append(rest)
        return cls(tuple(found["setid"]), tuple(found["ww"]), tuple(found["authorized_keys"]),
                   tuple(found["unowned"]))


_scans: dict[str, Scan] = {}


@pytest.fixture(scope="module")
def scan(host: Any, root: RootShell, accounts: list[Account]) -> Scan:
    """The file system scan, made once per instance (test modules share it)."""
    key = host.backend.get_pytest_id()
    if key not in _scans:
        group = host.file("/etc/group").content_string.splitlines()
        gids = {int(f[2]) for f in (line.split(":") for line in group) if len(f) >= 3}
        _scans[key] = Scan.run(root, {a.uid for a in accounts}, gids)
    return _scans[key]


@pytest.fixture(scope="module")
def accounts(host: Any) -> list[Account]:
    found = []
    for line in host.file("/etc/passwd").content_string.splitlines():
        fields = line.split(":")
        if len(fields) >= 7:
            found.append(Account(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6]))
    assert found, "/etc/passwd lists no accounts"
    return found


@pytest.fixture(scope="module")
def shadow(root: RootShell) -> dict[str, str]:
    """Account name -> the password field of /etc/shadow."""
    fields = (line.split(":") for line in root.lines("cat /etc/shadow"))
    return {f[0]: f[1] for f in fields if len(f) >= 2}


@pytest.fixture(scope="module")
def homes(root: RootShell, accounts: list[Account]) -> list[str]:
    """Every home a person or a build step may have used: root's, users', anything in /home."""
    dirs = {"/root"} | {a.home for a in accounts if a.uid >= 1000 and a.home.startswith("/")}
    dirs |= set(root.lines("find /home -mindepth 1 -maxdepth 1 -type d"))
    return sorted(d for d in dirs if d not in ("/", "/nonexistent"))
