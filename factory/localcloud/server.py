"""The local cloud's process: `python -m factory.localcloud.server --state-dir D --port P`.

Runs moto's WSGI app (wrapped by `LocalCloudApp`) on 127.0.0.1 in this process, so the
runtime and the extensions act on moto's backends directly and synchronously (Packer calls
CreateImage then terminates at once: a polling loop would race the teardown). SIGTERM stops
every sandbox, unmounts, and exits.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from werkzeug.serving import make_server

from factory.localcloud.app import LocalCloudApp

log = logging.getLogger("factory.localcloud")

# Each extension module has `install(cloud: LocalCloud) -> None`.
EXTENSIONS = (
    "factory.localcloud.ext_images",
    "factory.localcloud.ext_refresh",
    "factory.localcloud.ext_kms",
    "factory.localcloud.ext_connect",
    "factory.localcloud.ext_copy",
)


class Runtime(Protocol):
    """The instance runtime (sandboxes); see factory.localcloud.runtime."""

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


@dataclass
class LocalCloud:
    """What extensions and the runtime are handed when they install themselves."""

    state_dir: Path
    image_cache: Path
    app: LocalCloudApp
    instances: bool = True
    runtime: Runtime | None = None
    on_shutdown: list[Any] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"ready": self.ready.is_set(), "instances": self.instances}
        if self.runtime is not None:
            status["runtime"] = self.runtime.status()
        return status


def build_cloud(state_dir: Path, image_cache: Path, *, instances: bool) -> LocalCloud:
    app = LocalCloudApp()
    cloud = LocalCloud(state_dir=state_dir, image_cache=image_cache, app=app, instances=instances)
    app.status = cloud.status
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.install(cloud)
    if instances:
        from factory.localcloud.runtime import install_runtime

        install_runtime(cloud)
    return cloud


def serve(state_dir: Path, image_cache: Path, port: int, *, instances: bool) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    cloud = build_cloud(state_dir, image_cache, instances=instances)
    server = make_server("127.0.0.1", port, cloud.app, threaded=True)
    actual_port = server.server_address[1]
    stopping = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log.info("signal %s: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    (state_dir / "server.json").write_text(
        json.dumps({"pid": os.getpid(), "port": actual_port, "instances": instances})
    )
    try:
        if cloud.runtime is not None:
            cloud.runtime.start()
        cloud.ready.set()
        log.info("local cloud ready on 127.0.0.1:%s", actual_port)
        server.serve_forever()
    finally:
        for hook in reversed(cloud.on_shutdown):
            try:
                hook()
            except Exception:
                log.exception("shutdown hook failed")
        if cloud.runtime is not None:
            cloud.runtime.shutdown()
        (state_dir / "server.json").unlink(missing_ok=True)
        log.info("local cloud stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="factory.localcloud.server")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--image-cache", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-instances", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return serve(
        args.state_dir.resolve(),
        args.image_cache.resolve(),
        args.port,
        instances=not args.no_instances,
    )


if __name__ == "__main__":
    sys.exit(main())
