"""Verifying images, each on a fresh instance: launch it, pin its host key from the console,
run the suite over SSH, tag the AMI verified or failed, remove everything; N images at a time.

Entry points: `apply_verify(plan, ...)` for a plan from `plan_verify`, and `verify_images`,
the whole chain (gather, plan, apply) for the build and the nightly pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

from factory import process, tags
from factory.aws import AwsClients, images
from factory.output import Progress
from factory.verify import lifecycle
from factory.verify.hostkeys import wait_console_keys
from factory.verify.job import Job, Verification, say_verdict
from factory.verify.plan import VerifyPlan, VerifySettings, gather_verify, plan_verify
from factory.verify.results import (
    CleanupReport,
    KeptInstance,
    SuiteRun,
    VerifyResult,
    record,
    verdict_of,
)
from factory.verify.session import SshAccess, make_key, run_suite, suite_context, wait_ssh


class FreshVerification(Verification):
    """One image on an instance launched for it; the AMI carries the verdict afterwards."""

    @cached_property
    def resources(self) -> lifecycle.Resources:
        return lifecycle.Resources.for_run(self.run_id)

    def steps(self, job: Job, result: VerifyResult) -> VerifyResult:
        res = self.resources
        launch_started = time.monotonic()
        key_path, public_key = make_key(job.workdir, res.key_name)
        vpc_id = lifecycle.vpc_for(job)
        lifecycle.make_group(job, res, vpc_id)
        lifecycle.import_key(job, res, public_key)
        self.instance_id = instance_id = lifecycle.launch(job, res)
        result = replace(result, instance_id=instance_id)
        self.address = address = lifecycle.wait_running(job, instance_id)
        result = replace(result, address=address)
        lifecycle.allow_ssh(job, res, address)
        pins = wait_console_keys(job, instance_id)
        known_hosts = job.workdir / "known_hosts"
        wait_ssh(job, address, SshAccess(job.settings.ssh_user, key_path), pins, known_hosts)
        result = replace(result, launch_seconds=round(time.monotonic() - launch_started, 3))
        job.say(
            f"{instance_id} at {address} is up, host key pinned ({result.launch_seconds:.1f}s); "
            f"running {len(job.target.suite.files)} suite files"
        )

        test_started, started_at = time.monotonic(), datetime.now(UTC)
        context = suite_context(
            job,
            address=address,
            instance_id=instance_id,
            public_key=public_key,
            launch_public_key=public_key,  # launched with the verifier's key
            live=False,
        )
        summary, junit_path = run_suite(
            job, address=address, key_path=key_path, known_hosts=known_hosts, context=context
        )
        result = replace(result, test_seconds=round(time.monotonic() - test_started, 3))
        run = SuiteRun(job.target, instance_id, summary, junit_path, started_at)
        result = record(run, result, job.result_dir)
        if job.target.tag_verdict:
            verdict = verdict_of(result)
            images.tag(job.clients, [job.target.ami_id], verdict)
            result = replace(result, tagged_status=verdict[tags.STATUS])
        say_verdict(job, summary)
        return result

    def clean_up(self, job: Job, *, keep: bool) -> tuple[CleanupReport, KeptInstance | None]:
        return lifecycle.clean_up(job, self.resources, keep=keep, address=self.address)


def apply_verify(
    plan: VerifyPlan,
    clients: AwsClients,
    *,
    output_dir: Path,
    progress: Progress | None = None,
) -> list[VerifyResult]:
    """Verify every image of the plan, `plan.settings.parallel` at a time; results in plan order.

    Raises `Interrupted` on SIGINT/SIGTERM after every instance, key pair and group is gone.
    """
    progress = progress or Progress(quiet=True)
    for warning in plan.warnings:
        progress.warn(warning)
    interrupts = process.Interrupts()
    jobs = [
        FreshVerification(
            clients=clients,
            target=target,
            settings=plan.settings,
            output_dir=output_dir,
            progress=progress,
            interrupts=interrupts,
        )
        for target in plan.targets
    ]
    with interrupts.installed():
        if plan.settings.parallel == 1 or len(jobs) == 1:
            results = []
            for job in jobs:
                results.append(job.run())
                interrupts.check()  # a signal that arrived while cleanup was shielded
            return results
        return _run_parallel(jobs, plan.settings.parallel, interrupts)


def _run_parallel(
    jobs: Sequence[Verification], workers: int, interrupts: process.Interrupts
) -> list[VerifyResult]:
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify")
    futures: list[Future[VerifyResult]] = [pool.submit(job.run) for job in jobs]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # an unexpected error in one job stops the others
    except BaseException:
        # Ctrl-C/SIGTERM (or a bug): stop the other jobs; each cleans up what it created
        interrupts.cancelled.set()
        with interrupts.shielded():
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [f.result() for f in futures]


def verify_images(
    clients: AwsClients,
    ami_ids: Sequence[str],
    *,
    templates_dir: Path,
    output_dir: Path,
    suite_dirs: Sequence[Path] = (),
    settings: VerifySettings | None = None,
    progress: Progress | None = None,
) -> list[VerifyResult]:
    """Verify AMIs end to end: gather (AMIs, suites), plan, apply.

    `suite_dirs` replaces the default suite (templates/_common/tests + templates/FAMILY/tests).
    Returns one result per AMI; use `require_verified` to turn failures into an error.
    """
    facts = gather_verify(clients, ami_ids, templates_dir=templates_dir, suite_dirs=suite_dirs)
    plan = plan_verify(facts, settings or VerifySettings())
    return apply_verify(plan, clients, output_dir=output_dir, progress=progress)
