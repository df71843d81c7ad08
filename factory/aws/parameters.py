"""SSM parameters: channels (`/factory/FAMILY/CHANNEL`), the pipeline's locks, and the in-use scan
of every parameter that names an AMI.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from factory.aws.api import call, module_permissions, paginate, requires
from factory.aws.model import parse_time
from factory.aws.session import AwsClients

NOT_FOUND = ("ParameterNotFound",)
GET_BATCH = 10  # GetParameters: names per call


@dataclass(frozen=True)
class Parameter:
    """One parameter, or one version of it (GetParameterHistory)."""

    name: str
    value: str
    version: int = 0
    modified_at: datetime | None = None
    modified_by: str = ""
    description: str = ""
    data_type: str = "text"

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Parameter:
        return cls(
            name=str(item["Name"]),
            value=str(item.get("Value", "")),
            version=int(item.get("Version") or 0),
            modified_at=parse_time(item.get("LastModifiedDate")),
            modified_by=str(item.get("LastModifiedUser") or ""),
            description=str(item.get("Description") or ""),
            data_type=str(item.get("DataType") or "text"),
        )


@requires("ssm:GetParameter")
def get(clients: AwsClients, name: str, *, decrypt: bool = False) -> Parameter | None:
    """The parameter, or None when it does not exist."""
    kwargs: dict[str, Any] = {"Name": name}
    if decrypt:
        kwargs["WithDecryption"] = True
    found = call(clients.client("ssm"), "GetParameter", ok=NOT_FOUND, about=name, **kwargs)
    return Parameter.from_api(found["Parameter"]) if found else None


@requires("ssm:GetParameters")
def get_many(clients: AwsClients, names: Sequence[str]) -> list[Parameter]:
    """The parameters among `names` that exist (names unknown to SSM are left out)."""
    out: list[Parameter] = []
    for start in range(0, len(names), GET_BATCH):
        found = call(
            clients.client("ssm"), "GetParameters", Names=list(names[start : start + GET_BATCH])
        )
        out += [Parameter.from_api(p) for p in found.get("Parameters", [])]
    return out


@requires("ssm:GetParametersByPath")
def by_path(clients: AwsClients, path: str, *, page_size: int | None = None) -> Iterator[Parameter]:
    """Every parameter under `path`, recursively."""
    kwargs: dict[str, Any] = {"Path": path, "Recursive": True}
    if page_size:
        kwargs["PaginationConfig"] = {"PageSize": page_size}
    for item in paginate(clients.client("ssm"), "GetParametersByPath", "Parameters", **kwargs):
        yield Parameter.from_api(item)


@requires("ssm:DescribeParameters")
def names(clients: AwsClients) -> Iterator[str]:
    """The name of every parameter (values are not part of the answer)."""
    for item in paginate(
        clients.client("ssm"),
        "DescribeParameters",
        "Parameters",
        PaginationConfig={"PageSize": 50},
    ):
        yield str(item["Name"])


@requires("ssm:GetParameterHistory")
def history(clients: AwsClients, name: str) -> list[Parameter]:
    """Every kept version, oldest first; empty when the parameter was never set."""
    items = paginate(
        clients.client("ssm"),
        "GetParameterHistory",
        "Parameters",
        ok=NOT_FOUND,
        about=name,
        Name=name,
    )
    return sorted((Parameter.from_api(p) for p in items), key=lambda p: p.version)


@requires("ssm:PutParameter")
def put(
    clients: AwsClients,
    name: str,
    value: str,
    *,
    description: str = "",
    data_type: str | None = None,
    overwrite: bool = True,
) -> int | None:
    """Write a new version; its number. With overwrite=False, None when the name exists (the
    create-only write locks are made of)."""
    kwargs: dict[str, Any] = {
        "Name": name,
        "Value": value,
        "Type": "String",
        "Overwrite": overwrite,
    }
    if description:
        kwargs["Description"] = description
    if data_type:
        kwargs["DataType"] = data_type
    ok = () if overwrite else ("ParameterAlreadyExists",)
    response = call(clients.client("ssm"), "PutParameter", ok=ok, about=name, **kwargs)
    return int(response["Version"]) if response else None


@requires("ssm:DeleteParameter")
def delete(clients: AwsClients, name: str) -> bool:
    """Delete; False when it did not exist."""
    return (
        call(clients.client("ssm"), "DeleteParameter", ok=NOT_FOUND, about=name, Name=name)
        is not None
    )


PERMISSIONS = module_permissions(__name__)
