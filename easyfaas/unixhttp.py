"""A small JSON-over-HTTP client for services listening on a unix socket (the funclet API).

One :class:`aiohttp.ClientSession` with a :class:`aiohttp.UnixConnector` per client, created on
first use inside the running loop and closed by :meth:`UnixHTTPClient.close` (or ``async with``).
Transport failures (socket missing, connection refused, timeout, truncated reply) are raised as
:class:`UnixHTTPUnavailable`; HTTP error statuses are returned, not raised, so callers can map the
service's own error body.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from typing import Any

import aiohttp


class UnixHTTPUnavailable(Exception):
    """The service behind the socket could not be reached or did not answer in time."""


class UnixHTTPClient:
    def __init__(self, path: str, *, timeout: float = 10.0, host: str = "localhost") -> None:
        self.path = path
        self.timeout = timeout
        self._base = f"http://{host}"
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> UnixHTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise UnixHTTPUnavailable(f"client for {self.path} is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.path))
        return self._session

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def request_json(self, method: str, path: str, json: Any = None,
                           timeout: float | None = None) -> tuple[int, Any]:
        """Send one request; returns (status, body) with the body parsed as JSON when it is JSON.

        A body that is not JSON is returned as text (error pages of proxies, plain-text errors).
        """
        session = self._get_session()
        limit = aiohttp.ClientTimeout(total=self.timeout if timeout is None else timeout)
        try:
            async with session.request(method, self._base + path, json=json, timeout=limit) as resp:
                raw = await resp.read()
                return resp.status, _decode(raw)
        except asyncio.TimeoutError:
            raise UnixHTTPUnavailable(
                f"{method} {path} on {self.path}: no answer within {self.timeout if timeout is None else timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise UnixHTTPUnavailable(f"{method} {path} on {self.path}: {exc or type(exc).__name__}") from None


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return jsonlib.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
