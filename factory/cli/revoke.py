"""CLI command: `factory revoke`."""

from __future__ import annotations

import click

from factory.catalog import RevokePlan, RevokeResult, revoke_image
from factory.cli.context import CliContext, output_option, pass_cli


def _revoke_text(result: RevokePlan | RevokeResult) -> str:
    if isinstance(result, RevokePlan):
        lines = [f"would revoke ({result.reason}):"]
        for t in result.targets:
            note = " (already revoked)" if t.already_revoked else ""
            lines.append(f"  {t.ami_id}  {t.family or '-'}  {t.region}{note}")
        return "\n".join(lines)
    lines = [f"revoked ({result.reason}):"]
    for image in result.images:
        lines.append(f"  {image.ami_id}  {image.region}  deprecation {image.deprecation}")
    return "\n".join(lines)


@click.command("revoke")
@click.argument("ami_id")
@click.option("--reason", "-r", required=True, help="Why (tagged on the image).")
@click.option("--cascade", is_flag=True, help="Also revoke every image built from it.")
@click.option("--dry-run", is_flag=True, help="Show what would be revoked.")
@output_option
@pass_cli
def revoke(ctx: CliContext, ami_id: str, reason: str, cascade: bool, dry_run: bool) -> None:
    """Revoke AMI_ID: channels and builds refuse it, drift reports it, EC2 deprecates it."""
    result = revoke_image(
        ctx.clients(),
        ami_id,
        reason=reason,
        cascade=cascade,
        regions=ctx.config.regions,
        dry_run=dry_run,
    )
    if isinstance(result, RevokeResult):
        progress = ctx.progress()
        for warning in result.warnings:
            progress.warn(warning)
    ctx.emit(result, _revoke_text(result))


COMMANDS: list[click.Command] = [revoke]
