"""The `app` family: base + a small HTTP service (provisioners/app/10-service.sh).

At boot the service runs as the unprivileged user its unit names, answers on its port and
serves this image's own release; its code and configuration belong to root.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

UNIT = "/etc/systemd/system/factory-app.service"
CONFIG = "/etc/default/factory-app"
CODE = "/usr/local/lib/factory-app/server.py"
SERVICE_USER = "factory-app"
BOOT_GRACE = 15.0  # seconds the service may still be starting when the suite begins


class Http:
    """GET on the service from the instance itself (curl may not be installed; python3 is)."""

    SCRIPT = (
        "import sys, urllib.request\n"
        "r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
        "sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n"
    )

    def __init__(self, host: Any, address: str, port: int) -> None:
        self.host, self.base = host, f"http://{address}:{port}"

    def get(self, path: str) -> tuple[int, str]:
        result = self.host.run("python3 -c %s %s", self.SCRIPT, self.base + path)
        assert result.rc == 0, f"GET {self.base}{path}: {result.stderr.strip()[-300:]}"
        status, _, body = result.stdout.partition("\n")
        return int(status), body


@pytest.fixture(scope="module")
def service(host: Any) -> dict[str, str]:
    """BIND and PORT from the service's configuration (launch-time user data may change them)."""
    values = dict(re.findall(r"(?m)^\s*([A-Z_]+)=(\S*)\s*$", host.file(CONFIG).content_string))
    assert values.get("PORT", "").isdigit(), f"{CONFIG} sets no PORT"
    return values


@pytest.fixture(scope="module")
def running(host: Any) -> list[str]:
    """The service's processes in this instance, once started (it may still be booting)."""
    deadline = time.monotonic() + BOOT_GRACE
    while True:
        found = host.run("pgrep -u %s -f %s", SERVICE_USER, CODE).stdout.split()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.fixture(scope="module")
def http(host: Any, service: dict[str, str], running: list[str]) -> Http:
    if not running:
        pytest.fail(f"the service is not running {BOOT_GRACE:.0f}s after boot")
    bind = service.get("BIND", "")
    if not bind:  # the service binds the instance's own address (what its hostname resolves to)
        bind = host.check_output("python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))'")
    return Http(host, "127.0.0.1" if bind in ("0.0.0.0", "::") else bind, int(service["PORT"]))


def test_service_is_installed_and_enabled(host: Any) -> None:
    assert host.file(UNIT).is_file
    wanted = host.file("/etc/systemd/system/multi-user.target.wants/factory-app.service")
    assert wanted.is_symlink and wanted.linked_to == UNIT


def test_service_runs_at_boot_as_its_own_user(running: list[str]) -> None:
    assert running, f"no {CODE} process of user {SERVICE_USER} {BOOT_GRACE:.0f}s after boot"


def test_service_answers_health_on_its_port(http: Http) -> None:
    assert http.get("/health") == (200, "ok\n")


def test_service_serves_this_image_release(http: Http, image: Any) -> None:
    """This instance's service answers (not another one on the same port)."""
    status, body = http.get("/")
    assert status == 200
    assert f"FACTORY_BUILD_ID={image.tags['factory:build-id']}" in body


def test_service_unit_is_unprivileged(host: Any) -> None:
    unit = host.file(UNIT).content_string
    assert re.search(rf"(?m)^User={re.escape(SERVICE_USER)}$", unit), "the unit runs as root"
    account = host.user(SERVICE_USER)
    assert account.exists and account.uid < 1000
    assert account.shell in ("/usr/sbin/nologin", "/bin/false")


def test_service_code_and_config_belong_to_root(host: Any) -> None:
    for path in (UNIT, CONFIG, CODE):
        f = host.file(path)
        assert f.user == "root", path
        assert f.mode & 0o022 == 0, f"{path} is writable by group or others ({f.mode:o})"
