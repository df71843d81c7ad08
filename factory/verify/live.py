"""Verifying a running instance verify did not launch (`factory rollout --verify-live`,
`factory verify --instance`): the image's suite against the instance as it runs.

Access: the private half of the instance's key pair (`ssh_key`), or else an ephemeral key
pushed with EC2 Instance Connect (kept alive while the suite runs: AWS keeps it 60 s). The host
key is pinned from the console output, as for a fresh instance. Nothing is created in AWS and
nothing is tagged: the image's verdict stays what `factory verify` recorded.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from factory import process
from factory.aws import AwsClients, images, instances
from factory.aws.model import Image, Instance
from factory.errors import ConfigError, FactoryError, RefusedError, VerificationError
from factory.output import Progress
from factory.verify.hostkeys import wait_console_keys
from factory.verify.job import Job, Verification, new_run_id, say_verdict
from factory.verify.plan import VerifySettings, VerifyTarget, no_such_images, target_for
from factory.verify.results import CleanupReport, KeptInstance, SuiteRun, VerifyResult, record
from factory.verify.session import (
    SshAccess,
    load_private_key,
    make_key,
    run_suite,
    suite_context,
    wait_ssh,
)
from factory.verify.suite import Suite, load_suite, suite_dirs_for

EIC_REPUSH = 40.0  # seconds between EC2 Instance Connect pushes (AWS keeps a key 60 s)
LIVE_AUTH_GRACE = 20.0  # an instance in service refusing the key will not change its mind
DEFAULT_LIVE_TIMEOUT = 180.0


@dataclass(frozen=True)
class LiveFacts:
    """The running instance, the image it runs, and that image's suite."""

    instance: Instance
    image: Image
    suite: Suite


@dataclass(frozen=True)
class LivePlan:
    instance: Instance
    target: VerifyTarget
    settings: VerifySettings
    ssh_key: Path | None = None  # None: a key pushed with EC2 Instance Connect


def gather_live(
    clients: AwsClients,
    instance_id: str,
    *,
    templates_dir: Path,
    suite_dirs: Sequence[Path] = (),
    expected_ami: str | None = None,
) -> LiveFacts:
    """Read the instance, its image and the image's suite (`suite_dirs` replaces it).

    An instance that is not running, or runs another AMI than `expected_ami`, is refused
    before anything else is read.
    """
    instance = instances.get(clients, instance_id)
    if instance is None:
        raise ConfigError(f"no such instance in {clients.region}: {instance_id}")
    if instance.state != "running":
        raise RefusedError(f"{instance_id} is {instance.state}, not running: nothing to verify")
    if expected_ami and instance.image_id != expected_ami:
        raise RefusedError(f"{instance_id} runs {instance.image_id}, not {expected_ami}")
    image = images.get(clients, instance.image_id)
    if image is None:
        raise no_such_images(clients.region, [instance.image_id])
    dirs = tuple(suite_dirs) or suite_dirs_for(templates_dir, image.family)
    return LiveFacts(instance=instance, image=image, suite=load_suite(dirs))


def plan_live(facts: LiveFacts, settings: VerifySettings, *, ssh_key: Path | None) -> LivePlan:
    """The instance as it is: its own type, never kept, the verdict never tagged. Pure."""
    return LivePlan(
        instance=facts.instance,
        target=target_for(facts.image, facts.suite, tag_verdict=False),
        settings=replace(settings, instance_type=facts.instance.instance_type, keep=False),
        ssh_key=ssh_key,
    )


def apply_live(
    plan: LivePlan, clients: AwsClients, *, output_dir: Path, progress: Progress | None = None
) -> VerifyResult:
    """Run the suite against the instance; the result says live, and which instance."""
    interrupts = process.Interrupts()
    job = LiveVerification(
        plan,
        clients=clients,
        output_dir=output_dir,
        progress=progress or Progress(quiet=True),
        interrupts=interrupts,
    )
    with interrupts.installed():
        return job.run()


def verify_instance(
    clients: AwsClients,
    instance_id: str,
    *,
    templates_dir: Path,
    output_dir: Path,
    expected_ami: str | None = None,
    suite_dirs: Sequence[Path] = (),
    settings: VerifySettings | None = None,
    ssh_key: Path | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """Run the image's suite against a running instance (say, one an instance refresh made).

    The suite is the one `factory verify` runs for the instance's AMI (its family's), with
    the context saying `live`: tests marked `image_only` (build leftovers a running server may
    legitimately have, like files in /tmp) are skipped. The result is not tagged on the AMI.
    """
    settings = settings or VerifySettings(boot_timeout=DEFAULT_LIVE_TIMEOUT)
    if ssh_key is not None:
        load_private_key(ssh_key)  # a bad key is a usage error, before anything runs
    facts = gather_live(
        clients,
        instance_id,
        templates_dir=templates_dir,
        suite_dirs=suite_dirs,
        expected_ami=expected_ami,
    )
    plan = plan_live(facts, settings, ssh_key=ssh_key)
    return apply_live(plan, clients, output_dir=output_dir, progress=progress)


# ---- access --------------------------------------------------------------------------------------


def key_pair_public_key(clients: AwsClients, key_name: str | None) -> str:
    """The public half of an EC2 key pair ("" when there is none or EC2 no longer has it)."""
    if not key_name:
        return ""
    pairs = instances.key_pairs(clients, names=[key_name], with_public_key=True)
    return pairs[0].public_key if pairs else ""


class KeyPusher:
    """Offers an ephemeral public key through EC2 Instance Connect, again before it expires."""

    def __init__(self, job: Job, instance: Instance, public_key: str) -> None:
        self.job = job
        self.instance = instance
        self.public_key = public_key
        self._pushed_at: float | None = None

    def push(self) -> None:
        user = self.job.settings.ssh_user
        instances.send_ssh_public_key(self.job.clients, self.instance, user, self.public_key)
        self._pushed_at = time.monotonic()

    def before_connect(self) -> None:
        """Before each sign-in attempt: push unless the last push is recent."""
        if self._pushed_at is None or time.monotonic() - self._pushed_at > EIC_REPUSH / 2:
            self.push()

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Push the key now and every EIC_REPUSH seconds until the block ends."""
        self.push()
        done = threading.Event()

        def _repush() -> None:
            while not done.wait(EIC_REPUSH):
                try:
                    self.push()
                except FactoryError as exc:
                    self.job.progress.warn(f"{self.instance.instance_id}: key push failed: {exc}")

        pusher = threading.Thread(target=_repush, name="eic-push", daemon=True)
        pusher.start()
        try:
            yield
        finally:
            done.set()
            pusher.join(5.0)


@dataclass(frozen=True)
class _Access:
    ssh: SshAccess
    public_key: str  # the verifier's
    launch_public_key: str  # the instance's key pair's ("" for none)
    pusher: KeyPusher | None = None

    def kept_alive(self) -> AbstractContextManager[None]:
        return self.pusher.kept_alive() if self.pusher else nullcontext()


class LiveVerification(Verification):
    """The skeleton's steps for an instance in service; cleanup removes local files only."""

    live = True

    def __init__(
        self,
        plan: LivePlan,
        *,
        clients: AwsClients,
        output_dir: Path,
        progress: Progress,
        interrupts: process.Interrupts,
    ) -> None:
        super().__init__(
            clients=clients,
            target=plan.target,
            settings=plan.settings,
            output_dir=output_dir,
            progress=progress,
            interrupts=interrupts,
            run_id=new_run_id(f"live-{plan.instance.instance_id}"),
        )
        self.plan = plan

    def _access(self, job: Job) -> _Access:
        user, ssh_key = self.settings.ssh_user, self.plan.ssh_key
        if ssh_key is not None:
            _, public_key = load_private_key(ssh_key)
            hint = (
                "is it the private half of the instance's key pair, and --ssh-user its login user?"
            )
            access = SshAccess(user, ssh_key, f"--ssh-key {ssh_key}", hint, LIVE_AUTH_GRACE)
            return _Access(access, public_key, launch_public_key=public_key)
        key_path, public_key = make_key(job.workdir, f"factory-verify-{self.run_id}")
        launch_key = key_pair_public_key(self.clients, self.plan.instance.key_name)
        pusher = KeyPusher(job, self.plan.instance, public_key)
        hint = (
            "does the image have EC2 Instance Connect (the ec2-instance-connect package), "
            "and is --ssh-user its login user? Or pass --ssh-key with the instance's key pair"
        )
        access = SshAccess(
            user,
            key_path,
            "the key pushed with EC2 Instance Connect",
            hint,
            LIVE_AUTH_GRACE,
            before_connect=pusher.before_connect,
        )
        return _Access(access, public_key, launch_key, pusher)

    def steps(self, job: Job, result: VerifyResult) -> VerifyResult:
        started = time.monotonic()
        instance_id = self.instance_id = self.plan.instance.instance_id
        address = self.plan.instance.address
        if not address:
            raise VerificationError(f"{instance_id} has no IP address to reach it at")
        self.address = address
        result = replace(result, instance_id=instance_id, address=address)
        access = self._access(job)
        pins = wait_console_keys(job, instance_id)
        known_hosts = job.workdir / "known_hosts"
        wait_ssh(job, address, access.ssh, pins, known_hosts)
        result = replace(result, launch_seconds=round(time.monotonic() - started, 3))
        job.say(
            f"{instance_id} at {address}: host key pinned, signed in "
            f"({result.launch_seconds:.1f}s); running {len(job.target.suite.files)} suite files"
        )
        test_started, started_at = time.monotonic(), datetime.now(UTC)
        context = suite_context(
            job,
            address=address,
            instance_id=instance_id,
            public_key=access.public_key,
            launch_public_key=access.launch_public_key,
            live=True,
        )
        with access.kept_alive():
            summary, junit_path = run_suite(
                job,
                address=address,
                key_path=access.ssh.key_path,
                known_hosts=known_hosts,
                context=context,
            )
        result = replace(result, test_seconds=round(time.monotonic() - test_started, 3))
        run = SuiteRun(job.target, instance_id, summary, junit_path, started_at)
        result = record(run, result, job.result_dir)
        say_verdict(job, summary)
        return result

    def clean_up(self, job: Job, *, keep: bool) -> tuple[CleanupReport, KeptInstance | None]:
        """Nothing was created in AWS: only the local scratch directory (the key) goes."""
        shutil.rmtree(job.workdir, ignore_errors=True)
        return CleanupReport(), None
