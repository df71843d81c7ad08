"""`factory build FAMILY`: render, run Packer, tag the AMI a candidate (or reuse a verified one)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from factory.build import BuildPlan, BuildResult, apply_build, prepare_build, require_built
from factory.cli.context import CliContext, output_option, pass_cli
from factory.cli.render import given_variables, var_options


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
) -> None:
    """Render FAMILY, run `packer build`, tag the new AMI and snapshots status=candidate.

    Ctrl-C or SIGTERM stops Packer (it removes its instance), sweeps leftovers by the
    build's tag, and exits 130/143.
    """
    clients = cli.clients()
    plan = prepare_build(
        cli.config, clients, family, given_variables(var_args, var_file), rebuild=rebuild
    )
    if dry_run:
        cli.emit(plan, plan_text(plan))
        return
    result = apply_build(plan, clients, cli.progress())
    cli.emit(result, result_text(result))
    require_built(result)


COMMANDS: list[click.Command] = [build_cmd]
