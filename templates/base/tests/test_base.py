"""The `base` family: a Debian 12 golden image other families build on.

The shared suite (templates/_common/tests) checks what every image must satisfy; these
check what `base` promises to the families built on it.
"""

from __future__ import annotations

import re
from typing import Any


def test_is_debian_12(host: Any) -> None:
    release = host.system_info
    assert release.distribution == "debian"
    assert release.release.split(".")[0] == "12", release.release


def test_release_file_names_the_base_family(host: Any) -> None:
    text = host.file("/etc/factory-release").content_string
    assert re.search(r"(?im)^\s*(factory[_-])?family\s*=\s*[\"']?base[\"']?\s*$", text), text


def test_login_user_has_passwordless_sudo(host: Any) -> None:
    """Families build on base over SSH as this user: provisioners need sudo without a password."""
    assert host.run("sudo -n true").rc == 0


def test_provisioning_prerequisites_are_installed(host: Any) -> None:
    for package in ("python3", "sudo", "ca-certificates", "openssh-server"):
        assert host.package(package).is_installed, package
