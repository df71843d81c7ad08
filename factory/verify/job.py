"""One image's verification as every step sees it (`Job`), and the skeleton each kind follows
(`Verification`): do the steps, turn an error into an ERROR result, always clean up, time it.

The kinds: a fresh instance of the image (`verify.fresh`) and a running instance verify did
not launch (`verify.live`).
"""

from __future__ import annotations

import secrets
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from factory import process
from factory.aws import AwsClients
from factory.aws.wait import Poller, TimedOut, wait_until
from factory.errors import FactoryError, Interrupted, VerificationError
from factory.output import Progress
from factory.verify.plan import VerifySettings, VerifyTarget
from factory.verify.results import CleanupReport, KeptInstance, Outcome, TestSummary, VerifyResult

T = TypeVar("T")


def new_run_id(subject: str) -> str:
    """Names this run's resources and result folder: the subject, the time, a random suffix."""
    return f"{subject}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Job:
    """One verification in progress: what is verified where, how, and who hears about it."""

    clients: AwsClients
    target: VerifyTarget
    settings: VerifySettings
    run_id: str
    result_dir: Path  # junit.xml and summary.json (kept)
    workdir: Path  # the private key, ssh_config, known_hosts (removed afterwards)
    progress: Progress
    interrupts: process.Interrupts

    def say(self, message: str) -> None:
        self.progress.info(f"{self.target.ami_id}: {message}")

    def wait_for(
        self,
        check: Callable[[], T | None],
        what: str,
        last_error: Callable[[], str] | None = None,
    ) -> T:
        """Poll `check` until it answers, within --boot-timeout; Ctrl-C cuts the wait short."""
        poller = Poller(
            interval=0.2, max_interval=5.0, factor=1.5, cancelled=self.interrupts.cancelled
        )
        try:
            return wait_until(
                check,
                timeout=self.settings.boot_timeout,
                what=what,
                poller=poller,
                before=self.interrupts.check,
            )
        except TimedOut as exc:
            detail = f" (last error: {last_error()})" if last_error else ""
            raise VerificationError(
                f"{self.target.ami_id}: {exc.message}{detail}; see the instance's console "
                "output, or raise --boot-timeout"
            ) from None


def say_verdict(job: Job, summary: TestSummary) -> None:
    """The progress line when a suite has run: the counts, and which tests failed."""
    word = "verified" if summary.all_passed else "FAILED"
    job.say(
        f"{word}: {summary.passed} passed, {summary.failed + summary.errors} failed, "
        f"{summary.skipped} skipped in {summary.seconds:.2f}s"
        + (f"; failing: {', '.join(summary.failing)}" if summary.failing else "")
    )


class Verification(ABC):
    """The skeleton: `steps` reach the instance and run the suite, `clean_up` always follows."""

    live = False  # a running instance verify did not launch

    def __init__(
        self,
        *,
        clients: AwsClients,
        target: VerifyTarget,
        settings: VerifySettings,
        output_dir: Path,
        progress: Progress,
        interrupts: process.Interrupts,
        run_id: str | None = None,
    ) -> None:
        self.clients = clients
        self.target = target
        self.settings = settings
        self.progress = progress
        self.interrupts = interrupts
        self.run_id = run_id or new_run_id(target.ami_id)
        self.result_dir = output_dir / target.ami_id / self.run_id
        # what the steps reached, for the result of a run that fails part way
        self.instance_id: str | None = None
        self.address: str | None = None

    @abstractmethod
    def steps(self, job: Job, result: VerifyResult) -> VerifyResult:
        """Reach the instance, run the suite, record the outcome."""

    @abstractmethod
    def clean_up(self, job: Job, *, keep: bool) -> tuple[CleanupReport, KeptInstance | None]:
        """Remove what the steps made (keep the instance if asked and it was reached)."""

    def start_job(self) -> Job:
        """The job for one run, with a fresh scratch directory (removed by `clean_up`)."""
        return Job(
            clients=self.clients,
            target=self.target,
            settings=self.settings,
            run_id=self.run_id,
            result_dir=self.result_dir,
            workdir=Path(tempfile.mkdtemp(prefix="factory-verify-")),
            progress=self.progress,
            interrupts=self.interrupts,
        )

    def run(self) -> VerifyResult:
        started = time.monotonic()
        job = self.start_job()
        result = VerifyResult(
            ami_id=self.target.ami_id,
            region=self.clients.region,
            family=self.target.family,
            outcome=Outcome.ERROR,
            suite_dirs=self.target.suite.dirs,
            suite_digest=self.target.suite.digest,
            instance_type=self.settings.instance_type,
            live=self.live,
        )
        keep = False
        try:
            result = self.steps(job, result)
            keep = self.settings.keep
        except Interrupted:
            raise  # never kept: the person interrupting wants everything gone
        except FactoryError as exc:
            result = replace(
                result,
                outcome=Outcome.ERROR,
                error=exc.message,
                instance_id=self.instance_id,
                address=self.address,
            )
            job.say(f"error: {exc.message}")
            keep = self.settings.keep
        finally:
            with self.interrupts.shielded():
                cleanup_started = time.monotonic()
                report, kept = self.clean_up(job, keep=keep)
                result = replace(
                    result,
                    cleanup=report,
                    kept=kept,
                    cleanup_seconds=round(time.monotonic() - cleanup_started, 3),
                    total_seconds=round(time.monotonic() - started, 3),
                )
        return result
