"""How the CLI fails: secrets never in --debug logs, usage errors in one line, JSON on stdout."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import botocore.exceptions
import botocore.parsers
import click
import pytest

import factory.cli
from factory.aws import AwsClients, AwsTarget, aws_errors
from factory.cli.context import CURRENT, CliContext
from factory.errors import AwsError, ConfigError, FactoryError
from factory.redact import redact

# Temporary credentials shaped like STS's (an ASIA key id, a long token); nothing matches them
# by pattern alone except where they sit in SigV4 headers.
ACCESS_KEY_ID = "ASIAUNITTESTKEY00042"
SECRET_KEY = "UnitTestSecretKey0042abcdefghijklmnopqrst"
SESSION_TOKEN = "UnitTestSessionToken0042" + "Zq9" * 40


class _Reject(http.server.BaseHTTPRequestHandler):
    """An AWS endpoint that turns every request down at once (no retries, no waiting)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"__type":"UnrecognizedClientException","message":"The token is invalid."}'
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def rejecting_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Reject)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_factory(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_debug_logs_never_show_the_session_credentials(rejecting_endpoint: str) -> None:
    proc = run_factory(
        ["--debug", "images", "list"],
        {
            "AWS_ENDPOINT_URL": rejecting_endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_SESSION_TOKEN": SESSION_TOKEN,
        },
    )
    assert proc.returncode == 2, proc.stderr
    # the request went out and botocore logged it, headers and all
    assert "Sending http request" in proc.stderr
    assert "X-Amz-Security-Token': b'***'" in proc.stderr
    assert "Signature=***" in proc.stderr
    for secret in (SESSION_TOKEN, SESSION_TOKEN[:24], SECRET_KEY, ACCESS_KEY_ID):
        assert secret not in proc.stderr
        assert secret not in proc.stdout


def test_making_a_client_registers_the_session_secrets() -> None:
    import boto3

    token, secret = "tok-" + "q7" * 30, "sec-" + "w3" * 20
    session = boto3.Session(
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=secret,
        aws_session_token=token,
        region_name="us-east-1",
    )
    clients = AwsClients(AwsTarget("us-east-1"), session)
    assert token in redact(f"x {token} y"), "registered before any client exists"
    clients.client("ec2")
    assert redact(f"x {token} y {secret} z") == "x *** y *** z"


# botocore errors that used to come out as "internal error"


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (
            botocore.parsers.ResponseParserError("Unable to parse response (not well-formed)"),
            AwsError,
            ["ec2:DescribeImages", "not an AWS response", "check the region", "AWS_ENDPOINT_URL"],
        ),
        (
            botocore.exceptions.InvalidRegionError(region_name="xx foo"),
            ConfigError,
            ["ec2:DescribeImages", "'xx foo' is not a region name", "--region", "AWS_REGION"],
        ),
    ],
    ids=["response-parser", "invalid-region"],
)
def test_aws_errors_name_the_action_and_the_fix(
    exc: BaseException, kind: type[FactoryError], words: list[str]
) -> None:
    with pytest.raises(kind) as caught, aws_errors("ec2:DescribeImages"):
        _raise(exc)
    message = caught.value.message
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_a_client_for_a_malformed_region_is_a_config_error() -> None:
    clients = AwsClients(AwsTarget("not a region!"))
    with pytest.raises(ConfigError, match="'not a region!' is not a region name; check --region"):
        clients.client("ec2")


# Click's usage errors: one line, exit 2, pointing at the command's --help


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        factory.cli.main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["render"], "error: Missing argument 'FAMILY' (see `factory render --help`)"),
        (
            ["local", "up", "--port", "0"],
            "error: Invalid value for '--port': 0 is not in the range 1<=x<=65535 "
            "(see `factory local up --help`)",
        ),
        (
            ["-O", "yaml", "images", "list"],
            "error: Invalid value for '--output' / '-O': 'yaml' is not one of 'text', 'json' "
            "(see `factory --help`)",
        ),
        (["render", "--nope"], "error: No such option '--nope' (see `factory render --help`)"),
        (["no-such-command"], "error: No such command 'no-such-command' (see `factory --help`)"),
        (
            ["biuld"],
            "error: No such command 'biuld'. Did you mean 'build'? (see `factory --help`)",
        ),
    ],
    ids=["missing-argument", "int-range", "bad-choice", "unknown-option", "unknown", "typo"],
)
def test_usage_errors_are_one_line_exit_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(argv, capsys)
    assert code == 2
    assert err == expected + "\n"
    assert out == ""


def test_help_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["local", "up", "--help"], capsys)
    assert code == 0
    assert err == ""
    assert out.startswith("Usage: factory local up [OPTIONS]\n\n  Start the local cloud")


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["-O", "json", "verify"], "name at least one AMI id (or --instance INSTANCE_ID)", 2),
        (["verify", "--output=json"], "name at least one AMI id (or --instance INSTANCE_ID)", 2),
        (
            ["-Ojson", "render", "--nope"],
            "No such option '--nope' (see `factory render --help`)",
            2,
        ),
    ],
    ids=["global-option", "command-option", "usage-error"],
)
def test_json_output_gets_the_error_as_json_on_stdout(
    argv: list[str], message: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code, out, err = run_main(argv, capsys)
    assert exit_code == code
    assert json.loads(out) == {"error": message, "exit_code": code}
    assert err == f"error: {message}\n"  # stderr says it too, in one line


def test_text_output_keeps_stdout_empty_after_a_json_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_main(["-O", "json", "verify"], capsys)
    exit_code, out, _ = run_main(["verify"], capsys)  # same process: nothing carried over
    assert exit_code == 2 and out == ""


def test_no_error_object_after_a_result_was_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """A command that printed its (failed) result already: stdout stays one JSON document."""
    current = CliContext(None, None, None, "json", debug=False, quiet=True)
    current.emit({"ok": False})
    CURRENT.set(current)
    with pytest.raises(SystemExit) as exited:
        factory.cli._fail("error: 1 test failed", 1, [])
    out, err = capsys.readouterr()
    assert exited.value.code == 1
    assert json.loads(out) == {"ok": False}
    assert err == "error: 1 test failed\n"


def test_a_command_exit_code_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    @factory.cli.cli.command("exit-three", hidden=True)
    @click.pass_context
    def _exit_three(ctx: click.Context) -> None:
        ctx.exit(3)

    try:
        exit_code, _, _ = run_main(["exit-three"], capsys)
    finally:
        factory.cli.cli.commands.pop("exit-three", None)
    assert exit_code == 3
