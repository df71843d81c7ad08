"""Unit tests never talk to the session's local cloud: moto in-process or nothing."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_local_cloud_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # The integration tier's session fixture exports AWS_ENDPOINT_URL; in-process moto
    # (mock_aws) would otherwise send its requests to that live server.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
