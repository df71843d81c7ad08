"""Accounts: one superuser, no passwords to guess, no build users, sudo kept narrow."""

from __future__ import annotations

from typing import Any


def test_only_root_has_uid_0(accounts: list[Any]) -> None:
    assert [a.name for a in accounts if a.uid == 0] == ["root"]


def test_no_account_has_an_empty_password(shadow: dict[str, str]) -> None:
    assert [name for name, password in shadow.items() if password == ""] == []


def test_root_and_login_user_passwords_are_locked(shadow: dict[str, str], image: Any) -> None:
    """Keys are the only way in: neither root nor the login user has a usable password."""
    for name in ("root", image.ssh_user):
        assert shadow[name].startswith(("!", "*")), f"{name} has a usable password"


def test_no_unexpected_login_accounts(accounts: list[Any], image: Any) -> None:
    """Only root and the image's login user have a shell: no leftover build or test users."""
    assert sorted(a.name for a in accounts if a.can_log_in) == sorted({"root", image.ssh_user})


def test_sudoers_are_valid_and_root_owned(root: Any) -> None:
    result = root.run("visudo -c")  # checks syntax, owner and mode of every sudoers file
    assert result.rc == 0, result.stdout + result.stderr


def test_passwordless_sudo_only_for_login_user(root: Any, image: Any) -> None:
    rules = root.lines(
        "grep -rhsE '^[^#]*NOPASSWD' /etc/sudoers /etc/sudoers.d || true"
    )
    assert [r for r in rules if r.split()[0] != image.ssh_user] == []


def test_shadow_file_is_private(host: Any) -> None:
    f = host.file("/etc/shadow")
    assert f.user == "root"
    assert f.mode & 0o027 == 0, f"/etc/shadow mode {f.mode:o}"
