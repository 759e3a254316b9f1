"""The controller's client of the function registry (stubs), with its in-process TTL cache.

``GET {endpoint}/{version}/functions/{BRN}`` gives a function's metadata and
``GET {endpoint}/{version}/runtimes/{name}/configuration`` a runtime's. Functions named by a numeric
version are immutable, so they are cached (``function_ttl``); ``$LATEST`` changes under the same
name and is only cached when ``latest_ttl`` > 0 (off by default, as in the original). Runtime
configurations are cached for ``runtime_ttl``. Concurrent misses for one cacheable key share a
single registry request.

Registry 404 → ResourceNotFound; 403 (the registry's own ownership check) → InvalidInvokeCaller;
anything else that is not a usable answer → ServiceError whose
cause says what went wrong (registry unreachable, HTTP status, malformed body).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, TypeVar
from urllib.parse import quote

import aiohttp
import structlog

from easyfaas.brn import LATEST, Brn
from easyfaas.event_invoke import EventInvokeConfig
from easyfaas.errors import InvalidInvokeCaller, ResourceNotFound, ServiceError, error_from_dict, is_error_body
from easyfaas.http import ACCOUNT_ID, REQUEST_ID
from easyfaas.models import CodeChanges, FunctionRecord, ModelError, RuntimeConfiguration, function_identity

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ResolvedFunction:
    """A function's metadata as fetched, with the values the warm path needs precomputed."""

    record: FunctionRecord
    identity: str
    brn: str

    @classmethod
    def of(cls, record: FunctionRecord, brn: str) -> ResolvedFunction:
        return cls(record=record, identity=function_identity(record.Configuration), brn=brn)


class TTLCache(Generic[T]):
    """A dict with per-entry expiry; expired entries are dropped when read or on prune()."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[str, tuple[float, T]] = {}
        self._clock = clock

    def get(self, key: str) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, value: T, ttl: float) -> None:
        if ttl > 0:
            self._entries[key] = (self._clock() + ttl, value)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def prune(self) -> int:
        now = self._clock()
        stale = [k for k, (expiry, _) in self._entries.items() if expiry <= now]
        for k in stale:
            del self._entries[k]
        return len(stale)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Registry:
    def __init__(self, endpoint: str, version: str = "v1", *, function_ttl: float = 600.0, latest_ttl: float = 0.0,
                 runtime_ttl: float = 600.0, timeout: float = 30.0,
                 credentials: Callable[[], dict[str, str]] | None = None, ssl: Any = None) -> None:
        self.base = f"{endpoint.rstrip('/')}/{version.strip('/')}"
        self.function_ttl = function_ttl
        self.latest_ttl = latest_ttl
        self.runtime_ttl = runtime_ttl
        self.timeout = timeout
        self.functions: TTLCache[ResolvedFunction] = TTLCache()
        self.runtimes: TTLCache[RuntimeConfiguration] = TTLCache()
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._credentials = credentials  # the pod's key, when the registry requires keys
        self._ssl = ssl  # the CA of a registry served over TLS (--tls-ca), None: the system's

    async def __aenter__(self) -> Registry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ---- functions -----------------------------------------------------------------------------

    def function_ttl_for(self, brn: Brn) -> float:
        return self.latest_ttl if brn.qualifier in (None, LATEST) else self.function_ttl

    def cached_function(self, key: str) -> ResolvedFunction | None:
        """The cached entry for a BRN string, if any (the warm path's synchronous lookup)."""
        return self.functions.get(key)

    async def get_function(self, brn: Brn, *, account_id: str = "", request_id: str = "") -> ResolvedFunction:
        key = str(brn)
        cached = self.functions.get(key)
        if cached is not None:
            return cached
        ttl = self.function_ttl_for(brn)

        async def fetch() -> ResolvedFunction:
            data = await self._get(f"/functions/{quote(key, safe=':$')}", f"function {key}",
                                   account_id=account_id, request_id=request_id)
            try:
                record = FunctionRecord.from_dict(data)
            except ModelError as exc:
                raise ServiceError(f"the registry sent malformed metadata for {key}: {exc}") from None
            resolved = ResolvedFunction.of(record, record.Configuration.FunctionArn or key)
            self.functions.put(key, resolved, ttl)
            return resolved

        if ttl <= 0:
            return await fetch()
        return await self._single_flight(f"function:{key}", fetch)

    # ---- runtime configurations ----------------------------------------------------------------

    def cached_runtime(self, name: str) -> RuntimeConfiguration | None:
        return self.runtimes.get(name)

    async def get_runtime_configuration(self, name: str, *, account_id: str = "",
                                        request_id: str = "") -> RuntimeConfiguration:
        if not name:
            raise ServiceError("the function has no runtime")
        cached = self.runtimes.get(name)
        if cached is not None:
            return cached

        async def fetch() -> RuntimeConfiguration:
            data = await self._get(f"/runtimes/{quote(name, safe='')}/configuration",
                                   f"runtime configuration {name}", account_id=account_id, request_id=request_id)
            try:
                config = RuntimeConfiguration.from_dict(data)
            except ModelError as exc:
                raise ServiceError(f"the registry sent a malformed runtime configuration for {name}: {exc}") from None
            self.runtimes.put(name, config, self.runtime_ttl)
            return config

        return await self._single_flight(f"runtime:{name}", fetch)

    # ---- event invoke configs ------------------------------------------------------------------

    async def get_event_invoke_config(self, function: str, *, account_id: str = "", request_id: str = "",
                                      timeout: float | None = None) -> EventInvokeConfig:
        """The stored event invoke config of ``function`` (an unqualified BRN), not cached: the caller
        decides how long a config stands. ResourceNotFound when the function has none."""
        what = f"event invoke config of {function}"
        data = await self._get(f"/functions/{quote(function, safe=':$')}/event-invoke-config", what,
                               account_id=account_id, request_id=request_id, timeout=timeout)
        try:
            return EventInvokeConfig.from_dict(data)
        except Exception as exc:  # noqa: BLE001 - any fault of a stored body is the registry's answer
            raise ServiceError(f"the registry sent a malformed {what}: {exc}") from None

    # ---- code changes --------------------------------------------------------------------------

    async def code_changes(self, after: int, wait: float) -> CodeChanges:
        """Code stored after ``after`` (long poll of up to ``wait`` seconds)."""
        data = await self._get(f"/code-changes?after={int(after)}&wait={wait:g}", "code changes",
                               account_id="", request_id="", timeout=wait + self.timeout)
        try:
            return CodeChanges.from_dict(data)
        except ModelError as exc:
            raise ServiceError(f"the registry sent malformed code changes: {exc}") from None

    # ---- plumbing ------------------------------------------------------------------------------

    async def _single_flight(self, key: str, fetch: Callable[[], Awaitable[T]]) -> T:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        task = asyncio.get_running_loop().create_task(fetch())
        self._inflight[key] = task
        task.add_done_callback(lambda t: self._fetch_done(key, t))
        # Shielded: one caller hanging up must not fail the others waiting on the same fetch.
        return await asyncio.shield(task)

    def _fetch_done(self, key: str, task: asyncio.Task[Any]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an error nobody awaited is not reported as lost

    async def _get(self, path: str, what: str, *, account_id: str, request_id: str,
                   timeout: float | None = None) -> Any:
        if self._session is None:
            raise ServiceError("the registry client is not started")
        headers = {ACCOUNT_ID: account_id, REQUEST_ID: request_id}
        if self._credentials is not None:
            headers.update(self._credentials())
        url = self.base + path
        # Passing timeout=None to aiohttp would mean "no timeout": give it only when set.
        extra: dict[str, Any] = {} if timeout is None else {"timeout": aiohttp.ClientTimeout(total=timeout)}
        try:
            async with self._session.get(url, headers=headers, **extra) as resp:
                status = resp.status
                body = await resp.read()
        except asyncio.TimeoutError:
            raise ServiceError(f"registry at {self.base} did not answer within {timeout or self.timeout:g}s "
                               f"for {what}") from None
        except aiohttp.ClientError as exc:
            raise ServiceError(f"registry at {self.base} is unreachable: {exc or type(exc).__name__}") from None
        if status == 404:
            raise ResourceNotFound(_cause_of(body) or f"{what} does not exist")
        if status == 403:
            # The registry checks ownership too: for the caller this is the same refusal as simple auth's.
            raise InvalidInvokeCaller(_cause_of(body) or f"the registry refused access to {what}")
        if status >= 400:
            detail = _cause_of(body) or body[:200].decode("utf-8", "replace")
            raise ServiceError(f"registry answered HTTP {status} for {what}: {detail}")
        try:
            return json.loads(body)
        except ValueError:
            raise ServiceError(f"registry sent a body that is not JSON for {what}") from None


def _cause_of(body: bytes) -> str:
    """The Cause (or Message) of a FaasError JSON body, '' if the body is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if not is_error_body(data):
        return ""
    err = error_from_dict(data)
    return err.cause or err.message
