"""AWS access in one place: sessions, clients, retries, pagination, error translation.

Every stage is handed an `AwsClients` for one account and region and never builds a client
itself. The endpoint comes from the standard settings (AWS_ENDPOINT_URL, factory.toml), so the
same code talks to AWS or to the local cloud.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers
from botocore import xform_name

from factory.errors import AwsError, ConfigError
from factory.redact import register_secret

T = TypeVar("T")

RETRY_CONFIG = botocore.config.Config(
    retries={"mode": "adaptive", "max_attempts": 8},
    connect_timeout=10,
    read_timeout=60,
    user_agent_appid="ami-factory",
)


@dataclass(frozen=True)
class AwsTarget:
    """Which account and region to act on, and how to reach it."""

    region: str
    profile: str | None = None
    role_arn: str | None = None
    endpoint_url: str | None = None


@dataclass
class CallCounter:
    """Counts AWS API calls made through a session (retire logs it; benchmarks read it)."""

    calls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, event_name: str, **_: Any) -> None:
        # event names look like "before-call.ec2.DescribeImages"
        op = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())


class AwsClients:
    """Clients for one account and region, built lazily and cached."""

    def __init__(self, target: AwsTarget, session: boto3.Session | None = None) -> None:
        self.target = target
        self.counter = CallCounter()
        self._session = session or _session_for(target)
        self._session.events.register("before-call", self.counter.record)
        # credentials that refresh (assumed roles, SSO) get a new secret: catch every one
        self._session.events.register(
            "before-sign", _RegisterCredentials(self._session), unique_id=_REGISTER_CREDENTIALS
        )
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._account_id: str | None = None

    @property
    def region(self) -> str:
        return self.target.region

    @property
    def endpoint_url(self) -> str | None:
        return self.target.endpoint_url

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                kwargs: dict[str, Any] = {"region_name": self.region, "config": RETRY_CONFIG}
                if self.target.endpoint_url:
                    kwargs["endpoint_url"] = self.target.endpoint_url
                self._clients[service] = _make_client(self._session, service, **kwargs)
            return self._clients[service]

    @property
    def account_id(self) -> str:
        if self._account_id is None:
            with aws_errors("sts:GetCallerIdentity"):
                self._account_id = str(self.client("sts").get_caller_identity()["Account"])
        return self._account_id

    def for_region(self, region: str) -> AwsClients:
        """The same credentials in another region (shares nothing mutable)."""
        target = AwsTarget(region, self.target.profile, self.target.role_arn, self.endpoint_url)
        return AwsClients(target, self._session)

    def credentials_env(self) -> dict[str, str]:
        """Credentials for a child process (Packer), resolved from the session chain."""
        creds = self._session.get_credentials()
        if creds is None:
            raise ConfigError(
                "no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, or run `eval $(factory local env)` for the local cloud"
            )
        frozen = creds.get_frozen_credentials()
        register_secret(frozen.secret_key)
        register_secret(frozen.token)
        env = {
            "AWS_ACCESS_KEY_ID": frozen.access_key,
            "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = frozen.token
        return env


_REGISTER_CREDENTIALS = "ami-factory-register-credentials"


def register_session_credentials(session: boto3.Session) -> None:
    """Mask the session's secret key and token wherever they would appear (logs, output).

    Call it once a client exists: making a client resolves the credentials, so this looks
    nothing up that was not already looked up.
    """
    creds = session.get_credentials()
    if creds is None:
        return
    frozen = creds.get_frozen_credentials()
    register_secret(frozen.secret_key)
    register_secret(frozen.token)


@dataclass(frozen=True)
class _RegisterCredentials:
    """A `before-sign` handler: registers the credentials a request is about to be signed with."""

    session: boto3.Session

    def __call__(self, **_: Any) -> None:
        register_session_credentials(self.session)


def _make_client(session: boto3.Session, service: str, **kwargs: Any) -> Any:
    """`session.client(...)`, with a bad region as a one-line error, the session's secrets
    registered."""
    with aws_errors(f"{service}: client for region {kwargs.get('region_name')}"):
        client = session.client(service, **kwargs)
    register_session_credentials(session)
    return client


def _session_for(target: AwsTarget) -> boto3.Session:
    try:
        session = boto3.Session(profile_name=target.profile, region_name=target.region)
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(
            f"AWS profile {target.profile!r} not found; check AWS_PROFILE or ~/.aws/config"
        ) from None
    if target.role_arn:
        session = _assume_role(session, target)
    return session


def _assume_role(session: boto3.Session, target: AwsTarget) -> boto3.Session:
    sts = _make_client(
        session,
        "sts",
        region_name=target.region,
        endpoint_url=target.endpoint_url,
        config=RETRY_CONFIG,
    )
    with aws_errors(f"sts:AssumeRole {target.role_arn}"):
        creds = sts.assume_role(RoleArn=target.role_arn, RoleSessionName="ami-factory")[
            "Credentials"
        ]
    register_secret(creds["SecretAccessKey"])
    register_secret(creds["SessionToken"])
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=target.region,
    )


def packer_endpoint(clients: AwsClients) -> str | None:
    """The EC2 endpoint Packer must use (`custom_endpoint_ec2`), or None for AWS's own."""
    return clients.endpoint_url


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn botocore's exceptions into one-line FactoryErrors naming the action."""
    try:
        yield
    except botocore.exceptions.NoCredentialsError:
        raise ConfigError(
            "no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, or run `eval $(factory local env)` for the local cloud"
        ) from None
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
            "(--region, AWS_REGION, factory.toml) and AWS_ENDPOINT_URL"
        ) from None
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        code = err.get("Code", "Error")
        message = err.get("Message", str(exc))
        if code in {"InvalidClientTokenId", "UnrecognizedClientException", "AuthFailure"}:
            raise ConfigError(f"{action}: credentials rejected ({code}); check them") from None
        raise AwsError(f"{action}: {code}: {message}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise AwsError(f"{action}: {exc}") from None


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError, else None."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code"))
    return None


def paginate(client: Any, operation: str, result_key: str, **kwargs: Any) -> Iterator[Any]:
    """Every item under `result_key` across all pages of `operation`."""
    with aws_errors(f"{client.meta.service_model.service_name}:{operation}"):
        if client.can_paginate(xform_name(operation)):
            for page in client.get_paginator(xform_name(operation)).paginate(**kwargs):
                yield from page.get(result_key, [])
        else:
            yield from getattr(client, xform_name(operation))(**kwargs).get(result_key, [])


def call(client: Any, operation: str, **kwargs: Any) -> Any:
    """One API call with error translation: `call(ec2, "CreateTags", Resources=[...])`."""
    with aws_errors(f"{client.meta.service_model.service_name}:{operation}"):
        return getattr(client, xform_name(operation))(**kwargs)


def clients_from_config(
    region: str,
    profile: str | None,
    role_arn: str | None,
    endpoint_url: str | None,
) -> AwsClients:
    return AwsClients(AwsTarget(region, profile, role_arn, endpoint_url))


def tags_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    """AWS's [{"Key":..,"Value":..}] as a dict."""
    return {t["Key"]: t["Value"] for t in tags or []}


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def retry_until(fn: Callable[[], T | None], *, timeout: float, interval: float = 0.5) -> T | None:
    """Poll `fn` until it returns something truthy or `timeout` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 5.0)
