"""`factory build FAMILY`: render, run Packer, tag the AMI a candidate (or reuse a verified one)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from factory.build import (
    BuildPlan,
    BuildResult,
    VerifyWhen,
    build_and_verify,
    gather_build,
    plan_build,
    require_built,
)
from factory.cli.context import CliContext, output_option, pass_cli
from factory.cli.render import given_variables, var_options
from factory.cli.verify import render_result
from factory.output import to_jsonable
from factory.provenance import ProvenanceRecord
from factory.verify import VerifyReport, require_verified


def plan_text(plan: BuildPlan) -> str:
    lines = [
        f"would build {plan.family} {plan.version} as {plan.ami_name} in {plan.region}",
        f"  source AMI:      {plan.source_ami} ({plan.source_name})",
        f"  template digest: {plan.template_digest}",
        f"  dedupe key:      {plan.dedupe_key}",
        f"  Packer:          {plan.packer_version}"
        + (" (packer init)" if plan.packer_init else ""),
        f"  build dir:       {plan.build_dir}",
    ]
    if plan.reuse_ami:
        lines.append(
            f"  reuse:           {plan.reuse_ami} (verified, same inputs; --rebuild builds)"
        )
    return "\n".join(lines)


def result_text(result: BuildResult) -> str:
    if result.status == "reused":
        return f"{result.ami_ids[0]}  reused (verified, same dedupe key {result.dedupe_key[:12]})"
    if result.status == "failed":
        return "\n".join(
            [
                f"build {result.build_id} FAILED (log: {result.log_file})",
                *(f"  {line}" for line in result.errors),
            ]
        )
    lines = [f"{image.ami_id}  {result.name}  candidate" for image in result.images]
    lines.append(f"  build dir: {result.build_dir} ({result.seconds:.1f}s)")
    lines.append(f"  log:       {result.log_file}")
    return "\n".join(lines)


@click.command("build")
@click.argument("family")
@var_options
@click.option(
    "--rebuild",
    is_flag=True,
    help="Build even if a verified AMI with the same inputs (dedupe key) exists.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (source AMI, digests, reuse) only.")
@click.option(
    "--verify",
    "verify_after",
    is_flag=True,
    help="Run `factory verify` on the new AMI right after the build (exit 1 if a test fails).",
)
@click.option(
    "--no-provenance",
    is_flag=True,
    help="Do not sign and store provenance (default: every built AMI gets an attestation).",
)
@output_option
@pass_cli
def build_cmd(
    cli: CliContext,
    *,
    family: str,
    var_args: Sequence[str],
    var_file: Path | None,
    rebuild: bool,
    dry_run: bool,
    verify_after: bool,
    no_provenance: bool,
) -> None:
    """Render FAMILY, run `packer build`, tag the new AMI and snapshots status=candidate.

    Ctrl-C or SIGTERM stops Packer (it removes its instance), sweeps leftovers by the
    build's tag, and exits 130/143.
    """
    clients = cli.clients()
    inputs = gather_build(cli.config, clients, family, given_variables(var_args, var_file))
    plan = plan_build(inputs, rebuild=rebuild, now=datetime.now(UTC))
    if dry_run:
        cli.emit(plan, plan_text(plan))
        return
    made = build_and_verify(
        cli.config,
        clients,
        plan,
        cli.progress(),
        verify=VerifyWhen.ALWAYS if verify_after else VerifyWhen.NEVER,
        provenance=not no_provenance,
    )
    result = made.build
    if result.status == "failed":
        cli.emit(result, result_text(result))
        require_built(result)
    if not verify_after:
        cli.emit(build_report(result, made.provenance), result_text(result))
        return
    cli.emit(
        build_report(result, made.provenance, VerifyReport.of(made.verification)),
        "\n".join([result_text(result), *(render_result(r) for r in made.verification)]),
    )
    require_verified(made.verification)


def build_report(
    result: BuildResult,
    provenance: tuple[ProvenanceRecord, ...],
    verify: VerifyReport | None = None,
) -> dict[str, Any]:
    """`--output json`: the build result, plus its attestations and the verdict if asked."""
    report = dict(to_jsonable(result))
    report["provenance"] = to_jsonable(provenance)
    if verify is not None:
        report["verify"] = to_jsonable(verify)
    return report


COMMANDS: list[click.Command] = [build_cmd]
