"""The invoke pipeline: from ``POST /v1/functions/{ref}/invocations`` to the function's answer.

1. the function reference → a versioned BRN (bare names resolve in the caller's account);
2. the body → the event text (bounded size, must be JSON);
3. the function's metadata from the registry (cached for numeric versions);
4. simple auth: the caller must own the function;
5. a slot from the pool (warm, or a cold start through the funclet);
6. one frame over the slot's runtime channel, bounded by the function's Timeout;
7. the HTTP response (status, headers, optional log tail or JSON envelope).

:meth:`Invoker.invoke` is the whole pipeline on plain values (reference, query, headers, body) and
answers an :class:`InvokeReply`; the aiohttp route (:meth:`Invoker.handle`) and the controller's
front door (``controller/front_door.py``) are two thin adapters around it.

The warm path is kept short on purpose: cached lookups are synchronous dict reads, the slot is a
dict lookup by identity, and the runtime connection is kept open between requests.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from controller.function_logs import FunctionLogs
from controller.metrics import RESULT_ERROR, RESULT_SUCCESS, RESULT_TIMEOUT, ControllerMetrics
from controller.pool import FunctionInitError, Lease, Pool
from controller.registry import Registry, ResolvedFunction
from controller.runtime_channel import ChannelClosed, ChannelTimeout, ChannelUnavailable
from easyfaas.brn import LATEST, Brn, BrnError, account_hash, is_version, resolve_function_ref, valid_account_id
from easyfaas.errors import (FaasError, InvalidInvokeCaller, InvalidParameterValue, InvalidRequestContent,
                             RequestTooLarge, ServiceError)
from easyfaas.frames import CONTENT_TYPE_JSON, FunctionError, FunctionErrorType, InvokeRequest
from easyfaas.http import (ACCOUNT_ID, CONTENT_TYPE, EXEC_TIME, FUNCTION_ERROR, FUNCTION_ERROR_UNHANDLED, INVOKE_TYPE,
                           INVOKE_TYPE_EVENT, JSON_CONTENT_TYPE, LOG_RESULT, LOG_TO_BODY, LOG_TYPE, LOG_TYPE_TAIL,
                           QUERY_LOG_TO_BODY, QUERY_LOG_TYPE, QUERY_QUALIFIER, REQUEST_ID, REQUEST_ID_KEY, parse_json,
                           request_id_of)
from easyfaas.metrics import TRIGGER_HEADER, trigger_of
from easyfaas.models import WarmupRequest
from easyfaas.secret_store import SecretStore
from easyfaas.trace import TRACEPARENT, TraceContext, continue_trace

if TYPE_CHECKING:
    from controller.async_api import EventIntake

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = 3
LOG_TAIL_BYTES = 4096

_LOG_TYPE_TAIL = LOG_TYPE_TAIL.lower()
_REF_CACHE_MAX = 4096
_NO_QUERY: dict[str, str] = {}


def parse_function_ref(ref: str, qualifier: str | None, caller: str) -> Brn:
    """The versioned BRN a request names; InvalidParameterValue for anything else.

    ``ref`` is any function reference of :func:`easyfaas.brn.resolve_function_ref` (partial ones in
    the caller's account), ``qualifier`` the ``?Qualifier=`` query. What the controller adds: the
    qualifier defaults to ``$LATEST`` and must be a version (aliases are not supported).
    """
    if qualifier is not None and not is_version(qualifier):
        raise InvalidParameterValue(f"invalid function qualifier {qualifier!r}: expected $LATEST or a version number")
    try:
        brn = resolve_function_ref(ref, caller, qualifier)
    except BrnError as exc:
        raise InvalidParameterValue(f"invalid brn: {exc}") from None
    if brn.qualifier is None:
        return brn.with_qualifier(LATEST)
    if not is_version(brn.qualifier):
        raise InvalidParameterValue(f"invalid brn: qualifier {brn.qualifier!r} is an alias; aliases are not supported")
    return brn


def log_tail(request_id: str, version: str, logs: str, duration_ms: float, memory_mb: int,
             max_memory_mb: int = 0) -> str:
    """Base64 of the last 4 KiB of the invocation's log text (X-Bce-Log-Result)."""
    return base64.b64encode(_tail_bytes(log_text(request_id, version, logs, duration_ms, memory_mb,
                                                 max_memory_mb))).decode()


def log_text(request_id: str, version: str, logs: str, duration_ms: float, memory_mb: int,
             max_memory_mb: int = 0) -> str:
    if logs and not logs.endswith("\n"):
        logs += "\n"
    return (f"START RequestID: {request_id} Version: {version}\n{logs}END RequestID: {request_id}\n"
            f"REPORT RequestID: {request_id}\tDuration: {duration_ms:.3f} ms\tMemory Size: {memory_mb} MB\t"
            f"Max Memory Used: {max_memory_mb} MB\n")


def _tail_bytes(text: str) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) <= LOG_TAIL_BYTES:
        return data
    data = data[-LOG_TAIL_BYTES:]
    # Do not start in the middle of a UTF-8 sequence.
    start = 0
    while start < len(data) and (data[start] & 0xC0) == 0x80:
        start += 1
    return data[start:]


class InvokeResult:
    """What the runtime answered (or what stands in for it on timeout / crash)."""

    __slots__ = ("ok", "payload", "content_type", "logs", "duration_ms", "timed_out", "init_ms", "memory_peak_mb")

    def __init__(self, ok: bool, payload: str, content_type: str, logs: str, duration_ms: float,
                 timed_out: bool = False) -> None:
        self.ok = ok
        self.payload = payload
        self.content_type = content_type
        self.logs = logs
        self.duration_ms = duration_ms
        self.timed_out = timed_out
        self.init_ms: float | None = None  # the cold start this invocation waited for
        self.memory_peak_mb = 0


class InvokeReply:
    """The HTTP answer to an invocation, whichever server writes it."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @classmethod
    def of_error(cls, err: FaasError, headers: dict[str, str]) -> InvokeReply:
        headers[CONTENT_TYPE] = JSON_CONTENT_TYPE
        return cls(err.status, headers, err.to_json())


class Invoker:
    def __init__(self, registry: Registry, pool: Pool, *, max_body_size: int = 6 << 20,
                 simple_auth: bool = True) -> None:
        self.registry = registry
        self.pool = pool
        self.max_body_size = max_body_size
        self.simple_auth = simple_auth
        self.secrets: SecretStore | None = None  # functions' secrets, for their warmups
        self._refs: dict[tuple[str, str | None, str], tuple[str, Brn]] = {}
        self._log_keys: dict[str, tuple[str, str]] = {}  # BRN → where its logs are kept (_log_key)
        # The durable enqueue of X-easyfaas-Invoke-Type: event (controller/async_api.py sets it).
        self.events: EventIntake | None = None
        # Frame ids only have to be unique on one connection: a counter is enough, and a uuid4 per
        # request was 3% of the warm path's time. The prefix tells this controller's ids apart.
        self._frame_prefix = uuid.uuid4().hex[:8] + "-"
        self._frame_ids = itertools.count(1)
        # Set by the application when metrics and kept function logs are on (controller/app.py).
        self.metrics: ControllerMetrics | None = None
        self.function_logs: FunctionLogs | None = None
        # Synchronous calls being run now: how busy the pod is with callers who wait (the SQLite
        # event queue paces its commits by it, controller/async_api.py).
        self.synchronous_in_flight = 0

    # ---- HTTP entry point ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp route: read the body (bounded), run the pipeline, answer its reply."""
        request_id: str = request.get(REQUEST_ID_KEY) or request_id_of(request.headers.get(REQUEST_ID, ""))
        try:
            body = await self._read_body(request)
        except FaasError as err:
            reply = InvokeReply.of_error(err, {REQUEST_ID: request_id, FUNCTION_ERROR: FUNCTION_ERROR_UNHANDLED})
        else:
            query = request.query if request.query_string else _NO_QUERY  # parsing it costs; most have none
            reply = await self.invoke(request.match_info["ref"], query, request.headers, body, request_id)
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    async def invoke(self, ref: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes,
                     request_id: str, *, body_is_json: bool = False) -> InvokeReply:
        """The whole pipeline for one request; ``headers`` must look names up case-insensitively.

        ``body_is_json``: the caller built the body as JSON itself (the embedded HTTP gateway), so
        it is not parsed again.

        Never raises for anything the caller or the function did: every failure is a reply.
        """
        started = time.perf_counter()
        brn_text = ""
        fn: ResolvedFunction | None = None
        trace = continue_trace(headers.get(TRACEPARENT))
        try:
            caller = headers.get(ACCOUNT_ID, "")
            if caller and not valid_account_id(caller):
                raise InvalidParameterValue(f"{ACCOUNT_ID}: invalid account id (expected 1-64 characters [A-Za-z0-9_-])")
            brn_text, brn = self._resolve_ref(ref, query.get(QUERY_QUALIFIER), caller)
            event = body.decode("utf-8") if body_is_json else self._event_of(body)
            if self.simple_auth and not caller:
                raise InvalidInvokeCaller(f"missing {ACCOUNT_ID} header")
            fn = self.registry.cached_function(brn_text)
            if fn is None:
                fn = await self.registry.get_function(brn, account_id=caller, request_id=request_id)
            cfg = fn.record.Configuration
            if self.simple_auth and caller != cfg.Uid:
                raise InvalidInvokeCaller(f"owner id {cfg.Uid} caller id {caller}")

            log_type = headers.get(LOG_TYPE) or query.get(QUERY_LOG_TYPE) or ""
            tail = log_type.lower() == _LOG_TYPE_TAIL
            to_body = (headers.get(LOG_TO_BODY) or query.get(QUERY_LOG_TO_BODY) or "").lower() == "true"

            trigger = trigger_of(headers.get(TRIGGER_HEADER))
            if (headers.get(INVOKE_TYPE) or "").lower() == INVOKE_TYPE_EVENT:
                if self.events is None:
                    raise ServiceError("asynchronous invocations are not enabled on this controller")
                status, event_headers = await self.events.enqueue(fn, brn, caller, event, request_id, headers)
                return InvokeReply(status, event_headers, b"")

            self.synchronous_in_flight += 1
            try:
                result, source, slot_id = await self.run(fn, caller, event, request_id, tail or to_body, trace=trace,
                                                         trigger=trigger)
            finally:
                self.synchronous_in_flight -= 1
            reply = self._respond(result, fn, request_id, tail, to_body)
            reply.headers[TRACEPARENT] = trace.traceparent()
            log.info("invoke", request_id=request_id, function=fn.brn, slot=slot_id, source=source,
                     status=reply.status, duration_ms=round((time.perf_counter() - started) * 1000, 3))
            return reply
        except FunctionInitError as exc:
            log.info("invoke", request_id=request_id, function=brn_text, source="cold", status=500,
                     error="init", duration_ms=round((time.perf_counter() - started) * 1000, 3))
            return InvokeReply(500, {REQUEST_ID: request_id, FUNCTION_ERROR: FUNCTION_ERROR_UNHANDLED,
                                     CONTENT_TYPE: CONTENT_TYPE_JSON, TRACEPARENT: trace.traceparent()},
                               json.dumps(exc.error, ensure_ascii=False).encode())
        except FaasError as err:
            log.info("invoke", request_id=request_id, function=brn_text, status=err.status, code=err.code,
                     cause=err.cause, duration_ms=round((time.perf_counter() - started) * 1000, 3))
            if self.metrics is not None:
                self._count_refusal(err, fn)
            return InvokeReply.of_error(err, {REQUEST_ID: request_id, FUNCTION_ERROR: FUNCTION_ERROR_UNHANDLED,
                                              TRACEPARENT: trace.traceparent()})
        except Exception:  # noqa: BLE001 - a bug must not become a dropped connection
            log.exception("invoke_failed", request_id=request_id, function=brn_text)
            return InvokeReply.of_error(ServiceError(f"internal error while handling request {request_id}"),
                                        {REQUEST_ID: request_id, FUNCTION_ERROR: FUNCTION_ERROR_UNHANDLED})

    def _resolve_ref(self, ref: str, qualifier: str | None, caller: str) -> tuple[str, Brn]:
        """parse_function_ref, memoised: the warm path sees the same few references over and over."""
        key = (ref, qualifier, caller)
        hit = self._refs.get(key)
        if hit is not None:
            return hit
        brn = parse_function_ref(ref, qualifier, caller)
        if len(self._refs) >= _REF_CACHE_MAX:
            self._refs.clear()
        resolved = self._refs[key] = (str(brn), brn)
        return resolved

    def check_length(self, length: int | None) -> None:
        """Refuse a body announced larger than the limit before reading it."""
        if length is not None and length > self.max_body_size:
            raise RequestTooLarge(f"the request body of {length} bytes is larger than the limit of "
                                  f"{self.max_body_size} bytes")

    async def _read_body(self, request: web.Request) -> bytes:
        self.check_length(request.content_length)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestTooLarge(f"the request body is larger than the limit of {self.max_body_size} bytes") from None
        if len(body) > self.max_body_size:
            raise RequestTooLarge(f"the request body is larger than the limit of {self.max_body_size} bytes")
        return body

    @staticmethod
    def _event_of(body: bytes) -> str:
        """The event text: the body, which must be JSON (an empty body is ``{}``)."""
        if not body or not body.strip():
            return "{}"
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestContent(f"the request body is not UTF-8: {exc}") from None
        parse_json(body)  # rejects malformed, too deeply nested, and lone-surrogate bodies
        return text

    # ---- the invocation ------------------------------------------------------------------------

    async def run(self, fn: ResolvedFunction, caller: str, event: str, request_id: str, want_log: bool, *,
                  trace: TraceContext | None = None, trigger: str = "other") -> tuple[InvokeResult, str, str]:
        """Invoke ``fn`` once; returns (result, "warm"|"cold", slot id). Raises FaasError/FunctionInitError.

        The invocation is counted and its log lines kept here, whoever runs it (the sync pipeline,
        the asynchronous event workers); ``trace`` is its span (a new trace when not given).
        """
        if trace is None:
            trace = continue_trace(None)
        started = time.perf_counter()
        try:
            outcome = await self._run(fn, caller, event, request_id, want_log or self.function_logs is not None, trace)
        except FunctionInitError as exc:
            self._observe_init_error(fn, exc, started, trigger, request_id, trace)
            raise
        self._observe(fn, outcome[0], trigger, request_id, trace)
        return outcome

    async def _run(self, fn: ResolvedFunction, caller: str, event: str, request_id: str, want_log: bool,
                   trace: TraceContext) -> tuple[InvokeResult, str, str]:
        for attempt in (1, 2):
            lease = self.pool.take_warm(fn.identity)
            acquired = 0.0
            if lease is None:
                acquiring = time.perf_counter()
                lease = await self._acquire_cold(fn, caller, request_id)
                acquired = time.perf_counter() - acquiring
            try:
                result = await self._call(fn, lease, event, request_id, want_log, trace)
                if lease.cold:
                    result.init_ms = acquired * 1000
                if not result.memory_peak_mb:
                    # No figure in the frame (a runtime that did not answer, or does not report
                    # one): the funclet's last sample of the sandbox's cgroup, whatever its age.
                    stats = lease.sandbox.container.ResourceStats
                    if stats is not None:
                        result.memory_peak_mb = stats.MemoryPeak >> 20
                return result, ("cold" if lease.cold else "warm"), lease.sandbox.id
            except ChannelUnavailable as exc:
                # Nothing reached the runtime (its socket is gone): recycle the slot, try once more.
                self.pool.recycle(lease.sandbox, lease.generation, f"runtime unreachable: {exc}")
                if attempt == 2:
                    raise ServiceError(f"runtime {lease.sandbox.id} is unreachable: {exc}") from None
            finally:
                self.pool.release(lease)
        raise AssertionError("unreachable")

    async def _acquire_cold(self, fn: ResolvedFunction, caller: str, request_id: str) -> Lease:
        cfg = fn.record.Configuration
        runtime = self.registry.cached_runtime(cfg.Runtime)
        if runtime is None:
            runtime = await self.registry.get_runtime_configuration(cfg.Runtime, account_id=caller,
                                                                    request_id=request_id)
        record = fn.record
        secrets = self.secrets.read(account_hash(cfg.Uid), cfg.FunctionName) if self.secrets and cfg.Uid else {}

        def make_warmup(slot: Any) -> WarmupRequest:
            return WarmupRequest(ContainerID=slot.id, RequestID=request_id, Code=record.Code, Configuration=cfg,
                                 RuntimeConfiguration=runtime, Identity=fn.identity, Secrets=secrets)

        return await self.pool.acquire(fn.identity, cfg.PodConcurrentQuota, make_warmup, brn=fn.brn,
                                       memory_mb=cfg.MemorySize, record=record, runtime=runtime.Name)

    async def _call(self, fn: ResolvedFunction, lease: Lease, event: str, request_id: str,
                    want_log: bool, trace: TraceContext | None = None) -> InvokeResult:
        cfg = fn.record.Configuration
        timeout = cfg.Timeout if cfg.Timeout > 0 else DEFAULT_TIMEOUT
        slot = lease.sandbox
        channel = slot.channel
        if channel is None:
            raise ChannelUnavailable(f"slot {slot.id} has no runtime channel")
        request = InvokeRequest(f"{self._frame_prefix}{next(self._frame_ids)}", event,
                                int((time.time() + timeout) * 1000), want_log, request_id,
                                trace_id=trace.xray() if trace is not None else "")
        started = time.perf_counter()
        try:
            response = await channel.call(request, timeout)
        except ChannelTimeout:
            self.pool.recycle(slot, lease.generation, "function timeout")
            result = _platform_error(f"{request_id} Task timed out after {timeout:.2f} seconds",
                                     FunctionErrorType.TIMEOUT, started)
            result.timed_out = True
            return result
        except ChannelUnavailable:
            raise
        except ChannelClosed as exc:
            # The funclet knows why the runtime went away (OOM kill, signal, lost sandbox): say so.
            failure = await self.pool.runtime_failure(lease)
            self.pool.recycle(slot, lease.generation, f"runtime exited: {exc}")
            if failure is not None:
                return _platform_error(failure.message(request_id), failure.error_type, started)
            return _platform_error(f"RequestID: {request_id} Process exited before completing request",
                                   FunctionErrorType.EXIT, started)
        duration_ms = (time.perf_counter() - started) * 1000
        logs = response.logs or ""
        if response.ok:
            result = InvokeResult(True, response.result, response.content_type, logs, duration_ms)
        else:
            error = response.error or {}
            if response.fatal:
                self.pool.recycle(slot, lease.generation, f"fatal runtime error: {error.get('errorType', '')}")
            # The runtime's error object verbatim: it is the function's answer.
            result = InvokeResult(False, json.dumps(error, ensure_ascii=False), CONTENT_TYPE_JSON, logs, duration_ms)
        # The runtime process's own high-water mark, in MB rounded up (Lambda's "Max Memory Used").
        result.memory_peak_mb = (response.memory_peak_kb + 1023) >> 10
        return result

    def _respond(self, result: InvokeResult, fn: ResolvedFunction, request_id: str, tail: bool,
                 to_body: bool) -> InvokeReply:
        headers = {REQUEST_ID: request_id, EXEC_TIME: f"{result.duration_ms:.3f}"}
        if not result.ok:
            headers[FUNCTION_ERROR] = FUNCTION_ERROR_UNHANDLED
        text = ""
        if tail or to_body:
            cfg = fn.record.Configuration
            text = log_text(request_id, cfg.Version, result.logs, result.duration_ms, cfg.MemorySize,
                            result.memory_peak_mb)
            if tail:
                headers[LOG_RESULT] = base64.b64encode(_tail_bytes(text)).decode()
        if to_body:
            envelope: dict[str, Any] = {}
            if not result.ok:
                envelope["FunctionError"] = FUNCTION_ERROR_UNHANDLED
            if tail:
                envelope["LogResult"] = text
            envelope["Payload"] = result.payload
            headers[CONTENT_TYPE] = JSON_CONTENT_TYPE
            return InvokeReply(200 if result.ok else 500, headers, json.dumps(envelope, ensure_ascii=False).encode())
        headers[CONTENT_TYPE] = result.content_type
        return InvokeReply(200 if result.ok else 500, headers, result.payload.encode())

    # ---- what is kept of an invocation ----------------------------------------------------------

    def _observe(self, fn: ResolvedFunction, result: InvokeResult, trigger: str, request_id: str,
                 trace: TraceContext | None) -> None:
        """Count the invocation and keep its log lines (both: a few appends; the rest at scrape and flush)."""
        cfg = fn.record.Configuration
        if self.metrics is not None:
            outcome = RESULT_SUCCESS if result.ok else RESULT_TIMEOUT if result.timed_out else RESULT_ERROR
            init_ms = result.init_ms
            self.metrics.invoked(cfg.FunctionName, cfg.Version, trigger, outcome, result.duration_ms / 1000,
                                 None if init_ms is None else init_ms / 1000)
        if self.function_logs is not None:
            key = self._log_keys.get(fn.brn)
            if key is None:
                if len(self._log_keys) >= _REF_CACHE_MAX:
                    self._log_keys.clear()
                key = self._log_keys[fn.brn] = _log_key(fn.brn)
            account, name = key
            self.function_logs.record(account, name, cfg.Version, request_id, result.logs, result.duration_ms,
                                      cfg.MemorySize, result.memory_peak_mb, result.init_ms, trace)

    def _observe_init_error(self, fn: ResolvedFunction, exc: FunctionInitError, started: float, trigger: str,
                            request_id: str, trace: TraceContext | None) -> None:
        """A function that could not be loaded: an error, and its cold start, with the error as its output."""
        if self.metrics is None and self.function_logs is None:
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        error = exc.error
        result = InvokeResult(False, "", CONTENT_TYPE_JSON,
                              f"{error.get('errorType', '')}: {error.get('errorMessage', '')}", 0.0)
        result.init_ms = elapsed_ms
        self._observe(fn, result, trigger, request_id, trace)

    def _count_refusal(self, err: FaasError, fn: ResolvedFunction | None) -> None:
        assert self.metrics is not None
        if err.status == 429 and fn is not None:
            cfg = fn.record.Configuration
            self.metrics.throttled(cfg.FunctionName, cfg.Version)
        else:
            self.metrics.reject(err.code)


def _log_key(brn: str) -> tuple[str, str]:
    """(account hash, function name) of a function's BRN text: where its logs are kept (the logs
    route finds them from the BRN it resolves, controller/logs_api.py)."""
    parts = brn.split(":")
    if len(parts) >= 7:
        return parts[4], parts[6]
    return "_", brn


def _platform_error(message: str, error_type: str, started: float) -> InvokeResult:
    """The result standing in for a runtime that did not answer: a function error the platform made."""
    payload = json.dumps(FunctionError(message, error_type).to_wire(), ensure_ascii=False)
    return InvokeResult(False, payload, CONTENT_TYPE_JSON, "", (time.perf_counter() - started) * 1000)
