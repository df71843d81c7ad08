"""factory.iam: the committed template is the code's, every action is real, every call is declared."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from factory import iam
from factory.aws import api

REPO = Path(__file__).resolve().parents[2]
FACTORY = REPO / "factory"
TEMPLATE = REPO / "infra" / "factory-iam.json"

# IAM service prefix -> botocore service name (the same today; kept explicit on purpose).
SERVICES = {
    "autoscaling": "autoscaling",
    "ec2": "ec2",
    "ec2-instance-connect": "ec2-instance-connect",
    "iam": "iam",
    "kms": "kms",
    "s3": "s3",
    "ssm": "ssm",
    "sts": "sts",
}
# Client variables named after their service where the client is a parameter.
ALIASES = {"asg": "autoscaling", **{name: name for name in SERVICES}}
# Method calls whose name is also an AWS operation but whose receiver is no AWS client.
NOT_AWS = {
    ("cli/__init__.py", "list_commands"): "click.Group",
    ("provenance/signing.py", "sign"): "a cryptography private key / the Signer protocol",
    ("provenance/signing.py", "verify"): "a cryptography public key",
}

_BOTOCORE = botocore.session.get_session()
OPERATIONS = {
    prefix: set(_BOTOCORE.get_service_model(service).operation_names)
    for prefix, service in SERVICES.items()
}
SNAKE = {prefix: {xform_name(op): op for op in ops} for prefix, ops in OPERATIONS.items()}


def _modules() -> Iterator[Path]:
    for path in sorted(FACTORY.rglob("*.py")):
        if "localcloud" not in path.relative_to(FACTORY).parts:
            yield path


def _client_service(node: ast.expr, bound: dict[str, str]) -> str | None:
    """The service of a client expression: `x.client("ec2")`, or a name bound to one."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "client"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return str(node.args[0].value)
    name = (
        node.id
        if isinstance(node, ast.Name)
        else node.attr
        if isinstance(node, ast.Attribute)
        else None
    )
    if name is None:
        return None
    return bound.get(name) or ALIASES.get(name)


def _gateway_names(tree: ast.AST) -> set[str]:
    """Local names of the gateway modules a module imports (`from factory.aws import images`)."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "factory.aws"
        for alias in node.names
        if alias.name in iam.GATEWAYS
    }


def _bindings(tree: ast.AST) -> dict[str, str]:
    """Names (and self.attributes) assigned a client in a module: `ec2 = clients.client("ec2")`."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        pairs: list[tuple[ast.expr, ast.expr]] = []
        for target in node.targets:
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs.extend(zip(target.elts, node.value.elts, strict=False))
            else:
                pairs.append((target, node.value))
        for target, value in pairs:
            service = _client_service(value, {}) if isinstance(value, ast.Call) else None
            if service and isinstance(target, ast.Name | ast.Attribute):
                bound[target.id if isinstance(target, ast.Name) else target.attr] = service
    return bound


def api_calls(path: Path, tree: ast.AST | None = None) -> set[str]:
    """Every AWS API call a module (or one node of it) makes, as `prefix:Operation`."""
    tree = tree or ast.parse(path.read_text())
    bound = _bindings(ast.parse(path.read_text()))
    gateways = _gateway_names(ast.parse(path.read_text()))
    rel = path.relative_to(FACTORY).as_posix()
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        # call(client, "Operation", ...) and paginate(client, "Operation", ...)
        if (
            isinstance(func, ast.Name)
            and func.id in {"call", "paginate"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
        ):
            operation = str(node.args[1].value)
            service = _client_service(node.args[0], bound)
            found |= _qualify(operation, service, f"{rel}:{node.lineno}")
        elif isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name) and func.value.id in gateways:
                continue  # images.delete_snapshot(...): a gateway function, declared there
            service = _client_service(func.value, bound)
            method = func.attr
            if method == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                method = str(node.args[0].value)
            candidates = [p for p in SERVICES if method in SNAKE[p]]
            if not candidates or (rel, method) in NOT_AWS:
                continue
            if service is None and len(candidates) == 1:
                service = candidates[0]
            assert service is not None, f"{rel}:{node.lineno}: which service is .{method}()?"
            assert method in SNAKE[service], f"{rel}:{node.lineno}: {service} has no {method}"
            found.add(f"{service}:{SNAKE[service][method]}")
    return found


def _qualify(operation: str, service: str | None, where: str) -> set[str]:
    services = [service] if service else [p for p in SERVICES if operation in OPERATIONS[p]]
    assert services, f"{where}: no service the factory uses has {operation}"
    for prefix in services:
        assert operation in OPERATIONS[prefix], f"{where}: {prefix} has no {operation}"
    return {f"{prefix}:{operation}" for prefix in services}


def _gateway_functions(gateway: str) -> Iterator[tuple[str, ast.FunctionDef]]:
    path = FACTORY / "aws" / f"{gateway}.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            yield f"factory.aws.{gateway}.{node.name}", node


def _calls_in(gateway: str, name: str) -> set[str]:
    """The calls a gateway function makes, with those of the module's functions it calls."""
    path = FACTORY / "aws" / f"{gateway}.py"
    functions = dict(_gateway_functions(gateway))
    seen: set[str] = set()
    calls: set[str] = set()
    todo = [f"factory.aws.{gateway}.{name}"]
    while todo:
        qualified = todo.pop()
        if qualified in seen:
            continue
        seen.add(qualified)
        node = functions[qualified]
        calls |= api_calls(path, ast.Module(body=[node], type_ignores=[]))
        todo += [
            f"factory.aws.{gateway}.{n.func.id}"
            for n in ast.walk(node)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and f"factory.aws.{gateway}.{n.func.id}" in functions
        ]
    return {iam.iam_action(c) for c in calls}


def test_committed_template_is_generated() -> None:
    assert TEMPLATE.read_text() == iam.render(), "run `make infra` and commit the result"


def test_template_is_the_same_in_every_process() -> None:
    """Sets of actions must not leak hash order: a fresh interpreter renders the same bytes."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    fresh = subprocess.run(
        [sys.executable, "-m", "factory.iam"], capture_output=True, text=True, env=env, check=True
    )
    assert fresh.stdout == iam.render()
    assert json.loads(fresh.stdout)["Resources"]["BuilderPolicy"]["Type"] == (
        "AWS::IAM::ManagedPolicy"
    )


@pytest.mark.parametrize("role", iam.ROLES, ids=lambda r: r.name)
def test_every_action_exists(role: iam.JobRole) -> None:
    authorising = set(iam.AUTHORISED_BY.values())
    for action in iam.role_actions(role):
        prefix, _, name = action.partition(":")
        assert prefix in SERVICES and name[:1].isupper(), f"{action} is not service:Action"
        assert name in OPERATIONS[prefix] or action in authorising, f"{action}: no such operation"


@pytest.mark.parametrize("gateway", iam.GATEWAYS)
def test_gateway_functions_declare_their_calls(gateway: str) -> None:
    """Each gateway function's own calls are in its @requires (the policies come from these)."""
    seen = 0
    for qualified, node in _gateway_functions(gateway):
        calls = _calls_in(gateway, node.name)
        declared = {iam.iam_action(a) for a in api.declared(qualified)}
        assert calls <= declared, f"{qualified} calls {sorted(calls - declared)}: add @requires"
        assert not declared - calls - {"ec2:CreateTags", "kms:TagResource"}, (
            f"{qualified} declares {sorted(declared - calls)} it does not call"
        )
        seen += bool(calls)
    assert seen, f"the scan found no calls in factory/aws/{gateway}.py"


def test_every_gateway_use_names_a_gateway_function() -> None:
    for path in _modules():
        for qualified in iam.gateway_uses(path):
            module, _, name = qualified.rpartition(".")
            assert hasattr(sys.modules[module], name), f"{path.name}: {qualified} does not exist"


def test_every_declared_action_is_in_a_role() -> None:
    """A gateway function a stage uses is granted by some job's policy."""
    granted = {a for role in iam.ROLES for a in iam.role_actions(role)}
    for gateway in iam.GATEWAYS:
        for qualified, _node in _gateway_functions(gateway):
            missing = {iam.iam_action(a) for a in api.declared(qualified)} - granted
            used = any(qualified in iam.gateway_uses(p) for p in _modules())
            assert not (used and missing), f"{qualified} needs {sorted(missing)}: in no role"


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: p.relative_to(FACTORY).as_posix())
def test_no_call_outside_the_gateways(path: Path) -> None:
    """Outside factory/aws/ no module makes an AWS call: stages call gateways."""
    if path.parent.name == "aws":
        return  # the gateways declare per function (above); session.py's calls are the session's
    calls = api_calls(path)
    assert not calls, f"{path.relative_to(REPO)} calls {sorted(calls)}: use a gateway"


def test_the_scan_sees_calls() -> None:
    """The scan itself: the kinds of call the factory makes are all recognised."""
    assert "ec2:DescribeImages" in api_calls(FACTORY / "aws" / "images.py")  # call()
    assert "ssm:GetParametersByPath" in api_calls(FACTORY / "aws" / "parameters.py")  # paginate()
    assert "sts:AssumeRole" in api_calls(FACTORY / "aws" / "session.py")  # a client from a session
    uses = iam.gateway_uses(FACTORY / "channels.py") | iam.gateway_uses(FACTORY / "catalog.py")
    assert uses, "the scan sees no gateway use in catalog or channels"


def test_scopes_are_narrow_where_they_can_be() -> None:
    roles = {role.name: role for role in iam.ROLES}
    builder, deployer, retirer = roles["builder"], roles["deployer"], roles["retirer"]
    assert iam.role_actions(builder)["ssm:PutParameter"] == "ChannelParameters"
    assert iam.role_actions(builder)["s3:PutObject"] == "ProvenanceObjects"
    assert iam.role_actions(deployer)["ssm:GetParameter"] == "ChannelParameters"
    # the in-use scan looks for AMI ids in any parameter
    assert iam.role_actions(retirer)["ssm:GetParameters"] == "*"
    assert "ec2:DeregisterImage" not in iam.role_actions(deployer)
    assert "autoscaling:StartInstanceRefresh" not in iam.role_actions(builder)


def test_resolve_fills_placeholders() -> None:
    doc = iam.resolve(iam.policy_document(iam.ROLES[0]), partition="aws", account_id="111111111111")
    text = json.dumps(doc)
    assert "${" not in text
    assert "arn:aws:s3:::factory-provenance-111111111111-*/*" in text
    assert "arn:aws:ssm:*:111111111111:parameter/factory/*" in text


def test_cfn_lint_passes() -> None:
    cfn_lint = shutil.which("cfn-lint") or str(REPO / ".venv" / "bin" / "cfn-lint")
    if not Path(cfn_lint).exists():
        pytest.skip("cfn-lint is not installed")
    result = subprocess.run(
        [cfn_lint, "--", str(TEMPLATE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
