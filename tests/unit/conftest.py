"""Unit tests never talk to the session's local cloud: moto in-process or nothing.

`aws` is the one moto fixture: a fresh in-process AWS per test, with clients for its default
account in us-east-1. `moto_module` is the same world shared by a module's tests (for modules
whose setup is expensive); it sets the environment moto needs itself, as module scope cannot
use the per-test `monkeypatch`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto import mock_aws

from factory.aws import AwsClients, AwsTarget

REGION = "us-east-1"
_FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _isolate(patch: pytest.MonkeyPatch) -> None:
    # The integration tier's session fixture exports AWS_ENDPOINT_URL; in-process moto
    # (mock_aws) would otherwise send its requests to that live server.
    patch.delenv("AWS_ENDPOINT_URL", raising=False)
    patch.delenv("AWS_PROFILE", raising=False)
    for key, value in _FAKE_CREDENTIALS.items():
        patch.setenv(key, value)


@pytest.fixture(autouse=True)
def _no_local_cloud_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    _isolate(monkeypatch)


@pytest.fixture
def aws() -> Iterator[AwsClients]:
    """moto in-process, fresh for this test: clients for its default account in us-east-1."""
    with mock_aws():
        yield AwsClients(AwsTarget(REGION))


@pytest.fixture(scope="module")
def moto_module() -> Iterator[AwsClients]:
    """One moto world for a whole module (its EC2 backend takes a while to make)."""
    with pytest.MonkeyPatch.context() as patch:
        _isolate(patch)
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        with mock_aws():
            yield AwsClients(AwsTarget(REGION))
