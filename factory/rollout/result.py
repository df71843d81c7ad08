"""What a rollout, a rollback or a status follow ended with, and the error a failed one raises."""

from __future__ import annotations

from dataclasses import dataclass

from factory.errors import ExitCode, FactoryError


class RolloutFailed(FactoryError):
    """The refresh failed, was cancelled or rolled back: the message says what was restored."""

    exit_code = ExitCode.FAILED


@dataclass(frozen=True)
class RolloutResult:
    """What a rollout (or rollback, or status follow) ended with."""

    group: str
    region: str
    ami_id: str | None
    refresh_id: str | None
    status: str
    reason: str
    launch_template_id: str | None = None
    launch_template_version: int | None = None
    previous_version: int | None = None
    waited: bool = True
    percentage: int = 0
    instances_replaced: int = 0
    restored: str | None = None
    verify_live: str | None = None  # passed | failed (rolled back) | skipped: ... | None
    verify_live_detail: str | None = None  # which instance, what ran, what failed
    api_calls: int = 0
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status in ("Successful", "UpToDate", "Pending", "InProgress", "DryRun")


def raise_if_failed(result: RolloutResult) -> None:
    """A followed refresh that did not succeed is an error naming what the group runs now."""
    if result.status in ("Successful", "UpToDate") or not result.waited:
        return
    what = {
        "Failed": "failed",
        "Cancelled": "was cancelled",
        "RollbackSuccessful": "failed and was rolled back",
        "RollbackFailed": "failed and its rollback failed too",
    }.get(result.status, f"ended {result.status}")
    live = " (live verification failed)" if result.verify_live == "failed" else ""
    raise RolloutFailed(
        f"rollout of {result.ami_id} to {result.group} {what}{live}: "
        f"{result.reason or 'no reason given'}; now: {result.restored or 'unknown'}"
    )
