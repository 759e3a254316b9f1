"""Wire models of the public and internal JSON APIs (stubs, controller, funclet).

Each model is a dataclass whose field names are the JSON keys, PascalCase as on the original's wire.
``to_dict()`` gives the JSON object (keys in field order); ``from_dict()`` checks every value's type
and raises :class:`ModelError` naming the offending field. Unknown keys are ignored, missing keys
and JSON nulls for non-optional fields take the field's default (the Go original marshals unset
pointers as null). Stdlib only.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

REPOSITORY_FILESYSTEM = "filesystem"
# The original's name for "fetch Code.Location with a plain HTTP GET".
REPOSITORY_HTTP = "bos"

LAUNCH_EXEC = "exec"
LAUNCH_FORK_PYTHON = "fork-python"

M = TypeVar("M", bound="WireModel")

class SandboxState(str, enum.Enum):
    """A sandbox's state as the funclet reports it (``ContainerInfo.State``); the controller reads it."""

    STARTING = "starting"
    COLD = "cold"
    WARMUP = "warmup"
    WARM = "warm"
    STOPPED = "stopped"      # its runtime exited; needs a cooldown before reuse
    RESETTING = "resetting"
    DEAD = "dead"            # being destroyed or rebuilt
    REMOVING = "removing"    # being destroyed for good (the pool shrinks)


class FuncletEventType(str, enum.Enum):
    """``FuncletEvent.Type``: what happened to one sandbox (``GET /v1/funclet/events``)."""

    STATE = "state"          # Container.State changed
    EXITED = "exited"        # its runtime ended (Exit says how)
    OOM = "oom"              # the kernel OOM-killed a process in it
    DEFUNCT = "defunct"      # its runner stopped answering; it is rebuilt
    CREATED = "created"      # the pool grew
    REMOVED = "removed"      # the pool shrank



class ModelError(ValueError):
    """A JSON value does not fit its model; the message names the field (dotted path)."""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


Converter = Callable[[Any, str], Any]


def _check_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ModelError(f"{path}: expected a string, got {_type_name(value)}")
    return value


def _check_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"{path}: expected an integer, got {_type_name(value)}")
    return value


def _check_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ModelError(f"{path}: expected a boolean, got {_type_name(value)}")
    return value


def _check_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(f"{path}: expected a number, got {_type_name(value)}")
    return float(value)


def _check_any(value: Any, path: str) -> Any:
    return value


def _converter(tp: Any) -> Converter:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) != 1:
            raise TypeError(f"unsupported union {tp!r}")
        inner = _converter(non_none[0])
        return lambda value, path: None if value is None else inner(value, path)
    if tp is str:
        return _check_str
    if tp is bool:
        return _check_bool
    if tp is int:
        return _check_int
    if tp is float:
        return _check_float
    if tp is Any:
        return _check_any
    if tp is dict or (origin is dict and args and args[1] is Any):

        def plain_dict(value: Any, path: str) -> dict:
            if not isinstance(value, dict):
                raise ModelError(f"{path}: expected an object, got {_type_name(value)}")
            return dict(value)

        return plain_dict
    if origin is dict:
        key_conv, value_conv = _converter(args[0]), _converter(args[1])

        def typed_dict(value: Any, path: str) -> dict:
            if not isinstance(value, dict):
                raise ModelError(f"{path}: expected an object, got {_type_name(value)}")
            return {key_conv(k, f"{path}"): value_conv(v, f"{path}.{k}") for k, v in value.items()}

        return typed_dict
    if origin is list:
        item_conv = _converter(args[0]) if args else _check_any

        def typed_list(value: Any, path: str) -> list:
            if not isinstance(value, list):
                raise ModelError(f"{path}: expected an array, got {_type_name(value)}")
            return [item_conv(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return typed_list
    if isinstance(tp, type) and issubclass(tp, WireModel):
        return lambda value, path: tp._from_dict(value, path)
    raise TypeError(f"unsupported field type {tp!r}")


@functools.cache
def _schema(cls: type) -> tuple[tuple[str, Converter, Callable[[], Any], bool], ...]:
    """(name, converter, default factory, admits null) for each field of a model class."""
    module = sys.modules[cls.__module__].__dict__
    # localns={} so a field named like its type (``Resource: Resource``) resolves to the type.
    hints = typing.get_type_hints(cls, globalns=module, localns={})
    schema = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
            make_default: Callable[[], Any] = lambda default=default: default  # noqa: E731
        elif f.default_factory is not dataclasses.MISSING:
            make_default = f.default_factory
        else:
            raise TypeError(f"{cls.__name__}.{f.name} needs a default")
        tp = hints[f.name]
        nullable = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
        schema.append((f.name, _converter(tp), make_default, nullable))
    return tuple(schema)


def _to_json_value(value: Any) -> Any:
    if isinstance(value, WireModel):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _to_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json_value(v) for v in value]
    return value


class WireModel:
    """Mixin for the dataclasses below: JSON conversion with type checks."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[M], data: Any) -> M:
        return cls._from_dict(data, "")

    @classmethod
    def _from_dict(cls: type[M], data: Any, path: str) -> M:
        if not isinstance(data, dict):
            raise ModelError(f"{path or cls.__name__}: expected an object, got {_type_name(data)}")
        prefix = f"{path}." if path else ""
        values = {}
        for name, convert, make_default, nullable in _schema(cls):
            if name not in data:
                values[name] = make_default()
            elif data[name] is None:
                values[name] = None if nullable else make_default()
            else:
                values[name] = convert(data[name], prefix + name)
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


@dataclass
class Environment(WireModel):
    Variables: dict[str, str] = field(default_factory=dict)


@dataclass
class FunctionConfiguration(WireModel):
    CodeSha256: str = ""  # base64 of the zip's SHA-256, as in the original
    CodeSize: int = 0
    Description: str = ""
    Environment: Environment = field(default_factory=lambda: Environment())
    FunctionArn: str = ""
    FunctionName: str = ""
    Handler: str = "index.handler"
    LastModified: str = ""
    MemorySize: int = 128  # MB
    Runtime: str = ""
    Timeout: int = 3  # seconds
    Version: str = "$LATEST"
    CommitId: str = ""
    Uid: str = ""  # owner's raw account id
    LogType: str = ""
    PodConcurrentQuota: int = 0
    SecretsAsEnvironment: bool = False  # the secrets also as environment variables (always as /var/secrets files)
    # {"Egress": "none" | "all" | ["address:port", ...]}: parsed and checked by easyfaas/egress.py.
    Network: dict[str, Any] = field(default_factory=lambda: {"Egress": "none"})


@dataclass
class CodeLocation(WireModel):
    Location: str = ""
    RepositoryType: str = ""
    LogType: str = ""


@dataclass
class Concurrency(WireModel):
    ReservedConcurrentExecutions: int | None = None
    AccountReservedSum: int = 0


@dataclass
class LogConfig(WireModel):
    LogType: str = ""
    BosDir: str = ""
    Params: str = ""


@dataclass
class FunctionRecord(WireModel):
    """The registry's GetFunctionOutput."""

    Code: CodeLocation = field(default_factory=lambda: CodeLocation())
    Concurrency: Concurrency = field(default_factory=lambda: Concurrency())
    Configuration: FunctionConfiguration = field(default_factory=lambda: FunctionConfiguration())
    LogConfig: LogConfig = field(default_factory=lambda: LogConfig())
    Tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RuntimeConfiguration(WireModel):
    Name: str = ""
    Bin: str = ""
    Path: str = ""
    Args: list[str] = field(default_factory=list)
    Launch: str = LAUNCH_EXEC  # "exec" | "fork-python"
    Env: dict[str, str] = field(default_factory=dict)
    Aliases: list[str] = field(default_factory=list)
    # The runtime can be started before a function is assigned (EASYFAAS_STANDBY_FD, see runner/init.py).
    Standby: bool = False


@dataclass
class Resource(WireModel):
    MilliCPUs: int = 0
    Memory: int = 0  # bytes


@dataclass
class NodeResource(WireModel):
    BaseMemory: int = 0
    Default: Resource = field(default_factory=lambda: Resource())
    Capacity: Resource = field(default_factory=lambda: Resource())
    Reserved: Resource = field(default_factory=lambda: Resource())
    Allocatable: Resource = field(default_factory=lambda: Resource())
    # Identifies one run of the funclet: a new value means its sandboxes were all rebuilt.
    BootID: str = ""
    # The pool's idle size (--container-num), its bound (--max-sandboxes) and its current size.
    IdleSandboxes: int = 0
    MaxSandboxes: int = 0
    Sandboxes: int = 0


@dataclass
class ResourceStats(WireModel):
    MemoryUsage: int = 0
    MemoryLimit: int = 0
    MemoryPeak: int = 0
    CPUUsageNanos: int = 0
    OOMKills: int = 0


@dataclass
class RuntimeExit(WireModel):
    """How a sandbox's language runtime ended (the runner's ``exited`` report, plus the cgroup's OOM count)."""

    Epoch: int = 0  # the sandbox epoch (ContainerInfo.Epoch) the runtime belonged to
    Code: int | None = None
    Signal: int | None = None
    OOMKilled: bool = False
    MemoryLimit: int = 0  # bytes
    Output: str = ""  # tail of the runtime's own stdout/stderr
    Time: float = 0.0  # unix time


@dataclass
class ContainerInfo(WireModel):
    Hostname: str = ""
    ContainerID: str = ""
    HostPid: int = 0
    CurrentEvent: str = ""
    WithStreamMode: bool = False
    IsFrozen: bool = False
    Resource: Resource = field(default_factory=lambda: Resource())
    ResourceStats: ResourceStats | None = None
    State: str = "cold"
    InvokeSocket: str = ""
    Identity: str = ""
    OOMKills: int = 0
    # Incremented at every warmup, reset and rebuild: tells which life of the sandbox an event is about.
    Epoch: int = 0
    LastExit: RuntimeExit | None = None
    # Unix time the runner last answered (built, command or health ping).
    LastLiveness: float = 0.0
    FunctionBrn: str = ""
    # A cold sandbox's pre-started runtime (by runtime Name), waiting for a function of that runtime.
    Standby: str = ""


@dataclass
class WarmupRequest(WireModel):
    ContainerID: str = ""
    RequestID: str = ""
    Code: CodeLocation = field(default_factory=lambda: CodeLocation())
    Configuration: FunctionConfiguration = field(default_factory=lambda: FunctionConfiguration())
    RuntimeConfiguration: RuntimeConfiguration = field(default_factory=lambda: RuntimeConfiguration())
    WithStreamMode: bool = False
    Identity: str = ""
    # The function's secrets (name → value), written to the sandbox's /var/secrets; never in a repr.
    Secrets: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass
class WarmupResponse(WireModel):
    Container: ContainerInfo = field(default_factory=lambda: ContainerInfo())
    InitError: dict[str, Any] | None = None


@dataclass
class ResetRequest(WireModel):
    ContainerID: str = ""
    RequestID: str = ""
    Reason: str = ""


@dataclass
class GrowRequest(WireModel):
    """``POST /v1/funclet/grow``: build up to Count more sandboxes (bounded by --max-sandboxes)."""

    Count: int = 1


@dataclass
class ShrinkRequest(WireModel):
    """``POST /v1/funclet/shrink``: destroy these cold sandboxes (never below --container-num)."""

    ContainerIDs: list[str] = field(default_factory=list)


@dataclass
class ScaleResponse(WireModel):
    """Answer of grow (the sandboxes built) and shrink (``Removed`` and ``Refused`` ids with reasons)."""

    Containers: list[ContainerInfo] = field(default_factory=list)
    Removed: list[str] = field(default_factory=list)
    Refused: dict[str, str] = field(default_factory=dict)


@dataclass
class FuncletEvent(WireModel):
    """A change of one sandbox, as ``GET /v1/funclet/events`` reports it.

    Type: ``state`` (Container.State changed), ``exited`` (its runtime ended: Exit), ``oom`` (the
    kernel OOM-killed a process in it), ``defunct`` (its runner stopped answering; it is rebuilt),
    ``created`` and ``removed`` (the pool grew or shrank).
    """

    Seq: int = 0
    Time: float = 0.0
    Type: str = ""
    ContainerID: str = ""
    Container: ContainerInfo = field(default_factory=lambda: ContainerInfo())
    Exit: RuntimeExit | None = None
    Reason: str = ""


@dataclass
class FuncletEvents(WireModel):
    """A batch of events after a sequence number; Lost means some were dropped (resynchronise)."""

    BootID: str = ""
    Seq: int = 0
    Lost: bool = False
    Events: list[FuncletEvent] = field(default_factory=list)


@dataclass
class CodeChange(WireModel):
    """New code stored by stubs (``GET /v1/code-changes``): what the pod may prepare before it is invoked."""

    Seq: int = 0
    FunctionBrn: str = ""
    Uid: str = ""  # the owner's account id: a reader may fetch the function's record as the owner
    CodeSha256: str = ""
    CodeSize: int = 0
    Runtime: str = ""
    Code: CodeLocation = field(default_factory=lambda: CodeLocation())


@dataclass
class CodeChanges(WireModel):
    """A batch of code changes after a sequence number; Lost means some were dropped."""

    BootID: str = ""
    Seq: int = 0
    Lost: bool = False
    Changes: list[CodeChange] = field(default_factory=list)


@dataclass
class CodePrepareRequest(WireModel):
    """``POST /v1/funclet/code``: build (once) the read-only image of this code, off the request path."""

    Code: CodeLocation = field(default_factory=lambda: CodeLocation())
    CodeSha256: str = ""


@dataclass
class CodePrepareResponse(WireModel):
    CodeSha256: str = ""
    ImageSize: int = 0
    Built: bool = False  # False: the image was there already


def function_identity(cfg: FunctionConfiguration) -> str:
    """What a warm sandbox is bound to: it may only serve requests with the same identity.

    Covers the code (CodeSha256, CommitId) and everything the runtime is started with, so a changed
    handler, limit or environment never reuses a sandbox warmed with the old one.
    """
    material = [
        cfg.FunctionArn,
        cfg.Version,
        cfg.CodeSha256,
        cfg.CommitId,
        cfg.Handler,
        cfg.Runtime,
        cfg.MemorySize,
        cfg.Timeout,
        sorted(cfg.Environment.Variables.items()),
    ]
    encoded = json.dumps(material, ensure_ascii=False, separators=(",", ":"))
    # hashlib is imported here, not at the top: the runner and the zygote import this module for
    # its constants, and hashlib (with OpenSSL) would cost each of them about 4 MiB.
    import hashlib

    return hashlib.sha256(encoded.encode()).hexdigest()
