from __future__ import annotations

import logging

import pytest

from factory.output import dumps
from factory.redact import RedactingFilter, redact, redact_logging, register_secret


def test_private_keys_are_masked() -> None:
    text = "x -----BEGIN OPENSSH PRIVATE KEY-----\nabc\ndef\n-----END OPENSSH PRIVATE KEY----- y"
    assert redact(text) == "x ***PRIVATE KEY*** y"


def test_aws_secrets_are_masked() -> None:
    out = redact("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY done")
    assert "wJalrXUtnFEMI" not in out
    assert out.endswith("*** done")


def test_registered_secrets_are_masked_everywhere() -> None:
    register_secret("s3cr3t-token-value")
    assert "s3cr3t" not in redact("token is s3cr3t-token-value.")
    assert "s3cr3t" not in dumps({"nested": ["s3cr3t-token-value"]})


def test_sigv4_headers_are_masked_as_botocore_logs_them() -> None:
    # botocore.endpoint's DEBUG line for a signed request, with a temporary credential
    line = (
        "Sending http request: <AWSPreparedRequest method=POST, headers={"
        "'X-Amz-Date': b'20260101T000000Z', 'X-Amz-Security-Token': b'IQoJb3JpZ2luX2VjEXAMPLE+/=', "
        "'Authorization': b'AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEKEYID/20260101/us-east-1/ec2/"
        "aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, "
        "Signature=0123456789abcdef0123456789abcdef'}>"
    )
    out = redact(line)
    for secret in ("IQoJb3JpZ2luX2VjEXAMPLE", "ASIAEXAMPLEKEYID", "0123456789abcdef"):
        assert secret not in out, out
    assert "'X-Amz-Security-Token': b'***'" in out
    assert "Credential=***, SignedHeaders=host;x-amz-date;x-amz-security-token, " in out
    assert "Signature=***'" in out


def test_presigned_url_and_wire_headers_are_masked() -> None:
    url = (
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=ASIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE%2B%2F&X-Amz-Signature=abcdef0123456789"
    )
    out = redact(url)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out
    assert out.endswith("&X-Amz-Credential=***&X-Amz-Security-Token=***&X-Amz-Signature=***"), out
    assert redact("x-amz-security-token: FwoGZXIvYXdzEXAMPLE") == "x-amz-security-token: ***"


def test_every_log_record_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("TOKEN-registered-4f1e9a")
    logger = logging.getLogger("factory.test.redact.records")
    caplog.set_level(logging.DEBUG, logger=logger.name)
    redact_logging()
    logger.debug("headers=%s", {"X-Amz-Security-Token": b"plainTOKENvalue123"})
    logger.debug("token is %s", "TOKEN-registered-4f1e9a")
    try:
        raise ValueError("TOKEN-registered-4f1e9a")
    except ValueError:
        logger.exception("failed")
    assert "plainTOKENvalue123" not in caplog.text
    assert "TOKEN-registered-4f1e9a" not in caplog.text
    assert "'X-Amz-Security-Token': b'***'" in caplog.text
    assert "ValueError: ***" in caplog.text


def test_redact_logging_adds_one_filter_per_handler() -> None:
    logger = logging.getLogger("factory.test.redact")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        redact_logging(logger)
        redact_logging(logger)
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)
