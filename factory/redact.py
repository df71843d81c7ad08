"""Secrets never reach output, logs, reports or provenance: one filter everything passes."""

from __future__ import annotations

import re
import threading

_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(
        r"(?i)(aws_secret_access_key|secret_access_key|SecretAccessKey)([\"'=:\s]+)[A-Za-z0-9/+=]{16,}"
    ),
    re.compile(r"(?i)(aws_session_token|SessionToken)([\"'=:\s]+)[A-Za-z0-9/+=]{16,}"),
    re.compile(r"(?i)(password|passwd|secret|token)(\s*[=:]\s*)(?!\*\*\*)\S+"),
]
_known: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a value (a private key, a credential) so it is masked wherever it appears."""
    if value and len(value) >= 6:
        with _lock:
            _known.add(value)


def redact(text: str) -> str:
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        text = text.replace(value, "***")
    text = _PATTERNS[0].sub("***PRIVATE KEY***", text)
    for pattern in _PATTERNS[1:]:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return text
