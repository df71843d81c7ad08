"""Live verification: after a refresh succeeds, run the image's test suite on one of the new
instances (the verify stage does the work); when it fails, or cannot be run, go back.

An image can pass `factory verify` on a fresh instance and still fail with the group's launch
configuration (its user data, its instance profile): this is where that shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from factory.aws import AwsClients
from factory.aws.wait import Poller
from factory.errors import FactoryError, Interrupted
from factory.output import Progress
from factory.rollout.facts import describe_restored, read_group
from factory.rollout.plan import RefreshSettings
from factory.rollout.result import RolloutResult
from factory.rollout.rollback import roll_back
from factory.rollout.wait import InterruptChoice

if TYPE_CHECKING:  # factory.verify imports paramiko: only --verify-live pays for it
    from factory.verify import VerifyResult


@dataclass(frozen=True)
class LiveVerdict:
    """What running the image's suite on a new instance said."""

    passed: bool
    detail: str  # one line: counts, failing tests or the error, where the results are


VerifyLive = Callable[[AwsClients, str, str], LiveVerdict]  # (clients, instance, ami)


def live_verifier(
    *,
    templates_dir: Path,
    output_dir: Path,
    ssh_user: str,
    ssh_key: Path | None,
    timeout: float,
    progress: Progress,
) -> VerifyLive:
    """The verify stage's "run the image's suite against this instance", for apply_rollout.
    A bad key is refused here, before anything changes."""
    from factory import verify

    if ssh_key is not None:
        verify.load_private_key(ssh_key)
    settings = verify.VerifySettings(ssh_user=ssh_user, boot_timeout=timeout)

    def _run(clients: AwsClients, instance_id: str, ami_id: str) -> LiveVerdict:
        result = verify.verify_instance(
            clients,
            instance_id,
            templates_dir=templates_dir,
            output_dir=output_dir,
            expected_ami=ami_id,
            settings=settings,
            ssh_key=ssh_key,
            progress=progress,
        )
        return LiveVerdict(result.ok, live_detail(result))

    return _run


def live_detail(result: VerifyResult) -> str:
    """One line on a live verification: what passed or failed, where the results are."""
    if result.error:
        return f"could not verify {result.instance_id}: {result.error}"
    counts = (
        f"{result.passed} passed, {result.failed + result.errors} failed, "
        f"{result.skipped} skipped on {result.instance_id}"
    )
    failing = f"; failing: {', '.join(result.failing_tests[:5])}" if result.failing_tests else ""
    more = " ..." if len(result.failing_tests) > 5 else ""
    return f"{counts}{failing}{more}; junit: {result.junit_path}"


def _verdict(
    clients: AwsClients, result: RolloutResult, verify_live: VerifyLive, instance_id: str
) -> LiveVerdict:
    try:
        return verify_live(clients, instance_id, str(result.ami_id))
    except Interrupted as exc:
        raise FactoryError(
            f"interrupted during live verification of {instance_id}: the refresh of "
            f"{result.group} succeeded and stays; `factory rollout rollback {result.group}` "
            "goes back",
            exc.exit_code,
        ) from None
    except FactoryError as exc:
        # could not check (no SSH, instance gone): not a pass; an unattended run goes back
        return LiveVerdict(False, f"could not verify {instance_id}: {exc.message}")


def verify_after_refresh(
    clients: AwsClients,
    result: RolloutResult,
    verify_live: VerifyLive,
    progress: Progress,
    *,
    on_interrupt: InterruptChoice | None,
    poller: Poller | None,
    settings: RefreshSettings,
) -> RolloutResult:
    """Test one instance on the new version; on failure roll the group back to where it was."""
    wanted = str(result.launch_template_version)
    candidates = [
        i.instance_id
        for i in read_group(clients, result.group).instances
        if i.template_version == wanted and i.lifecycle_state == "InService"
    ]
    if not candidates:
        return replace(result, verify_live="skipped: no instance on the new version")
    instance_id = candidates[0]
    progress.info(f"{result.group}: running the image's test suite against {instance_id}")
    verdict = _verdict(clients, result, verify_live, instance_id)
    if verdict.passed:
        return replace(result, verify_live="passed", verify_live_detail=verdict.detail)
    progress.warn(f"{result.group}: live verification failed on {instance_id}; rolling back")
    back = roll_back(
        clients,
        result.group,
        progress,
        settings=settings,
        force=True,  # the rollout went ahead on this group: going back must too
        on_interrupt=on_interrupt,
        poller=poller,
        check=False,
    )
    assert isinstance(back, RolloutResult)
    return replace(
        result,
        status="RollbackSuccessful" if back.status == "Successful" else "RollbackFailed",
        reason=f"live verification failed on {instance_id}: {verdict.detail}",
        verify_live="failed",
        verify_live_detail=verdict.detail,
        restored=describe_restored(clients, result.group),
    )
