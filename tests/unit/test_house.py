"""The house rules, checked on the source: sizes, where AWS is called, where the local cloud is.

README "Development" describes the layout these protect: gateways at the bottom (factory/aws/),
stages above them, the CLI on top, the local cloud off to the side.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

FACTORY = Path(__file__).resolve().parents[2] / "factory"
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80


def _modules(*, localcloud: bool = True) -> Iterator[Path]:
    for path in sorted(FACTORY.rglob("*.py")):
        if localcloud or "localcloud" not in path.relative_to(FACTORY).parts:
            yield path


def _rel(path: Path) -> str:
    return path.relative_to(FACTORY).as_posix()


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


@pytest.mark.parametrize("path", list(_modules()), ids=_rel)
def test_module_and_function_sizes(path: Path) -> None:
    source = path.read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{_rel(path)} has {lines} lines: split it by its seams"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_FUNCTION_LINES, f"{_rel(path)}:{node.lineno} {node.name}: {size}"


def test_describe_images_lives_in_one_gateway() -> None:
    """The issue's own check: DescribeImages is called from factory/aws/images.py only."""
    callers = set()
    for path in _modules(localcloud=False):
        for node in ast.walk(ast.parse(path.read_text())):
            named = (isinstance(node, ast.Constant) and node.value == "DescribeImages") or (
                isinstance(node, ast.Attribute) and node.attr == "describe_images"
            )
            if named:
                callers.add(_rel(path))
    assert callers == {"aws/images.py"}


@pytest.mark.parametrize("path", list(_modules(localcloud=False)), ids=_rel)
def test_only_gateways_make_clients(path: Path) -> None:
    """Stages call gateways; a boto3 client appears only under factory/aws/."""
    if path.parent.name == "aws":
        return
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "client":
            parent_is_call = any(isinstance(n, ast.Call) and n.func is node for n in ast.walk(tree))
            assert not parent_is_call, f"{_rel(path)}:{node.lineno} makes a client: use a gateway"
    imported = _imports(tree)
    assert not {"boto3", "botocore"} & {m.split(".")[0] for m in imported}, (
        f"{_rel(path)} imports boto3/botocore: AWS goes through factory/aws/"
    )
    assert not {"factory.aws.api.call", "factory.aws.api.paginate"} & imported
    assert not {"factory.aws.call", "factory.aws.paginate"} & imported


@pytest.mark.parametrize("path", list(_modules(localcloud=False)), ids=_rel)
def test_only_cli_local_imports_the_local_cloud(path: Path) -> None:
    if _rel(path) == "cli/local.py":
        return
    imported = _imports(ast.parse(path.read_text()))
    assert not any(m.startswith("factory.localcloud") for m in imported), (
        f"{_rel(path)} imports factory.localcloud: only cli/local.py may"
    )


STAGES = {
    "factory.build",
    "factory.catalog",
    "factory.channels",
    "factory.pipeline",
    "factory.promote",
    "factory.provenance",
    "factory.retire",
    "factory.rollout",
    "factory.verify",
    "factory.aws",
    "factory.cli",
}


@pytest.mark.parametrize("path", [p for p in _modules() if "localcloud" in p.parts], ids=_rel)
def test_the_local_cloud_imports_no_stage(path: Path) -> None:
    """The local cloud is AWS as seen from outside: it knows nothing of the factory's stages."""
    imported = _imports(ast.parse(path.read_text()))
    stages = {m for m in imported if any(m == s or m.startswith(f"{s}.") for s in STAGES)}
    assert not stages, f"{_rel(path)} imports {sorted(stages)}"
