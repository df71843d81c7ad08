"""`factory verify AMI_ID...`: test images on real instances; only verified images move on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import click

from factory.cli.context import CliContext, output_option, pass_cli
from factory.errors import ConfigError
from factory.provenance import attest_verifications
from factory.verify import (
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_LIVE_TIMEOUT,
    DEFAULT_SSH_USER,
    Outcome,
    VerifyPlan,
    VerifyReport,
    VerifyResult,
    VerifySettings,
    apply_verify,
    gather_verify,
    load_private_key,
    plan_verify,
    require_verified,
    verify_instance,
)


def render_result(result: VerifyResult) -> str:
    """A few lines per image: the verdict, the timings, where the results are, what failed."""
    timing = (
        f"launch {result.launch_seconds:.1f}s, tests {result.test_seconds:.1f}s, "
        f"cleanup {result.cleanup_seconds:.1f}s, total {result.total_seconds:.1f}s"
    )
    subject = result.ami_id
    if result.live:  # a running instance: which one, and what it runs
        subject = f"{result.instance_id} ({result.ami_id})"
        timing = (
            f"access {result.launch_seconds:.1f}s, tests {result.test_seconds:.1f}s, "
            f"total {result.total_seconds:.1f}s"
        )
    if result.outcome is Outcome.ERROR:
        lines = [f"{subject}  ERROR  {result.error}  ({timing})"]
    else:
        word = "verified" if result.ok else "FAILED"
        lines = [
            f"{subject}  {word}  {result.passed} passed, "
            f"{result.failed + result.errors} failed, {result.skipped} skipped of {result.total}"
            f"  ({timing})"
        ]
        lines += [f"  failed: {name}" for name in result.failing_tests]
        lines.append(f"  junit: {result.junit_path}")
        lines.append(f"  summary: {result.summary_path} ({result.result_digest})")
    if result.kept is not None:
        kept = result.kept
        lines.append(f"  kept {kept.instance_id} ({kept.user}@{kept.address}, key {kept.key_path})")
        lines.append(f"    reach it:  {kept.ssh_command}")
        lines.append(f"    remove it: {kept.cleanup_command}")
    lines += [f"  warning: cleanup left {line}" for line in result.cleanup.leftovers]
    return "\n".join(lines)


def render_plan(plan: VerifyPlan) -> str:
    s = plan.settings
    lines = [
        f"would verify {len(plan.targets)} image(s) in {plan.region} on {s.instance_type} "
        f"as {s.ssh_user}, {s.parallel} at a time" + (" (keeping instances)" if s.keep else "")
    ]
    for target in plan.targets:
        lines.append(f"  {target.ami_id} ({target.family or 'no family'}) {target.suite.digest}")
        lines += [f"    {name}" for name in target.suite.files]
    lines += [f"  warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


@click.command("verify")
@click.argument("ami_ids", metavar="AMI_ID...", nargs=-1)
@click.option(
    "--instance",
    "instance_ids",
    multiple=True,
    metavar="INSTANCE_ID",
    help="Instead of AMIs: run each running instance's image suite on it, as it is (over EC2 "
    "Instance Connect, or --ssh-key); nothing is launched or tagged. Repeatable.",
)
@click.option(
    "--ssh-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --instance: the private key of the instance's key pair.",
)
@click.option(
    "--suite",
    "suites",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Test directory to run instead of templates/_common/tests + templates/FAMILY/tests "
    "(repeatable).",
)
@click.option("--instance-type", default=DEFAULT_INSTANCE_TYPE, show_default=True)
@click.option(
    "--ssh-user", default=DEFAULT_SSH_USER, show_default=True, help="The image's login user."
)
@click.option("--subnet", "subnet_id", help="Subnet for the test instance (default: default VPC).")
@click.option("--ssh-cidr", help="Who may SSH to the instance (default: this machine only).")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the instance after the tests (not on Ctrl-C) and print how to reach it.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Images verified at once, one instance each.",
)
@click.option(
    "--boot-timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    help="Seconds from launch until SSH must accept the verifier's key.",
)
@click.option(
    "--user-data",
    "user_data_file",
    type=click.File("r"),
    help="User data for the test instance, as the fleet's launch template would pass it.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (images, suites, digests) only.")
@click.option("--no-provenance", is_flag=True, help="Do not append a verification attestation.")
@output_option
@pass_cli
def verify_cmd(
    cli: CliContext,
    *,
    ami_ids: Sequence[str],
    instance_ids: Sequence[str],
    ssh_key: Path | None,
    suites: Sequence[Path],
    instance_type: str,
    ssh_user: str,
    subnet_id: str | None,
    ssh_cidr: str | None,
    keep: bool,
    parallel: int,
    boot_timeout: float,
    user_data_file: TextIO | None,
    dry_run: bool,
    no_provenance: bool,
) -> None:
    """Launch each AMI, run its testinfra suite over pinned SSH, tag it verified or failed.

    Exit 0 only when every image passed every test. The instance, key pair and security
    group are removed afterwards, also on failure, Ctrl-C and SIGTERM.
    """
    if instance_ids:
        if ami_ids or keep or user_data_file or dry_run:
            raise ConfigError(
                "--instance verifies running instances: drop AMI ids, --keep, --user-data "
                "and --dry-run"
            )
        _verify_running(cli, instance_ids, ssh_key, ssh_user, boot_timeout, suites)
        return
    if not ami_ids:
        raise ConfigError("name at least one AMI id (or --instance INSTANCE_ID)")
    if ssh_key is not None:
        raise ConfigError("--ssh-key goes with --instance (verify makes its own key for AMIs)")
    settings = VerifySettings(
        instance_type=instance_type,
        ssh_user=ssh_user,
        subnet_id=subnet_id,
        ssh_cidr=ssh_cidr,
        keep=keep,
        parallel=parallel,
        boot_timeout=boot_timeout,
        user_data=user_data_file.read() if user_data_file else None,
    )
    clients = cli.clients()
    facts = gather_verify(
        clients, list(ami_ids), templates_dir=cli.config.templates_dir, suite_dirs=suites
    )
    plan = plan_verify(facts, settings)
    if dry_run:
        cli.emit(plan, render_plan(plan))
        return
    results = apply_verify(
        plan, clients, output_dir=cli.config.state_dir / "verify", progress=cli.progress()
    )
    if not no_provenance:
        attest_verifications(cli.config, clients, results, cli.progress())
    report = VerifyReport.of(results)
    cli.emit(report, "\n".join(render_result(r) for r in results))
    require_verified(results)


def _verify_running(
    cli: CliContext,
    instance_ids: Sequence[str],
    ssh_key: Path | None,
    ssh_user: str,
    timeout: float,
    suites: Sequence[Path],
) -> None:
    """`factory verify --instance ...`: the image's suite on instances as they run."""
    if ssh_key is not None:
        load_private_key(ssh_key)
    clients = cli.clients()
    progress = cli.progress()
    settings = VerifySettings(ssh_user=ssh_user, boot_timeout=min(timeout, DEFAULT_LIVE_TIMEOUT))
    results = [
        verify_instance(
            clients,
            instance_id,
            templates_dir=cli.config.templates_dir,
            output_dir=cli.config.state_dir / "verify",
            suite_dirs=suites,
            settings=settings,
            ssh_key=ssh_key,
            progress=progress,
        )
        for instance_id in dict.fromkeys(instance_ids)
    ]
    cli.emit(VerifyReport.of(results), "\n".join(render_result(r) for r in results))
    require_verified(results)


COMMANDS: list[click.Command] = [verify_cmd]
