"""CLI commands: `factory channel set|rollback|show`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC

import click

from factory.channels import (
    ChannelChange,
    ChannelPlan,
    ChannelState,
    rollback_channel,
    set_channel,
    show_channels,
)
from factory.cli.context import CliContext, output_option, pass_cli


@click.group("channel")
def channel_group() -> None:
    """Channels: SSM parameters /factory/FAMILY/CHANNEL naming the AMI to launch."""


def _change_text(result: ChannelPlan | ChannelChange) -> str:
    if isinstance(result, ChannelPlan):
        verb = "would roll back" if result.action == "rollback" else "would set"
        if result.no_change:
            return f"{result.parameter} already holds {result.ami_id}: nothing to do"
        return f"{verb} {result.parameter}: {result.previous_ami or '(unset)'} -> {result.ami_id}"
    if not result.changed:
        return f"{result.parameter} already holds {result.ami_id} (version {result.version})"
    verb = "rolled back" if result.action == "rollback" else "set"
    return (
        f"{verb} {result.parameter}: {result.previous_ami or '(unset)'} -> {result.ami_id} "
        f"(version {result.version})"
    )


@channel_group.command("set")
@click.argument("family")
@click.argument("channel")
@click.argument("ami_id")
@click.option("--reason", "-r", default="", help="Why (kept in the channel's history).")
@click.option("--dry-run", is_flag=True, help="Show the change without making it.")
@output_option
@pass_cli
def channel_set(
    ctx: CliContext, family: str, channel: str, ami_id: str, reason: str, dry_run: bool
) -> None:
    """Point FAMILY's CHANNEL at AMI_ID (verified, not revoked, same family)."""
    result = set_channel(
        ctx.clients(), ctx.config.channels, family, channel, ami_id, reason=reason, dry_run=dry_run
    )
    ctx.emit(result, _change_text(result))


@channel_group.command("rollback")
@click.argument("family")
@click.argument("channel")
@click.option("--reason", "-r", default="", help="Why (kept in the channel's history).")
@click.option("--dry-run", is_flag=True, help="Show the change without making it.")
@output_option
@pass_cli
def channel_rollback(
    ctx: CliContext, family: str, channel: str, reason: str, dry_run: bool
) -> None:
    """Return FAMILY's CHANNEL to the AMI it held before."""
    result = rollback_channel(
        ctx.clients(), ctx.config.channels, family, channel, reason=reason, dry_run=dry_run
    )
    ctx.emit(result, _change_text(result))


@dataclass(frozen=True)
class ChannelList:
    region: str
    channels: tuple[ChannelState, ...]


def render_channels(states: Sequence[ChannelState], history: int) -> str:
    if not states:
        return "no channels set"
    lines = []
    for state in states:
        lines.append(f"{state.family}/{state.channel}  {state.ami_id}  (version {state.version})")
        for version in state.history[:history]:
            at = version.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if version.at else "?"
            what = version.action
            if version.rollback_to:
                what += f" to v{version.rollback_to}"
            why = f"  {version.reason}" if version.reason else ""
            lines.append(
                f"    v{version.version:<3} {version.ami_id}  {at}  {what:<16} {version.by}{why}"
            )
    return "\n".join(lines)


@channel_group.command("show")
@click.argument("family", required=False)
@click.option(
    "--history",
    "-n",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="History entries per channel.",
)
@output_option
@pass_cli
def channel_show(ctx: CliContext, family: str | None, history: int) -> None:
    """Channels (of FAMILY, or all) with their history: who set which AMI, when and why."""
    clients = ctx.clients()
    states = show_channels(clients, ctx.config.channels, family)
    ctx.emit(ChannelList(clients.region, states), render_channels(states, history))


COMMANDS: list[click.Command] = [channel_group]
