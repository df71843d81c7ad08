"""Clocks are synchronised (TLS, Kerberos, logs and AWS request signing depend on it)."""

from __future__ import annotations

from typing import Any

# package -> the unit its package enables
TIME_SYNC = {
    "chrony": "chrony.service",
    "systemd-timesyncd": "systemd-timesyncd.service",
    "ntpsec": "ntpsec.service",
    "ntp": "ntp.service",
}


def _installed(host: Any) -> list[str]:
    return [name for name in TIME_SYNC if host.package(name).is_installed]


def test_a_time_sync_daemon_is_installed_and_enabled(host: Any, root: Any) -> None:
    installed = _installed(host)
    assert installed, f"none of {', '.join(TIME_SYNC)} is installed"
    # enabled = wanted by a target (works whether or not systemd is running right now)
    wanted = root.lines(
        "find /etc/systemd/system -path '*.wants/*' -name %s -o -path '*.wants/*' -name %s "
        "-o -path '*.wants/*' -name %s -o -path '*.wants/*' -name %s",
        *TIME_SYNC.values(),
    )
    assert any(path.rsplit("/", 1)[-1] == TIME_SYNC[n] for path in wanted for n in installed), (
        f"{', '.join(installed)} installed but not enabled"
    )


def test_time_sources_are_configured(host: Any, root: Any) -> None:
    installed = _installed(host)
    if "chrony" in installed:
        sources = root.lines(
            "grep -rhsE '^(server|pool|peer|sourcedir)\\b' /etc/chrony || true"
        )
        assert sources, "chrony has no server, pool or sourcedir"
    elif installed == ["systemd-timesyncd"]:
        # timesyncd always has its compiled-in FallbackNTP; an explicit NTP= must not be empty
        explicit = root.lines("grep -rhsE '^NTP=' /etc/systemd/timesyncd.conf "
                              "/etc/systemd/timesyncd.conf.d || true")
        assert all(line.strip() != "NTP=" for line in explicit)
    else:
        assert installed, "no time sync daemon"
