"""Verify's results: JUnit parsing, the JSON summary, the verdict tags, the exit decision."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from factory import tags
from factory.errors import ExitCode, VerificationError
from factory.verify import (
    Outcome,
    Suite,
    TestSummary,
    VerifyReport,
    VerifyResult,
    VerifyTarget,
    parse_junit,
    require_verified,
    summary_document,
    verdict_tags,
)

# What pytest 8/9 writes with -o junit_family=xunit2 for a suite rooted at templates/
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">
<testsuite name="ami-0abc" errors="1" failures="1" skipped="1" tests="5" time="1.250">
<testcase classname="_common.tests.test_sshd" name="test_root_login_is_denied[paramiko://instance]"
  time="0.120" />
<testcase classname="_common.tests.test_sshd" name="test_password_login_is_disabled[paramiko://instance]"
  time="0.051"><failure message="AssertionError: root&#10;assert 'yes' == 'no'">detail</failure>
</testcase>
<testcase classname="app.tests.test_service.TestHttp" name="test_answers[paramiko://instance-8080]"
  time="0.300"><error message="failed on setup with &quot;ConnectionRefusedError&quot;">x</error>
</testcase>
<testcase classname="_common.tests.test_time" name="test_chrony[paramiko://instance]" time="0.001">
<skipped type="pytest.skip" message="not installed">skip</skipped></testcase>
<testcase classname="base.tests.test_base" name="test_python[paramiko://instance]" time="0.010" />
</testsuite></testsuites>"""


def test_parse_junit_outcomes_names_and_durations() -> None:
    summary = parse_junit(JUNIT)
    assert (summary.passed, summary.failed, summary.errors, summary.skipped) == (2, 1, 1, 1)
    assert summary.total == 5
    assert summary.seconds == 1.25
    names = [t.name for t in summary.tests]
    assert names == [
        "_common/tests/test_sshd.py::test_root_login_is_denied",
        "_common/tests/test_sshd.py::test_password_login_is_disabled",
        "app/tests/test_service.py::TestHttp::test_answers[8080]",
        "_common/tests/test_time.py::test_chrony",
        "base/tests/test_base.py::test_python",
    ]
    assert summary.failing == (
        "_common/tests/test_sshd.py::test_password_login_is_disabled",
        "app/tests/test_service.py::TestHttp::test_answers[8080]",
    )
    assert not summary.all_passed
    failed = summary.tests[1]
    assert failed.outcome == "failed" and failed.seconds == 0.051
    assert failed.message == "AssertionError: root"  # first line only


def test_parse_junit_all_passed_and_xunit1_single_suite() -> None:
    xml = (
        '<testsuite tests="1" time="0.5"><testcase classname="x.tests.test_a" '
        'name="test_ok" file="x/tests/test_a.py" time="0.5"/></testsuite>'
    )
    summary = parse_junit(xml)
    assert summary.all_passed and summary.seconds == 0.5
    assert summary.tests[0].name == "x/tests/test_a.py::test_ok"


def test_no_tests_is_not_a_pass() -> None:
    assert not parse_junit('<testsuites><testsuite tests="0" time="0"/></testsuites>').all_passed


def test_unreadable_junit_is_a_verification_error() -> None:
    with pytest.raises(VerificationError, match="unreadable JUnit"):
        parse_junit("<testsuite><testcase")


def _target() -> VerifyTarget:
    suite = Suite(
        dirs=(Path("/t/_common/tests"),),
        files=("_common/tests/test_a.py",),
        digest="sha256:" + "a" * 64,
    )
    return VerifyTarget(ami_id="ami-0abc", name="base-1", family="base", suite=suite)


def test_summary_document_binds_result_to_image_and_suite() -> None:
    summary = parse_junit(JUNIT)
    doc = summary_document(
        _target(),
        summary,
        instance_id="i-1",
        junit_sha256="sha256:j",
        started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:00:02Z",
    )
    assert doc["ami_id"] == "ami-0abc" and doc["suite_digest"] == "sha256:" + "a" * 64
    assert (doc["passed"], doc["failed"], doc["errors"], doc["total"]) == (2, 1, 1, 5)
    assert doc["failing"] == list(summary.failing)
    assert {t["name"]: t["seconds"] for t in doc["tests"]}[
        "_common/tests/test_sshd.py::test_root_login_is_denied"
    ] == 0.12
    # serialisable as-is: its file's sha256 is the result digest
    text = json.dumps(doc)
    assert hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("outcome", "status"),
    [(Outcome.VERIFIED, tags.Status.VERIFIED), (Outcome.FAILED, tags.Status.FAILED)],
)
def test_verdict_tags(outcome: Outcome, status: tags.Status) -> None:
    written = verdict_tags(outcome, "sha256:s", "sha256:r", "2026-01-01T00:00:00Z")
    assert written == {
        tags.STATUS: status.value,
        tags.SUITE_DIGEST: "sha256:s",
        tags.RESULT_DIGEST: "sha256:r",
        tags.VERIFIED_AT: "2026-01-01T00:00:00Z",
    }


def _result(outcome: Outcome, **kw: object) -> VerifyResult:
    return VerifyResult(
        ami_id=kw.pop("ami_id", "ami-1"),
        region="us-east-1",
        family="base",  # type: ignore[arg-type]
        outcome=outcome,
        **kw,
    )  # type: ignore[arg-type]


def test_require_verified_passes_only_when_all_passed() -> None:
    require_verified([_result(Outcome.VERIFIED), _result(Outcome.VERIFIED, ami_id="ami-2")])
    with pytest.raises(VerificationError) as info:
        require_verified(
            [
                _result(Outcome.VERIFIED),
                _result(Outcome.FAILED, ami_id="ami-2", failing_tests=("a.py::test_x",)),
                _result(Outcome.ERROR, ami_id="ami-3", error="SSH did not answer"),
            ]
        )
    assert info.value.exit_code == ExitCode.FAILED
    assert "ami-2 failed 1 test(s): a.py::test_x" in info.value.message
    assert "ami-3 could not be verified: SSH did not answer" in info.value.message
    assert "ami-1" not in info.value.message


def test_report_and_byproducts() -> None:
    ok = _result(
        Outcome.VERIFIED,
        junit_path=Path("/r/junit.xml"),
        summary_path=Path("/r/summary.json"),
        result_digest="sha256:r",
    )
    assert ok.byproducts == {"junit": Path("/r/junit.xml"), "summary": Path("/r/summary.json")}
    assert _result(Outcome.ERROR).byproducts == {}
    assert VerifyReport.of([ok]).all_verified
    assert not VerifyReport.of([ok, _result(Outcome.FAILED)]).all_verified


def test_summary_total_counts_every_case() -> None:
    assert TestSummary(0, 0, 0, 0, 0.0, ()).total == 0
