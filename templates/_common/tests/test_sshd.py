"""SSH: keys only, no root login, a valid config only root can change, private host keys.

Read from `sshd -T` for a connection as root and as the login user, so Match blocks and
drop-in files count, and a later line cannot quietly undo the hardening.
"""

from __future__ import annotations

from typing import Any

import pytest

# an address no Match block should single out (TEST-NET-3)
CONNECTION = "host=verify.invalid,addr=203.0.113.10,laddr=0.0.0.0,lport=22"


@pytest.fixture(scope="module")
def sshd(root: Any, image: Any) -> dict[str, dict[str, str]]:
    """User -> sshd's effective settings for that user's connection."""
    effective: dict[str, dict[str, str]] = {}
    for user in ("root", image.ssh_user):
        settings: dict[str, str] = {}
        for line in root.lines("sshd -T -C %s", f"user={user},{CONNECTION}"):
            key, _, value = line.partition(" ")
            settings.setdefault(key.lower(), value.strip())
        effective[user] = settings
    return effective


def test_password_login_is_disabled(sshd: dict[str, dict[str, str]]) -> None:
    for user, settings in sshd.items():
        assert settings["passwordauthentication"] == "no", user


def test_keyboard_interactive_login_is_disabled(sshd: dict[str, dict[str, str]]) -> None:
    for user, settings in sshd.items():
        assert settings["kbdinteractiveauthentication"] == "no", user


def test_root_login_is_denied(sshd: dict[str, dict[str, str]]) -> None:
    assert sshd["root"]["permitrootlogin"] == "no"


def test_empty_passwords_are_refused(sshd: dict[str, dict[str, str]]) -> None:
    for user, settings in sshd.items():
        assert settings["permitemptypasswords"] == "no", user


def test_sshd_config_is_changeable_by_root_only(host: Any, root: Any) -> None:
    paths = ["/etc/ssh/sshd_config", *root.lines("find /etc/ssh/sshd_config.d -type f")]
    for path in paths:
        f = host.file(path)
        assert f.user == "root", path
        assert f.mode & 0o022 == 0, f"{path} is writable by group or others ({f.mode:o})"


def test_host_private_keys_are_private(host: Any, root: Any) -> None:
    keys = root.lines("find /etc/ssh -maxdepth 1 -name 'ssh_host_*_key' -type f")
    assert keys, "no SSH host keys"
    for path in keys:
        with host.sudo():
            f = host.file(path)
            mode, owner = f.mode, f.user
        assert owner == "root", path
        assert mode & 0o077 == 0, f"{path} is readable by others ({mode:o})"
