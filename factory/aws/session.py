"""Sessions and clients per account and region.

Every stage is handed an `AwsClients` for one account and region and passes it to the gateways;
nothing builds a client itself. The endpoint comes from the standard settings
(AWS_ENDPOINT_URL, factory.toml), so the same code talks to AWS or to the local cloud.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from factory.aws.api import NO_CREDENTIALS, aws_errors, call
from factory.errors import ConfigError
from factory.redact import register_secret

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
        self._caller: dict[str, str] | None = None

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
        return self._identity()["Account"]

    @property
    def caller_arn(self) -> str:
        """Who the credentials act as (recorded as who changed a channel, took a lock)."""
        return self._identity().get("Arn") or self.account_id

    def _identity(self) -> dict[str, str]:
        if self._caller is None:
            identity = call(self.client("sts"), "GetCallerIdentity")
            self._caller = {k: str(identity[k]) for k in ("Account", "Arn") if k in identity}
        return self._caller

    def for_region(self, region: str) -> AwsClients:
        """The same credentials in another region (shares nothing mutable)."""
        target = AwsTarget(region, self.target.profile, self.target.role_arn, self.endpoint_url)
        return AwsClients(target, self._session)

    def credentials_env(self) -> dict[str, str]:
        """Credentials for a child process (Packer), resolved from the session chain."""
        creds = self._session.get_credentials()
        if creds is None:
            raise ConfigError(NO_CREDENTIALS)
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
    creds = call(
        sts,
        "AssumeRole",
        about=str(target.role_arn),
        RoleArn=target.role_arn,
        RoleSessionName="ami-factory",
    )["Credentials"]
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


def clients_from_config(
    region: str,
    profile: str | None,
    role_arn: str | None,
    endpoint_url: str | None,
) -> AwsClients:
    return AwsClients(AwsTarget(region, profile, role_arn, endpoint_url))
