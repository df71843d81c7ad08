"""Where attestations live: `s3://BUCKET/provenance/ACCOUNT/REGION/AMI.intoto.jsonl`.

One DSSE envelope per line, appended with a conditional write so two writers never lose a
line. The JUnit report (`AMI.junit.xml`) and verify's result (`AMI.verify-result.json`) are
stored beside it, so a test result can be checked offline. The bucket is versioned: tampering
leaves a trace.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from factory.aws import AwsClients, objects
from factory.errors import AwsError, ConfigError
from factory.provenance.signing import Envelope

ATTESTATION = ".intoto.jsonl"
JUNIT = ".junit.xml"
VERIFY_RESULT = ".verify-result.json"
APPEND_ATTEMPTS = 5  # conditional writes before giving up on a file that keeps changing


def default_bucket(clients: AwsClients) -> str:
    return f"factory-provenance-{clients.account_id}-{clients.region}"


def object_key(account: str, region: str, ami_id: str, suffix: str = ATTESTATION) -> str:
    return f"provenance/{account}/{region}/{ami_id}{suffix}"


def default_uri(clients: AwsClients, ami_id: str) -> str:
    """Where an image's attestation file is when its tag does not say (the default bucket)."""
    key = object_key(clients.account_id, clients.region, ami_id)
    return objects.uri(default_bucket(clients), key)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ConfigError(f"{uri!r} is not an s3://BUCKET/KEY URI")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def ensure_bucket(clients: AwsClients, bucket: str) -> None:
    """Create the provenance bucket (versioned) on first use."""
    if not objects.bucket_exists(clients, bucket):
        objects.create_versioned_bucket(clients, bucket)


def read_object(clients: AwsClients, uri: str) -> bytes | None:
    """A stored report's bytes (JUnit, verify result), or None when it is gone."""
    found = objects.get(clients, *parse_s3_uri(uri))
    return found.body if found is not None else None


def read_envelopes(clients: AwsClients, uri: str) -> list[tuple[str, Envelope | None]]:
    """The attestation file's lines, each with its parsed envelope (None if unparseable)."""
    found = objects.get(clients, *parse_s3_uri(uri))
    if found is None:
        raise ConfigError(f"no attestation at {uri}")
    out: list[tuple[str, Envelope | None]] = []
    for line in found.body.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            out.append((line, Envelope.from_json(line)))
        except (ValueError, KeyError, TypeError):
            out.append((line, None))
    return out


def append_line(clients: AwsClients, bucket: str, key: str, line: str) -> None:
    """Append one line with a conditional write (no lost update between two writers)."""
    for _attempt in range(APPEND_ATTEMPTS):
        found = objects.get(clients, bucket, key)
        body = (found.body if found else b"") + line.encode() + b"\n"
        if objects.put(
            clients,
            bucket,
            key,
            body,
            content_type="application/jsonl",
            if_match=found.etag if found else None,
            if_none_match=found is None,
        ):
            return
    raise AwsError(f"s3:PutObject s3://{bucket}/{key}: kept changing under us; retry")


def store_report(clients: AwsClients, bucket: str, key: str, body: bytes, content_type: str) -> str:
    """Store a report beside the attestation (overwriting the previous run's); its URI."""
    objects.put(clients, bucket, key, body, content_type=content_type)
    return objects.uri(bucket, key)


# ---- the JUnit report -------------------------------------------------------------------------


@dataclass(frozen=True)
class JunitSummary:
    tests: int
    failures: int
    errors: int
    skipped: int

    @property
    def passed(self) -> bool:
        return self.tests > 0 and self.failures == 0 and self.errors == 0

    def totals(self) -> dict[str, int]:
        """The counts as the verification attestation annotates its JUnit byproduct."""
        return {
            "tests": self.tests,
            "failures": self.failures,
            "errors": self.errors,
            "skipped": self.skipped,
        }


def junit_summary(xml: bytes) -> JunitSummary:
    """Totals of a JUnit XML report (<testsuites> or a single <testsuite>)."""
    try:
        root = ET.fromstring(xml)  # noqa: S314 - our own verify stage's report
    except ET.ParseError as exc:
        raise ConfigError(f"JUnit report is not valid XML: {exc}") from None
    suites = [root] if root.tag == "testsuite" else root.findall(".//testsuite")
    totals = [0, 0, 0, 0]
    for suite in suites:
        for i, attr in enumerate(("tests", "failures", "errors", "skipped")):
            totals[i] += int(suite.get(attr, "0") or 0)
    return JunitSummary(*totals)
