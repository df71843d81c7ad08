"""Catalog, channels and provenance against the local cloud over HTTP, through the CLI.

Build and verify are simulated (tags + record_build/record_verification, as the build and
verify stages call them); signing uses the local cloud's KMS (ECDSA P-256, MessageType=DIGEST).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from imagekit import JUNIT_PASS, build_tags, facts_for, make_repo, register, register_base, tags_of

from factory import tags as T
from factory.aws import AwsClients, AwsTarget, tag_list
from factory.config import load_config
from factory.provenance import (
    KmsSigner,
    parse_s3_uri,
    record_build,
    record_verification,
    signer_from_config,
)

pytestmark = pytest.mark.integration


def factory(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory", *args],
        cwd=repo,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def factory_json(repo: Path, *args: str) -> Any:
    proc = factory(repo, *args, "--output", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@dataclass
class Flow:
    clients: AwsClients
    repo: Path
    base: str
    v1: str
    v2: str
    candidate: str
    signer: KmsSigner


def _build(
    clients: AwsClients,
    repo: Path,
    files: dict[str, list[Path]],
    signer: KmsSigner,
    family: str,
    version: str,
    source: str,
    *,
    verified: bool = True,
) -> str:
    status = T.Status.VERIFIED if verified else T.Status.CANDIDATE
    tags = build_tags(family, version, source, status=status, build_id=f"{family}-{version}-b")
    ami = register(clients, f"{family}-{version}", tags)
    record_build(clients, signer, ami, facts_for(repo, files, family, version, source, tags))
    if verified:
        junit = repo / f"junit-{ami}.xml"
        junit.write_bytes(JUNIT_PASS)
        clients.client("ec2").create_tags(
            Resources=[ami], Tags=tag_list({T.RESULT_DIGEST: "ab" * 32})
        )
        record_verification(clients, signer, ami, "ab" * 32, junit)
    return ami


@pytest.fixture(scope="module")
def flow(local_cloud: Any, tmp_path_factory: pytest.TempPathFactory) -> Flow:
    clients = AwsClients(AwsTarget("us-east-1", endpoint_url=local_cloud.endpoint_url))
    repo = tmp_path_factory.mktemp("repo")
    files = make_repo(repo)
    signer = signer_from_config(load_config(repo, environ={}), clients)
    assert isinstance(signer, KmsSigner)
    base = register_base(clients)
    v1 = _build(clients, repo, files, signer, "web", "1.0", base)
    v2 = _build(clients, repo, files, signer, "web", "2.0", base)
    candidate = _build(clients, repo, files, signer, "web", "3.0", base, verified=False)
    return Flow(clients, repo, base, v1, v2, candidate, signer)


def test_kms_signs_for_real_and_verify_passes_online_and_offline(flow: Flow) -> None:
    assert flow.signer.keyid.startswith("arn:aws:kms:us-east-1:")
    proc = factory(flow.repo, "provenance", "verify", flow.v1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFIED" in proc.stdout and flow.base in proc.stdout
    pub = flow.repo / "pub.pem"
    assert factory(flow.repo, "provenance", "public-key", "--out", str(pub)).returncode == 0
    report = factory_json(flow.repo, "provenance", "verify", flow.v1, "--public-key", str(pub))
    assert report["ok"] and report["chain"] == [flow.v1, flow.base]
    shown = factory_json(flow.repo, "provenance", "show", flow.v1)
    assert [s["stage"] for s in shown["steps"]] == ["build", "verification"]


def _verify_failures(flow: Flow, ami: str) -> tuple[int, dict[str, str], str]:
    proc = factory(flow.repo, "provenance", "verify", ami, "--output", "json")
    report = json.loads(proc.stdout)
    return (
        proc.returncode,
        {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]},
        proc.stderr,
    )


def test_tampered_tag_is_named(flow: Flow) -> None:
    ec2 = flow.clients.client("ec2")
    ec2.create_tags(Resources=[flow.v2], Tags=tag_list({T.GIT_COMMIT: "f" * 40}))
    try:
        code, failures, stderr = _verify_failures(flow, flow.v2)
        assert code == 1
        assert list(failures) == [f"tag {T.GIT_COMMIT}"]
        assert "the attestation says '0123456789abcdef" in failures[f"tag {T.GIT_COMMIT}"]
        assert stderr.startswith(f"error: provenance of {flow.v2} does not verify: tag")
    finally:
        ec2.create_tags(
            Resources=[flow.v2],
            Tags=tag_list({T.GIT_COMMIT: "0123456789abcdef0123456789abcdef01234567"}),
        )
    assert factory(flow.repo, "provenance", "verify", flow.v2).returncode == 0


def _object(flow: Flow, ami: str) -> tuple[str, str, bytes]:
    bucket, key = parse_s3_uri(tags_of(flow.clients, ami)[T.PROVENANCE_URI])
    body = flow.clients.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return bucket, key, body


def test_tampered_s3_object_and_signature_are_named(flow: Flow) -> None:
    s3 = flow.clients.client("s3")
    bucket, key, original = _object(flow, flow.v2)
    lines = original.decode().splitlines()
    try:
        # 1. the S3 object: a line appended by someone without the key
        forged = json.loads(lines[-1])
        s3.put_object(Bucket=bucket, Key=key, Body=original + (json.dumps(forged) + "\n").encode())
        code, failures, _ = _verify_failures(flow, flow.v2)
        assert code == 1 and f"tag {T.PROVENANCE_DIGEST}" in failures
        # 2. the signature: one byte of it changed
        doc = json.loads(lines[0])
        sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
        sig[-1] ^= 0x01
        doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
        s3.put_object(
            Bucket=bucket, Key=key, Body=("\n".join([json.dumps(doc), *lines[1:]]) + "\n").encode()
        )
        code, failures, _ = _verify_failures(flow, flow.v2)
        assert code == 1
        assert "does not verify" in failures["line 1 (build): signature"]
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=original)
    assert factory(flow.repo, "provenance", "verify", flow.v2).returncode == 0


def test_swapped_template_file_is_named(flow: Flow) -> None:
    template = flow.repo / "templates/web/image.pkr.hcl.j2"
    original = template.read_bytes()
    template.write_text("# rebuilt from something else\n")
    try:
        code, failures, _ = _verify_failures(flow, flow.v2)
        assert code == 1
        assert list(failures) == ["dependency templates/web/image.pkr.hcl.j2"]
        assert (
            "template file templates/web/image.pkr.hcl.j2 differs"
            in failures["dependency templates/web/image.pkr.hcl.j2"]
        )
    finally:
        template.write_bytes(original)


def test_channels_refuse_roll_back_and_show(flow: Flow) -> None:
    r = factory(flow.repo, "channel", "set", "web", "prod", flow.candidate)
    assert r.returncode == 2 and "is candidate, not verified" in r.stderr
    first = factory(flow.repo, "channel", "set", "web", "prod", flow.v1, "-r", "first")
    assert first.returncode == 0, first.stderr
    set2 = factory_json(flow.repo, "channel", "set", "web", "prod", flow.v2, "--reason", "second")
    assert set2["previous_ami"] == flow.v1 and set2["ami_id"] == flow.v2
    param = flow.clients.client("ssm").get_parameter(Name="/factory/web/prod")["Parameter"]
    assert param["Value"] == flow.v2 and param["DataType"] == "aws:ec2:image"
    listed = factory_json(flow.repo, "images", "list", "--channel", "prod")
    assert [i["ami_id"] for i in listed["images"]] == [flow.v2]
    back = factory_json(flow.repo, "channel", "rollback", "web", "prod", "--reason", "oops")
    assert back["ami_id"] == flow.v1 and back["action"] == "rollback"
    assert (
        flow.clients.client("ssm").get_parameter(Name="/factory/web/prod")["Parameter"]["Value"]
        == flow.v1
    )
    listed = factory_json(flow.repo, "images", "list", "--family", "web", "--in-use")
    in_use = {i["ami_id"]: i["in_use"] for i in listed["images"]}
    assert in_use[flow.v1] is True and in_use[flow.candidate] is False  # a channel is a use
    shown = factory(flow.repo, "channel", "show", "web")
    assert shown.returncode == 0 and "oops" in shown.stdout and "second" in shown.stdout


def test_revoke_cascade_then_everything_refuses_it(flow: Flow) -> None:
    files = make_repo(flow.repo, "app")
    child = _build(flow.clients, flow.repo, files, flow.signer, "app", "1.0", flow.v2)
    assert factory(flow.repo, "provenance", "verify", child).returncode == 0
    tree = factory_json(flow.repo, "images", "tree", flow.v2)
    assert [d["node"]["ami_id"] for d in tree["descendants"]] == [child]
    proc = factory(
        flow.repo, "revoke", flow.v2, "--reason", "CVE-2026-0001", "--cascade", "--output", "json"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {i["ami_id"] for i in result["images"]} == {flow.v2, child}
    images = flow.clients.client("ec2").describe_images(ImageIds=[flow.v2, child])["Images"]
    for image in images:
        tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert tags[T.STATUS] == "revoked" and tags[T.REVOKED_REASON] == "CVE-2026-0001"
    assert all(i["deprecation"].startswith("enabled at ") for i in result["images"])
    assert all(i.get("DeprecationTime") for i in images)
    r = factory(flow.repo, "channel", "set", "web", "prod", flow.v2)
    assert r.returncode == 2 and "revoked (CVE-2026-0001)" in r.stderr
    code, failures, _ = _verify_failures(flow, child)
    assert code == 1 and "tests: status" in failures
