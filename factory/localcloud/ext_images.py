"""Local cloud extension: EC2 image APIs moto lacks (placeholder until the retire issue)."""

from __future__ import annotations

from typing import Any


def install(cloud: Any) -> None:
    """Register handlers on `cloud.app` (none yet)."""
