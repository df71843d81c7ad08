"""The nightly pipeline: the lock in SSM, the plan, one family's failure, the report (moto)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from imagekit import register_base, register_factory_image

from factory import tags as T
from factory.aws import AwsClients, tag_list
from factory.build import BuildPlan, BuildResult, BuiltImage
from factory.channels import channel_state
from factory.cli import main
from factory.cli.pipeline import render_markdown, render_plan, render_text
from factory.config import FactoryConfig
from factory.errors import ExitCode, Interrupted
from factory.pipeline import (
    DEFAULT_LOCK_TTL,
    LOCK_PARAMETER,
    LOCKED_EXIT,
    AwsSteps,
    FamilyFacts,
    FamilyPlan,
    LockHeld,
    LockInfo,
    NightlyPlan,
    NightlyResult,
    acquire_lock,
    apply_nightly,
    discover_families,
    plan_nightly,
    read_lock,
    release_lock,
)
from factory.redact import register_secret
from factory.verify import Outcome, VerifyResult

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
CHANNELS = ("dev", "staging", "prod")


def _ssm_value(aws: AwsClients) -> dict[str, Any]:
    return dict(
        json.loads(aws.client("ssm").get_parameter(Name=LOCK_PARAMETER)["Parameter"]["Value"])
    )


def _lock_exists(aws: AwsClients) -> bool:
    return read_lock(aws) is not None


# ---- the lock ----------------------------------------------------------------------------


def test_lock_is_taken_with_who_and_until_when_and_released(aws: AwsClients) -> None:
    got = acquire_lock(aws, owner="ci@runner-1:42", run_id="run-a", ttl=600, now=NOW)
    assert got.taken_over is None
    value = _ssm_value(aws)
    assert value == {
        "owner": "ci@runner-1:42",
        "run_id": "run-a",
        "started": "2026-11-24T02:00:00+00:00",
        "expires": "2026-11-24T02:10:00+00:00",
    }
    assert release_lock(aws, got.lock)
    assert not _lock_exists(aws)


def test_a_held_lock_refuses_the_second_run_naming_the_holder(aws: AwsClients) -> None:
    acquire_lock(aws, owner="ci@runner-1:42", run_id="run-a", ttl=600, now=NOW)
    with pytest.raises(LockHeld) as refused:
        acquire_lock(
            aws, owner="ci@runner-2:7", run_id="run-b", ttl=600, now=NOW + timedelta(minutes=5)
        )
    assert "ci@runner-1:42" in refused.value.message
    assert "since 2026-11-24T02:00:00" in refused.value.message
    assert _ssm_value(aws)["run_id"] == "run-a"  # untouched


def test_an_expired_lock_is_taken_over_and_says_so(aws: AwsClients) -> None:
    acquire_lock(aws, owner="ci@dead:1", run_id="run-dead", ttl=600, now=NOW)
    later = NOW + timedelta(hours=1)
    got = acquire_lock(aws, owner="ci@runner-2:7", run_id="run-b", ttl=600, now=later)
    assert got.taken_over is not None and got.taken_over.run_id == "run-dead"
    assert _ssm_value(aws)["run_id"] == "run-b"


def test_an_unreadable_lock_is_taken_over(aws: AwsClients) -> None:
    aws.client("ssm").put_parameter(Name=LOCK_PARAMETER, Value="garbage", Type="String")
    got = acquire_lock(aws, owner="me@here:1", run_id="run-b", ttl=600, now=NOW)
    assert got.taken_over is not None and _ssm_value(aws)["run_id"] == "run-b"


def test_release_never_removes_someone_elses_lock(aws: AwsClients) -> None:
    mine = acquire_lock(aws, owner="me@a:1", run_id="run-a", ttl=60, now=NOW).lock
    acquire_lock(aws, owner="other@b:2", run_id="run-b", ttl=600, now=NOW + timedelta(hours=1))
    assert not release_lock(aws, mine)
    assert _ssm_value(aws)["run_id"] == "run-b"


# ---- a run -------------------------------------------------------------------------------


def _config(tmp_path: Path) -> FactoryConfig:
    return FactoryConfig(
        root=tmp_path,
        templates_dir=tmp_path / "templates",
        provisioners_dir=tmp_path / "provisioners",
        state_dir=tmp_path / ".factory",
        channels=CHANNELS,
    )


def _plan(
    families: Sequence[str],
    *,
    reuse: dict[str, str] | None = None,
    rebuild: bool = False,
    retire: bool = False,
) -> NightlyPlan:
    """What gather_nightly would find for families whose inputs are known (no templates)."""
    reuse = reuse or {}
    facts = [FamilyFacts(f, f"key-{f}", "ami-src", reuse.get(f), None) for f in families]
    return plan_nightly(
        facts, channel="dev", rebuild=rebuild, retire=retire, lock_ttl=DEFAULT_LOCK_TTL
    )


def _run(aws: AwsClients, steps: AwsSteps, families: Sequence[str], **kw: Any) -> NightlyResult:
    retire = kw.pop("retire", None)
    plan = _plan(families, retire=retire is not None, **kw)
    return apply_nightly(plan, aws, steps, owner="t@h:1", retire=retire)


def _build_plan(family: FamilyPlan) -> BuildPlan:
    return BuildPlan(
        family=family.family,
        build_id=f"{family.family}-new",
        version="20261124.020000",
        ami_name=f"{family.family}-new",
        region="us-east-1",
        source_ami="ami-src",
        source_name="debian-12-amd64-test",
        template_digest="0" * 64,
        provisioners=(),
        dedupe_key=f"key-{family.family}",
        image_tags={},
        run_tags={},
        build_dir=Path("/nonexistent"),
        packer_version="1.6.6",
        packer_init=False,
        git_commit=None,
        git_dirty=False,
        reuse_ami=family.ami_id if family.action == "reuse" else None,
        variables={},
    )


def _build_result(
    plan: BuildPlan, status: str, ami: str | None, build_id: str, errors: tuple[str, ...] = ()
) -> BuildResult:
    return BuildResult(
        family=plan.family,
        build_id=build_id,
        status=status,
        version=plan.version,
        name=build_id,
        images=(BuiltImage("us-east-1", ami, ()),) if ami else (),
        source_ami=plan.source_ami,
        dedupe_key=plan.dedupe_key,
        template_digest=plan.template_digest,
        packer_version=plan.packer_version,
        build_dir=None,
        log_file=None,
        manifest=None,
        seconds=0.0,
        errors=errors,
    )


@dataclass
class FakeSteps(AwsSteps):
    """Real channels, tags and chain in moto; builds register an image, verify tags it."""

    fail_build: set[str] = field(default_factory=set)
    fail_verify: set[str] = field(default_factory=set)
    interrupt: BaseException | None = None
    built: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)

    def plan_build(self, family: FamilyPlan) -> BuildPlan:
        return _build_plan(family)

    def build(self, plan: BuildPlan) -> BuildResult:
        family = plan.family
        if self.interrupt is not None:
            raise self.interrupt
        if family in self.fail_build:
            return _build_result(plan, "failed", None, f"{family}-x", ("Error: no_such_setting",))
        if plan.reuse_ami:
            return _build_result(plan, "reused", plan.reuse_ami, f"{family}-old")
        base = register_base(self.clients)
        ami = register_factory_image(
            self.clients, family, "20261124.020000", base, status=T.Status.CANDIDATE
        )
        self.built.append(family)
        return _build_result(plan, "built", ami, f"{family}-new")

    def verify_images(self, ami_ids: Sequence[str]) -> list[VerifyResult]:
        return [self._verify(ami_id) for ami_id in ami_ids]

    def _verify(self, ami_id: str) -> VerifyResult:
        self.verified.append(ami_id)
        family = self.clients.client("ec2").describe_images(ImageIds=[ami_id])["Images"][0]
        name = next(t["Value"] for t in family["Tags"] if t["Key"] == T.FAMILY)
        ok = name not in self.fail_verify
        status = T.Status.VERIFIED if ok else T.Status.FAILED
        self.clients.client("ec2").create_tags(
            Resources=[ami_id], Tags=tag_list({T.STATUS: status.value})
        )
        if ok:
            return VerifyResult(ami_id, "us-east-1", name, Outcome.VERIFIED, passed=39, total=39)
        return VerifyResult(
            ami_id,
            "us-east-1",
            name,
            Outcome.FAILED,
            passed=38,
            failed=1,
            total=39,
            failing_tests=("_common/tests/test_sshd.py::test_pw",),
        )


def _steps(aws: AwsClients, tmp_path: Path, **kw: Any) -> FakeSteps:
    from factory.output import Progress

    return FakeSteps(_config(tmp_path), aws, Progress(quiet=True), False, **kw)


def test_a_failed_family_does_not_stop_the_others(aws: AwsClients, tmp_path: Path) -> None:
    steps = _steps(aws, tmp_path, fail_build={"broken"}, fail_verify={"leaky"})
    result = _run(aws, steps, ["alpha", "broken", "leaky", "zeta"])
    by_family = {r.family: r for r in result.families}
    assert not result.ok and result.lock_released and not _lock_exists(aws)
    assert by_family["alpha"].ok and by_family["zeta"].ok
    assert steps.built == ["alpha", "leaky", "zeta"]
    assert not by_family["broken"].ok and "build failed" in (by_family["broken"].error or "")
    leaky = by_family["leaky"]
    assert not leaky.ok and leaky.verify == "failed" and leaky.tests_failed == 1
    assert channel_state(aws, "alpha", "dev").ami_id == by_family["alpha"].ami_id
    assert channel_state(aws, "zeta", "dev").ami_id == by_family["zeta"].ami_id
    assert channel_state(aws, "leaky", "dev").ami_id is None  # never published
    assert by_family["alpha"].channel_changed and by_family["alpha"].channel_previous is None


def test_a_reused_verified_image_is_not_verified_again_nor_moved(
    aws: AwsClients, tmp_path: Path
) -> None:
    ami = register_factory_image(aws, "base", "20261123.020000", register_base(aws))
    first = _steps(aws, tmp_path)
    _run(aws, first, ["base"], reuse={"base": ami})
    again = _steps(aws, tmp_path)
    result = _run(aws, again, ["base"], reuse={"base": ami})
    row = result.families[0]
    assert result.ok and row.build == "reused" and row.verify == "already-verified"
    assert not row.channel_changed and again.verified == []
    assert channel_state(aws, "base", "dev").version == 1


def test_a_held_lock_stops_the_run_before_anything_happens(aws: AwsClients, tmp_path: Path) -> None:
    acquire_lock(aws, owner="ci@other:9", run_id="run-x", ttl=600, now=datetime.now(UTC))
    steps = _steps(aws, tmp_path)
    with pytest.raises(LockHeld, match="ci@other:9"):
        _run(aws, steps, ["alpha"])
    assert steps.built == [] and _ssm_value(aws)["run_id"] == "run-x"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), RuntimeError("bug in retire")])
def test_the_lock_is_released_on_interrupt_and_error(
    aws: AwsClients, tmp_path: Path, interrupt: BaseException
) -> None:
    steps = _steps(aws, tmp_path)

    def retire() -> Any:
        raise interrupt

    if isinstance(interrupt, KeyboardInterrupt):
        steps.interrupt = interrupt
    with pytest.raises(type(interrupt)):
        _run(aws, steps, ["alpha"], retire=retire)
    assert not _lock_exists(aws)


def test_sigterm_takes_the_ctrl_c_path_and_releases_the_lock(
    aws: AwsClients, tmp_path: Path
) -> None:
    class Terminated(FakeSteps):
        def build(self, plan: BuildPlan) -> BuildResult:
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt")  # pragma: no cover

    steps = Terminated(_config(tmp_path), aws, _steps(aws, tmp_path).progress, False)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        _run(aws, steps, ["alpha"])
    assert stopped.value.exit_code == ExitCode.TERMINATED
    assert not _lock_exists(aws)
    assert signal.getsignal(signal.SIGTERM) is before


def test_retire_runs_after_the_families_and_is_summarised(aws: AwsClients, tmp_path: Path) -> None:
    from factory.retire import Outcome, RetirePlan, RetireResult

    def retire() -> RetireResult:
        assert _lock_exists(aws)  # still under the lock
        plan = RetirePlan(now=NOW, family=None, policies={}, decisions=())
        return RetireResult(
            plan,
            (
                Outcome("ami-old1", "us-east-1", "deprecate", "done"),
                Outcome("ami-old2", "us-east-1", "deregister", "done", "deregistered"),
                Outcome("ami-old3", "us-east-1", "deregister", "skipped", "in use"),
            ),
            api_calls=7,
        )

    result = _run(aws, _steps(aws, tmp_path), ["alpha"], retire=retire)
    assert result.ok and result.retire is not None
    assert result.retire.deprecated == ("ami-old1",)
    assert result.retire.deregistered == ("ami-old2",)
    assert result.retire.skipped == 1
    assert "1 deprecated, 1 deregistered" in render_text(result)


# ---- plan --------------------------------------------------------------------------------


def test_plan_says_what_would_be_built_reused_and_moved() -> None:
    plan = plan_nightly(
        [
            FamilyFacts("app", "k1", "ami-base", None, "ami-app0"),
            FamilyFacts("base", "k2", "ami-deb", "ami-base", "ami-base"),
            FamilyFacts("db", "k3", "ami-deb", "ami-db2", "ami-db1"),
            FamilyFacts("web", None, None, None, None, error="no verified base"),
        ],
        channel="dev",
        rebuild=False,
        retire=True,
        lock_ttl=600,
    )
    rows = {f.family: (f.action, f.channel_move) for f in plan.families}
    assert rows == {
        "app": ("build", "after-verify"),
        "base": ("reuse", "none"),
        "db": ("reuse", "set"),
        "web": ("error", "none"),
    }
    text = render_plan(plan)
    assert "no lock taken" in text and "web: no verified base" in text
    rebuilt = plan_nightly(
        [FamilyFacts("base", "k2", "ami-deb", None, "ami-base")],
        channel="dev",
        rebuild=True,
        retire=False,
        lock_ttl=600,
    )
    assert rebuilt.families[0].action == "rebuild"


def test_a_family_on_a_parent_built_tonight_builds_after_it() -> None:
    """Its inputs exist only once the parent is built: the plan says build, not the stale
    reuse or the 'no verified parent' its own facts found; other errors stay errors."""
    facts = [
        FamilyFacts("base", "k1", "ami-deb", None, None),
        FamilyFacts("app", "k2", "ami-base-old", "ami-app-old", "ami-app-old", parent="base"),
        FamilyFacts(
            "api", None, None, None, None, "no verified base", "base", parent_unverified=True
        ),
        FamilyFacts("web", None, None, None, None, "template error", parent="base"),
        FamilyFacts("db", "k3", "ami-deb", "ami-db1", "ami-db1", parent="other"),
    ]
    plan = plan_nightly(facts, channel="dev", rebuild=False, retire=False, lock_ttl=600)
    rows = {f.family: (f.action, f.ami_id, f.source_ami, f.channel_move) for f in plan.families}
    assert rows == {
        "base": ("build", None, "ami-deb", "after-verify"),
        "app": ("build", None, None, "after-verify"),
        "api": ("build", None, None, "after-verify"),
        "web": ("error", None, None, "none"),
        "db": ("reuse", "ami-db1", "ami-deb", "none"),
    }
    reused = plan_nightly(
        [FamilyFacts("base", "k1", "ami-deb", "ami-base", None), facts[1]],
        channel="dev",
        rebuild=False,
        retire=False,
        lock_ttl=600,
    )
    assert [f.action for f in reused.families] == ["reuse", "reuse"]  # nothing new tonight


def test_the_run_applies_the_plan_it_is_given(aws: AwsClients, tmp_path: Path) -> None:
    """Reuse and error come from the plan (no build); only planned builds build."""
    reused = register_factory_image(aws, "base", "20261123.020000", register_base(aws))
    facts = [
        FamilyFacts("base", "k1", "ami-deb", reused, None),
        FamilyFacts("broken", None, None, None, None, error="unknown variable 'x'"),
        FamilyFacts("zeta", "k3", "ami-deb", None, None),
    ]
    plan = plan_nightly(facts, channel="dev", rebuild=False, retire=False, lock_ttl=600)
    steps = _steps(aws, tmp_path)
    result = apply_nightly(plan, aws, steps, owner="t@h:1")
    rows = {r.family: r for r in result.families}
    assert [r.family for r in result.families] == ["base", "broken", "zeta"]
    assert rows["base"].build == "reused" and rows["base"].ami_id == reused
    assert rows["broken"].build is None and rows["broken"].error == "unknown variable 'x'"
    assert steps.built == ["zeta"]
    assert result.channel == plan.channel and not result.ok


def test_aws_steps_build_from_the_plans_inputs_or_gather_them_at_their_turn(
    aws: AwsClients, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import factory.pipeline.steps as pipeline_steps
    from factory.build import BuildInputs, NoVerifiedParent, ParentImage
    from factory.git import GitState
    from factory.output import Progress
    from factory.packer import PackerVersion
    from factory.render import RenderSettings, load_family, render, resolve_variables

    gathered: list[str] = []

    def gather(config: Any, clients: Any, family: str, given: Any) -> Any:
        gathered.append(family)
        raise NoVerifiedParent("no verified base image")

    monkeypatch.setattr(pipeline_steps, "gather_build", gather)
    steps = AwsSteps(_config(tmp_path), aws, Progress(quiet=True), False)
    templates = Path(__file__).resolve().parents[2] / "templates"
    family = load_family(templates, "base")
    variables = resolve_variables(family, {})
    inputs = BuildInputs(
        family=family,
        variables=variables,
        rendered=render(family, variables, RenderSettings(False, True, "us-east-1")),
        provisioners=(),
        provisioners_dir=tmp_path,
        parent=ParentImage("ami-deb", "debian-12-amd64-x", "136693071363"),
        packer_version=PackerVersion(1, 6, 6),
        git=GitState(None, False),
        region="us-east-1",
        endpoint=None,
        build_root=tmp_path,
        reusable_ami="ami-base",
    )
    [planned] = plan_nightly(
        [FamilyFacts("base", inputs.dedupe_key, "ami-deb", "ami-base", None, inputs=inputs)],
        channel="dev",
        rebuild=False,
        retire=False,
        lock_ttl=600,
    ).families
    build = steps.plan_build(planned)
    assert (build.reuse_ami, build.dedupe_key, build.source_ami) == (
        planned.ami_id,
        planned.dedupe_key,
        planned.source_ami,
    )
    assert gathered == []  # the plan's own inputs
    after_parent = FamilyPlan("app", "build", None, None, None, "dev", None, "after-verify")
    with pytest.raises(NoVerifiedParent):
        steps.plan_build(after_parent)
    assert gathered == ["app"]


def _family(templates: Path, name: str, parent: str | None = None) -> None:
    (templates / name).mkdir(parents=True)
    (templates / name / "image.pkr.hcl.j2").write_text("# test\n")
    source = f'parent = "{parent}"' if parent else 'owners = ["1"]\nname = "x-*"'
    (templates / name / "family.toml").write_text(f"[source]\n{source}\n")


def test_families_default_to_all_with_family_toml_parents_first(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    _family(templates, "app", parent="base")
    _family(templates, "base")
    _family(templates, "zz")
    (templates / "_common" / "tests").mkdir(parents=True)
    (templates / "notoml").mkdir()
    (templates / "notoml" / "image.pkr.hcl.j2").write_text("# test\n")
    assert discover_families(templates) == ("base", "zz", "app")
    assert discover_families(templates, ["app", "base"]) == ("base", "app")
    with pytest.raises(Exception, match="unknown family nope"):
        discover_families(templates, ["nope"])


# ---- report ------------------------------------------------------------------------------


def test_reports_carry_no_secrets(aws: AwsClients, tmp_path: Path) -> None:
    secret = "AKIAsecretvalue1234567890/abcdefgh"
    register_secret(secret)
    steps = _steps(aws, tmp_path, fail_build={"broken"})

    class Leaky(FakeSteps):
        def build(self, plan: BuildPlan) -> BuildResult:
            return _build_result(
                plan,
                "failed",
                None,
                "x",
                (f"aws_secret_access_key={secret}", f"password: {secret}"),
            )

    leaky = Leaky(steps.config, aws, steps.progress, False)
    result = _run(aws, leaky, ["broken"])
    markdown = render_markdown(result)
    text = render_text(result)
    assert "# Nightly pipeline" in markdown and "| broken |" in markdown
    for rendered in (markdown, text):
        assert secret not in rendered
        assert "broken" in rendered and "FAILED" in rendered


# ---- the command -------------------------------------------------------------------------


def _project(tmp_path: Path) -> Path:
    templates = tmp_path / "templates"
    _family(templates, "alpha")
    _family(templates, "broken")
    config = tmp_path / "factory.toml"
    config.write_text(f'[factory]\ntemplates_dir = "{templates}"\n')
    return config


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def _known_inputs(config: Any, clients: Any, family: str, channel: str) -> FamilyFacts:
    """gather_family for the test families (no real templates): inputs known, nothing reusable."""
    return FamilyFacts(family, "k", "ami-src", None, None)


def test_command_exit_codes_report_and_lock(
    aws: AwsClients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import factory.cli.pipeline as cli_pipeline
    import factory.pipeline.plan as pipeline_plan

    monkeypatch.setattr(
        cli_pipeline,
        "AwsSteps",
        lambda config, clients, progress: FakeSteps(
            config, clients, progress, False, fail_build={"broken"}
        ),
    )
    monkeypatch.setattr(pipeline_plan, "gather_family", _known_inputs)
    config = str(_project(tmp_path))
    report = tmp_path / "report.md"
    code, out, err = _main(
        ["--config", config, "pipeline", "run", "-O", "json", "--report", str(report)], capsys
    )
    assert code == 1, err
    doc = json.loads(out)
    assert [f["family"] for f in doc["families"]] == ["alpha", "broken"]
    assert doc["families"][0]["ok"] and not doc["families"][1]["ok"]
    assert doc["lock"]["parameter"] == LOCK_PARAMETER and doc["lock_released"]
    assert "broken" in err and "1 of 2 families failed" in err
    assert "| alpha |" in report.read_text()
    assert not _lock_exists(aws)

    code, out, _ = _main(["--config", config, "pipeline", "run", "alpha"], capsys)
    assert code == 0 and "alpha" in out and "released" in out

    holder = LockInfo(
        LOCK_PARAMETER, "ci@other:9", "run-x", datetime.now(UTC), NOW + timedelta(days=3650)
    )
    aws.client("ssm").put_parameter(Name=LOCK_PARAMETER, Value=holder.value(), Type="String")
    code, _, err = _main(["--config", config, "pipeline", "run"], capsys)
    assert code == LOCKED_EXIT == 3
    assert "ci@other:9" in err and "since" in err

    code, _, err = _main(["--config", config, "pipeline", "unlock"], capsys)
    assert code == 2 and "--force" in err and _lock_exists(aws)
    code, out, _ = _main(["--config", config, "pipeline", "unlock", "--force"], capsys)
    assert code == 0 and "ci@other:9" in out and not _lock_exists(aws)


def test_dry_run_takes_no_lock_and_changes_nothing(
    aws: AwsClients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import factory.pipeline.plan as pipeline_plan

    seen: list[str] = []

    def facts(config: Any, clients: Any, family: str, channel: str, **_: Any) -> FamilyFacts:
        seen.append(family)
        assert not _lock_exists(aws)
        return FamilyFacts(family, "k", "ami-src", None, None)

    monkeypatch.setattr(pipeline_plan, "gather_family", facts)
    config = str(_project(tmp_path))
    code, out, _ = _main(["--config", config, "pipeline", "run", "--dry-run", "-O", "json"], capsys)
    assert code == 0 and seen == ["alpha", "broken"]
    assert [f["action"] for f in json.loads(out)["families"]] == ["build", "build"]
    assert not _lock_exists(aws)
    code, _, err = _main(["--config", config, "pipeline", "run", "--channel", "nope"], capsys)
    assert code == 2 and "unknown channel" in err
