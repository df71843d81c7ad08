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
