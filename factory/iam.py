"""The factory's own AWS permissions: one least-privilege policy per job, from the code.

Every gateway function (`factory/aws/`) declares the IAM actions of its calls (`@requires`).
A job (builder, deployer, promoter, retirer) is a list of stage modules; its actions are those of
every gateway function those modules use, found by reading their source. This module renders a
CloudFormation template with one managed policy per job and, when a trusted principal is given,
one role per job. `python -m factory.iam > infra/factory-iam.json` (`make infra`) regenerates
the committed file; a unit test keeps the two equal.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from factory.aws import api

FACTORY = Path(__file__).resolve().parent
GATEWAYS = ("images", "instances", "groups", "parameters", "objects", "keys")

# What Packer's Amazon builders need, as Packer's documentation lists it ("IAM Task or Instance
# Role"), minus iam:PassRole (no template sets iam_instance_profile). Some entries serve other
# builders or options only (chroot volumes, Windows passwords, ami_users); they stay until a
# real build's CloudTrail shows which ones amazon-ebs never calls here.
PACKER_PERMISSIONS = (
    "ec2:AttachVolume",
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:CopyImage",
    "ec2:CreateImage",
    "ec2:CreateKeyPair",
    "ec2:CreateSecurityGroup",
    "ec2:CreateSnapshot",
    "ec2:CreateTags",
    "ec2:CreateVolume",
    "ec2:DeleteKeyPair",
    "ec2:DeleteSecurityGroup",
    "ec2:DeleteSnapshot",
    "ec2:DeleteVolume",
    "ec2:DeregisterImage",
    "ec2:DescribeImageAttribute",
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceStatus",
    "ec2:DescribeRegions",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSnapshots",
    "ec2:DescribeSubnets",
    "ec2:DescribeTags",
    "ec2:DescribeVolumes",
    "ec2:DetachVolume",
    "ec2:GetPasswordData",
    "ec2:ModifyImageAttribute",
    "ec2:ModifyInstanceAttribute",
    "ec2:ModifySnapshotAttribute",
    "ec2:RegisterImage",
    "ec2:RunInstances",
    "ec2:StopInstances",
    "ec2:TerminateInstances",
)

# factory.aws: every client resolves its account id (needs no permission, listed for clarity).
SESSION_PERMISSIONS = ("sts:GetCallerIdentity",)
# factory.environments: an environment's clients act through its role_arn (AssumeRole).
ENVIRONMENT_PERMISSIONS = ("sts:AssumeRole",)

# API operations that IAM authorises under an action of another name.
AUTHORISED_BY = {"s3:HeadBucket": "s3:ListBucket", "s3:ListObjectsV2": "s3:ListBucket"}

ANY = "*"
_BUCKET = "${ProvenanceBucket}"  # resolved by a template condition (see _cfn_value)
_DEFAULT_BUCKET = "factory-provenance-${AWS::AccountId}-*"  # provenance.default_bucket()

# Where an action can be narrowed to the factory's own resources by ARN. Everything else is
# Resource "*" (README, "Permissions (infra/)": what is not scoped and why).
_PARAMETERS = "/factory"  # channels.PREFIX: channels, locks, run state
SCOPES: dict[str, tuple[str, ...]] = {
    "ChannelParameters": (
        f"arn:${{AWS::Partition}}:ssm:*:${{AWS::AccountId}}:parameter{_PARAMETERS}",
        f"arn:${{AWS::Partition}}:ssm:*:${{AWS::AccountId}}:parameter{_PARAMETERS}/*",
    ),
    "ProvenanceBucket": (f"arn:${{AWS::Partition}}:s3:::{_BUCKET}",),
    "ProvenanceObjects": (f"arn:${{AWS::Partition}}:s3:::{_BUCKET}/*",),
}
ACTION_SCOPES = {
    "ssm:GetParameter": "ChannelParameters",
    "ssm:GetParameterHistory": "ChannelParameters",
    "ssm:GetParameters": "ChannelParameters",
    "ssm:GetParametersByPath": "ChannelParameters",
    "ssm:PutParameter": "ChannelParameters",
    "ssm:DeleteParameter": "ChannelParameters",  # the nightly lock, /factory/locks/pipeline
    "s3:CreateBucket": "ProvenanceBucket",
    "s3:ListBucket": "ProvenanceBucket",
    "s3:PutBucketVersioning": "ProvenanceBucket",
    "s3:GetObject": "ProvenanceObjects",
    "s3:PutObject": "ProvenanceObjects",
}


@dataclass(frozen=True)
class Source:
    """Where a job's actions come from: a stage module or package under factory/ (its gateway
    calls), or a fixed list (Packer's, the session's)."""

    name: str
    fixed: tuple[str, ...] | None = None
    unscoped: bool = False  # its calls reach any resource (the in-use scan reads every parameter)

    @property
    def actions(self) -> tuple[str, ...]:
        return self.fixed if self.fixed is not None else stage_actions(self.name)


def stage_files(name: str) -> list[Path]:
    """factory/NAME.py, or every module of the package factory/NAME/ (dots name submodules)."""
    base = FACTORY.joinpath(*name.split("."))
    if base.is_dir():
        return sorted(base.rglob("*.py"))
    path = base.with_suffix(".py")
    if not path.exists():
        raise ValueError(f"no stage module or package factory/{name}")
    return [path]


def gateway_uses(path: Path) -> set[str]:
    """Every gateway function a module refers to, as `factory.aws.MODULE.FUNCTION`."""
    tree = ast.parse(path.read_text())
    modules: dict[str, str] = {}  # local name -> gateway module
    functions: dict[str, str] = {}  # local name -> gateway function
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "factory.aws":
            for alias in node.names:
                if alias.name in GATEWAYS:
                    modules[alias.asname or alias.name] = f"factory.aws.{alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module in _gateway_modules():
            for alias in node.names:
                functions[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in _gateway_modules() and alias.asname:
                    modules[alias.asname] = alias.name
    found: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.add(f"{modules[node.value.id]}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in functions:
            found.add(functions[node.id])
    return found


@cache
def _gateway_modules() -> frozenset[str]:
    names = frozenset(f"factory.aws.{g}" for g in GATEWAYS)
    for name in names:
        importlib.import_module(name)  # registers each function's @requires
    return names


@cache
def stage_actions(name: str) -> tuple[str, ...]:
    """The actions of every gateway function a stage's modules use."""
    _gateway_modules()
    actions: set[str] = set()
    for path in stage_files(name):
        for function in gateway_uses(path):
            actions |= set(api.declared(function))
    return tuple(sorted(actions))


@dataclass(frozen=True)
class JobRole:
    """One job the factory runs, and the declared actions it needs."""

    name: str
    description: str
    sources: tuple[Source, ...]

    @property
    def logical_id(self) -> str:
        return self.name.capitalize()


ROLES = (
    JobRole(
        "builder",
        "ami-factory builder: render, build (Packer), verify, publish to channels, "
        "revoke, sign and record provenance (the nightly rebuild job)",
        (
            Source("aws", SESSION_PERMISSIONS),
            Source("packer", PACKER_PERMISSIONS),
            Source("build"),
            # verify's modules that call gateways, but live (Instance Connect is the deployer's)
            Source("verify.plan"),
            Source("verify.fresh"),
            Source("verify.lifecycle"),
            Source("verify.hostkeys"),
            Source("catalog"),
            Source("channels"),
            Source("provenance"),
            Source("pipeline"),
        ),
    ),
    JobRole(
        "deployer",
        "ami-factory deployer: rollout, drift, fleet reconcile, rollback, live verification",
        (
            Source("aws", SESSION_PERMISSIONS),
            Source("rollout"),
            # rollout reads a channel's AMI with channels.channel_state (the parameter's history)
            Source("channels.channel_state", ("ssm:GetParameterHistory",)),
            Source("verify.live"),
            Source("verify.hostkeys"),  # the console's host keys, for live verification too
        ),
    ),
    JobRole(
        "promoter",
        "ami-factory promoter: share and copy verified images into other accounts and regions, "
        "tag the copies, publish them to channels, attest the promotion",
        (
            Source("aws", SESSION_PERMISSIONS),
            Source("environments", ENVIRONMENT_PERMISSIONS),
            Source("promote"),
            Source("catalog"),
            Source("channels"),
            Source("provenance"),
        ),
    ),
    JobRole(
        "retirer",
        "ami-factory retirer: find images in use, deprecate and deregister the rest",
        (
            Source("aws", SESSION_PERMISSIONS),
            # the environments' scan roles (factory.environments; the session assumes them)
            Source("environments", ("sts:AssumeRole",)),
            Source("retire"),
            Source("retire.inuse", unscoped=True),
        ),
    ),
)


def iam_action(action: str) -> str:
    """The IAM action that authorises a declared action (an API name, sometimes)."""
    return AUTHORISED_BY.get(action, action)


def role_actions(role: JobRole) -> dict[str, str]:
    """Every action the role needs -> the scope it is granted on ("*" or a SCOPES name)."""
    granted: dict[str, str] = {}
    for source in role.sources:
        for declared in source.actions:
            action = iam_action(declared)
            scope = ANY if source.unscoped else ACTION_SCOPES.get(action, ANY)
            if granted.get(action) != ANY:
                granted[action] = scope
    return granted


def policy_document(role: JobRole) -> dict[str, Any]:
    """The role's policy, resources still holding ${...} placeholders (see resolve())."""
    by_scope: dict[str, list[str]] = {}
    for action, scope in role_actions(role).items():
        by_scope.setdefault(scope, []).append(action)
    statements: list[dict[str, Any]] = []
    for scope in sorted(by_scope, key=lambda s: (s != ANY, s)):
        resources: str | list[str] = ANY if scope == ANY else list(SCOPES[scope])
        statements.append(
            {
                "Sid": "Anywhere" if scope == ANY else scope,
                "Effect": "Allow",
                "Action": sorted(by_scope[scope]),
                "Resource": resources,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def resolve(value: Any, *, partition: str, account_id: str, bucket: str = "") -> Any:
    """A document with the template's placeholders filled in, as IAM will store it."""
    if isinstance(value, dict):
        return {
            k: resolve(v, partition=partition, account_id=account_id, bucket=bucket)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            resolve(v, partition=partition, account_id=account_id, bucket=bucket) for v in value
        ]
    if isinstance(value, str):
        return (
            value.replace(_BUCKET, bucket or _DEFAULT_BUCKET)
            .replace("${AWS::Partition}", partition)
            .replace("${AWS::AccountId}", account_id)
        )
    return value


def _cfn_value(value: Any) -> Any:
    """Placeholders as CloudFormation intrinsics (Fn::Sub, Fn::If for the default bucket)."""
    if isinstance(value, dict):
        return {k: _cfn_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cfn_value(v) for v in value]
    if isinstance(value, str) and _BUCKET in value:
        return {
            "Fn::If": [
                "DefaultProvenanceBucket",
                {"Fn::Sub": value.replace(_BUCKET, _DEFAULT_BUCKET)},
                {"Fn::Sub": value},
            ]
        }
    if isinstance(value, str) and "${" in value:
        return {"Fn::Sub": value}
    return value


def template() -> dict[str, Any]:
    """The CloudFormation template: a managed policy per job, and roles if a principal is set."""
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for role in ROLES:
        policy_id = f"{role.logical_id}Policy"
        role_id = f"{role.logical_id}Role"
        resources[policy_id] = {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {
                "ManagedPolicyName": {"Fn::Sub": f"${{AWS::StackName}}-{role.name}"},
                "Description": role.description,
                "PolicyDocument": _cfn_value(policy_document(role)),
                # attached from the policy's side: the role exists only with a principal
                "Roles": {"Fn::If": ["CreateRoles", [{"Ref": role_id}], []]},
            },
        }
        resources[role_id] = {
            "Type": "AWS::IAM::Role",
            "Condition": "CreateRoles",
            "Properties": {
                "RoleName": {"Fn::Sub": f"${{AWS::StackName}}-{role.name}"},
                "Description": role.description,
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"AWS": {"Ref": "TrustedPrincipal"}},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
            },
        }
        outputs[f"{policy_id}Arn"] = {
            "Description": f"The {role.name} job's managed policy",
            "Value": {"Ref": policy_id},
        }
        outputs[f"{role_id}Arn"] = {
            "Condition": "CreateRoles",
            "Description": f"The {role.name} job's role (factory.toml role_arn)",
            "Value": {"Fn::GetAtt": [role_id, "Arn"]},
        }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            "ami-factory's own permissions: a least-privilege managed policy per job (builder, "
            "deployer, promoter, retirer), generated by `python -m factory.iam`; do not edit"
        ),
        "Parameters": {
            "ProvenanceBucket": {
                "Type": "String",
                "Default": "",
                "Description": (
                    "The provenance bucket ([provenance] bucket in factory.toml); empty: the "
                    "default factory-provenance-ACCOUNT-REGION"
                ),
            },
            "TrustedPrincipal": {
                "Type": "String",
                "Default": "",
                "Description": (
                    "An account id or IAM principal ARN allowed to assume the job roles; "
                    "empty: no roles, attach the managed policies yourself"
                ),
            },
        },
        "Conditions": {
            "DefaultProvenanceBucket": {"Fn::Equals": [{"Ref": "ProvenanceBucket"}, ""]},
            "CreateRoles": {"Fn::Not": [{"Fn::Equals": [{"Ref": "TrustedPrincipal"}, ""]}]},
        },
        "Resources": resources,
        "Outputs": outputs,
    }


def render() -> str:
    """The template as committed in infra/factory-iam.json."""
    return json.dumps(template(), indent=2) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
