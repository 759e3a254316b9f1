"""The stubs HTTP API (function registry): create, update, publish, read, list and delete functions,
serve their code, and serve runtime configurations.

Routes, headers and JSON field names are the Go original's (``/v1/functions/<ref>``,
``/v1/runtimes/<name>/configuration``, GetFunctionOutput records); on top of them: validation of
every field, a real owner (the caller's account), a fresh CommitId per written record, version
publishing, list/versions/delete/code endpoints, and errors as FaasError JSON.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import re
import uuid
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence
from urllib.parse import quote

import structlog
from aiohttp import web

from easyfaas import codezip
from easyfaas.brn import LATEST, Brn, BrnError, account_hash, is_version, resolve_function_ref, valid_account_id
from easyfaas.errors import (
    AccessDenied,
    InvalidParameterValue,
    ResourceNotFound,
    ValidationError,
)
from easyfaas.egress import EgressPolicy, EgressPolicyError
from easyfaas.feed import NumberedFeed
from easyfaas.http import ACCOUNT_ID, error_middleware, feed_query, read_json, request_id_middleware
from easyfaas.models import (
    REPOSITORY_HTTP,
    CodeChange,
    CodeChanges,
    CodeLocation,
    Concurrency,
    Environment,
    FunctionConfiguration,
    FunctionRecord,
    LogConfig,
)
from easyfaas.openapi import add_openapi_route
from easyfaas.runtimes import RuntimeCatalog
from easyfaas.secret_store import SecretStore
from stubs.secrets import add_secret_routes
from stubs.store import FunctionStore, code_sha256_hex, version_sort_key
from stubs.event_invoke_config import add_routes as add_event_invoke_config_routes

log = structlog.get_logger(__name__)

DEFAULT_ACCOUNT_ID = "df391b08c64c426a81645468c75163a5"
DEFAULT_RUNTIME = "nodejs10"
DEFAULT_HANDLER = "index.handler"
DEFAULT_TIMEOUT = 5
DEFAULT_MEMORY_SIZE = 128
DEFAULT_MAX_CODE_SIZE = 50 * 1024 * 1024

TIMEOUT_RANGE = (1, 900)
MEMORY_RANGE = (64, 10240)
POD_CONCURRENCY_RANGE = (0, 1000)
RESERVED_CONCURRENCY_MAX = 1_000_000
MAX_DESCRIPTION = 256
MAX_HANDLER = 128
MAX_ENVIRONMENT_BYTES = 4096
EXEC_RUNTIME = "exec"  # the runtime whose Handler is an executable path, not "<file>.<export>"

_HANDLER_RE = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_EXPORT_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV_PREFIXES = ("EASYFAAS_", "AWS_LAMBDA_")
_RESERVED_ENV_KEYS = frozenset({"LAMBDA_TASK_ROOT", "_HANDLER"})
_PUBLISHED_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
_CODE_FILE_RE = re.compile(r"^([0-9a-f]{64})\.zip$")
CODE_FEED_SIZE = 1024
MAX_CODE_FEED_WAIT = 60.0

_NODE_HELLO = b'exports.handler = (event, context, callback) => {\n    callback(null, "Hello world!");\n};\n'


@functools.cache
def default_code_zip() -> bytes:
    """The code a function gets when created without Code, as in the original: Node "Hello world!"."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("index.js", date_time=(2018, 10, 31, 20, 24, 24))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o100644 << 16
        zf.writestr(info, _NODE_HELLO)
    return buf.getvalue()


def _now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _expect(body: dict[str, Any], key: str, kind: type) -> Any:
    """body[key] checked to be a JSON ``kind``; None when absent or null."""
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        expected = {str: "a string", int: "an integer", dict: "an object", bool: "true or false"}[kind]
        raise ValidationError(f"{key}: expected {expected}, got {_type_name(value)}")
    return value


def _expect_range(body: dict[str, Any], key: str, bounds: tuple[int, int]) -> int | None:
    value = _expect(body, key, int)
    if value is not None and not bounds[0] <= value <= bounds[1]:
        raise ValidationError(f"{key}: must be between {bounds[0]} and {bounds[1]}, got {value}")
    return value


def _parse_environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValidationError(f"Environment: expected an object, got {_type_name(value)}")
    unknown = set(value) - {"Variables"}
    if unknown:
        raise ValidationError(f"Environment: unknown field {sorted(unknown)[0]!r} (only Variables is allowed)")
    variables = value.get("Variables")
    if variables is None:
        return {}
    if not isinstance(variables, dict):
        raise ValidationError(f"Environment.Variables: expected an object, got {_type_name(variables)}")
    size = 0
    for key, val in variables.items():
        if not _ENV_KEY_RE.match(key):
            raise ValidationError(f"Environment.Variables: invalid name {key!r} (use [A-Za-z_][A-Za-z0-9_]*)")
        # Lambda's advanced logging controls are the function's choice (runner/runtimes/lambda_environment.py).
        if key not in ("AWS_LAMBDA_LOG_FORMAT", "AWS_LAMBDA_LOG_LEVEL") and (
                key in _RESERVED_ENV_KEYS or key.startswith(_RESERVED_ENV_PREFIXES)):
            raise ValidationError(f"Environment.Variables: {key!r} is reserved by the platform")
        if not isinstance(val, str):
            raise ValidationError(f"Environment.Variables.{key}: expected a string, got {_type_name(val)}")
        size += len(key.encode()) + len(val.encode())
    if size > MAX_ENVIRONMENT_BYTES:
        raise ValidationError(f"Environment.Variables: total size {size} bytes exceeds {MAX_ENVIRONMENT_BYTES}")
    return dict(variables)


def _check_handler(handler: str, runtime: str) -> None:
    if len(handler) > MAX_HANDLER:
        raise ValidationError(f"Handler: longer than {MAX_HANDLER} characters")
    segments = handler.split("/")
    if (
        not _HANDLER_RE.match(handler)
        or handler.startswith("/")
        or "" in segments
        or ".." in segments
        or ".." in handler
    ):
        raise ValidationError(
            f"Handler: {handler!r} is not a relative path of [A-Za-z0-9_.-/] without '..' or empty segments"
        )
    if runtime != EXEC_RUNTIME:
        module, dot, export = handler.rpartition(".")
        if not dot or not module or module.endswith("/") or not _EXPORT_RE.match(export):
            raise ValidationError(f"Handler: {handler!r} must be <file>.<export>, e.g. index.handler")


@dataclass
class FunctionFields:
    """The validated function fields of a create/update body; None = not given."""

    Description: str | None = None
    Runtime: str | None = None
    Timeout: int | None = None
    MemorySize: int | None = None
    Handler: str | None = None
    PodConcurrentQuota: int | None = None
    Variables: dict[str, str] | None = None
    Code: str | None = None  # base64, still undecoded
    has_reserved_concurrency: bool = False
    ReservedConcurrentExecutions: int | None = None
    Tags: dict[str, str] | None = None  # labels, e.g. the OpenFaaS scaling knobs com.openfaas.scale.*
    Network: dict[str, Any] | None = None  # the egress policy, normalized (easyfaas/egress.py)
    SecretsAsEnvironment: bool | None = None  # the function's secrets also as environment variables

    def apply(self, cfg: FunctionConfiguration, concurrency: Concurrency) -> None:
        for key in ("Description", "Runtime", "Timeout", "MemorySize", "Handler", "PodConcurrentQuota", "Network",
                    "SecretsAsEnvironment"):
            value = getattr(self, key)
            if value is not None:
                setattr(cfg, key, value)
        if self.Variables is not None:
            cfg.Environment = Environment(Variables=dict(self.Variables))
        if self.has_reserved_concurrency:
            concurrency.ReservedConcurrentExecutions = self.ReservedConcurrentExecutions


def parse_function_fields(body: Any, runtimes: RuntimeCatalog) -> FunctionFields:
    """Check the types and ranges of a create/update body (Handler is checked once Runtime is known)."""
    if not isinstance(body, dict):
        raise ValidationError(f"request body: expected a JSON object, got {_type_name(body)}")
    fields = FunctionFields(
        Description=_expect(body, "Description", str),
        Runtime=_expect(body, "Runtime", str),
        Timeout=_expect_range(body, "Timeout", TIMEOUT_RANGE),
        MemorySize=_expect_range(body, "MemorySize", MEMORY_RANGE),
        Handler=_expect(body, "Handler", str),
        PodConcurrentQuota=_expect_range(body, "PodConcurrentQuota", POD_CONCURRENCY_RANGE),
        Code=_expect(body, "Code", str),
        SecretsAsEnvironment=_expect(body, "SecretsAsEnvironment", bool),
    )
    if fields.Description is not None and len(fields.Description) > MAX_DESCRIPTION:
        raise ValidationError(f"Description: longer than {MAX_DESCRIPTION} characters")
    if body.get("Environment") is not None:
        fields.Variables = _parse_environment(body["Environment"])
    if "ReservedConcurrentExecutions" in body:
        fields.has_reserved_concurrency = True
        fields.ReservedConcurrentExecutions = _expect_range(
            body, "ReservedConcurrentExecutions", (0, RESERVED_CONCURRENCY_MAX)
        )
    if body.get("Tags") is not None:
        fields.Tags = _parse_tags(body["Tags"])
    if body.get("Network") is not None:
        try:
            fields.Network = EgressPolicy.from_wire(body["Network"]).to_wire()
        except EgressPolicyError as exc:
            raise ValidationError(str(exc)) from None
    if fields.Runtime is not None and runtimes.get(fields.Runtime) is None:
        known = ", ".join(runtimes.names()) or "none"
        raise InvalidParameterValue(f"Runtime: unknown runtime {fields.Runtime!r}; known runtimes: {known}")
    return fields


MAX_TAGS = 50


def _parse_tags(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValidationError(f"Tags: expected an object, got {_type_name(value)}")
    if len(value) > MAX_TAGS:
        raise ValidationError(f"Tags: more than {MAX_TAGS} tags")
    tags: dict[str, str] = {}
    for key, val in value.items():
        if not (1 <= len(key) <= 128):
            raise ValidationError(f"Tags: a tag name must have 1 to 128 characters, not {len(key)}")
        if not isinstance(val, str):
            raise ValidationError(f"Tags.{key}: expected a string, got {_type_name(val)}")
        if len(val) > 256:
            raise ValidationError(f"Tags.{key}: longer than 256 characters")
        tags[key] = val
    return tags


def _decode_and_inspect(code_b64: str, max_code_size: int) -> tuple[bytes, codezip.CodeArchive]:
    try:
        data = base64.b64decode("".join(code_b64.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameterValue("Code: not valid base64") from None
    try:
        return data, codezip.inspect_zip(data, max_size=max_code_size)
    except codezip.CodeArchiveError as exc:
        raise InvalidParameterValue(f"Code: {exc}") from None


class StubsHandlers:
    """Route handlers; one instance per application."""

    def __init__(
        self,
        store: FunctionStore,
        runtimes: RuntimeCatalog,
        *,
        default_account: str,
        max_code_size: int,
        public_url: str = "",
    ) -> None:
        self.store = store
        self.runtimes = runtimes
        self.default_account = default_account
        self.max_code_size = max_code_size
        self.public_url = public_url.rstrip("/")
        # base64 grows 4/3; leave room for the other fields.
        self.max_body = max_code_size * 4 // 3 + 1024 * 1024
        self.secrets: SecretStore | None = None
        # New code, announced so that pods build its image before the first invocation waits for it.
        self.code_feed: NumberedFeed[CodeChange] = NumberedFeed(CODE_FEED_SIZE)
        # Told (account hash, name, version or None for all) under the function's lock when it goes.
        self.deletion_listeners: list[Callable[[str, str, str | None], Awaitable[Any]]] = []

    # ---- helpers -------------------------------------------------------------------------------

    def caller(self, request: web.Request) -> str:
        uid = request.headers.get(ACCOUNT_ID) or self.default_account
        if not valid_account_id(uid):
            raise InvalidParameterValue(f"{ACCOUNT_ID}: invalid account id (expected 1-64 characters [A-Za-z0-9_-])")
        return uid

    def resolve(self, request: web.Request, qualifier: str | None) -> tuple[str, Brn]:
        """(caller uid, BRN of the path's function reference) with the caller's ownership checked.

        ``qualifier`` (from ``?Qualifier=`` or a body's Version) fills a reference without one.
        """
        uid = self.caller(request)
        try:
            brn = resolve_function_ref(request.match_info["ref"], uid, qualifier or None)
        except BrnError as exc:
            raise InvalidParameterValue(str(exc)) from None
        if brn.account != account_hash(uid):
            raise AccessDenied(f"function {brn.unqualified()} does not belong to account {uid}")
        return uid, brn

    @staticmethod
    def read_version(brn: Brn) -> str | None:
        """The stored version a read of ``brn`` means (None: cannot exist); aliases are refused."""
        qualifier = brn.qualifier or LATEST
        if not is_version(qualifier):
            raise InvalidParameterValue(f"qualifier {qualifier!r} is an alias; stubs only serve versions")
        if qualifier == LATEST:
            return LATEST
        number = int(qualifier)
        return str(number) if number >= 1 else None

    async def load(self, brn: Brn) -> FunctionRecord:
        version = self.read_version(brn)
        record = await self.store.read(brn.account, brn.name, version) if version else None
        if record is None:
            raise ResourceNotFound(f"function not found: {brn.with_qualifier(brn.qualifier or LATEST)}")
        return record

    def code_location(self, record: FunctionRecord, brn: Brn) -> CodeLocation:
        """Where clients fetch the record's code: an HTTP URL when a public URL is set."""
        if not self.public_url:
            return record.Code
        sha_hex = code_sha256_hex(record.Configuration.CodeSha256)
        return CodeLocation(
            Location=f"{self.public_url}/v1/code/{brn.account}/{quote(brn.name)}/{sha_hex}.zip",
            RepositoryType=REPOSITORY_HTTP,
            LogType=record.Code.LogType,
        )

    def present(self, record: FunctionRecord, brn: Brn) -> dict[str, Any]:
        """The record as clients see it."""
        record.Code = self.code_location(record, brn)
        return record.to_dict()

    def announce_code(self, record: FunctionRecord, brn: Brn) -> None:
        cfg = record.Configuration
        location = self.code_location(record, brn)
        self.code_feed.append(lambda seq: CodeChange(
            Seq=seq, FunctionBrn=cfg.FunctionArn, Uid=cfg.Uid, CodeSha256=cfg.CodeSha256, CodeSize=cfg.CodeSize,
            Runtime=cfg.Runtime, Code=CodeLocation.from_dict(location.to_dict())))

    async def inspect_code(self, code_b64: str | None) -> tuple[bytes, codezip.CodeArchive]:
        if code_b64 is None:
            data = default_code_zip()
            return data, codezip.inspect_zip(data)
        # Decoding and decompressing up to the limits takes a while: keep the event loop free.
        return await asyncio.to_thread(_decode_and_inspect, code_b64, self.max_code_size)

    @staticmethod
    def versioned(record: FunctionRecord, brn: Brn, version: str) -> FunctionRecord:
        """A copy of ``record`` as ``version``, with its own ARN and CommitId."""
        copy = FunctionRecord.from_dict(record.to_dict())
        copy.Configuration.Version = version
        copy.Configuration.FunctionArn = str(brn.with_qualifier(version))
        copy.Configuration.CommitId = str(uuid.uuid4())
        return copy

    # ---- routes --------------------------------------------------------------------------------

    async def hello(self, request: web.Request) -> web.Response:
        return web.Response(text="hello controller stubs")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def create_function(self, request: web.Request) -> web.Response:
        body = await read_json(request, max_size=self.max_body)
        fields = parse_function_fields(body, self.runtimes)
        # As in the original, the version may come in the reference (name:1) or as Version.
        uid, brn = self.resolve(request, _expect(body, "Version", str))
        publish = brn.qualifier if brn.qualifier not in (None, LATEST) else None
        if publish is not None and not _PUBLISHED_VERSION_RE.match(publish):
            raise InvalidParameterValue(f"Version: {publish!r} is not a version number (1, 2, ...) or $LATEST")

        cfg = FunctionConfiguration(
            Runtime=DEFAULT_RUNTIME,
            Timeout=DEFAULT_TIMEOUT,
            MemorySize=DEFAULT_MEMORY_SIZE,
            Handler=DEFAULT_HANDLER,
        )
        concurrency = Concurrency()
        fields.apply(cfg, concurrency)
        if self.runtimes.get(cfg.Runtime) is None:  # only the default can get here unchecked
            known = ", ".join(self.runtimes.names()) or "none"
            raise InvalidParameterValue(
                f"Runtime: the default runtime {cfg.Runtime!r} is not installed; give one of: {known}"
            )
        _check_handler(cfg.Handler, self._runtime_name(cfg.Runtime))
        code, archive = await self.inspect_code(fields.Code)
        if self._runtime_name(cfg.Runtime) == "provided" and "bootstrap" not in archive.files:  # Lambda's custom runtime
            raise ValidationError("Code: the provided runtime runs an executable file named bootstrap at the root of the zip; this zip has none")
        cfg.FunctionName = brn.name
        cfg.Uid = uid
        cfg.CodeSha256 = archive.sha256_b64
        cfg.CodeSize = archive.size
        cfg.LastModified = _now_rfc3339()
        latest = self.versioned(
            FunctionRecord(Concurrency=concurrency, Configuration=cfg, LogConfig=LogConfig(),
                           Tags=dict(fields.Tags or {})), brn, LATEST
        )
        async with self.store.lock(brn.account, brn.name):
            written = await self.store.write(brn.account, brn.name, LATEST, latest, code)
            if publish is not None:
                written = await self.store.write(
                    brn.account, brn.name, publish, self.versioned(latest, brn, publish), None
                )
        self.announce_code(written, brn)
        log.info("function_created", function=str(brn.unqualified()), version=publish or LATEST, uid=uid)
        return web.json_response(self.present(written, brn))

    async def update_function(self, request: web.Request) -> web.Response:
        uid, brn = self.resolve(request, request.query.get("Qualifier"))
        if brn.qualifier not in (None, LATEST):
            raise InvalidParameterValue("an update changes $LATEST and publishes a new version: give no qualifier")
        body = await read_json(request, max_size=self.max_body)
        fields = parse_function_fields(body, self.runtimes)
        if body.get("Version") is not None:
            raise InvalidParameterValue("Version: an update publishes the next version number itself; omit Version")
        new_code = await self.inspect_code(fields.Code) if fields.Code is not None else None
        async with self.store.lock(brn.account, brn.name):
            current = await self.store.read(brn.account, brn.name, LATEST)
            if current is None:
                raise ResourceNotFound(f"function not found: {brn.with_qualifier(LATEST)}")
            cfg = current.Configuration
            fields.apply(cfg, current.Concurrency)
            if fields.Tags is not None:
                current.Tags = dict(fields.Tags)
            _check_handler(cfg.Handler, self._runtime_name(cfg.Runtime))
            code = None
            if new_code is not None:
                code, archive = new_code
                cfg.CodeSha256 = archive.sha256_b64
                cfg.CodeSize = archive.size
            cfg.LastModified = _now_rfc3339()
            cfg.Uid = uid
            numbers = [int(v) for v in await self.store.versions(brn.account, brn.name) if v != LATEST]
            version = str(max(numbers, default=0) + 1)
            latest = self.versioned(current, brn, LATEST)
            await self.store.write(brn.account, brn.name, LATEST, latest, code)
            written = await self.store.write(brn.account, brn.name, version, self.versioned(latest, brn, version), None)
        if code is not None:
            self.announce_code(written, brn)
        log.info("function_updated", function=str(brn.unqualified()), version=version, uid=uid)
        return web.json_response(self.present(written, brn))

    def _runtime_name(self, runtime: str) -> str:
        config = self.runtimes.get(runtime)
        return config.Name if config is not None else runtime

    async def get_function(self, request: web.Request) -> web.Response:
        _, brn = self.resolve(request, request.query.get("Qualifier"))
        return web.json_response(self.present(await self.load(brn), brn))

    async def list_functions(self, request: web.Request) -> web.Response:
        account = account_hash(self.caller(request))
        configurations = []
        for name in await self.store.functions(account):
            record = await self.store.read(account, name, LATEST)
            if record is not None:
                configurations.append(record.Configuration.to_dict())
        return web.json_response({"Functions": configurations})

    async def list_versions(self, request: web.Request) -> web.Response:
        _, brn = self.resolve(request, None)
        versions = await self.store.versions(brn.account, brn.name)
        if LATEST not in versions:
            raise ResourceNotFound(f"function not found: {brn.unqualified()}")
        configurations = []
        for version in sorted(versions, key=version_sort_key):
            record = await self.store.read(brn.account, brn.name, version)
            if record is not None:
                configurations.append(record.Configuration.to_dict())
        return web.json_response({"Versions": configurations})

    async def delete_function(self, request: web.Request) -> web.Response:
        _, brn = self.resolve(request, request.query.get("Qualifier"))
        async with self.store.lock(brn.account, brn.name):
            if brn.qualifier is None:
                deleted = await self.store.delete_function(brn.account, brn.name)
            elif brn.qualifier == LATEST:
                raise InvalidParameterValue("$LATEST cannot be deleted on its own; delete the function instead")
            else:
                version = self.read_version(brn)
                deleted = bool(version) and await self.store.delete_version(brn.account, brn.name, version)
            if deleted:
                for listener in self.deletion_listeners:
                    await listener(brn.account, brn.name, None if brn.qualifier is None else version)
        if not deleted:
            raise ResourceNotFound(f"function not found: {brn}")
        if brn.qualifier is None and self.secrets is not None:
            self.secrets.forget(brn.account, brn.name)  # a new function of that name starts without them
        log.info("function_deleted", function=str(brn))
        return web.Response(status=204)

    async def get_code(self, request: web.Request) -> web.Response:
        _, brn = self.resolve(request, request.query.get("Qualifier"))
        # A concurrent update may collect the zip between reading the record and the file: retry once.
        for _ in range(2):
            record = await self.load(brn)
            data = await self.store.read_code(
                brn.account, brn.name, code_sha256_hex(record.Configuration.CodeSha256)
            )
            if data is not None:
                return web.Response(body=data, content_type="application/zip")
        raise ResourceNotFound(f"code of {brn} not found")

    async def get_code_by_digest(self, request: web.Request) -> web.Response:
        """Content-addressed code download (the Code.Location given out with --public-url)."""
        account, name = request.match_info["account"], request.match_info["name"]
        match = _CODE_FILE_RE.match(request.match_info["file"])
        try:
            Brn(account, name)
        except BrnError:
            match = None
        data = await self.store.read_code(account, name, match.group(1)) if match else None
        if data is None:
            raise ResourceNotFound("code not found")
        return web.Response(body=data, content_type="application/zip")

    async def code_changes(self, request: web.Request) -> web.Response:
        """Code stored after ``after`` (a number from an earlier answer), waiting up to ``wait`` s for some."""
        batch = await self.code_feed.wait(*feed_query(request, MAX_CODE_FEED_WAIT))
        return web.json_response(CodeChanges(BootID=batch.boot_id, Seq=batch.seq, Lost=batch.lost,
                                             Changes=batch.items).to_dict())

    async def list_runtimes(self, request: web.Request) -> web.Response:
        return web.json_response({"Runtimes": [r.to_dict() for r in self.runtimes.list()]})

    async def get_runtime(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        runtime = self.runtimes.get(name)
        if runtime is None:
            raise ResourceNotFound(f"runtime {name!r} not found; known runtimes: {', '.join(self.runtimes.names())}")
        return web.json_response(runtime.to_dict())


def make_app(
    store: FunctionStore,
    runtimes: RuntimeCatalog,
    *,
    default_account: str = DEFAULT_ACCOUNT_ID,
    max_code_size: int = DEFAULT_MAX_CODE_SIZE,
    public_url: str = "",
    middlewares: Sequence[Any] = (),
    secrets: SecretStore | None = None,
) -> web.Application:
    """The stubs application; the store is started (leftovers cleaned) when the app starts.

    ``middlewares`` run after the request id and error ones (the auth middleware); ``secrets``
    adds the secrets API (stubs/secrets.py)."""
    if not valid_account_id(default_account):
        raise ValueError(f"invalid default account id {default_account!r}")
    handlers = StubsHandlers(
        store, runtimes, default_account=default_account, max_code_size=max_code_size, public_url=public_url
    )
    app = web.Application(middlewares=[request_id_middleware, error_middleware, *middlewares])

    async def started_store(_app: web.Application) -> AsyncIterator[None]:
        await store.start()
        yield

    async def close_feed(_app: web.Application) -> None:
        handlers.code_feed.close()  # ends the pods' long polls now, not at the shutdown timeout

    app.cleanup_ctx.append(started_store)
    app.on_shutdown.append(close_feed)
    h = handlers
    app.router.add_get("/hello", h.hello)
    app.router.add_get("/healthz", h.healthz)
    for prefix in ("/v1", "/inside-v1"):  # the original's "inside" registry path, read-only
        app.router.add_get(f"{prefix}/functions/{{ref}}", h.get_function)
        app.router.add_get(f"{prefix}/runtimes/{{name}}/configuration", h.get_runtime)
    app.router.add_get("/v1/functions", h.list_functions)
    app.router.add_post("/v1/functions/{ref}", h.create_function)
    app.router.add_put("/v1/functions/{ref}", h.update_function)
    app.router.add_delete("/v1/functions/{ref}", h.delete_function)
    app.router.add_get("/v1/functions/{ref}/versions", h.list_versions)
    app.router.add_get("/v1/functions/{ref}/code", h.get_code)
    app.router.add_get("/v1/code/{account}/{name}/{file}", h.get_code_by_digest)
    app.router.add_get("/v1/runtimes", h.list_runtimes)
    app.router.add_get("/v1/code-changes", h.code_changes)
    add_event_invoke_config_routes(app, h)
    from stubs.triggers import add_trigger_routes  # it builds on these handlers

    add_trigger_routes(app, h)
    if secrets is not None:
        handlers.secrets = secrets
        add_secret_routes(app, handlers, secrets)
    add_openapi_route(app, "stubs")
    return app
