"""The `app` family: base + a small HTTP service (provisioners/app/10-service.sh).

The service must answer on its port at boot, as the unprivileged user the unit names, serving
the image's own release; its code and configuration are root's.
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


@pytest.fixture(scope="module")
def port(host: Any) -> int:
    match = re.search(r"(?m)^\s*PORT=(\d+)\s*$", host.file(CONFIG).content_string)
    assert match, f"{CONFIG} sets no PORT"
    return int(match.group(1))


class Http:
    """GET http://127.0.0.1:PORT/... on the instance (curl may not be there; python3 is)."""

    SCRIPT = (
        "import sys, urllib.request\n"
        "r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
        "sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n"
    )

    def __init__(self, host: Any, port: int) -> None:
        self.host, self.port = host, port

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        result = self.host.run("python3 -c %s %s", self.SCRIPT, url)
        assert result.rc == 0, f"GET {url}: {result.stderr.strip()[-300:]}"
        status, _, body = result.stdout.partition("\n")
        return int(status), body


@pytest.fixture(scope="module")
def http(host: Any, port: int) -> Http:
    """The service, once it answers: it may still be starting when the suite begins."""
    client = Http(host, port)
    deadline = time.monotonic() + BOOT_GRACE
    while host.run("python3 -c %s %s", client.SCRIPT, f"http://127.0.0.1:{port}/health").rc:
        if time.monotonic() > deadline:
            pytest.fail(f"nothing answers on port {port} {BOOT_GRACE:.0f}s after boot")
        time.sleep(0.5)
    return client


def test_service_is_installed_and_enabled(host: Any) -> None:
    assert host.file(UNIT).is_file
    wanted = host.file("/etc/systemd/system/multi-user.target.wants/factory-app.service")
    assert wanted.is_symlink and wanted.linked_to == UNIT


def test_service_answers_health_on_its_port(http: Http) -> None:
    assert http.get("/health") == (200, "ok\n")


def test_service_serves_this_image_release(http: Http, image: Any) -> None:
    status, body = http.get("/")
    assert status == 200
    assert f"FACTORY_BUILD_ID={image.tags['factory:build-id']}" in body


def test_service_runs_unprivileged(host: Any) -> None:
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
