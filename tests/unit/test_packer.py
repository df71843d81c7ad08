"""The Packer driver without Packer: versions, argv, machine-readable events, errors, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.errors import ConfigError, PackerError
from factory.packer import (
    Event,
    EventParser,
    build_argv,
    error_lines,
    map_error_lines,
    packer_env,
    parse_events,
    parse_line,
    parse_manifest,
    parse_version,
    progress_text,
    read_manifest,
    run_init,
    validate_argv,
)


@pytest.mark.parametrize(
    ("output", "version", "plugins"),
    [
        ("Packer v1.6.6\n", "1.6.6", False),
        ("Packer v1.7.0", "1.7.0", True),
        (
            "Packer v1.11.2\n\nYour version of Packer is out of date! The latest version\n"
            "is 1.12.0.",
            "1.11.2",
            True,
        ),
        ("1.10.3", "1.10.3", True),
        ("Packer v1.6.10", "1.6.10", False),
    ],
)
def test_versions_and_the_plugin_gate(output: str, version: str, plugins: bool) -> None:
    parsed = parse_version(output)
    assert parsed.text == version
    assert parsed.plugins is plugins


def test_unreadable_version_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="reinstall packer"):
        parse_version("command not found")


def test_argv_carries_no_credentials(tmp_path: Path) -> None:
    argv = build_argv(tmp_path / "image.pkr.hcl", tmp_path / "build.pkrvars.hcl")
    assert argv == [
        "packer",
        "build",
        "-machine-readable",
        f"-var-file={tmp_path}/build.pkrvars.hcl",
        f"{tmp_path}/image.pkr.hcl",
    ]
    assert validate_argv(tmp_path / "t.pkr.hcl")[:2] == ["packer", "validate"]
    env = packer_env({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value"
    assert env["CHECKPOINT_DISABLE"] == "1"
    assert not any("s3cr3t" in a for a in argv)


def test_commas_are_unescaped() -> None:
    event = parse_line(
        "1795539288,,ui,say,==> amazon-ebs.x: No volumes to clean up%!(PACKER_COMMA) skipping"
    )
    assert event == Event(
        1795539288, "", "ui", ("say", "==> amazon-ebs.x: No volumes to clean up, skipping")
    )
    assert progress_text(event) == "amazon-ebs.x: No volumes to clean up, skipping"


def test_data_fields_split_on_real_commas() -> None:
    event = parse_line(
        "1795539288,amazon-ebs.x,artifact,0,id,us-east-1:ami-1%!(PACKER_COMMA)us-west-2:ami-2"
    )
    assert event is not None
    assert event.target == "amazon-ebs.x"
    assert event.type == "artifact"
    assert event.data == ("0", "id", "us-east-1:ami-1,us-west-2:ami-2")


def test_escaped_newlines_become_lines() -> None:
    event = parse_line("1,amazon-ebs.x,artifact,0,string,AMIs were created:\\nus-east-1: ami-1\\n")
    assert event is not None and event.data[-1] == "AMIs were created:\nus-east-1: ami-1\n"


def test_lines_without_a_timestamp_continue_the_previous_event() -> None:
    events = parse_events(
        [
            "1,,ui,message,    amazon-ebs.x: first",
            "second line, with a comma",
            "third",
            "2,,ui,say,next",
        ]
    )
    assert [e.ui_text for e in events] == [
        "    amazon-ebs.x: first\nsecond line, with a comma\nthird",
        "next",
    ]


def test_parser_streams_with_one_event_delay() -> None:
    parser = EventParser()
    assert parser.feed("1,,ui,say,a") == []
    out = parser.feed("2,,ui,say,b")
    assert [e.ui_text for e in out] == ["a"]
    assert [e.ui_text for e in parser.close()] == ["b"]
    assert parser.close() == []
    assert parser.feed("garbage before any event") == []


def test_events_without_data_and_non_ui_events() -> None:
    event = parse_line("3,amazon-ebs.x,artifact-count,2")
    assert event is not None and event.ui_text is None and event.data == ("2",)
    assert parse_line("no timestamp here") is None
    assert progress_text(Event(1, "", "ui", ("error", "boom"))) is None


REAL_FAILURE = """\
1795539288,,ui,say,==> amazon-ebs.smoke: Prevalidating any provided VPC information
1795539288,,ui,error,==> amazon-ebs.smoke: Error creating AMI: UnauthorizedOperation: injected fault\\n\tstatus code: 403%!(PACKER_COMMA) request id:
1795539288,,ui,say,==> amazon-ebs.smoke: Terminating the source AWS instance...
1795539288,,ui,error,Build 'amazon-ebs.smoke' errored after 512 milliseconds: Error creating AMI: UnauthorizedOperation: injected fault
1795539288,,ui,say,\\n==> Wait completed after 512 milliseconds
1795539288,,ui,error,\\n==> Some builds didn't complete successfully and had errors:
1795539288,,ui,error,--> amazon-ebs.smoke: Error creating AMI: UnauthorizedOperation: injected fault
1795539288,,ui,say,\\n==> Builds finished but no artifacts were created.
"""


def test_error_lines_are_packers_own_without_noise() -> None:
    lines = error_lines(parse_events(REAL_FAILURE.splitlines()))
    assert lines == [
        "amazon-ebs.smoke: Error creating AMI: UnauthorizedOperation: injected fault",
        "status code: 403, request id:",
        "Build 'amazon-ebs.smoke' errored after 512 milliseconds: Error creating AMI: "
        "UnauthorizedOperation: injected fault",
    ]


def test_error_lines_fall_back_to_stderr_and_plain_stdout() -> None:
    stdout = (
        "Error: Unsupported argument\n\n  on image.pkr.hcl line 42:\n"
        "  (source code not available)\n"
    )
    lines = error_lines((), "", stdout)
    assert lines == ["Error: Unsupported argument", "on image.pkr.hcl line 42:"]
    assert error_lines((), "Failed to parse template: x\n") == ["Failed to parse template: x"]


def test_error_lines_point_at_the_template() -> None:
    template = Path("templates/base/image.pkr.hcl.j2")
    mapped = map_error_lines(
        ["on image.pkr.hcl line 42:", "nothing to map"], lambda n: (template, n + 10)
    )
    assert mapped == [f"on image.pkr.hcl line 42 ({template}:52):", "nothing to map"]


MANIFEST = {
    "builds": [
        {
            "name": "base",
            "builder_type": "amazon-ebs",
            "artifact_id": "us-east-1:ami-old",
            "packer_run_uuid": "run-1",
        },
        {
            "name": "base",
            "builder_type": "amazon-ebs",
            "artifact_id": "us-east-1:ami-0abc,eu-west-1:ami-0def",
            "packer_run_uuid": "run-2",
        },
    ],
    "last_run_uuid": "run-2",
}


def test_manifest_gives_the_last_runs_amis(tmp_path: Path) -> None:
    images = parse_manifest(json.dumps(MANIFEST))
    assert [(i.region, i.ami_id) for i in images] == [
        ("us-east-1", "ami-0abc"),
        ("eu-west-1", "ami-0def"),
    ]
    assert [i.ami_id for i in parse_manifest(json.dumps(MANIFEST), "run-1")] == ["ami-old"]
    path = tmp_path / "manifest.json"
    assert read_manifest(path) == ()
    path.write_text(json.dumps(MANIFEST))
    assert len(read_manifest(path)) == 2


def test_broken_manifest_is_a_packer_error() -> None:
    with pytest.raises(PackerError, match="not JSON"):
        parse_manifest("{")


def test_packer_init_failure_names_packers_last_lines(tmp_path: Path) -> None:
    """`packer init` (Packer 1.7+) is run through the one subprocess helper; a stand-in binary."""
    fake = tmp_path / "packer"
    fake.write_text(
        '#!/bin/sh\n[ "$1" = init ] || exit 9\n'
        'echo one >&2\necho two >&2\necho three >&2\necho "plugin not found" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    template = tmp_path / "image.pkr.hcl"
    with pytest.raises(PackerError, match=r"packer init failed: two \| three \| plugin not found"):
        run_init(template, env=packer_env({}), cwd=tmp_path, packer=str(fake))
    fake.write_text('#!/bin/sh\n[ "$1" = init ] && exit 0\nexit 9\n')
    run_init(template, env=packer_env({}), cwd=tmp_path, packer=str(fake))  # no error
