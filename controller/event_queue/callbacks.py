"""``X-easyfaas-Callback-Url``: POST a finished event's result to the caller's URL, retried with
back-off in the background; a callback never holds up the queue, and how it went is logged with
the request id and kept in the invocation's record (``Callback``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from easyfaas.errors import InvalidParameterValue, OutboundRefused
from easyfaas.event_invoke import CALLBACK_STATUS
from easyfaas.http import FUNCTION_ERROR, REQUEST_ID
from easyfaas.outbound import OutboundGuard, guarded_session

log = structlog.get_logger(__name__)

MAX_URL_LENGTH = 2048


def check_callback_url(url: str) -> str:
    """The URL as given, if it is an absolute http(s) URL; InvalidParameterValue otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidParameterValue(f"X-easyfaas-Callback-Url: longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidParameterValue(f"X-easyfaas-Callback-Url: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameterValue("X-easyfaas-Callback-Url: expected an absolute http:// or https:// URL")
    return url


CallbackRecorder = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Where a delivery's outcome is written: (request id, ``{"Url", "Delivered", "Attempts", "Error"}``)."""


class CallbackSender:
    def __init__(self, record: CallbackRecorder, *, attempts: int = 4, base_delay: float = 1.0,
                 timeout: float = 10.0, guard: OutboundGuard | None = None) -> None:
        self.record = record
        # With keys required, callbacks go nowhere the outbound guard refuses (easyfaas/outbound.py).
        self.guard = guard if guard is not None and guard.enabled else None
        self.attempts = attempts
        self.base_delay = base_delay
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures = 0

    async def start(self) -> None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            self._session = guarded_session(self.guard, timeout=timeout) if self.guard is not None else \
                aiohttp.ClientSession(timeout=timeout)

    async def close(self, timeout: float = 5.0) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def send(self, url: str, request_id: str, status: str, body: bytes, content_type: str,
             function_error: bool) -> None:
        """Start delivering (in the background)."""
        headers = {REQUEST_ID: request_id, CALLBACK_STATUS: status, "Content-Type": content_type}
        if function_error:
            headers[FUNCTION_ERROR] = "Unhandled"
        task = asyncio.get_running_loop().create_task(self._deliver(url, request_id, headers, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, request_id: str, headers: dict[str, str], body: bytes) -> None:
        error: Any = None
        attempt = 0
        for attempt in range(1, self.attempts + 1):
            if self._session is None:
                return
            try:
                if self.guard is not None:
                    await self.guard.check_url(url, "callback URL")
                async with self._session.post(url, data=body, headers=headers,
                                              allow_redirects=self.guard is None) as resp:
                    await resp.read()
                    if resp.status < 300:
                        log.info("callback_sent", request_id=request_id, url=url, status=resp.status, attempt=attempt)
                        await self._note(request_id, {"Url": url, "Delivered": True, "Attempts": attempt,
                                                      "Error": None})
                        return
                    error = f"HTTP {resp.status}"
            except OutboundRefused as exc:
                error = exc.cause  # the destination will not change its mind: no retry
                break
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
            if attempt < self.attempts:
                await asyncio.sleep(self.base_delay * 2 ** (attempt - 1))
        self.failures += 1
        log.warning("callback_failed", request_id=request_id, url=url, attempts=attempt, error=error)
        await self._note(request_id, {"Url": url, "Delivered": False, "Attempts": attempt, "Error": error})

    async def _note(self, request_id: str, outcome: dict[str, Any]) -> None:
        try:
            await self.record(request_id, outcome)
        except Exception as exc:  # noqa: BLE001 - the log line above already says what happened
            log.warning("callback_note_failed", request_id=request_id, error=str(exc))
