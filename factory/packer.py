"""The Packer driver: argument lists, version gates, the machine-readable event stream, errors,
and the manifest the AMI ids are read from.

Everything here that does not run Packer is a pure function, tested without Packer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from factory.errors import ConfigError, PackerError
from factory.process import ProcessResult, child_env, run

PACKER = "packer"
PLUGINS_SINCE = (1, 7, 0)  # `packer init` and `required_plugins` exist from 1.7 on
COMMA = "%!(PACKER_COMMA)"
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
_EVENT = re.compile(r"^(\d+),([^,]*),([^,]*)(?:,(.*))?$")
_RENDERED_LINE = re.compile(r"(?:on |at )?(\S+\.pkr\.hcl)(?: line |:)(\d+)")
# Packer's own noise around the error text
_NOISE = re.compile(
    r"^(Some builds didn't complete successfully and had errors:|Builds finished but no "
    r"artifacts were created\.|Wait completed after .*|Build '.*' finished after .*|"
    r"A used variable must be set or have a default value; see|https?://\S+ for details\.|"
    r"\(source code not available\)|Error: \d+ error\(s\) occurred:)$"
)

# environment for every Packer run: no update check (no internet), no colour codes
PACKER_ENV = {"CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1"}


# ---- version -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackerVersion:
    major: int
    minor: int
    patch: int

    @property
    def text(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def tuple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    @property
    def plugins(self) -> bool:
        """Whether this Packer needs `required_plugins` and `packer init` for amazon-ebs."""
        return self.tuple >= PLUGINS_SINCE


def parse_version(output: str) -> PackerVersion:
    """`Packer v1.6.6` (or `1.11.2`, with an 'out of date' note after it) as a version."""
    for line in output.splitlines():
        match = _VERSION.search(line)
        if match:
            return PackerVersion(*(int(g) for g in match.groups()))
    raise ConfigError(
        f"cannot read Packer's version from {output.strip()[:80]!r}; reinstall packer"
    )


def detect_version(packer: str = PACKER) -> PackerVersion:
    result = run([packer, "version"], env=child_env(PACKER_ENV), timeout=60)
    if result.returncode != 0:
        raise ConfigError(f"`{packer} version` failed: {result.stderr.strip()[:200]}")
    return parse_version(result.stdout)


# ---- argument lists ------------------------------------------------------------------------


def init_argv(template: Path, packer: str = PACKER) -> list[str]:
    return [packer, "init", str(template)]


def build_argv(template: Path, var_file: Path, packer: str = PACKER) -> list[str]:
    # -machine-readable cannot be combined with -debug; -color is implied off
    return [packer, "build", "-machine-readable", f"-var-file={var_file}", str(template)]


def validate_argv(template: Path, var_file: Path | None = None, packer: str = PACKER) -> list[str]:
    argv = [packer, "validate"]
    if var_file is not None:
        argv.append(f"-var-file={var_file}")
    return [*argv, str(template)]


def fmt_check_argv(template: Path, packer: str = PACKER) -> list[str]:
    return [packer, "fmt", "-check", str(template)]


def packer_env(
    credentials: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The whole environment of a Packer run: credentials go here, never on the command line."""
    return child_env(
        {**PACKER_ENV, **credentials, **(extra or {})}, inherit=("PACKER_PLUGIN_PATH",)
    )


# ---- machine-readable events ---------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One `timestamp,target,type,data...` line of `packer -machine-readable`."""

    timestamp: int
    target: str
    type: str
    data: tuple[str, ...]

    @property
    def ui_text(self) -> str | None:
        """The text of a `ui` event (say, message, error), else None."""
        if self.type == "ui" and len(self.data) >= 2:
            return ",".join(self.data[1:])
        return None

    @property
    def ui_kind(self) -> str | None:
        return self.data[0] if self.type == "ui" and self.data else None


def _unescape(field: str) -> str:
    return field.replace(COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


def parse_line(line: str) -> Event | None:
    """One machine-readable line as an Event, or None if the line is not one."""
    match = _EVENT.match(line.rstrip("\r\n"))
    if match is None:
        return None
    timestamp, target, kind, rest = match.groups()
    data = tuple(_unescape(f) for f in rest.split(",")) if rest is not None else ()
    return Event(int(timestamp), target, kind, data)


class EventParser:
    """Turns Packer's stdout into events, joining lines that continue the previous event's data
    (a raw newline in a message; Packer usually writes `\\n`, but not every plugin does)."""

    def __init__(self) -> None:
        self._pending: Event | None = None

    def feed(self, line: str) -> list[Event]:
        event = parse_line(line)
        if event is None:
            if self._pending is not None and self._pending.data:
                data = (
                    *self._pending.data[:-1],
                    self._pending.data[-1] + "\n" + _unescape(line.rstrip("\r\n")),
                )
                self._pending = Event(
                    self._pending.timestamp, self._pending.target, self._pending.type, data
                )
            return []
        done, self._pending = self._pending, event
        return [done] if done is not None else []

    def close(self) -> list[Event]:
        done, self._pending = self._pending, None
        return [done] if done is not None else []


def parse_events(lines: Iterable[str]) -> list[Event]:
    parser = EventParser()
    events: list[Event] = []
    for line in lines:
        events.extend(parser.feed(line))
    events.extend(parser.close())
    return events


def progress_text(event: Event) -> str | None:
    """What a person should see for an event: Packer's `say`/`message` lines, tidied."""
    if event.ui_kind not in ("say", "message") or event.ui_text is None:
        return None
    text = event.ui_text.strip()
    text = re.sub(r"^==> ", "", text)
    return text or None


def error_lines(events: Sequence[Event], stderr: str = "", stdout: str = "") -> list[str]:
    """Packer's own error lines: `ui,error` events, else stderr/non-event lines; noise removed."""
    raw: list[str] = []
    for event in events:
        if event.ui_kind == "error" and event.ui_text:
            raw.extend(event.ui_text.splitlines())
    if not raw:
        raw.extend(stderr.splitlines())
        raw.extend(line for line in stdout.splitlines() if parse_line(line) is None)
    seen: set[str] = set()
    out: list[str] = []
    for line in raw:
        text = line.strip()
        text = re.sub(r"^(==>|-->)\s*", "", text)
        if not text or _NOISE.match(text) or text in seen:
            continue
        seen.add(text)
        out.append(text)
    return out


def map_error_lines(
    lines: Sequence[str], locate: Callable[[int], tuple[Path, int] | None]
) -> list[str]:
    """Point `on X.pkr.hcl line N` at the template file and line that produced it."""

    def _sub(match: re.Match[str]) -> str:
        where = locate(int(match.group(2)))
        if where is None:
            return match.group(0)
        return f"{match.group(0)} ({where[0]}:{where[1]})"

    return [_RENDERED_LINE.sub(_sub, line) for line in lines]


# ---- manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestImage:
    region: str
    ami_id: str
    build_name: str


def parse_manifest(text: str, run_uuid: str | None = None) -> tuple[ManifestImage, ...]:
    """AMIs of the manifest's last run (or `run_uuid`): `artifact_id` is `region:ami,region:ami`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PackerError(f"Packer's manifest is not JSON ({exc})") from None
    wanted = run_uuid or doc.get("last_run_uuid")
    images: list[ManifestImage] = []
    for build in doc.get("builds", []):
        if wanted and build.get("packer_run_uuid") != wanted:
            continue
        for part in str(build.get("artifact_id", "")).split(","):
            region, sep, ami = part.strip().partition(":")
            if sep and ami.startswith("ami-"):
                images.append(ManifestImage(region, ami, str(build.get("name", ""))))
    return tuple(images)


def read_manifest(path: Path) -> tuple[ManifestImage, ...]:
    if not path.is_file():
        return ()
    return parse_manifest(path.read_text())


# ---- running --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackerRun:
    returncode: int
    events: tuple[Event, ...]
    errors: tuple[str, ...]
    seconds: float


def run_packer(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_file: Path,
    on_event: Callable[[Event], None] | None = None,
    timeout: float | None = None,
) -> PackerRun:
    """Run a machine-readable Packer command, writing its raw output to `log_file` as it comes.

    Ctrl-C/SIGTERM reach Packer as SIGINT (factory.process), so it cleans up; `Interrupted`
    is raised once it has exited.
    """
    parser = EventParser()
    events: list[Event] = []
    with log_file.open("a", encoding="utf-8") as log:

        def _line(line: str) -> None:
            log.write(line + "\n")
            log.flush()
            for event in parser.feed(line):
                events.append(event)
                if on_event is not None:
                    on_event(event)

        result: ProcessResult = run(
            argv, env=env, cwd=cwd, timeout=timeout, on_stdout_line=_line, error_class=PackerError
        )
        for event in parser.close():
            events.append(event)
            if on_event is not None:
                on_event(event)
        if result.stderr:
            log.write(result.stderr)
    errors = error_lines(events, result.stderr) if result.returncode != 0 else []
    return PackerRun(result.returncode, tuple(events), tuple(errors), result.seconds)


def run_init(template: Path, *, env: Mapping[str, str], cwd: Path, packer: str = PACKER) -> None:
    """`packer init` (Packer 1.7 and later: installs the plugins `required_plugins` names)."""
    init = run(init_argv(template, packer), env=env, cwd=cwd, timeout=600)
    if init.returncode != 0:
        lines = (init.stderr or init.stdout).strip().splitlines()[-3:]
        raise PackerError(f"packer init failed: {' | '.join(lines)}")
