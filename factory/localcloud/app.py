"""The local cloud's WSGI application: moto, plus extension actions and fault injection.

Requests for an action an extension registered (say autoscaling:StartInstanceRefresh) are
answered by the extension; everything else goes to moto. Faults configured through
`/_localcloud/faults` add latency, throttling or 5xx to chosen actions.
"""

from __future__ import annotations

import io
import json
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from moto.server import (  # type: ignore[attr-defined]
    DomainDispatcherApplication,
    create_backend_app,
)

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class ActionRequest:
    """An AWS API request as an extension sees it."""

    service: str
    action: str
    region: str
    account_id: str
    params: dict[str, Any]  # query protocol: flat form keys; JSON protocol: the body
    protocol: str  # "query" | "json"


@dataclass
class ActionResponse:
    body: str
    status: int = 200
    content_type: str = "text/xml"


Handler = Callable[[ActionRequest], ActionResponse]


@dataclass
class Fault:
    """One injected fault. `error` is an AWS error code (Throttling) or an HTTP status (500)."""

    service: str
    action: str = "*"
    error: str | None = None
    latency: float = 0.0
    count: int | None = None  # how many requests it hits; None = until cleared
    probability: float = 1.0
    hits: int = 0

    def matches(self, service: str, action: str) -> bool:
        return self.service in (service, "*") and self.action in (action, "*")


@dataclass
class LocalCloudApp:
    """WSGI middleware in front of moto."""

    handlers: dict[tuple[str, str], Handler] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    status: Callable[[], dict[str, Any]] = lambda: {}
    moto: Any = field(default_factory=lambda: DomainDispatcherApplication(create_backend_app))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, service: str, action: str, handler: Handler) -> None:
        self.handlers[(service, action)] = handler

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_localcloud/"):
            return self._control(path, environ, start_response)
        body = _read_body(environ)
        service, region = _service_region(environ)
        action, params, protocol = _action(environ, body)
        fault = self._fault_for(service, action)
        if fault is not None:
            if fault.latency:
                time.sleep(fault.latency)
            if fault.error:
                return _error(start_response, fault.error, protocol, service)
        handler = self.handlers.get((service, action))
        if handler is not None:
            request = ActionRequest(service, action, region, _account(environ), params, protocol)
            try:
                response = handler(request)
            except ExtensionError as exc:
                return _error(start_response, exc.code, protocol, service, exc.message, exc.status)
            payload = response.body.encode()
            start_response(
                f"{response.status} OK",
                [("Content-Type", response.content_type), ("Content-Length", str(len(payload)))],
            )
            return [payload]
        return self.moto(environ, start_response)  # type: ignore[no-any-return]

    def _fault_for(self, service: str, action: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if not fault.matches(service, action):
                    continue
                if fault.count is not None and fault.hits >= fault.count:
                    continue
                if random.random() > fault.probability:  # noqa: S311 - not crypto
                    continue
                fault.hits += 1
                return fault
        return None

    def _control(
        self, path: str, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        if path == "/_localcloud/health":
            payload: Any = {"ok": True, **self.status()}
        elif path == "/_localcloud/faults":
            if environ.get("REQUEST_METHOD") == "POST":
                specs = json.loads(_read_body(environ) or b"[]")
                with self._lock:
                    self.faults = [Fault(**spec) for spec in specs]
            with self._lock:
                payload = [vars(f) for f in self.faults]
        else:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "unknown local cloud path"}']
        data = json.dumps(payload).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]


class ExtensionError(Exception):
    """An AWS-style error from an extension handler (ValidationError, ...)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)  # moto reads it again
    return body


_SCOPE = re.compile(r"Credential=([^/]+)/\d+/([^/]+)/([^/]+)/aws4_request")


def _service_region(environ: dict[str, Any]) -> tuple[str, str]:
    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        return match.group(3), match.group(2)
    return "unknown", "us-east-1"


def _account(environ: dict[str, Any]) -> str:
    from moto.iam.models import get_account_id_from

    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match is None:
        from factory.localcloud import ACCOUNT_ID

        return ACCOUNT_ID
    return str(get_account_id_from(match.group(1)))


def _action(environ: dict[str, Any], body: bytes) -> tuple[str, dict[str, Any], str]:
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        return target.rsplit(".", 1)[-1], params, "json"
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    merged = {k: v[0] for k, v in {**query, **form}.items()}
    return str(merged.get("Action", "")), merged, "query"


def _error(
    start_response: StartResponse,
    code: str,
    protocol: str,
    service: str,
    message: str | None = None,
    status: int | None = None,
) -> Iterable[bytes]:
    if code.isdigit():
        status, code = int(code), "InternalError" if code.startswith("5") else "BadRequest"
    if status is None:
        status = 400
    message = message or f"injected by the local cloud: {code}"
    if protocol == "json":
        body = json.dumps({"__type": code, "message": message}).encode()
        ctype = "application/x-amz-json-1.1"
    elif service == "ec2":
        body = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>{_xml(message)}</Message>"
            "</Error></Errors><RequestID>localcloud</RequestID></Response>"
        ).encode()
        ctype = "text/xml"
    else:
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{_xml(message)}</Message></Error><RequestId>localcloud</RequestId>"
            "</ErrorResponse>"
        ).encode()
        ctype = "text/xml"
    start_response(f"{status} Error", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def query_members(params: dict[str, Any], prefix: str) -> list[str]:
    """Values of a query-protocol list: Prefix.member.1, Prefix.member.2, ..."""
    out = []
    i = 1
    while f"{prefix}.member.{i}" in params:
        out.append(str(params[f"{prefix}.member.{i}"]))
        i += 1
    return out


def query_response(service_ns: str, action: str, inner_xml: str) -> ActionResponse:
    """A query-protocol success body: <ActionResponse><ActionResult>...</ActionResult>."""
    body = (
        f'<{action}Response xmlns="{service_ns}">'
        f"<{action}Result>{inner_xml}</{action}Result>"
        f"<ResponseMetadata><RequestId>localcloud</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )
    return ActionResponse(body)


xml_escape = _xml
