from __future__ import annotations

from pathlib import Path

import pytest

from factory.config import RetentionPolicy, load_config
from factory.errors import ConfigError


def test_defaults_without_a_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, environ={})
    assert cfg.region == "us-east-1"
    assert cfg.templates_dir == tmp_path / "templates"
    assert cfg.channels == ("dev", "staging", "prod")
    assert cfg.build_dir == tmp_path / ".factory" / "builds"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    (tmp_path / "factory.toml").write_text(
        '[factory]\nregion = "eu-west-1"\nchannels = ["canary", "prod"]\n'
        "[retire]\nkeep = 5\n[retire.families.app]\nkeep = 2\n"
        '[environments.prod]\naccount = "222222222222"\nregions = ["eu-west-1", "us-east-1"]\n'
    )
    cfg = load_config(tmp_path, environ={})
    assert cfg.region == "eu-west-1"
    assert cfg.channels == ("canary", "prod")
    assert cfg.retention_for("base") == RetentionPolicy(keep=5)
    assert cfg.retention_for("app").keep == 2
    assert cfg.environments["prod"].account == "222222222222"
    assert load_config(tmp_path, environ={"AWS_REGION": "ap-south-1"}).region == "ap-south-1"
    flagged = load_config(tmp_path, environ={"AWS_REGION": "ap-south-1"}, region="us-west-2")
    assert flagged.region == "us-west-2"
    assert flagged.regions[0] == "us-west-2"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[factory\n", "not valid TOML"),
        ("[retire]\nkeep = -1\n", "non-negative"),
        ("[retire]\nkepe = 3\n", "unknown key 'kepe'"),
        ('[factory]\nchannels = "dev"\nregions = [1]\n', "list of strings"),
    ],
)
def test_bad_files_are_one_line_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "factory.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path, tmp_path / "nope.toml", environ={})
