"""CLI commands: `factory images list|tree`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import click

from factory import tags as T
from factory.catalog import (
    DescendantNode,
    ImageRecord,
    LineageNode,
    LineageTree,
    lineage,
    list_images,
    with_usage,
)
from factory.channels import check_channel
from factory.cli.context import CliContext, output_option, pass_cli
from factory.retire import ScanTarget, gather_in_use


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
        report = gather_in_use([ScanTarget(c) for c in regional], owner_account=clients.account_id)
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


COMMANDS: list[click.Command] = [images_group]
