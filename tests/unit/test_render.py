"""Rendering: HCL quoting of hostile values, strict variables, family names, golden HCL."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli import cli
from factory.errors import ConfigError
from factory.render import (
    HclExpr,
    RenderSettings,
    hcl,
    hcl_string,
    list_families,
    load_family,
    load_var_file,
    parse_var_args,
    render,
    resolve_variables,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
FIXTURES = REPO / "tests" / "fixtures" / "templates"
GOLDEN = Path(__file__).resolve().parent / "golden"
PACKER = shutil.which("packer")

HOSTILE = [
    "plain",
    'quote " inside',
    "back\\slash\\",
    "${var.secret}",
    "%{ if true }x%{ endif }",
    "$${already}",
    "new\nline",
    "cr\rtab\t",
    '"} \n source "evil" {',
    "\x00\x1b[31mansi",
    "unicode ✓ ünï",
    "",
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", '"abc"'),
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("${x}", '"$${x}"'),
        ("%{x}", '"%%{x}"'),
        ("a\nb", '"a\\nb"'),
        ("\x01", '"\\u0001"'),
        ("$x {y}", '"$x {y}"'),
    ],
)
def test_hcl_string_escapes(value: str, expected: str) -> None:
    assert hcl_string(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (None, "null"),
        (3, "3"),
        (2.5, "2.5"),
        (["a", "b"], '["a", "b"]'),
        ((), "[]"),
        ({}, "{}"),
        ({"factory:family": "base", "n": 1}, '{ "factory:family" = "base", "n" = 1 }'),
    ],
)
def test_hcl_values(value: object, expected: str) -> None:
    assert hcl(value) == expected
    assert isinstance(hcl(value), HclExpr)


def test_hcl_refuses_what_hcl_cannot_hold() -> None:
    with pytest.raises(ConfigError):
        hcl(float("nan"))
    with pytest.raises(ConfigError):
        hcl(object())


@pytest.mark.skipif(PACKER is None, reason="needs packer")
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_round_trip_through_packer(value: str, tmp_path: Path) -> None:
    """Packer itself reads the quoted value back unchanged: nothing is interpolated or injected."""
    # a null byte cannot be an AWS tag but must still be quoted safely
    (tmp_path / "t.pkr.hcl").write_text(
        f"locals {{\n  v = {hcl(value)}\n}}\n\n"
        'source "null" "x" {\n  communicator = "none"\n}\n\n'
        'build {\n  sources = ["source.null.x"]\n\n  provisioner "shell-local" {\n'
        '    inline = ["printf %s \\"${base64encode(local.v)}\\" > out.b64"]\n  }\n}\n'
    )
    subprocess.run(
        [PACKER, "build", "t.pkr.hcl"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "CHECKPOINT_DISABLE": "1", "HOME": str(tmp_path)},
    )
    assert base64.b64decode((tmp_path / "out.b64").read_text()).decode() == value


def _settings(plugins: bool = False, endpoint: bool = True) -> RenderSettings:
    return RenderSettings(packer_plugins=plugins, endpoint=endpoint, region="us-east-1")


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_variable_values_stay_one_string(value: str) -> None:
    family = load_family(TEMPLATES, "base")
    rendered = render(family, resolve_variables(family, {"description": value}), _settings())
    line = next(ln for ln in rendered.hcl.splitlines() if ln.strip().startswith("ami_description"))
    assert line.strip() == f"ami_description = {hcl_string(value)}"
    # nothing else changed: the rest of the document is the default rendering
    default = render(family, resolve_variables(family, {}), _settings())
    assert len(rendered.hcl.splitlines()) == len(default.hcl.splitlines())


def test_map_and_list_variables_are_quoted() -> None:
    family = load_family(TEMPLATES, "base")
    values = resolve_variables(
        family,
        {"extra_tags": '{"team": "a\\"b", "${x}": "y"}', "extra_packages": "curl, jq"},
    )
    rendered = render(family, values, _settings())
    assert 'merge({ "team" = "a\\"b", "$${x}" = "y" }, var.image_tags)' in rendered.hcl
    assert '"FACTORY_EXTRA_PACKAGES=curl jq"' in rendered.hcl


def test_unquoted_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "image.pkr.hcl.j2").write_text('x = "{{ var.name }}"\n')
    (tmp_path / "evil" / "family.toml").write_text(
        '[variables.name]\ntype = "string"\ndefault = "a"\n'
    )
    family = load_family(tmp_path, "evil")
    with pytest.raises(ConfigError, match="without the hcl filter"):
        render(family, resolve_variables(family, {}), _settings())


def test_undefined_names_are_errors(tmp_path: Path) -> None:
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "image.pkr.hcl.j2").write_text("x = {{ var.nmae | hcl }}\n")
    family = load_family(tmp_path, "typo")
    with pytest.raises(ConfigError, match="nmae"):
        render(family, {}, _settings())


@pytest.mark.parametrize(
    "name",
    ["../etc", "base/../app", "/etc", ".", "..", "Base", "a b", "-x", "", "_common", "a" * 64],
)
def test_unsafe_family_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid family name"):
        load_family(TEMPLATES, name)


def test_missing_family_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown family 'nope'.*app, base"):
        load_family(TEMPLATES, "nope")
    assert list_families(TEMPLATES) == ["app", "base"]


def test_unknown_variable_is_an_error() -> None:
    family = load_family(TEMPLATES, "base")
    with pytest.raises(ConfigError, match="unknown variable 'instnce_type'"):
        resolve_variables(family, {"instnce_type": "t3.small"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("volume_size", "big"), ("volume_size", "nan"), ("extra_tags", "[1]"), ("extra_tags", "x")],
)
def test_mistyped_values_are_errors(name: str, value: str) -> None:
    family = load_family(TEMPLATES, "base")
    with pytest.raises(ConfigError, match=f"variable {name} must be"):
        resolve_variables(family, {name: value})


def test_typed_values() -> None:
    family = load_family(TEMPLATES, "base")
    values = resolve_variables(
        family, {"volume_size": "16", "extra_packages": '["curl"]', "extra_tags": '{"a": "b"}'}
    )
    assert values["volume_size"] == 16
    assert values["extra_packages"] == ("curl",)
    assert values["extra_tags"] == {"a": "b"}


@pytest.mark.parametrize("arg", ["novalue", "=x", "1abc=2", "a-b=1", " =1"])
def test_malformed_var_flags(arg: str) -> None:
    with pytest.raises(ConfigError, match="malformed --var"):
        parse_var_args([arg])


def test_var_flag_values_keep_equals_signs() -> None:
    assert parse_var_args(["a=b=c", "empty="]) == {"a": "b=c", "empty": ""}


def test_var_files(tmp_path: Path) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text('volume_size = 20\nextra_packages = ["curl"]\n')
    as_json = tmp_path / "v.json"
    as_json.write_text(json.dumps({"instance_type": "t3.large"}))
    family = load_family(TEMPLATES, "base")
    assert resolve_variables(family, load_var_file(toml))["volume_size"] == 20
    assert resolve_variables(family, load_var_file(as_json))["instance_type"] == "t3.large"
    (tmp_path / "bad.toml").write_text("= nope")
    with pytest.raises(ConfigError, match="not valid"):
        load_var_file(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="readable"):
        load_var_file(tmp_path / "missing.toml")
    (tmp_path / "binary.toml").write_bytes(b"\x81\xff\x00")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_var_file(tmp_path / "binary.toml")


def test_version_gate_adds_required_plugins_only_for_new_packer() -> None:
    family = load_family(TEMPLATES, "base")
    values = resolve_variables(family, {})
    old = render(family, values, _settings(plugins=False))
    new = render(family, values, _settings(plugins=True))
    assert "required_plugins" not in old.hcl
    assert 'source  = "github.com/hashicorp/amazon"' in new.hcl


def test_endpoint_is_omitted_on_aws() -> None:
    family = load_family(TEMPLATES, "base")
    values = resolve_variables(family, {})
    assert "custom_endpoint_ec2" in render(family, values, _settings(endpoint=True)).hcl
    assert "custom_endpoint_ec2" not in render(family, values, _settings(endpoint=False)).hcl


def test_source_filter_is_owner_pinned() -> None:
    base = load_family(TEMPLATES, "base")
    hcl_text = render(base, resolve_variables(base, {}), _settings()).hcl
    assert 'owners      = ["136693071363"]' in hcl_text
    assert 'name     = "debian-12-amd64-*"' in hcl_text
    app = load_family(TEMPLATES, "app")
    assert app.source.parent == "base"
    assert 'owners      = ["self"]' in render(app, resolve_variables(app, {}), _settings()).hcl


def test_rendered_lines_map_back_to_the_template() -> None:
    family = load_family(TEMPLATES, "base")
    rendered = render(family, resolve_variables(family, {}), _settings(plugins=True))
    lines = rendered.hcl.splitlines()
    source = (TEMPLATES / "base" / "image.pkr.hcl.j2").read_text().splitlines()
    for number, text in enumerate(lines, start=1):
        where = rendered.template_line(number)
        assert where is not None
        template, template_line = where
        assert template.name == "image.pkr.hcl.j2"
        if "{{" not in source[template_line - 1] and text.strip():
            assert source[template_line - 1] == text, (number, text)


GOLDEN_CASES = [
    ("base", "base-1.6.6.pkr.hcl", {}, False, True),
    ("base", "base-1.11.pkr.hcl", {}, True, False),
    ("app", "app-1.6.6.pkr.hcl", {}, False, True),
    (
        "base",
        "base-hostile.pkr.hcl",
        {"description": '"} evil ${x} %{y}\nz', "extra_tags": '{"a\\"": "${b}"}'},
        False,
        True,
    ),
]


@pytest.mark.parametrize(("family_name", "golden", "given", "plugins", "endpoint"), GOLDEN_CASES)
def test_golden_hcl(
    family_name: str,
    golden: str,
    given: dict[str, str],
    plugins: bool,
    endpoint: bool,
    request: pytest.FixtureRequest,
) -> None:
    family = load_family(TEMPLATES, family_name)
    rendered = render(family, resolve_variables(family, given), _settings(plugins, endpoint))
    check_golden(GOLDEN / golden, rendered.hcl, update=request.config.getoption("--update-golden"))


def check_golden(path: Path, text: str, *, update: bool) -> None:
    """`text` must equal the golden file; `--update-golden` (tests/conftest.py) rewrites it on
    purpose, and only then: a missing golden file fails."""
    if update:
        path.write_text(text)
    if not path.exists():
        pytest.fail(
            f"golden file {path.relative_to(REPO)} is missing: create it with "
            "`.venv/bin/python -m pytest tests/unit/test_render.py --update-golden`, "
            "then review and commit it",
            pytrace=False,
        )
    assert text == path.read_text(), f"{path.name} differs (--update-golden rewrites it)"


def test_a_missing_golden_file_fails_and_says_how_to_create_it(tmp_path: Path) -> None:
    missing = REPO / "tests" / "unit" / "golden" / f"missing-{tmp_path.name}.pkr.hcl"
    with pytest.raises(pytest.fail.Exception, match="--update-golden"):
        check_golden(missing, "text", update=False)
    assert not missing.exists()  # nothing written: the next run fails too


def test_update_golden_is_a_registered_option_that_rewrites(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert request.config.getoption("--update-golden") in (False, True)  # unknown: ValueError
    golden = tmp_path / "x.pkr.hcl"
    golden.write_text("old")
    with pytest.raises(AssertionError):
        check_golden(golden, "new", update=False)
    check_golden(golden, "new", update=True)
    assert golden.read_text() == "new"


@pytest.mark.skipif(PACKER is None, reason="needs packer")
@pytest.mark.parametrize("golden", [c[1] for c in GOLDEN_CASES])
def test_golden_files_are_packer_fmt_clean(golden: str) -> None:
    result = subprocess.run(
        [PACKER, "fmt", "-check", str(GOLDEN / golden)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(PACKER is None, reason="needs packer")
@pytest.mark.parametrize(
    "golden", ["base-1.6.6.pkr.hcl", "app-1.6.6.pkr.hcl", "base-hostile.pkr.hcl"]
)
def test_golden_files_parse_in_this_packer(golden: str) -> None:
    result = subprocess.run(
        [PACKER, "validate", "-syntax-only", str(GOLDEN / golden)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def fixtures_config(tmp_path: Path) -> Path:
    config = tmp_path / "factory.toml"
    config.write_text(f'[factory]\ntemplates_dir = "{FIXTURES}"\n')
    return config


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--packer-version", "abc"], "use X.Y.Z"),
        (["--packer-version", "1.6.6", "-o", "/nonexistent-dir/x.pkr.hcl"], "cannot write"),
    ],
)
def test_render_cli_bad_input_is_a_config_error(
    fixtures_config: Path, args: list[str], fragment: str
) -> None:
    result = CliRunner().invoke(cli, ["--config", str(fixtures_config), "render", "smoke", *args])
    assert isinstance(result.exception, ConfigError), result.exception
    assert fragment in result.exception.message
    assert not Path("/nonexistent-dir").exists()


def test_render_cli_writes_the_file(fixtures_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "smoke.pkr.hcl"
    args = ["render", "smoke", "--packer-version", "v1.6.6", "-o", str(out)]
    result = CliRunner().invoke(cli, ["--config", str(fixtures_config), *args])
    assert result.exit_code == 0, result.output
    assert 'source "amazon-ebs" "smoke"' in out.read_text()
