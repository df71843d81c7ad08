"""infra/factory-iam.json deployed to the local cloud: CloudFormation creates it, IAM holds it.

The committed template goes through CloudFormation (moto server over HTTP) as it would in an
account; the managed policies are then read back through IAM and compared with the documents
factory.iam generates, placeholders resolved the way CloudFormation resolves them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from factory import iam
from factory.localcloud import control

pytestmark = pytest.mark.integration

REGION = "us-east-1"
TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "factory-iam.json"


@pytest.fixture
def aws(local_cloud: control.LocalCloudStatus) -> dict[str, Any]:
    def client(service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=local_cloud.endpoint_url)

    return {
        "cloudformation": client("cloudformation"),
        "iam": client("iam"),
        "account": client("sts").get_caller_identity()["Account"],
    }


@pytest.fixture
def stack(aws: dict[str, Any]) -> Iterator[Any]:
    """Create a stack from the committed template with the given parameters; delete it after."""
    cfn = aws["cloudformation"]
    names: list[str] = []

    def create(**parameters: str) -> dict[str, str]:
        name = f"factory-iam-{uuid.uuid4().hex[:8]}"
        names.append(name)
        cfn.create_stack(
            StackName=name,
            TemplateBody=TEMPLATE.read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=["CAPABILITY_NAMED_IAM"],
        )
        cfn.get_waiter("stack_create_complete").wait(
            StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        described = cfn.describe_stacks(StackName=name)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
        return {"StackName": name, **outputs}

    yield create
    iam_client = aws["iam"]
    for name in names:
        # moto deletes a role before the policy attached to it (CloudFormation would not)
        for output in cfn.describe_stacks(StackName=name)["Stacks"][0].get("Outputs", []):
            if output["OutputKey"].endswith("RoleArn"):
                role_name = output["OutputValue"].rsplit("/", 1)[-1]
                attached = iam_client.list_attached_role_policies(RoleName=role_name)
                for policy in attached["AttachedPolicies"]:
                    iam_client.detach_role_policy(RoleName=role_name, PolicyArn=policy["PolicyArn"])
        cfn.delete_stack(StackName=name)


def _policy(iam_client: Any, arn: str) -> dict[str, Any]:
    version = iam_client.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    document = iam_client.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"][
        "Document"
    ]
    assert isinstance(document, dict)
    return document


def test_stack_creates_the_generated_policies(aws: dict[str, Any], stack: Any) -> None:
    outputs = stack()
    for role in iam.ROLES:
        arn = outputs[f"{role.logical_id}PolicyArn"]
        assert arn.endswith(f":policy/{outputs['StackName']}-{role.name}")
        expected = iam.resolve(
            iam.policy_document(role), partition="aws", account_id=aws["account"]
        )
        assert _policy(aws["iam"], arn) == expected
        assert f"{role.logical_id}RoleArn" not in outputs  # no principal, no roles


def test_roles_trust_the_principal_and_carry_their_policy(aws: dict[str, Any], stack: Any) -> None:
    principal = f"arn:aws:iam::{aws['account']}:root"
    outputs = stack(TrustedPrincipal=principal, ProvenanceBucket="acme-provenance")
    for role in iam.ROLES:
        role_name = outputs[f"{role.logical_id}RoleArn"].rsplit("/", 1)[-1]
        assert role_name == f"{outputs['StackName']}-{role.name}"
        found = aws["iam"].get_role(RoleName=role_name)["Role"]
        trust = found["AssumeRolePolicyDocument"]["Statement"]
        assert [s["Principal"] for s in trust] == [{"AWS": principal}]
        attached = aws["iam"].list_attached_role_policies(RoleName=role_name)
        arns = [p["PolicyArn"] for p in attached["AttachedPolicies"]]
        assert arns == [outputs[f"{role.logical_id}PolicyArn"]]
        expected = iam.resolve(
            iam.policy_document(role),
            partition="aws",
            account_id=aws["account"],
            bucket="acme-provenance",
        )
        assert _policy(aws["iam"], arns[0]) == expected
    builder = _policy(aws["iam"], outputs["BuilderPolicyArn"])
    scoped = {s["Sid"]: s["Resource"] for s in builder["Statement"]}
    assert scoped["ProvenanceObjects"] == ["arn:aws:s3:::acme-provenance/*"]
