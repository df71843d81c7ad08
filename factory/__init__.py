"""ami-factory: a golden-image factory for AWS."""

from __future__ import annotations

__version__ = "0.1.0"
