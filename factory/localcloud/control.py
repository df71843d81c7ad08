"""`factory local up|down|status|env`: start, stop and describe the local cloud process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from factory.errors import ConfigError, FactoryError
from factory.localcloud import ACCESS_KEY_ID, DEFAULT_REGION, SECRET_ACCESS_KEY

PID_FILE = "server.pid"
LOG_FILE = "server.log"
INFO_FILE = "server.json"
READY_TIMEOUT = 600.0  # the first start may debootstrap the base image


@dataclass(frozen=True)
class LocalCloudStatus:
    running: bool
    state_dir: Path
    pid: int | None = None
    port: int | None = None
    endpoint_url: str | None = None
    log_file: Path | None = None
    instances: bool | None = None
    detail: dict[str, object] | None = None
    already_running: bool = False


def default_image_cache(state_dir: Path) -> Path:
    return Path(os.environ.get("FACTORY_LOCAL_IMAGE_CACHE") or state_dir / "images")


def env_vars(status: LocalCloudStatus, region: str = DEFAULT_REGION) -> dict[str, str]:
    """The variables that point boto3, the AWS CLI and the factory at the local cloud."""
    if not status.running or status.endpoint_url is None:
        raise ConfigError("the local cloud is not running; start it with `factory local up`")
    return {
        "AWS_ENDPOINT_URL": status.endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _health(port: int, timeout: float = 2.0) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/_localcloud/health", timeout=timeout
        ) as resp:
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def status(state_dir: Path) -> LocalCloudStatus:
    pid_path = state_dir / PID_FILE
    info_path = state_dir / INFO_FILE
    if not pid_path.exists():
        return LocalCloudStatus(running=False, state_dir=state_dir)
    try:
        pid = int(pid_path.read_text().strip())
    except ValueError:
        return LocalCloudStatus(running=False, state_dir=state_dir)
    if not _alive(pid):
        return LocalCloudStatus(running=False, state_dir=state_dir, pid=pid)
    port = None
    instances = None
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text())
            port, instances = int(info["port"]), bool(info.get("instances", True))
        except (ValueError, KeyError):
            pass
    detail = _health(port) if port else None
    return LocalCloudStatus(
        running=detail is not None and bool(detail.get("ready")),
        state_dir=state_dir,
        pid=pid,
        port=port,
        endpoint_url=f"http://127.0.0.1:{port}" if port else None,
        log_file=state_dir / LOG_FILE,
        instances=instances,
        detail=detail,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def up(
    state_dir: Path,
    *,
    port: int | None = None,
    instances: bool = True,
    image_cache: Path | None = None,
    timeout: float = READY_TIMEOUT,
) -> LocalCloudStatus:
    """Start the local cloud in the background and wait until it answers (idempotent)."""
    state_dir = state_dir.resolve()
    current = status(state_dir)
    if current.running:
        return LocalCloudStatus(**{**current.__dict__, "already_running": True})
    if current.pid is not None and _alive(current.pid):
        # started but not ready yet (another `up` is waiting for it): wait with it
        return _wait_ready(state_dir, current.pid, None, timeout)
    if instances and os.geteuid() != 0:
        raise ConfigError(
            "the local cloud's instances need root (namespaces, mounts); run as root, "
            "or start only the control plane with `factory local up --no-instances`"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    # a previous run that crashed may have left sandboxes behind
    if instances:
        from factory.localcloud.runtime import sweep

        sweep(state_dir)
    port = port or _free_port()
    cache = (image_cache or default_image_cache(state_dir)).resolve()
    argv = [
        sys.executable,
        "-m",
        "factory.localcloud.server",
        "--state-dir",
        str(state_dir),
        "--image-cache",
        str(cache),
        "--port",
        str(port),
    ]
    if not instances:
        argv.append("--no-instances")
    log_path = state_dir / LOG_FILE
    (state_dir / INFO_FILE).unlink(missing_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
        )
    (state_dir / PID_FILE).write_text(f"{proc.pid}\n")
    return _wait_ready(state_dir, proc.pid, proc, timeout)


def _wait_ready(
    state_dir: Path, pid: int, proc: subprocess.Popen[bytes] | None, timeout: float
) -> LocalCloudStatus:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        current = status(state_dir)
        if current.running:
            return current
        exited = proc.poll() is not None if proc is not None else not _alive(pid)
        if exited:
            tail = _log_tail(state_dir / LOG_FILE)
            (state_dir / PID_FILE).unlink(missing_ok=True)
            raise FactoryError(
                f"the local cloud failed to start: {tail} (log: {state_dir / LOG_FILE})"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)  # health is cheap: notice readiness fast
    down(state_dir)
    raise FactoryError(
        f"the local cloud did not answer within {timeout:.0f}s; see {state_dir / LOG_FILE}"
    )


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "no log"
    return " | ".join(line.strip() for line in tail)


def down(state_dir: Path, timeout: float = 60.0) -> LocalCloudStatus:
    """Stop the local cloud and everything it started; sweep what a crash left behind."""
    state_dir = state_dir.resolve()
    current = status(state_dir)
    if current.pid is not None and _alive(current.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(current.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(current.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(current.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(current.pid, signal.SIGKILL)
            time.sleep(0.2)
    try:
        from factory.localcloud.runtime import sweep
    except ModuleNotFoundError:
        pass
    else:
        sweep(state_dir)
    (state_dir / PID_FILE).unlink(missing_ok=True)
    (state_dir / INFO_FILE).unlink(missing_ok=True)
    return LocalCloudStatus(running=False, state_dir=state_dir, pid=current.pid)
