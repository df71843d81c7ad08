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
        ('[factory]\nregon = "eu-west-1"\n', "unknown key 'regon'"),
        ("[factroy]\n", "unknown key 'factroy'"),
        ('[provenance]\nbukcet = "b"\n', "unknown key 'bukcet'"),
        ('[environments.prod]\nregion = "eu-west-1"\n', "unknown key 'region'"),
        ('[factory]\nregion = "eu west 1"\n', "'eu west 1' is not an AWS region"),
        ("[factory]\nregion = 5\n", "factory.region must be a string"),
        ('[factory]\nregions = ["us-east-1", "nowhere"]\n', "'nowhere' is not an AWS region"),
        ('[environments.prod]\nregions = ["mars"]\n', "'mars' is not an AWS region"),
        ("[environments.prod]\naccount = 12\n", "12-digit AWS account id"),
        ("[environments.prod]\nrole_arn = 5\n", "role_arn must be a string"),
        ("[provenance]\nbucket = 5\n", "bucket must be a string"),
        ("[factory]\nendpoint_url = 5\n", "endpoint_url must be a string"),
        ("[factory]\nchannels = []\n", "factory.channels is empty"),
        ('[factory]\nchannels = ["dev", "a/b"]\n', "'a/b' is not a channel name"),
        ("[retire]\nkeep = true\n", "non-negative integer"),
        ("[retire]\nmin_age_days = 1000000000\n", "at most 36500"),
        ("[retire.families]\napp = 5\n", "[app] must be a table"),
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


def test_bad_region_from_the_environment_or_a_flag_names_its_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AWS_REGION: 'bad region' is not an AWS region"):
        load_config(tmp_path, environ={"AWS_REGION": "bad region"})
    with pytest.raises(ConfigError, match="--region: 'nowhere-1' is not an AWS region"):
        load_config(tmp_path, environ={}, region="nowhere-1")
    assert load_config(tmp_path, environ={}, region="us-gov-west-1").region == "us-gov-west-1"


def test_environment_overrides_the_files_provenance_settings(tmp_path: Path) -> None:
    (tmp_path / "factory.toml").write_text(
        '[provenance]\nbucket = "file-bucket"\nkms_key = "alias/file"\nkey_file = "file.pem"\n'
    )
    from_file = load_config(tmp_path, environ={}).provenance
    assert (from_file.bucket, from_file.kms_key) == ("file-bucket", "alias/file")
    env = {
        "FACTORY_PROVENANCE_BUCKET": "env-bucket",
        "FACTORY_KMS_KEY": "alias/env",
        "FACTORY_SIGNING_KEY": "env.pem",
    }
    provenance = load_config(tmp_path, environ=env).provenance
    assert provenance.bucket == "env-bucket"
    assert provenance.kms_key == "alias/env"
    assert provenance.key_file == Path("env.pem")
