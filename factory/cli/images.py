"""CLI commands: `factory images list|tree`, `factory channel set|rollback|show`, `revoke`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import click

from factory import tags as T
from factory.catalog import (
    DescendantNode,
    ImageRecord,
    LineageNode,
    LineageTree,
    RevokePlan,
    RevokeResult,
    apply_revoke,
    find_image,
    lineage,
    list_images,
    plan_revoke,
    with_usage,
)
from factory.channels import (
    ChannelChange,
    ChannelPlan,
    ChannelState,
    check_channel,
    rollback_channel,
    set_channel,
    show_channels,
)
from factory.cli.context import CliContext, output_option, pass_cli
from factory.inuse import ScanTarget, find_in_use


@dataclass(frozen=True)
class ImageList:
    regions: tuple[str, ...]
    images: tuple[ImageRecord, ...]


def _age(days: float | None) -> str:
    if days is None:
        return "?"
    if days < 1:
        return f"{days * 24:.0f}h"
    return f"{days:.0f}d"


def render_images(images: Sequence[ImageRecord], multi_region: bool) -> str:
    if not images:
        return "no factory images found"
    header = ["AMI", "FAMILY", "VERSION", "STATUS", "CHANNELS", "PARENT", "AGE", "IN USE"]
    if multi_region:
        header.insert(1, "REGION")
    rows = [header]
    for r in images:
        row = [
            r.ami_id,
            r.family or "-",
            r.version or "-",
            r.status,
            ",".join(c.split("/", 1)[1] for c in r.channels) or "-",
            r.parent or "-",
            _age(r.age_days),
            "?" if r.in_use is None else ("yes" if r.in_use else "no"),
        ]
        if multi_region:
            row.insert(1, r.region)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@click.group("images")
def images_group() -> None:
    """The factory's AMIs: list them, show their lineage."""


@images_group.command("list")
@click.option("--family", "-f", help="Only this image family.")
@click.option(
    "--status", "-s", type=click.Choice([s.value for s in T.Status]), help="Only this status."
)
@click.option("--channel", "-c", help="Only images some family's CHANNEL points at.")
@click.option(
    "--in-use",
    "in_use",
    is_flag=True,
    help="Also scan instances, launch templates, groups and parameters for users (slower).",
)
@output_option
@pass_cli
def images_list(
    ctx: CliContext, family: str | None, status: str | None, channel: str | None, in_use: bool
) -> None:
    """AMIs built by the factory in every configured region, newest first."""
    cfg = ctx.config
    if channel:
        check_channel(channel, cfg.channels)
    clients = ctx.clients()
    images = list_images(
        clients, regions=cfg.regions, family=family, status=status, channel=channel
    )
    if in_use:
        regional = [ctx.clients(region) for region in cfg.regions]
        report = find_in_use([ScanTarget(c) for c in regional], owner_account=clients.account_id)
        images = with_usage(images, report.by_ami())
    result = ImageList(cfg.regions, tuple(images))
    ctx.emit(result, render_images(images, len(cfg.regions) > 1))


def _node_text(node: LineageNode) -> str:
    if not node.exists:
        return f"{node.ami_id}  (deregistered)"
    label = f"{node.family} {node.version}" if node.family else node.name
    return f"{node.ami_id}  {label}  [{node.status}]"


def render_tree(tree: LineageTree) -> str:
    lines = []
    for depth, ancestor in enumerate(reversed(tree.ancestors)):
        lines.append("    " * depth + _node_text(ancestor))
    depth = len(tree.ancestors)
    lines.append("    " * depth + "* " + _node_text(tree.image))

    def _walk(children: Sequence[DescendantNode], prefix: str) -> None:
        for i, child in enumerate(children):
            last = i == len(children) - 1
            lines.append(prefix + ("└── " if last else "├── ") + _node_text(child.node))
            _walk(child.children, prefix + ("    " if last else "│   "))

    _walk(tree.descendants, "    " * depth + "  ")
    return "\n".join(lines)


@images_group.command("tree")
@click.argument("ami_id")
@output_option
@pass_cli
def images_tree(ctx: CliContext, ami_id: str) -> None:
    """AMI_ID's ancestors (up to the base image) and descendants."""
    tree = lineage(ctx.clients(), ami_id, regions=ctx.config.regions)
    ctx.emit(tree, render_tree(tree))


# ---- channels ---------------------------------------------------------------------------------


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


# ---- revoke -----------------------------------------------------------------------------------


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
    clients = ctx.clients()
    image = find_image(clients, ami_id)
    catalog = list_images(clients, regions=ctx.config.regions) if cascade else []
    plan = plan_revoke(image, catalog, reason=reason, cascade=cascade, at=datetime.now(UTC))
    if dry_run:
        ctx.emit(plan, _revoke_text(plan))
        return
    result = apply_revoke(plan, clients)
    progress = ctx.progress()
    for warning in result.warnings:
        progress.warn(warning)
    ctx.emit(result, _revoke_text(result))


COMMANDS: list[click.Command] = [images_group, channel_group, revoke]
