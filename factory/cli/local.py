"""`factory local up|down|status|env`: the embedded local cloud."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from factory.cli.context import CliContext, output_option, pass_cli
from factory.localcloud import baseimage, control

DEFAULT_STATE_DIR = ".factory/local"


def _state_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=lambda: os.environ.get("FACTORY_LOCAL_STATE_DIR", DEFAULT_STATE_DIR),
        show_default=DEFAULT_STATE_DIR,
        help="Where the local cloud keeps its pid file, log, images and instances.",
    )(fn)


@click.group("local")
def local() -> None:
    """The embedded local cloud: AWS on this machine (moto server + sandboxed instances)."""


@local.command("up")
@_state_dir_option
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port on 127.0.0.1 (default: a free one).",
)
@click.option("--no-instances", is_flag=True, help="Control plane only: no sandboxed instances.")
@click.option(
    "--image-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the base image is cached (default: STATE_DIR/images or FACTORY_LOCAL_IMAGE_CACHE).",
)
@output_option
@pass_cli
def up_cmd(
    cli: CliContext, state_dir: Path, port: int | None, no_instances: bool, image_cache: Path | None
) -> None:
    """Start the local cloud in the background (starting it twice is fine)."""
    progress = cli.progress()
    if not control.status(state_dir).running:
        progress.info(
            f"starting the local cloud{_first_start_note(state_dir, no_instances, image_cache)}"
        )
    st = control.up(state_dir, port=port, instances=not no_instances, image_cache=image_cache)
    word = "already running" if st.already_running else "running"
    cli.emit(
        st,
        f"local cloud {word} at {st.endpoint_url} (pid {st.pid}, log {st.log_file})\n"
        f'use it:  eval "$(factory local env --state-dir {shlex.quote(str(state_dir))})"',
    )


def _first_start_note(state_dir: Path, no_instances: bool, image_cache: Path | None) -> str:
    """The note for a start that will build the base image first (instances on, not cached)."""
    if no_instances:
        return ""
    cache = (image_cache or control.default_image_cache(state_dir)).resolve()
    if baseimage.is_cached(cache):
        return ""
    return " (the first start builds the base image)"


@local.command("down")
@_state_dir_option
@output_option
@pass_cli
def down_cmd(cli: CliContext, state_dir: Path) -> None:
    """Stop the local cloud and every instance, mount and address it started."""
    st = control.down(state_dir)
    cli.emit(st, "local cloud stopped")


@local.command("status")
@_state_dir_option
@output_option
@pass_cli
def status_cmd(cli: CliContext, state_dir: Path) -> None:
    """Say whether the local cloud runs, where, and what it runs."""
    st = control.status(state_dir)
    if not st.running:
        cli.emit(st, "local cloud: not running (start it with `factory local up`)")
        return
    lines = [f"local cloud: running at {st.endpoint_url} (pid {st.pid})", f"log: {st.log_file}"]
    runtime = (st.detail or {}).get("runtime")
    if isinstance(runtime, dict):
        lines += [f"{k}: {v}" for k, v in runtime.items()]
    cli.emit(st, "\n".join(lines))


@local.command("env")
@_state_dir_option
@output_option
@pass_cli
def env_cmd(cli: CliContext, state_dir: Path) -> None:
    """Print `export` lines for eval: eval "$(factory local env)"."""
    st = control.status(state_dir)
    variables = control.env_vars(st, cli.region or os.environ.get("AWS_REGION", "us-east-1"))
    cli.emit(variables, "\n".join(f"export {k}={shlex.quote(v)}" for k, v in variables.items()))


COMMANDS: list[click.Command] = [local]
