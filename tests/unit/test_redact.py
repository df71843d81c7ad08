from __future__ import annotations

from factory.output import dumps
from factory.redact import redact, register_secret


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
