"""The pytest plugin `factory verify` loads into its test run (`pytest -p factory.verify_plugin`).

Two things the image suites need and stock pytest-testinfra does not give:

- host key pinning: testinfra's paramiko backend accepts any host key (`WarningPolicy`) and
  ignores `UserKnownHostsFile`; the backend registered here for `paramiko://` reads the
  known_hosts file and `StrictHostKeyChecking yes` from the ssh_config it is given, so the
  connection fails unless the instance presents the key it printed on its console;
- the `image` fixture: the AMI under test (its id, tags, family, the verifier's public key),
  read from the JSON file named by FACTORY_VERIFY_CONTEXT;
- the `image_only` marker: a check of the image as built (no build leftovers in /tmp, an
  empty apt cache) that a server in service may rightly fail; skipped when the suite runs
  against a live instance (`factory rollout --verify-live`).
"""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest
import testinfra.backend
from testinfra.backend.paramiko import ParamikoBackend

CONTEXT_ENV = "FACTORY_VERIFY_CONTEXT"


class PinnedParamikoBackend(ParamikoBackend):  # type: ignore[misc]
    """testinfra's paramiko backend, honouring UserKnownHostsFile and StrictHostKeyChecking yes.

    It also turns off Nagle's algorithm on the connection: a suite is many small commands,
    and with Nagle each one waits for a delayed ACK (about 50 ms instead of 15 ms).
    """

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
        client: paramiko.SSHClient = ParamikoBackend.client.func(self)
        transport = client.get_transport()
        if transport is not None and isinstance(transport.sock, socket.socket):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client

    def _load_ssh_config(
        self,
        client: paramiko.SSHClient,
        cfg: dict[str, Any],
        ssh_config: paramiko.SSHConfig,
        ssh_config_dir: str = "~/.ssh",
    ) -> None:
        super()._load_ssh_config(client, cfg, ssh_config, ssh_config_dir)
        options = ssh_config.lookup(self.host.name)
        for known_hosts in options.get("userknownhostsfile", "").split():
            path = Path(os.path.expanduser(known_hosts))
            if path.is_file():
                client.load_host_keys(str(path))
        if options.get("stricthostkeychecking") == "yes":
            client.set_missing_host_key_policy(paramiko.RejectPolicy())


def pytest_configure(config: pytest.Config) -> None:
    """In verify's pytest process, `paramiko://` hosts get the pinned backend."""
    testinfra.backend.BACKENDS["paramiko"] = f"{__name__}.PinnedParamikoBackend"
    config.addinivalue_line(
        "markers",
        "image_only: checks the image as built; skipped on a live instance (--verify-live)",
    )


def _live() -> bool:
    path = os.environ.get(CONTEXT_ENV)
    if not path:
        return False
    try:
        return bool(json.loads(Path(path).read_text()).get("live", False))
    except (OSError, ValueError):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a live instance, `image_only` checks are skipped (and say why)."""
    if not _live():
        return
    skip = pytest.mark.skip(reason="image_only: checks the image as built, not a live server")
    for item in items:
        if item.get_closest_marker("image_only") is not None:
            item.add_marker(skip)


@dataclass(frozen=True)
class ImageUnderTest:
    """The AMI a suite is verifying, as `factory verify` launched it."""

    ami_id: str
    region: str
    name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    ssh_user: str = "admin"
    verifier_public_key: str = ""
    instance_id: str = ""
    address: str = ""
    launch_public_key: str = ""  # the key the instance was launched with ("" for none)
    live: bool = False  # an instance in service (rollout --verify-live), not a fresh one

    @property
    def family(self) -> str | None:
        return self.tags.get("factory:family")

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageUnderTest:
        return cls(
            ami_id=str(doc["ami_id"]),
            region=str(doc.get("region", "")),
            name=str(doc.get("name", "")),
            tags={str(k): str(v) for k, v in dict(doc.get("tags", {})).items()},
            ssh_user=str(doc.get("ssh_user", "admin")),
            verifier_public_key=str(doc.get("verifier_public_key", "")),
            instance_id=str(doc.get("instance_id", "")),
            address=str(doc.get("address", "")),
            launch_public_key=str(doc.get("launch_public_key", doc.get("verifier_public_key", ""))),
            live=bool(doc.get("live", False)),
        )


@pytest.fixture(scope="session")
def image() -> ImageUnderTest:
    """The AMI under test; tests that need it are skipped outside `factory verify`."""
    path = os.environ.get(CONTEXT_ENV)
    if not path:
        pytest.skip(f"not run by `factory verify` ({CONTEXT_ENV} is not set)")
    return ImageUnderTest.from_json(json.loads(Path(path).read_text()))
