"""Nothing from the build is left in the image: keys, history, credentials, scratch files.

Every instance launched from the image would inherit them. Checks marked `image_only` look
for build leftovers a server in service may rightly have (its own /tmp files, an admin's
shell history): they are skipped when the suite runs against a live instance.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

HISTORY_FILES = (
    ".bash_history", ".zsh_history", ".sh_history", ".history", ".python_history",
    ".lesshst", ".viminfo", ".mysql_history", ".psql_history", ".sqlite_history", ".wget-hsts",
)
CREDENTIAL_FILES = (
    ".aws/credentials", ".boto", ".s3cfg", ".netrc", ".git-credentials", ".docker/config.json",
    ".pypirc", ".npmrc", ".config/gh/hosts.yml", ".kube/config", ".vault-token",
)
SECRET_VARIABLES = r"AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID|VAULT_TOKEN|GITHUB_TOKEN"
SECRET_DIRS = ("/etc", "/root", "/home", "/opt", "/srv", "/usr/local", "/var/tmp", "/tmp",
               "/var/lib/cloud", "/var/backups")
KEY_LINE = re.compile(r"(?:^|\s)((?:ssh|ecdsa|sk)-[\w@.-]+)\s+(AAAA[A-Za-z0-9+/]+=*)")


def test_authorized_keys_hold_only_the_launch_key(root: Any, scan: Any, image: Any) -> None:
    """The launch key pair (for `factory verify`: the verifier's) is the only key; none baked
    in. An instance launched without a key pair has no authorized keys at all."""
    launch = KEY_LINE.search(image.launch_public_key) if image.launch_public_key else None
    assert launch or image.live, "the launch key is unknown"
    files = scan.authorized_keys
    if launch is not None:
        assert files, "the launch key pair was not installed"
    strangers = []
    for path in files:
        for line in root.lines("cat %s", path):
            if line.lstrip().startswith("#") or not line.strip():
                continue
            key = KEY_LINE.search(line)
            if launch is None or key is None or key.groups() != launch.groups():
                strangers.append(f"{path}: {line[:60]}")
    assert strangers == []


@pytest.mark.image_only
def test_no_shell_history(root: Any, homes: list[str]) -> None:
    assert root.existing(f"{home}/{name}" for home in homes for name in HISTORY_FILES) == []


def test_no_credential_files(root: Any, homes: list[str]) -> None:
    paths = [f"{home}/{name}" for home in homes for name in CREDENTIAL_FILES]
    assert root.existing([*paths, "/etc/boto.cfg"]) == []


def test_no_cloud_secrets_in_configuration(root: Any, homes: list[str]) -> None:
    """No AWS keys or tokens in environment files, profiles or AWS CLI configs."""
    places = ["/etc/environment", "/etc/profile", "/etc/profile.d", "/etc/bash.bashrc",
              "/etc/default", "/etc/systemd", *[f"{h}/.aws" for h in homes],
              *[f"{h}/.profile" for h in homes], *[f"{h}/.bashrc" for h in homes]]
    found = root.lines(
        "grep -rlsIE %s " + " ".join(["%s"] * len(places)) + " || true",
        rf"({SECRET_VARIABLES}|aws_secret_access_key|aws_session_token)", *places,
    )
    assert found == []


def test_login_environment_has_no_cloud_secrets(host: Any) -> None:
    names = [line.split("=", 1)[0] for line in host.run("env").stdout.splitlines()]
    assert [n for n in names if re.fullmatch(SECRET_VARIABLES, n)] == []


def test_no_private_keys_outside_ssh_host_keys(root: Any) -> None:
    """A private key in an image is shared by every instance: only sshd's own are allowed."""
    found = root.lines(
        "grep -rlsIE -- '-----BEGIN ([A-Z0-9]+ )?PRIVATE KEY-----' "
        + " ".join(SECRET_DIRS) + " || true"
    )
    allowed = re.compile(r"/etc/ssh/ssh_host_\w+_key")
    assert [path for path in found if not allowed.fullmatch(path)] == []


@pytest.mark.image_only
def test_no_build_scratch_files(root: Any) -> None:
    """Packer's uploaded scripts and other scratch files are gone from /tmp and /var/tmp."""
    leftovers = root.lines(
        "find /tmp /var/tmp -mindepth 1 -maxdepth 1 "
        "! -name 'systemd-private-*' ! -name '.*-unix' ! -name '.*-unix.*'"
    )
    assert leftovers == []


@pytest.mark.image_only
def test_apt_package_cache_is_empty(root: Any) -> None:
    assert root.lines("find /var/cache/apt/archives -name '*.deb'") == []
