"""Local cloud extension: Auto Scaling instance refresh (placeholder until the rollout issue)."""

from __future__ import annotations

from typing import Any


def install(cloud: Any) -> None:
    """Register handlers on `cloud.app` (none yet)."""
