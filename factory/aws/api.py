"""The one way an AWS call is made: error translation, "this code is fine", pagination, and the
IAM actions each gateway function declares beside its call.

Gateways (`factory.aws.images`, `.instances`, ...) are the only callers of `call` and `paginate`;
stages call gateways. A gateway function declares what IAM needs to allow it with `@requires`,
so the factory's own policies (`factory.iam`) are derived from the code that makes the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import botocore.exceptions
import botocore.parsers
from botocore import xform_name

from factory.errors import AwsError, ConfigError, UnsupportedOperation

F = TypeVar("F", bound=Callable[..., Any])

NO_CREDENTIALS = (
    "no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "or run `eval $(factory local env)` for the local cloud"
)
# Codes an endpoint answers with for an operation it does not implement.
UNSUPPORTED_CODES = frozenset({"InvalidAction", "NotImplemented", "UnsupportedOperation"})
_REJECTED_CREDENTIALS = frozenset(
    {"InvalidClientTokenId", "UnrecognizedClientException", "AuthFailure"}
)


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn botocore's exceptions into one-line FactoryErrors naming the action."""
    try:
        yield
    except NotImplementedError:  # moto in-process: an operation it lacks
        raise UnsupportedOperation(
            f"{action}: not supported by this endpoint", code="NotImplemented"
        ) from None
    except botocore.exceptions.NoCredentialsError:
        raise ConfigError(NO_CREDENTIALS) from None
    except botocore.exceptions.EndpointConnectionError as exc:
        raise ConfigError(
            f"{action}: cannot reach {exc.kwargs.get('endpoint_url', 'the AWS endpoint')}; "
            "check AWS_ENDPOINT_URL or start the local cloud with `factory local up`"
        ) from None
    except botocore.exceptions.InvalidRegionError as exc:
        raise ConfigError(
            f"{action}: {exc.kwargs.get('region_name')!r} is not a region name; "
            "check --region, AWS_REGION or factory.toml (e.g. us-east-1)"
        ) from None
    except botocore.parsers.ResponseParserError:
        # not an AWS answer: moto's HTML 500 for a well-formed but unknown region, a proxy's page
        raise AwsError(
            f"{action}: the endpoint's answer is not an AWS response; check the region "
            "(--region, AWS_REGION, factory.toml) and AWS_ENDPOINT_URL",
            code="ResponseParserError",
        ) from None
    except botocore.exceptions.ClientError as exc:
        code, message = _code_and_message(exc)
        if code in _REJECTED_CREDENTIALS:
            raise ConfigError(f"{action}: credentials rejected ({code}); check them") from None
        if code in UNSUPPORTED_CODES or "not been implemented" in message:
            raise UnsupportedOperation(
                f"{action}: not supported by this endpoint", code=code
            ) from None
        raise AwsError(f"{action}: {code}: {message}", code=code) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise AwsError(f"{action}: {exc}") from None


def _code_and_message(exc: botocore.exceptions.ClientError) -> tuple[str, str]:
    err = exc.response.get("Error", {})
    return str(err.get("Code", "Error")), str(err.get("Message", exc))


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of an AwsError or a botocore ClientError, else None."""
    if isinstance(exc, AwsError):
        return exc.code
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code"))
    return None


def _fine(exc: AwsError, ok: Collection[str]) -> bool:
    """Whether an error is one the caller expects: its code is in `ok` (`Prefix.*` matches)."""
    code = exc.code or ""
    return any(code == want or (want.endswith("*") and code.startswith(want[:-1])) for want in ok)


def _action(client: Any, operation: str, about: str) -> str:
    name = f"{client.meta.service_model.service_name}:{operation}"
    return f"{name} {about}" if about else name


def call(
    client: Any, operation: str, *, ok: Collection[str] = (), about: str = "", **kwargs: Any
) -> Any:
    """One API call: `call(ec2, "CreateTags", Resources=[...])`.

    Errors become one-line FactoryErrors naming the call (and `about`, e.g. the AMI id); an
    error whose code is in `ok` ("this is fine": not found, already exists) returns None.
    """
    try:
        with aws_errors(_action(client, operation, about)):
            return getattr(client, xform_name(operation))(**kwargs)
    except AwsError as exc:
        if _fine(exc, ok):
            return None
        raise


def paginate(
    client: Any,
    operation: str,
    result_key: str,
    *,
    ok: Collection[str] = (),
    about: str = "",
    **kwargs: Any,
) -> Iterator[Any]:
    """Every item under `result_key` across all pages; an error code in `ok` ends the list."""
    try:
        with aws_errors(_action(client, operation, about)):
            if client.can_paginate(xform_name(operation)):
                for page in client.get_paginator(xform_name(operation)).paginate(**kwargs):
                    yield from page.get(result_key, [])
            else:
                yield from getattr(client, xform_name(operation))(**kwargs).get(result_key, [])
    except AwsError as exc:
        if not _fine(exc, ok):
            raise


def tags_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    """AWS's [{"Key":..,"Value":..}] as a dict."""
    return {t["Key"]: t["Value"] for t in tags or []}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def tag_filters(tags: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """DescribeX filters: a value matches `tag:KEY`, None only asks that the key is there."""
    return [
        {"Name": f"tag:{k}", "Values": [v]} if v is not None else {"Name": "tag-key", "Values": [k]}
        for k, v in tags.items()
    ]


# ---- permissions ------------------------------------------------------------------------------

_DECLARED: dict[str, tuple[str, ...]] = {}  # "module.function" -> IAM actions


def requires(*actions: str) -> Callable[[F], F]:
    """Declare the IAM actions a gateway function needs (`ec2:DescribeImages`)."""

    def mark(fn: F) -> F:
        _DECLARED[f"{fn.__module__}.{fn.__qualname__}"] = actions
        return fn

    return mark


def declared(qualified: str) -> tuple[str, ...]:
    """The actions `module.function` declared (empty when it declared none)."""
    return _DECLARED.get(qualified, ())


def module_permissions(module: str) -> tuple[str, ...]:
    """Every action the gateway functions of `module` declare, sorted, once each."""
    prefix = f"{module}."
    return tuple(
        sorted({a for name, acts in _DECLARED.items() if name.startswith(prefix) for a in acts})
    )
