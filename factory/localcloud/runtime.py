"""The instance runtime: placeholder until the instance-runtime issue lands."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sweep(state_dir: Path) -> None:
    """Remove whatever a crashed local cloud left behind under `state_dir` (nothing yet)."""


def install_runtime(cloud: Any) -> None:
    """Hook the runtime into moto's EC2 backend (not yet)."""
