"""The controller's client of the funclet API (HTTP over the funclet's unix socket).

Besides the original's calls: ``events`` (long poll of sandbox changes), ``grow``, ``shrink`` and
``prepare_code`` (build a code image ahead of the first warmup).

Every call returns a wire model from :mod:`easyfaas.models`. The funclet answers errors as FaasError
JSON; they are raised as :class:`FuncletError` (status, code, message), read through
:func:`easyfaas.errors.error_from_dict`. An unreachable or silent funclet is :class:`FuncletUnavailable`
(a ServiceUnavailableException); an answer that is not the expected model a BadGatewayException.
"""

from __future__ import annotations

from typing import Any

from easyfaas.errors import BadGateway, ServiceUnavailable, error_from_dict
from easyfaas.models import (CodePrepareRequest, CodePrepareResponse, ContainerInfo, FuncletEvents, GrowRequest, ModelError, NodeResource, ResetRequest,
                             ScaleResponse, ShrinkRequest, WarmupRequest, WarmupResponse)
from easyfaas.unixhttp import UnixHTTPClient, UnixHTTPUnavailable


class FuncletError(Exception):
    """The funclet answered with an error (or with something that is not the expected model)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"funclet: {code} ({status}): {message}" if code else f"funclet: {message}")
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def of_response(cls, status: int, body: Any) -> FuncletError:
        """The error an HTTP error answer of the funclet stands for (its FaasError JSON, or else its text)."""
        err = error_from_dict(body, status)
        return cls(status, err.code, err.cause or err.message)


class FuncletUnavailable(FuncletError):
    """The funclet socket is unreachable, or the funclet did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__(ServiceUnavailable.status, ServiceUnavailable.code, message)


class FuncletClient:
    def __init__(self, sock_path: str, *, timeout: float = 10.0, reset_timeout: float = 30.0,
                 grow_timeout: float = 60.0) -> None:
        self.sock_path = sock_path
        self.reset_timeout = reset_timeout
        self.grow_timeout = grow_timeout
        self._http = UnixHTTPClient(sock_path, timeout=timeout)
        # The long poll gets a connection of its own, so it never queues behind (or blocks) a call.
        self._events_http = UnixHTTPClient(sock_path, timeout=timeout)

    async def __aenter__(self) -> FuncletClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.close()
        await self._events_http.close()

    async def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None,
                    http: UnixHTTPClient | None = None) -> Any:
        try:
            status, data = await (http or self._http).request_json(method, path, json=body, timeout=timeout)
        except UnixHTTPUnavailable as exc:
            raise FuncletUnavailable(str(exc)) from None
        if status >= 400:
            raise FuncletError.of_response(status, data)
        return data

    @staticmethod
    def _model(cls: Any, data: Any, what: str) -> Any:
        try:
            return cls.from_dict(data)
        except ModelError as exc:
            raise FuncletError(BadGateway.status, BadGateway.code,
                               f"malformed {what} from the funclet: {exc}") from None

    async def node(self) -> NodeResource:
        data = await self._call("GET", "/v1/funclet/node")
        return self._model(NodeResource, data.get("Resource") if isinstance(data, dict) else data, "node resource")

    async def list(self) -> list[ContainerInfo]:
        data = await self._call("GET", "/v1/funclet/list")
        if not isinstance(data, list):
            raise FuncletError(BadGateway.status, BadGateway.code, "the funclet's container list is not a JSON array")
        return [self._model(ContainerInfo, item, "container") for item in data]

    async def container(self, container_id: str) -> ContainerInfo:
        data = await self._call("GET", f"/v1/funclet/container/{container_id}")
        return self._model(ContainerInfo, data, "container")

    async def warmup(self, request: WarmupRequest, timeout: float | None = None) -> WarmupResponse:
        data = await self._call("POST", "/v1/funclet/warmup", request.to_dict(), timeout=timeout)
        return self._model(WarmupResponse, data, "warmup response")

    async def prepare_code(self, request: CodePrepareRequest) -> CodePrepareResponse:
        data = await self._call("POST", "/v1/funclet/code", request.to_dict(), timeout=self.grow_timeout)
        return self._model(CodePrepareResponse, data, "code prepare answer")

    async def cooldown(self, request: ResetRequest) -> ContainerInfo:
        data = await self._call("POST", "/v1/funclet/cooldown", request.to_dict(), timeout=self.reset_timeout)
        return self._container_of(data)

    async def reborn(self, request: ResetRequest) -> ContainerInfo:
        data = await self._call("POST", "/v1/funclet/reborn", request.to_dict(), timeout=self.reset_timeout)
        return self._container_of(data)

    def _container_of(self, data: Any) -> ContainerInfo:
        if not isinstance(data, dict):
            raise FuncletError(BadGateway.status, BadGateway.code, "the funclet's reset answer is not a JSON object")
        return self._model(ContainerInfo, data.get("Container"), "container")

    async def events(self, after: int, wait: float) -> FuncletEvents:
        """Sandbox events numbered above ``after``, waiting up to ``wait`` seconds for the first."""
        data = await self._call("GET", f"/v1/funclet/events?after={int(after)}&wait={wait:g}",
                                timeout=wait + 10.0, http=self._events_http)
        return self._model(FuncletEvents, data, "event batch")

    async def grow(self, count: int) -> ScaleResponse:
        data = await self._call("POST", "/v1/funclet/grow", GrowRequest(Count=count).to_dict(),
                                timeout=self.grow_timeout)
        return self._model(ScaleResponse, data, "grow answer")

    async def shrink(self, container_ids: list[str]) -> ScaleResponse:
        data = await self._call("POST", "/v1/funclet/shrink", ShrinkRequest(ContainerIDs=container_ids).to_dict(),
                                timeout=self.reset_timeout)
        return self._model(ScaleResponse, data, "shrink answer")
