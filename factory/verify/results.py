"""What a verification produced: per-test outcomes from pytest's JUnit XML, the JSON summary
whose digest is the result digest, the verdict tags, each image's result, and the exit decision.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from factory import tags
from factory.errors import VerificationError
from factory.verify.plan import VerifyTarget
from factory.verify.suite import HOST_ALIAS


class Outcome(StrEnum):
    VERIFIED = "verified"  # every test passed
    FAILED = "failed"  # the suite ran and something failed
    ERROR = "error"  # the suite could not run (launch, SSH, host key, pytest itself)


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # a result, not a pytest test class

    name: str  # "_common/tests/test_ssh.py::test_password_login_disabled"
    outcome: str  # passed | failed | error | skipped
    seconds: float
    message: str = ""


@dataclass(frozen=True)
class TestSummary:
    __test__ = False  # a result, not a pytest test class

    passed: int
    failed: int
    errors: int
    skipped: int
    seconds: float
    tests: tuple[TestCase, ...]

    @property
    def total(self) -> int:
        return len(self.tests)

    @property
    def failing(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tests if t.outcome in ("failed", "error"))

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and not self.failing


@dataclass(frozen=True)
class KeptInstance:
    """How to reach an instance kept with --keep (the key stays on disk until you delete it)."""

    instance_id: str
    user: str
    address: str
    key_path: Path
    known_hosts: Path
    security_group_id: str
    ssh_command: str
    cleanup_command: str


@dataclass(frozen=True)
class CleanupReport:
    instances_terminated: tuple[str, ...] = ()
    key_pair_deleted: bool = False
    security_group_deleted: bool = False
    leftovers: tuple[str, ...] = ()  # what could not be removed, with the command to do it


@dataclass(frozen=True)
class VerifyResult:
    """One image's verdict; junit_path, summary_path and result_digest are provenance byproducts."""

    ami_id: str
    region: str
    family: str | None
    outcome: Outcome
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    total: int = 0
    failing_tests: tuple[str, ...] = ()
    durations: Mapping[str, float] = field(default_factory=dict)
    suite_dirs: tuple[Path, ...] = ()
    suite_digest: str = ""
    result_digest: str | None = None
    junit_path: Path | None = None
    summary_path: Path | None = None
    tagged_status: str | None = None  # the factory:status written to the AMI, if any
    verified_at: str | None = None
    instance_id: str | None = None
    instance_type: str = ""
    address: str | None = None
    launch_seconds: float = 0.0
    test_seconds: float = 0.0
    cleanup_seconds: float = 0.0
    total_seconds: float = 0.0
    error: str | None = None
    kept: KeptInstance | None = None
    cleanup: CleanupReport = field(default_factory=CleanupReport)
    live: bool = False  # a running instance verify did not launch (nothing tagged)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.VERIFIED

    @property
    def result_sha256(self) -> str | None:
        """The result digest as bare hex (in-toto digests carry no `sha256:` prefix)."""
        return self.result_digest.removeprefix("sha256:") if self.result_digest else None

    @property
    def byproducts(self) -> dict[str, Path]:
        """Files to record in provenance (name -> path), present when the suite ran."""
        found = {"junit": self.junit_path, "summary": self.summary_path}
        return {name: path for name, path in found.items() if path is not None}


@dataclass(frozen=True)
class VerifyReport:
    """What `factory verify` prints: every image's result."""

    results: tuple[VerifyResult, ...]
    all_verified: bool

    @classmethod
    def of(cls, results: Sequence[VerifyResult]) -> VerifyReport:
        return cls(results=tuple(results), all_verified=all(r.ok for r in results))


def parse_junit(xml_text: str) -> TestSummary:
    """Per-test outcomes and durations from pytest's JUnit XML (xunit1 or xunit2)."""
    try:
        root = ET.fromstring(xml_text)  # noqa: S314 - our own pytest run's output
    except ET.ParseError as exc:
        raise VerificationError(f"pytest wrote unreadable JUnit XML ({exc})") from None
    cases: list[TestCase] = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                text = child.get("message") or (child.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
                break
        cases.append(
            TestCase(
                name=_test_name(case.get("classname", ""), case.get("name", ""), case.get("file")),
                outcome=outcome,
                seconds=round(float(case.get("time") or 0.0), 4),
                message=message,
            )
        )
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    seconds = sum(float(s.get("time") or 0.0) for s in suites)
    count = {
        o: sum(1 for c in cases if c.outcome == o) for o in ("passed", "failed", "error", "skipped")
    }
    return TestSummary(
        passed=count["passed"],
        failed=count["failed"],
        errors=count["error"],
        skipped=count["skipped"],
        seconds=round(seconds, 3),
        tests=tuple(cases),
    )


def _test_name(classname: str, name: str, file: str | None) -> str:
    """JUnit's `_common.tests.test_ssh` + `test_x[paramiko://instance]` as a pytest node id.

    -> `_common/tests/test_ssh.py::test_x` (the host parameter is the same for every test).
    """
    name = name.replace(f"[paramiko://{HOST_ALIAS}]", "").replace(f"paramiko://{HOST_ALIAS}-", "")
    name = name.replace(f"-paramiko://{HOST_ALIAS}]", "]")
    parts = classname.split(".")
    # the module is the last dotted part starting with test_; what follows are test classes
    index = max((i for i, p in enumerate(parts) if p.startswith("test_")), default=len(parts) - 1)
    module = "/".join(parts[: index + 1]) + ".py" if parts and parts[0] else (file or "")
    qualified = "::".join([module, *parts[index + 1 :], name]) if module else name
    return qualified


def summary_document(
    target: VerifyTarget,
    summary: TestSummary,
    *,
    instance_id: str,
    junit_sha256: str,
    started_at: str,
    finished_at: str,
) -> dict[str, Any]:
    """The JSON summary: what ran on what, and how it went; its digest is the result digest."""
    return {
        "ami_id": target.ami_id,
        "family": target.family,
        "instance_id": instance_id,
        "suite_digest": target.suite.digest,
        "suite_files": list(target.suite.files),
        "started_at": started_at,
        "finished_at": finished_at,
        "passed": summary.passed,
        "failed": summary.failed,
        "errors": summary.errors,
        "skipped": summary.skipped,
        "total": summary.total,
        "seconds": summary.seconds,
        "failing": list(summary.failing),
        "tests": [
            {"name": t.name, "outcome": t.outcome, "seconds": t.seconds, "message": t.message}
            for t in summary.tests
        ],
        "junit_sha256": junit_sha256,
    }


def verdict_tags(
    outcome: Outcome, suite_digest: str, result_digest: str, verified_at: str
) -> dict[str, str]:
    """The tags written on the AMI after its suite ran."""
    status = tags.Status.VERIFIED if outcome is Outcome.VERIFIED else tags.Status.FAILED
    return {
        tags.STATUS: status.value,
        tags.SUITE_DIGEST: suite_digest,
        tags.RESULT_DIGEST: result_digest,
        tags.VERIFIED_AT: verified_at,
    }


def utc_stamp(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class SuiteRun:
    """One run of a suite on one instance: its summary and where its files are."""

    target: VerifyTarget
    instance_id: str
    summary: TestSummary
    junit_path: Path
    started_at: datetime


def record(run: SuiteRun, result: VerifyResult, result_dir: Path) -> VerifyResult:
    """Write the JSON summary beside the JUnit file; the result carries the counts, the files
    and the summary's digest (the result digest). `verdict_of` gives the tags it earns."""
    summary = run.summary
    outcome = Outcome.VERIFIED if summary.all_passed else Outcome.FAILED
    finished_at = utc_stamp()
    document = summary_document(
        run.target,
        summary,
        instance_id=run.instance_id,
        junit_sha256=sha256_file(run.junit_path),
        started_at=utc_stamp(run.started_at),
        finished_at=finished_at,
    )
    summary_path = result_dir / "summary.json"
    summary_path.write_text(json.dumps(document, indent=2) + "\n")
    return replace(
        result,
        outcome=outcome,
        passed=summary.passed,
        failed=summary.failed,
        errors=summary.errors,
        skipped=summary.skipped,
        total=summary.total,
        failing_tests=summary.failing,
        durations={t.name: t.seconds for t in summary.tests},
        result_digest=sha256_file(summary_path),
        junit_path=run.junit_path,
        summary_path=summary_path,
        verified_at=finished_at,
    )


def verdict_of(result: VerifyResult) -> dict[str, str]:
    """The verdict tags a recorded result earns (see `record`)."""
    assert result.result_digest is not None and result.verified_at is not None
    return verdict_tags(
        result.outcome, result.suite_digest, result.result_digest, result.verified_at
    )


def require_verified(results: Sequence[VerifyResult]) -> None:
    """Raise VerificationError (exit 1) unless every image passed, naming what failed."""
    bad = [r for r in results if not r.ok]
    if not bad:
        return
    parts = []
    for r in bad:
        if r.outcome is Outcome.FAILED:
            names = ", ".join(r.failing_tests[:5]) + (" ..." if len(r.failing_tests) > 5 else "")
            parts.append(f"{r.ami_id} failed {len(r.failing_tests)} test(s): {names}")
        else:
            parts.append(f"{r.ami_id} could not be verified: {r.error}")
    raise VerificationError("; ".join(parts))
