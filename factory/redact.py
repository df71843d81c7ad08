"""Secrets never reach output, logs, reports or provenance: one filter everything passes."""

from __future__ import annotations

import logging
import re
import threading

_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(
        r"(?i)(aws_secret_access_key|secret_access_key|SecretAccessKey)([\"'=:\s]+)[A-Za-z0-9/+=]{16,}"
    ),
    re.compile(r"(?i)(aws_session_token|SessionToken)([\"'=:\s]+)[A-Za-z0-9/+=]{16,}"),
    # SigV4 on the wire, as botocore's debug log prints it: the X-Amz-Security-Token header (or
    # query parameter), and the Credential= / Signature= parts of the Authorization header and
    # of presigned URLs (X-Amz-Credential=, X-Amz-Signature=)
    re.compile(r"(?i)(x-amz-security-token)([\"']?\s*[:=]\s*b?[\"']?)[^\"'\s,;&}]+"),
    re.compile(r"(?i)\b((?:x-amz-)?credential)(\s*=\s*)[^\"'\s,;&}]+"),
    re.compile(r"(?i)\b((?:x-amz-)?signature)(\s*=\s*)[^\"'\s,;&}]+"),
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


class RedactingFilter(logging.Filter):
    """Redacts a log record's message, traceback and stack in place, so every handler after it
    (and any formatter) sees only the redacted text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is still redacted, never dropped
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_logging(logger: logging.Logger | None = None) -> None:
    """Put a RedactingFilter on every handler of `logger` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
