"""The nightly rebuild: every family built (or reused), verified, attested and published to a
channel, then old images retired, under a lock held in AWS so two runs never overlap.

`plan_nightly` is pure (what would be built, reused and moved, as far as dedupe can tell
without building); `run_nightly` applies it family by family, recording a failure and going
on with the next family. The lock is the SSM parameter `/factory/locks/pipeline`, created with
PutParameter `Overwrite=False` (SSM answers ParameterAlreadyExists while another run holds it);
its value says who holds it, since when and until when.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import botocore.exceptions

from factory import build, process
from factory import tags as T
from factory.aws import AwsClients, aws_errors, error_code, tags_dict
from factory.build import apply_build, prepare_build
from factory.catalog import describe_image
from factory.channels import ChannelChange, channel_state, set_channel
from factory.config import FactoryConfig
from factory.errors import AwsError, ConfigError, ExitCode, FactoryError, Interrupted
from factory.output import Progress
from factory.provenance import ProvenanceRecord, attest_verifications
from factory.redact import redact
from factory.render import FAMILY_FILE, list_families, load_family
from factory.retire import RetireResult
from factory.verify import verify_images

PERMISSIONS = (
    "ssm:PutParameter",
    "ssm:GetParameter",
    "ssm:DeleteParameter",
)

LOCK_PARAMETER = "/factory/locks/pipeline"
DEFAULT_LOCK_TTL = 4 * 3600  # seconds; renewed before each family, so a long run keeps it
LOCKED_EXIT = ExitCode.BUSY  # another run holds the lock: not bad input (2), not a failure (1)

log = logging.getLogger(__name__)


# ---- the lock ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockInfo:
    """Who holds the pipeline lock, since when, and until when it counts as held."""

    parameter: str
    owner: str  # user@host:pid
    run_id: str
    started: datetime
    expires: datetime

    def value(self) -> str:
        return json.dumps(
            {
                "owner": self.owner,
                "run_id": self.run_id,
                "started": self.started.isoformat(timespec="seconds"),
                "expires": self.expires.isoformat(timespec="seconds"),
            },
            separators=(",", ":"),
        )

    def expired(self, now: datetime) -> bool:
        return self.expires <= now

    def describe(self) -> str:
        return (
            f"{self.owner} (run {self.run_id}) since {self.started.isoformat(timespec='seconds')}"
            f", until {self.expires.isoformat(timespec='seconds')}"
        )


def parse_lock(parameter: str, value: str) -> LockInfo:
    """The lock's JSON value; an unreadable one counts as expired long ago (it can be taken)."""
    epoch = datetime.fromtimestamp(0, UTC)
    try:
        doc = json.loads(value)
        return LockInfo(
            parameter,
            str(doc["owner"]),
            str(doc["run_id"]),
            datetime.fromisoformat(str(doc["started"])),
            datetime.fromisoformat(str(doc["expires"])),
        )
    except (ValueError, KeyError, TypeError):
        return LockInfo(parameter, "unknown (unreadable lock value)", "?", epoch, epoch)


class LockHeld(FactoryError):
    """Another run holds the lock and it has not expired (the CLI exits LOCKED_EXIT)."""

    def __init__(self, holder: LockInfo) -> None:
        super().__init__(
            f"another pipeline run holds {holder.parameter}: {holder.describe()}; "
            "nothing was done (if that run is dead, `factory pipeline unlock`)",
            ExitCode.BUSY,
        )
        self.holder = holder


class LockLost(FactoryError):
    """The lock expired and another run took it over: this run stops where it is."""

    exit_code = ExitCode.FAILED


def lock_owner() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def new_run_id(now: datetime) -> str:
    return f"nightly-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _translated(exc: botocore.exceptions.ClientError, action: str) -> FactoryError:
    """aws_errors' one-line error for an exception already caught."""
    try:
        with aws_errors(action):
            raise exc
    except FactoryError as translated:
        return translated
    return AwsError(f"{action}: {exc}")  # pragma: no cover - aws_errors always raises


def _create(clients: AwsClients, lock: LockInfo, *, overwrite: bool) -> bool:
    """PutParameter; False when Overwrite=False and the parameter exists (someone holds it)."""
    ssm = clients.client("ssm")
    try:
        ssm.put_parameter(
            Name=lock.parameter,
            Value=lock.value(),
            Type="String",
            Overwrite=overwrite,
            Description="ami-factory pipeline lock: who runs the nightly pipeline now",
        )
    except botocore.exceptions.ClientError as exc:
        if not overwrite and error_code(exc) == "ParameterAlreadyExists":
            return False
        raise _translated(exc, f"ssm:PutParameter {lock.parameter}") from None
    return True


def _current(clients: AwsClients, parameter: str) -> tuple[str, LockInfo] | None:
    """The lock's raw value and what it says, or None if nobody holds it."""
    ssm = clients.client("ssm")
    try:
        value = str(ssm.get_parameter(Name=parameter)["Parameter"]["Value"])
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        raise _translated(exc, f"ssm:GetParameter {parameter}") from None
    return value, parse_lock(parameter, value)


def read_lock(clients: AwsClients, parameter: str = LOCK_PARAMETER) -> LockInfo | None:
    found = _current(clients, parameter)
    return found[1] if found else None


def _delete(clients: AwsClients, parameter: str) -> bool:
    ssm = clients.client("ssm")
    try:
        ssm.delete_parameter(Name=parameter)
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) == "ParameterNotFound":
            return False
        raise _translated(exc, f"ssm:DeleteParameter {parameter}") from None
    return True


@dataclass(frozen=True)
class Acquired:
    lock: LockInfo
    taken_over: LockInfo | None = None  # the expired lock this run replaced


def acquire_lock(
    clients: AwsClients,
    *,
    owner: str,
    run_id: str,
    ttl: float,
    now: datetime,
    parameter: str = LOCK_PARAMETER,
    progress: Progress | None = None,
) -> Acquired:
    """Take the lock, or raise LockHeld naming the holder; an expired lock is taken over.

    SSM has no conditional delete: taking over an expired lock re-reads it just before the
    delete and creates ours with Overwrite=False again, so of two runs taking over the same
    expired lock at once only one creates the new one.
    """
    lock = LockInfo(parameter, owner, run_id, now, now + timedelta(seconds=ttl))
    for _attempt in range(3):
        if _create(clients, lock, overwrite=False):
            return Acquired(lock)
        found = _current(clients, parameter)
        if found is None:
            continue  # released between our put and our read: try again
        raw, holder = found
        if not holder.expired(now):
            raise LockHeld(holder)
        if progress is not None:
            progress.warn(f"taking over an expired pipeline lock: {holder.describe()}")
        again = _current(clients, parameter)
        if again is not None and again[0] != raw:
            continue  # someone else took it over meanwhile: look again
        _delete(clients, parameter)
        if _create(clients, lock, overwrite=False):
            return Acquired(lock, taken_over=holder)
    holder_now = read_lock(clients, parameter)
    if holder_now is not None:
        raise LockHeld(holder_now)
    raise AwsError(f"could not take {parameter}: it kept changing; try again")


def renew_lock(clients: AwsClients, lock: LockInfo, ttl: float, now: datetime) -> LockInfo:
    """Push the expiry forward; raise if the lock is no longer ours (taken over after expiry)."""
    holder = read_lock(clients, lock.parameter)
    if holder is None or holder.run_id != lock.run_id:
        who = holder.describe() if holder else "nobody"
        raise LockLost(f"lost the pipeline lock {lock.parameter} (now held by {who}); stopping")
    renewed = replace(lock, expires=now + timedelta(seconds=ttl))
    _create(clients, renewed, overwrite=True)
    return renewed


def release_lock(clients: AwsClients, lock: LockInfo) -> bool:
    """Delete the lock if it is still ours (never someone else's that took over)."""
    holder = read_lock(clients, lock.parameter)
    if holder is None or holder.run_id != lock.run_id:
        return False
    return _delete(clients, lock.parameter)


def break_lock(clients: AwsClients, parameter: str = LOCK_PARAMETER) -> LockInfo | None:
    """`factory pipeline unlock`: remove the lock whoever holds it; returns what it said."""
    holder = read_lock(clients, parameter)
    if holder is not None:
        _delete(clients, parameter)
    return holder


# ---- families ------------------------------------------------------------------------------


def discover_families(templates_dir: Path, names: Sequence[str] = ()) -> tuple[str, ...]:
    """The families to run: the given ones, else every one with a family.toml; parents first,
    then by name (so `app` builds on tonight's `base`)."""
    known = [f for f in list_families(templates_dir) if (templates_dir / f / FAMILY_FILE).is_file()]
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"unknown family {', '.join(unknown)} in {templates_dir} "
                f"(families: {', '.join(known) or 'none'})"
            )
        chosen = list(dict.fromkeys(names))
    else:
        chosen = known
    parents = {name: load_family(templates_dir, name).source.parent for name in chosen}

    def depth(name: str, seen: frozenset[str] = frozenset()) -> int:
        parent = parents.get(name)
        if parent is None or parent not in parents or name in seen:
            return 0
        return 1 + depth(parent, seen | {name})

    return tuple(sorted(chosen, key=lambda n: (depth(n), n)))


# ---- plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyFacts:
    """What can be known about a family without building: prepare_build's answer, the channel."""

    family: str
    dedupe_key: str | None
    source_ami: str | None
    reuse_ami: str | None  # a verified AMI with the same inputs (None: would build)
    channel_ami: str | None  # what the channel holds now
    error: str | None = None  # the family cannot even be planned (e.g. no verified parent)


@dataclass(frozen=True)
class FamilyPlan:
    family: str
    action: str  # reuse | build | rebuild | error
    ami_id: str | None
    dedupe_key: str | None
    source_ami: str | None
    channel: str
    channel_ami: str | None
    channel_move: str  # none | set | after-verify
    error: str | None = None


@dataclass(frozen=True)
class NightlyPlan:
    channel: str
    rebuild: bool
    retire: bool
    lock_parameter: str
    lock_ttl: float
    families: tuple[FamilyPlan, ...]


def plan_nightly(
    facts: Sequence[FamilyFacts],
    *,
    channel: str,
    rebuild: bool,
    retire: bool,
    lock_ttl: float,
    lock_parameter: str = LOCK_PARAMETER,
) -> NightlyPlan:
    """What a run would do (pure): reuse or build each family, and how its channel moves."""
    rows = []
    for f in facts:
        if f.error is not None:
            action, move = "error", "none"
        elif f.reuse_ami:
            action = "reuse"
            move = "none" if f.channel_ami == f.reuse_ami else "set"
        else:
            action, move = ("rebuild" if rebuild else "build"), "after-verify"
        rows.append(
            FamilyPlan(
                family=f.family,
                action=action,
                ami_id=f.reuse_ami,
                dedupe_key=f.dedupe_key,
                source_ami=f.source_ami,
                channel=channel,
                channel_ami=f.channel_ami,
                channel_move=move,
                error=f.error,
            )
        )
    return NightlyPlan(channel, rebuild, retire, lock_parameter, lock_ttl, tuple(rows))


# ---- apply ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOutcome:
    """One family's build step: the AMI it produced or reused, or why it failed."""

    status: str  # built | reused | failed
    ami_id: str | None
    build_id: str | None
    errors: tuple[str, ...] = ()
    provenance: tuple[ProvenanceRecord, ...] = ()
    log_file: str | None = None


@dataclass(frozen=True)
class VerifyOutcome:
    outcome: str  # verified | failed | error
    passed: int
    failed: int
    total: int
    failing_tests: tuple[str, ...] = ()
    error: str | None = None
    provenance: tuple[ProvenanceRecord, ...] = ()
    leftovers: tuple[str, ...] = ()  # what verify's cleanup could not remove


@dataclass(frozen=True)
class ChannelMove:
    channel: str
    ami_id: str
    previous_ami: str | None
    changed: bool
    version: int | None


class Steps(Protocol):
    """The stages a run drives for one family; the real ones are in factory.cli.pipeline."""

    def build(self, family: str, rebuild: bool) -> BuildOutcome: ...

    def verify_image(self, ami_id: str) -> VerifyOutcome: ...

    def publish(self, family: str, channel: str, ami_id: str, reason: str) -> ChannelMove: ...


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


@dataclass(frozen=True)
class RunSettings:
    channel: str
    rebuild: bool = False
    lock_ttl: float = DEFAULT_LOCK_TTL
    lock_parameter: str = LOCK_PARAMETER
    owner: str = field(default_factory=lock_owner)


def image_status(clients: AwsClients, ami_id: str) -> str | None:
    image = describe_image(clients, ami_id)
    return tags_dict(image.get("Tags")).get(T.STATUS) if image else None


def run_family(
    clients: AwsClients,
    steps: Steps,
    family: str,
    settings: RunSettings,
    run_id: str,
    progress: Progress,
) -> FamilyResult:
    """Build (or reuse), verify unless already verified, publish. A failure is recorded."""
    started = time.monotonic()
    fields: dict[str, Any] = {
        "family": family,
        "ok": False,
        "ami_id": None,
        "build": None,
        "build_id": None,
        "verify": None,
        "tests_passed": 0,
        "tests_failed": 0,
        "tests_total": 0,
        "failing_tests": (),
        "channel": settings.channel,
        "channel_previous": None,
        "channel_changed": False,
        "channel_version": None,
        "error": None,
    }
    provenance: list[ProvenanceRecord] = []

    def finish(error: str | None = None) -> FamilyResult:
        if error is not None:
            progress.warn(f"{family}: {error}")
        return FamilyResult(
            **{**fields, "ok": error is None, "error": error},
            seconds=round(time.monotonic() - started, 3),
            provenance=tuple(provenance),
        )

    try:
        built = steps.build(family, settings.rebuild)
        provenance += built.provenance
        fields.update(ami_id=built.ami_id, build=built.status, build_id=built.build_id)
        if built.status == "failed" or built.ami_id is None:
            detail = " | ".join(built.errors[-3:]) or "no AMI"
            log_hint = f" (log: {built.log_file})" if built.log_file else ""
            return finish(f"build failed: {detail}{log_hint}")
        if image_status(clients, built.ami_id) == T.Status.VERIFIED.value:
            fields["verify"] = "already-verified"
        else:
            checked = steps.verify_image(built.ami_id)
            provenance += checked.provenance
            fields.update(
                verify=checked.outcome,
                tests_passed=checked.passed,
                tests_failed=checked.failed,
                tests_total=checked.total,
                failing_tests=checked.failing_tests,
            )
            for leftover in checked.leftovers:
                progress.warn(f"{family}: verify left behind: {leftover}")
            if checked.outcome != "verified":
                if checked.outcome == "failed":
                    names = ", ".join(checked.failing_tests[:5])
                    return finish(f"{built.ami_id} failed {checked.failed} test(s): {names}")
                return finish(f"{built.ami_id} could not be verified: {checked.error}")
        move = steps.publish(family, settings.channel, built.ami_id, f"nightly run {run_id}")
        fields.update(
            channel_previous=move.previous_ami,
            channel_changed=move.changed,
            channel_version=move.version,
        )
        if move.changed:
            progress.info(
                f"{family}: channel {settings.channel} -> {built.ami_id} "
                f"(was {move.previous_ami or 'unset'})"
            )
        return finish()
    except (Interrupted, KeyboardInterrupt):
        raise
    except FactoryError as exc:
        return finish(exc.message)
    except Exception as exc:  # a bug in one family must not stop the night's other families
        log.debug("nightly: %s failed", family, exc_info=True)
        return finish(f"internal error: {type(exc).__name__}: {exc}")


def run_nightly(
    clients: AwsClients,
    steps: Steps,
    families: Sequence[str],
    settings: RunSettings,
    *,
    retire: Callable[[], RetireResult] | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> NightlyResult:
    """Take the lock, run every family one after another, retire if asked, release the lock.

    The lock is released in `finally`: after an error, Ctrl-C or SIGTERM too (both raise
    `Interrupted`; a signal while the lock is being released waits for the release).
    """
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
            owner=settings.owner,
            run_id=run_id,
            ttl=settings.lock_ttl,
            now=started,
            parameter=settings.lock_parameter,
            progress=progress,
        )
        lock = acquired.lock
        released = False
        try:
            progress.info(
                f"pipeline {run_id}: lock {lock.parameter} taken by {lock.owner}; "
                f"families: {', '.join(families) or 'none'}"
            )
            for family in families:
                lock = renew_lock(clients, lock, settings.lock_ttl, clock())
                progress.info(f"{family}: build, verify, publish to {settings.channel}")
                results.append(run_family(clients, steps, family, settings, run_id, progress))
            if retire is not None:
                lock = renew_lock(clients, lock, settings.lock_ttl, clock())
                summary = _retire(retire)
        except (Interrupted, KeyboardInterrupt):
            progress.warn(f"pipeline {run_id} interrupted; releasing {lock.parameter}")
            raise
        except LockLost as exc:
            error = exc.message
        finally:
            with signals.shielded():
                try:
                    released = release_lock(clients, lock)
                except FactoryError as exc:
                    progress.warn(
                        f"could not release {lock.parameter}: {exc}; remove it with "
                        "`factory pipeline unlock` (or wait until it expires)"
                    )
            if released:
                progress.info(f"pipeline {run_id}: lock {lock.parameter} released")
    finished = clock()
    ok = error is None and all(r.ok for r in results) and (summary is None or summary.ok)
    return NightlyResult(
        run_id=run_id,
        ok=ok,
        started=started,
        finished=finished,
        seconds=round((finished - started).total_seconds(), 3),
        channel=settings.channel,
        rebuild=settings.rebuild,
        families=tuple(results),
        retire=summary,
        lock=lock,
        lock_taken_over=acquired.taken_over,
        lock_released=released,
        error=error,
    )


def _retire(retire: Callable[[], RetireResult]) -> RetireSummary:
    try:
        return summarise_retire(retire())
    except (Interrupted, KeyboardInterrupt):
        raise
    except FactoryError as exc:
        return RetireSummary((), (), (), (), 0, 0, error=exc.message)


# ---- the real stages -----------------------------------------------------------------------


@dataclass
class AwsSteps:
    """The stages as `factory build --verify` and `factory channel set` run them."""

    config: FactoryConfig
    clients: AwsClients
    progress: Progress
    provenance: bool = True

    def build(self, family: str, rebuild: bool) -> BuildOutcome:
        plan = prepare_build(self.config, self.clients, family, {}, rebuild=rebuild)
        result = apply_build(plan, self.clients, self.progress)  # sweeps what a failure left
        if result.status == "failed" or not result.ami_ids:
            return BuildOutcome(
                "failed",
                None,
                result.build_id,
                result.errors,
                log_file=str(result.log_file) if result.log_file else None,
            )
        records = (
            build.attest(self.config, self.clients, plan, result, self.progress)
            if self.provenance
            else ()
        )
        return BuildOutcome(result.status, result.ami_ids[0], result.build_id, (), records)

    def verify_image(self, ami_id: str) -> VerifyOutcome:
        results = verify_images(  # removes its instance, key pair and group in every case
            self.clients,
            [ami_id],
            templates_dir=self.config.templates_dir,
            output_dir=self.config.state_dir / "verify",
            progress=self.progress,
        )
        records = (
            attest_verifications(self.config, self.clients, results, self.progress)
            if self.provenance
            else ()
        )
        r = results[0]
        return VerifyOutcome(
            outcome=r.outcome.value,
            passed=r.passed,
            failed=r.failed + r.errors,
            total=r.total,
            failing_tests=r.failing_tests,
            error=r.error,
            provenance=records,
            leftovers=r.cleanup.leftovers,
        )

    def publish(self, family: str, channel: str, ami_id: str, reason: str) -> ChannelMove:
        change = set_channel(
            self.clients, self.config.channels, family, channel, ami_id, reason=reason
        )
        if not isinstance(change, ChannelChange):  # only a dry run returns the plan
            raise TypeError("set_channel returned a plan")
        return ChannelMove(
            channel, change.ami_id, change.previous_ami, change.changed, change.version
        )


def gather_facts(
    config: FactoryConfig, clients: AwsClients, family: str, channel: str, *, rebuild: bool
) -> FamilyFacts:
    """prepare_build's view of a family (render, source image, reusable AMI) and its channel;
    nothing is written or built."""
    try:
        plan = prepare_build(config, clients, family, {}, rebuild=rebuild)
        current = channel_state(clients, family, channel).ami_id
    except (Interrupted, KeyboardInterrupt):
        raise
    except FactoryError as exc:
        return FamilyFacts(family, None, None, None, None, error=exc.message)
    return FamilyFacts(family, plan.dedupe_key, plan.source_ami, plan.reuse_ami, current)


# ---- rendering -----------------------------------------------------------------------------


def _verify_text(r: FamilyResult) -> str:
    if r.verify is None:
        return "-"
    if r.verify == "already-verified":
        return "already verified"
    if r.tests_total:
        return f"{r.verify} {r.tests_passed}/{r.tests_total}"
    return r.verify


def _channel_text(r: FamilyResult) -> str:
    if r.ami_id is None or not r.ok:
        return "-"
    if not r.channel_changed:
        return f"{r.channel}: unchanged"
    return f"{r.channel}: {r.channel_previous or 'unset'} -> {r.ami_id}"


def _rows(result: NightlyResult) -> list[tuple[str, ...]]:
    return [
        (
            r.family,
            r.ami_id or "-",
            r.build or "-",
            _verify_text(r),
            _channel_text(r),
            f"{r.seconds:.1f}",
            "ok" if r.ok else "FAILED",
        )
        for r in result.families
    ]


HEADER = ("FAMILY", "AMI", "BUILD", "VERIFY", "CHANNEL", "SECONDS", "RESULT")


def _retire_text(summary: RetireSummary) -> str:
    if summary.error:
        return f"retire failed: {summary.error}"
    return (
        f"retire: {len(summary.deprecated)} deprecated, {len(summary.deregistered)} deregistered, "
        f"{len(summary.restored)} restored, {len(summary.failed)} failed, "
        f"{summary.skipped} skipped ({summary.api_calls} API calls)"
    )


def render_text(result: NightlyResult) -> str:
    rows = [HEADER, *_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines += [f"{r.family}: {r.error}" for r in result.families if r.error]
    if result.retire is not None:
        lines.append(_retire_text(result.retire))
        lines += [f"  retire failed: {f}" for f in result.retire.failed]
    if result.error:
        lines.append(f"run stopped: {result.error}")
    failed = sum(1 for r in result.families if not r.ok)
    lock = f"lock {result.lock.parameter} {'released' if result.lock_released else 'NOT released'}"
    if result.lock_taken_over is not None:
        lock += f" (taken over from expired {result.lock_taken_over.describe()})"
    lines.append(
        f"run {result.run_id}: {len(result.families)} families, {failed} failed, "
        f"{result.seconds:.1f}s; {lock}"
    )
    return redact("\n".join(lines))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: NightlyResult) -> str:
    """The report CI keeps as an artifact (through the same redaction as all output)."""
    verdict = "succeeded" if result.ok else "FAILED"
    lines = [
        f"# Nightly pipeline {result.run_id}: {verdict}",
        "",
        f"- started {result.started.isoformat(timespec='seconds')}, "
        f"finished {result.finished.isoformat(timespec='seconds')} ({result.seconds:.1f}s)",
        f"- channel `{result.channel}`; rebuild: {'yes' if result.rebuild else 'no'}",
        f"- lock `{result.lock.parameter}` held by {result.lock.owner}; "
        f"{'released' if result.lock_released else '**not released**'}",
    ]
    if result.lock_taken_over is not None:
        lines.append(f"- took over an expired lock: {result.lock_taken_over.describe()}")
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in _rows(result)]
    errors = [r for r in result.families if r.error]
    if errors:
        lines += ["", "## Failures", ""]
        lines += [f"- **{r.family}**: {_md_cell(r.error or '')}" for r in errors]
    if result.retire is not None:
        lines += ["", "## Retire", "", f"- {_retire_text(result.retire)}"]
        for label, amis in (
            ("deprecated", result.retire.deprecated),
            ("deregistered", result.retire.deregistered),
            ("restored", result.retire.restored),
        ):
            if amis:
                lines.append(f"- {label}: {', '.join(amis)}")
        lines += [f"- failed: {_md_cell(f)}" for f in result.retire.failed]
    if result.error:
        lines += ["", f"**Run stopped:** {_md_cell(result.error)}"]
    return redact("\n".join(lines) + "\n")


def render_plan(plan: NightlyPlan) -> str:
    header = ("FAMILY", "ACTION", "AMI", "CHANNEL NOW", "CHANNEL MOVE")
    rows = [header]
    for f in plan.families:
        move = {
            "none": "unchanged",
            "set": f"{f.channel} -> {f.ami_id}",
            "after-verify": f"{f.channel} -> the new AMI once verified",
        }[f.channel_move]
        rows.append((f.family, f.action, f.ami_id or "-", f.channel_ami or "unset", move))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"{f.family}: {f.error}" for f in plan.families if f.error]
    lines.append(
        f"dry run: no lock taken ({plan.lock_parameter}), nothing changed"
        + (
            "; retire would then apply the retention plan (see `factory retire`)"
            if plan.retire
            else ""
        )
    )
    return redact("\n".join(lines))
