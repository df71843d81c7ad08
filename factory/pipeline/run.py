"""Applying a nightly plan: take the lock, run each family as planned (build or reuse, verify
unless verified, attest, publish), recording a failure and going on with the next family,
retire if the plan says so, release the lock.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from factory import process
from factory.aws import AwsClients
from factory.build import VerifiedBuild
from factory.errors import FactoryError, Interrupted
from factory.output import Progress
from factory.pipeline.lock import (
    LockInfo,
    LockLost,
    acquire_lock,
    lock_owner,
    release_lock,
    renew_lock,
)
from factory.pipeline.plan import FamilyPlan, NightlyPlan
from factory.pipeline.steps import Steps
from factory.provenance import ProvenanceRecord

if TYPE_CHECKING:
    from factory.retire import RetireResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilyResult:
    family: str
    ok: bool
    ami_id: str | None
    build: str | None  # built | reused | failed (None: never got that far)
    build_id: str | None
    verify: str | None  # verified | failed | error | already-verified
    tests_passed: int
    tests_failed: int
    tests_total: int
    failing_tests: tuple[str, ...]
    channel: str
    channel_previous: str | None
    channel_changed: bool
    channel_version: int | None
    seconds: float
    error: str | None
    provenance: tuple[ProvenanceRecord, ...] = ()


@dataclass(frozen=True)
class RetireSummary:
    deprecated: tuple[str, ...]
    deregistered: tuple[str, ...]
    restored: tuple[str, ...]
    failed: tuple[str, ...]  # "ami-x: reason"
    skipped: int
    api_calls: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.error is None


def summarise_retire(result: RetireResult) -> RetireSummary:
    def done(action: str) -> tuple[str, ...]:
        return tuple(
            o.resource for o in result.outcomes if o.action == action and o.status == "done"
        )

    return RetireSummary(
        deprecated=done("deprecate"),
        deregistered=done("deregister"),
        restored=done("restore"),
        failed=tuple(f"{o.resource}: {o.action}: {o.detail}" for o in result.failed),
        skipped=sum(1 for o in result.outcomes if o.status == "skipped"),
        api_calls=result.api_calls,
    )


@dataclass(frozen=True)
class NightlyResult:
    run_id: str
    ok: bool
    started: datetime
    finished: datetime
    seconds: float
    channel: str
    rebuild: bool
    families: tuple[FamilyResult, ...]
    retire: RetireSummary | None
    lock: LockInfo
    lock_taken_over: LockInfo | None
    lock_released: bool
    error: str | None = None  # the run itself stopped (lost its lock)


def new_run_id(now: datetime) -> str:
    return f"nightly-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


# ---- one family ----------------------------------------------------------------------------


def _built(fields: dict[str, Any], made: VerifiedBuild, progress: Progress) -> str | None:
    """Take in what the build chain did; why the family failed, or None if it may be published."""
    build = made.build
    ami_id = build.ami_ids[0] if build.ami_ids else None
    fields.update(ami_id=ami_id, build=build.status, build_id=build.build_id)
    if build.status == "failed" or ami_id is None:
        detail = " | ".join(build.errors[-3:]) or "no AMI"
        log_hint = f" (log: {build.log_file})" if build.log_file else ""
        return f"build failed: {detail}{log_hint}"
    if made.already_verified:
        fields["verify"] = "already-verified"
        return None
    checked = made.verification[0]
    fields.update(
        verify=checked.outcome.value,
        tests_passed=checked.passed,
        tests_failed=checked.failed + checked.errors,
        tests_total=checked.total,
        failing_tests=checked.failing_tests,
    )
    for leftover in checked.cleanup.leftovers:
        progress.warn(f"{fields['family']}: verify left behind: {leftover}")
    if checked.ok:
        return None
    if checked.outcome.value == "failed":
        names = ", ".join(checked.failing_tests[:5])
        return f"{ami_id} failed {checked.failed + checked.errors} test(s): {names}"
    return f"{ami_id} could not be verified: {checked.error}"


def run_family(steps: Steps, family: FamilyPlan, run_id: str, progress: Progress) -> FamilyResult:
    """Build (or reuse), verify unless already verified, publish. A failure is recorded."""
    started = time.monotonic()
    fields: dict[str, Any] = {
        "family": family.family,
        "ami_id": None,
        "build": None,
        "build_id": None,
        "verify": None,
        "tests_passed": 0,
        "tests_failed": 0,
        "tests_total": 0,
        "failing_tests": (),
        "channel": family.channel,
        "channel_previous": None,
        "channel_changed": False,
        "channel_version": None,
    }
    provenance: list[ProvenanceRecord] = []

    def finish(error: str | None = None) -> FamilyResult:
        if error is not None:
            progress.warn(f"{family.family}: {error}")
        return FamilyResult(
            **fields,
            ok=error is None,
            error=error,
            seconds=round(time.monotonic() - started, 3),
            provenance=tuple(provenance),
        )

    if family.action == "error":
        return finish(family.error)
    try:
        made = steps.build_and_verify(family)
        provenance += made.provenance
        error = _built(fields, made, progress)
        if error is not None:
            return finish(error)
        ami_id = str(fields["ami_id"])
        move = steps.publish(family.family, family.channel, ami_id, f"nightly run {run_id}")
        fields.update(
            channel_previous=move.previous_ami,
            channel_changed=move.changed,
            channel_version=move.version,
        )
        if move.changed:
            progress.info(
                f"{family.family}: channel {family.channel} -> {ami_id} "
                f"(was {move.previous_ami or 'unset'})"
            )
        return finish()
    except (Interrupted, KeyboardInterrupt):
        raise
    except FactoryError as exc:
        return finish(exc.message)
    except Exception as exc:  # a bug in one family must not stop the night's other families
        log.debug("nightly: %s failed", family.family, exc_info=True)
        return finish(f"internal error: {type(exc).__name__}: {exc}")


# ---- the run -------------------------------------------------------------------------------


@dataclass
class _Held:
    """The lock as this run holds it (renewed before each family)."""

    clients: AwsClients
    lock: LockInfo
    ttl: float
    clock: Callable[[], datetime]

    def renew(self) -> None:
        self.lock = renew_lock(self.clients, self.lock, self.ttl, self.clock())


def _retire(retire: Callable[[], RetireResult]) -> RetireSummary:
    try:
        return summarise_retire(retire())
    except (Interrupted, KeyboardInterrupt):
        raise
    except FactoryError as exc:
        return RetireSummary((), (), (), (), 0, 0, error=exc.message)


def _release(clients: AwsClients, lock: LockInfo, run_id: str, progress: Progress) -> bool:
    try:
        released = release_lock(clients, lock)
    except FactoryError as exc:
        progress.warn(
            f"could not release {lock.parameter}: {exc}; remove it with "
            "`factory pipeline unlock` (or wait until it expires)"
        )
        return False
    if released:
        progress.info(f"pipeline {run_id}: lock {lock.parameter} released")
    return released


def apply_nightly(
    plan: NightlyPlan,
    clients: AwsClients,
    steps: Steps,
    *,
    owner: str | None = None,
    retire: Callable[[], RetireResult] | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> NightlyResult:
    """Take the lock, run every family of the plan one after another, retire if the plan says
    so (with `retire`), release the lock.

    The lock is released in `finally`: after an error, Ctrl-C or SIGTERM too (both raise
    `Interrupted`; a signal while the lock is being released waits for the release).
    """
    if plan.retire and retire is None:
        raise TypeError("the plan retires: pass the retire step")
    progress = progress or Progress(quiet=True)
    started = clock()
    run_id = new_run_id(started)
    signals = process.Interrupts()
    results: list[FamilyResult] = []
    summary: RetireSummary | None = None
    error: str | None = None
    with signals.installed():
        acquired = acquire_lock(
            clients,
            owner=owner or lock_owner(),
            run_id=run_id,
            ttl=plan.lock_ttl,
            now=started,
            parameter=plan.lock_parameter,
            progress=progress,
        )
        held = _Held(clients, acquired.lock, plan.lock_ttl, clock)
        released = False
        try:
            progress.info(
                f"pipeline {run_id}: lock {held.lock.parameter} taken by {held.lock.owner}; "
                f"families: {', '.join(f.family for f in plan.families) or 'none'}"
            )
            for family in plan.families:
                held.renew()
                progress.info(f"{family.family}: build, verify, publish to {plan.channel}")
                results.append(run_family(steps, family, run_id, progress))
            if plan.retire and retire is not None:
                held.renew()
                summary = _retire(retire)
        except (Interrupted, KeyboardInterrupt):
            progress.warn(f"pipeline {run_id} interrupted; releasing {held.lock.parameter}")
            raise
        except LockLost as exc:
            error = exc.message
        finally:
            with signals.shielded():
                released = _release(clients, held.lock, run_id, progress)
    finished = clock()
    ok = error is None and all(r.ok for r in results) and (summary is None or summary.ok)
    return NightlyResult(
        run_id=run_id,
        ok=ok,
        started=started,
        finished=finished,
        seconds=round((finished - started).total_seconds(), 3),
        channel=plan.channel,
        rebuild=plan.rebuild,
        families=tuple(results),
        retire=summary,
        lock=held.lock,
        lock_taken_over=acquired.taken_over,
        lock_released=released,
        error=error,
    )
