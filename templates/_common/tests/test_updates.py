"""Security updates install themselves: unattended-upgrades, enabled, following the security archive."""

from __future__ import annotations

import re
from typing import Any

import pytest


@pytest.fixture(scope="module")
def apt_config(host: Any) -> str:
    result = host.run("apt-config dump")
    assert result.rc == 0, result.stderr
    return str(result.stdout)


def test_unattended_upgrades_is_installed(host: Any) -> None:
    assert host.package("unattended-upgrades").is_installed


def test_periodic_updates_are_enabled(apt_config: str) -> None:
    for option in ("APT::Periodic::Update-Package-Lists", "APT::Periodic::Unattended-Upgrade"):
        match = re.search(rf'^{re.escape(option)} "(\w+)";', apt_config, re.M)
        assert match, f"{option} is not set"
        assert match.group(1) not in ("0", "false", "no"), f"{option} is {match.group(1)}"


def test_security_updates_are_allowed(apt_config: str) -> None:
    origins = re.findall(
        r'^Unattended-Upgrade::(?:Origins-Pattern|Allowed-Origins)::? "([^"]*)";', apt_config, re.M
    )
    assert any("security" in o.lower() for o in origins), origins


def test_security_archive_is_a_package_source(root: Any) -> None:
    sources = root.lines(
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list "
        "/etc/apt/sources.list.d/*.sources 2>/dev/null || true"
    )
    entries = [s for s in sources if not s.lstrip().startswith("#")]
    assert any("security" in s for s in entries), "no security archive in the APT sources"
