"""The pipeline's lock, held in AWS so two runs never overlap: the SSM parameter
`/factory/locks/pipeline`, created with PutParameter `Overwrite=False` (SSM answers
ParameterAlreadyExists while another run holds it). Its value says who holds it, since when
and until when; a lock past its expiry is taken over.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from factory.aws import AwsClients, parameters
from factory.errors import AwsError, ExitCode, FactoryError
from factory.output import Progress

LOCK_PARAMETER = "/factory/locks/pipeline"
LOCK_DESCRIPTION = "ami-factory pipeline lock: who runs the nightly pipeline now"
DEFAULT_LOCK_TTL = 4 * 3600  # seconds; renewed before each family, so a long run keeps it
LOCKED_EXIT = ExitCode.BUSY  # another run holds the lock: not bad input (2), not a failure (1)


@dataclass(frozen=True)
class LockInfo:
    """Who holds the pipeline lock, since when, and until when it counts as held."""

    parameter: str
    owner: str  # user@host:pid
    run_id: str
    started: datetime
    expires: datetime

    def value(self) -> str:
        """The parameter's value (JSON); `parse_lock` reads it back."""
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


def holder_text(lock: LockInfo) -> str:
    """Who holds a lock, for the messages that name them (held, lost, taken over)."""
    return (
        f"{lock.owner} (run {lock.run_id}) since {lock.started.isoformat(timespec='seconds')}"
        f", until {lock.expires.isoformat(timespec='seconds')}"
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
            f"another pipeline run holds {holder.parameter}: {holder_text(holder)}; "
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


def _create(clients: AwsClients, lock: LockInfo, *, overwrite: bool) -> bool:
    """PutParameter; False when Overwrite=False and the parameter exists (someone holds it)."""
    version = parameters.put(
        clients, lock.parameter, lock.value(), description=LOCK_DESCRIPTION, overwrite=overwrite
    )
    return version is not None


def _current(clients: AwsClients, parameter: str) -> tuple[str, LockInfo] | None:
    """The lock's raw value and what it says, or None if nobody holds it."""
    found = parameters.get(clients, parameter)
    if found is None:
        return None
    return found.value, parse_lock(parameter, found.value)


def read_lock(clients: AwsClients, parameter: str = LOCK_PARAMETER) -> LockInfo | None:
    found = _current(clients, parameter)
    return found[1] if found else None


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
            progress.warn(f"taking over an expired pipeline lock: {holder_text(holder)}")
        again = _current(clients, parameter)
        if again is not None and again[0] != raw:
            continue  # someone else took it over meanwhile: look again
        parameters.delete(clients, parameter)
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
        who = holder_text(holder) if holder else "nobody"
        raise LockLost(f"lost the pipeline lock {lock.parameter} (now held by {who}); stopping")
    renewed = replace(lock, expires=now + timedelta(seconds=ttl))
    _create(clients, renewed, overwrite=True)
    return renewed


def release_lock(clients: AwsClients, lock: LockInfo) -> bool:
    """Delete the lock if it is still ours (never someone else's that took over)."""
    holder = read_lock(clients, lock.parameter)
    if holder is None or holder.run_id != lock.run_id:
        return False
    return parameters.delete(clients, lock.parameter)


def break_lock(clients: AwsClients, parameter: str = LOCK_PARAMETER) -> LockInfo | None:
    """`factory pipeline unlock`: remove the lock whoever holds it; returns what it said."""
    holder = read_lock(clients, parameter)
    if holder is not None:
        parameters.delete(clients, parameter)
    return holder
