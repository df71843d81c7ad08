"""Shared fixtures: the local cloud (started once per session) and AWS clients pointed at it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from factory.aws import AwsClients, AwsTarget
from factory.localcloud import control

REPO = Path(__file__).resolve().parent.parent
# The base image (debootstrap) is cached outside each test's state dir: built once per machine.
IMAGE_CACHE = Path(
    os.environ.get("FACTORY_LOCAL_IMAGE_CACHE", REPO / ".factory" / "cache" / "images")
)


def _needs_root() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.LocalCloudStatus]:
    """The local cloud with sandboxed instances, for the whole test session."""
    if not _needs_root():
        pytest.skip("the local cloud's instance runtime needs root")
    state_dir = tmp_path_factory.mktemp("localcloud")
    status = control.up(state_dir, instances=True, image_cache=IMAGE_CACHE)
    saved = {k: os.environ.get(k) for k in control.env_vars(status)}
    os.environ.update(control.env_vars(status))
    try:
        yield status
    finally:
        control.down(state_dir)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def clients(local_cloud: control.LocalCloudStatus) -> AwsClients:
    """Clients for the local cloud's default account in us-east-1."""
    return AwsClients(AwsTarget("us-east-1", endpoint_url=local_cloud.endpoint_url))
