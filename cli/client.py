"""A small synchronous HTTP client for the pod's two APIs: the controller and the registry (stubs).

Every request carries the caller's account (``X-easyfaas-Account-Id``) and key (``Authorization:
Bearer``) when set. Error answers in the platform's JSON shape ``{"Code","Cause","Message","Status",
"Type"}`` are rebuilt with :func:`easyfaas.errors.error_from_dict` and raised as :class:`ApiError`,
whose message is one line and whose exit code follows the HTTP status.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any, Iterator, Mapping

from easyfaas.errors import FaasError, error_from_dict
from easyfaas.http_vocabulary import ACCOUNT_ID

from cli.exits import CliError, ExitCode, exit_code_for_status
from cli.settings import Settings

DEFAULT_TIMEOUT = 60.0
CONTROLLER = "controller"
REGISTRY = "registry"


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes = b""

    def header(self, name: str) -> str:
        return self.headers.get(name, "") or ""

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            raise CliError(f"the pod answered HTTP {self.status} with a body that is not JSON: "
                           f"{self.body[:120]!r}", ExitCode.UNAVAILABLE) from None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def platform_error(self) -> FaasError | None:
        """The platform error this answer carries, if its body is one."""
        try:
            body = json.loads(self.body) if self.body else None
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("Code"), str) and "Status" in body:
            return error_from_dict(body, self.status)
        return None


class ApiError(CliError):
    """The pod refused or failed a request; ``error`` is the platform's error."""

    def __init__(self, error: FaasError, status: int, what: str) -> None:
        text = error.cause or error.message
        if self.is_missing_route(error, status):
            message = f"{what}: the pod has no such API ({text}); it predates this feature"
        else:
            message = f"{what}: {error.code} (HTTP {status}): {text}"
        super().__init__(message, exit_code_for_status(status), {"Error": error.to_dict()})
        self.error = error
        self.status = status

    @staticmethod
    def is_missing_route(error: FaasError, status: int) -> bool:
        """The pod answered that it has no such route at all (not that a resource is missing)."""
        return status == 404 and error.cause.startswith("no route for ")

    @property
    def missing_route(self) -> bool:
        return self.is_missing_route(self.error, self.status)


class Unreachable(CliError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"pod unreachable at {url}: {reason}", ExitCode.UNAVAILABLE)


def raise_for_error(resp: Response, what: str) -> Response:
    """``resp`` if it succeeded, else its platform error as :class:`ApiError`."""
    if resp.ok:
        return resp
    err = resp.platform_error()
    if err is None:
        snippet = resp.body[:200].decode(errors="replace").strip()
        err = error_from_dict(None, resp.status)
        err.cause = f"unexpected HTTP {resp.status} answer" + (f": {snippet}" if snippet else "")
    raise ApiError(err, resp.status, what)


@dataclass
class Client:
    settings: Settings
    timeout: float = DEFAULT_TIMEOUT

    def base(self, service: str) -> str:
        return (self.settings.url if service == CONTROLLER else self.settings.registry_url).rstrip("/")

    def url(self, service: str, path: str, query: Mapping[str, Any] | None = None) -> str:
        url = self.base(service) + urllib.parse.quote(path, safe="/:$@")
        params = {k: str(v) for k, v in (query or {}).items() if v is not None and v != ""}
        return url + ("?" + urllib.parse.urlencode(params) if params else "")

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"User-Agent": "easyfaas-cli"}
        if self.settings.account:
            headers[ACCOUNT_ID] = self.settings.account
        if self.settings.key:
            headers["Authorization"] = f"Bearer {self.settings.key}"
        headers.update(extra or {})
        return headers

    def _open(self, method: str, url: str, data: bytes | None, headers: Mapping[str, str],
              timeout: float | None) -> Any:
        req = urllib.request.Request(url, data=data, method=method, headers=dict(headers))
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            return exc
        except urllib.error.URLError as exc:
            raise Unreachable(url, str(getattr(exc.reason, "strerror", None) or exc.reason)) from None
        except (socket.timeout, TimeoutError):
            raise Unreachable(url, f"no answer within {timeout or self.timeout:g}s") from None
        except (ConnectionError, OSError) as exc:
            raise Unreachable(url, exc.strerror or str(exc)) from None
        except http.client.InvalidURL as exc:
            raise CliError(f"invalid URL {url}: {exc}", ExitCode.USAGE) from None
        except http.client.HTTPException as exc:
            raise Unreachable(url, f"broken HTTP answer: {type(exc).__name__} {exc}".strip()) from None
        except ValueError as exc:  # a malformed URL, e.g. a port that is not a number
            raise CliError(f"invalid URL {url}: {exc}", ExitCode.USAGE) from None

    def send(self, service: str, method: str, path: str, *, query: Mapping[str, Any] | None = None,
             body: Any = None, data: bytes | None = None, headers: Mapping[str, str] | None = None,
             timeout: float | None = None) -> Response:
        """One request; any HTTP status is returned, only transport failures raise."""
        hdrs = self.headers(headers)
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        url = self.url(service, path, query)
        resp = self._open(method, url, data, hdrs, timeout)
        try:
            payload = resp.read()
        except (socket.timeout, TimeoutError):
            raise Unreachable(url, f"no answer within {timeout or self.timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(url, str(exc) or type(exc).__name__) from None
        finally:
            resp.close()
        return Response(resp.status, resp.headers, payload)

    def call(self, service: str, method: str, path: str, *, what: str, **kwargs: Any) -> Any:
        """One request that must succeed; its JSON answer (None for an empty body)."""
        return raise_for_error(self.send(service, method, path, **kwargs), what).json()

    def stream_lines(self, service: str, path: str, *, query: Mapping[str, Any] | None = None,
                     what: str, timeout: float | None = None) -> Iterator[bytes]:
        """The lines of a streamed (chunked) answer, as they come; errors raise before the first."""
        url = self.url(service, path, query)
        resp = self._open("GET", url, None, self.headers(), timeout)
        try:
            if not 200 <= resp.status < 300:
                raise_for_error(Response(resp.status, resp.headers, resp.read()), what)
            for line in resp:
                yield line
        except (socket.timeout, TimeoutError):
            raise Unreachable(url, f"no data within {timeout or self.timeout:g}s") from None
        finally:
            resp.close()
