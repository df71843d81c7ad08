"""Shared fixtures: the local cloud (started once per session) and AWS clients pointed at it;
the suite's own option (`--update-golden`) and the rule that what the integration tier and the
instance runtime need is there: missing, their tests fail, never skip."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from factory.aws import AwsClients, AwsTarget
from factory.localcloud import control

REPO = Path(__file__).resolve().parent.parent
# The base image (debootstrap) is cached outside each test's state dir: built once per machine.
IMAGE_CACHE = Path(
    os.environ.get("FACTORY_LOCAL_IMAGE_CACHE", REPO / ".factory" / "cache" / "images")
)
# Tests under these folders are the integration tier, marked or not.
INTEGRATION_TIER = (REPO / "tests" / "integration", REPO / "tests" / "e2e")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/unit/golden/ from what the templates render now (review the diff)",
    )


def runtime_missing() -> str | None:
    """Why the local cloud's instance runtime cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "it needs root (sandboxes mount overlays and enter namespaces)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    return None


def _fail_without_runtime() -> None:
    why = runtime_missing()
    if why is not None:
        pytest.fail(
            f"the local cloud's instance runtime cannot run: {why}. Run the suite as root, as "
            "`make test` and CI do, or deselect these tests with -m 'not runtime'",
            pytrace=False,
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(tier in item.path.parents for tier in INTEGRATION_TIER):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With pytest-xdist (`make test`: -n 2 --dist loadgroup) the integration tier is one unit
    of work: one worker runs it in order on one local cloud, the unit tests share the other.
    (xdist's own xdist_group marks rename node ids, which pytest 9 no longer allows.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    tiers = tuple(f"{t.relative_to(REPO).as_posix()}/" for t in INTEGRATION_TIER)

    class TierScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return "localcloud" if nodeid.startswith(tiers) else nodeid

    return TierScheduling(config, log)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is not None and shutil.which("packer") is None:
        pytest.fail(
            "the integration tier needs packer on PATH (`make setup` installs it)", pytrace=False
        )
    if item.get_closest_marker("runtime") is not None:
        _fail_without_runtime()


@pytest.fixture(scope="session")
def local_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.LocalCloudStatus]:
    """The local cloud with sandboxed instances, for the whole test session."""
    _fail_without_runtime()
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
