"""The stack file of ``easyfaas up``: many functions, their settings and triggers in one YAML file,
in the spirit of OpenFaaS's stack.yml. Every error names the field it is about.

::

    version: 1                       # optional; only 1 exists
    provider:                        # optional; overrides the settings' URLs (flags still win)
      url: http://127.0.0.1:8001
      registry_url: http://127.0.0.1:8002
    functions:
      hello:                         # the function name
        dir: ./hello                 # required; relative to the stack file
        runtime: python3             # required
        handler: index.handler       # required
        memory: 128                  # MiB
        timeout: 5                   # seconds
        description: says hello
        concurrency: 10              # concurrent invocations per pod (PodConcurrentQuota)
        environment: {GREETING: hi}
        tags: {com.openfaas.scale.min: "1"}
        install: true                # install requirements.txt / package.json dependencies
        triggers:
          - type: http
            qualifier: $LATEST       # default
            config: {Methods: [GET], Path: /hello}
        async:                       # asynchronous invocation settings (event-invoke-config)
          max_retry_attempts: 1      # 0-2
          max_event_age: 3600        # seconds, 60-21600
          on_failure: audit          # a function of the stack or account, or a BRN
          on_success: brn:cloud:faas:bj:<account>:function:done:$LATEST
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from easyfaas.event_invoke import MAX_EVENT_AGE, MAX_RETRY_ATTEMPTS, MIN_EVENT_AGE, MIN_RETRY_ATTEMPTS

from cli.deployer import FunctionSpec
from cli.exits import UsageError

FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TOP_KEYS = {"version", "provider", "functions"}
PROVIDER_KEYS = {"url", "registry_url"}
FUNCTION_KEYS = {"dir", "runtime", "handler", "memory", "timeout", "description", "concurrency", "environment",
                 "tags", "install", "triggers", "async"}
TRIGGER_KEYS = {"type", "qualifier", "config"}
ASYNC_KEYS = {"max_retry_attempts", "max_event_age", "on_success", "on_failure"}
REQUIRED_FUNCTION_KEYS = ("dir", "runtime", "handler")


class StackError(UsageError):
    def __init__(self, path: Path, where: str, problem: str) -> None:
        super().__init__(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")
        self.where = where


@dataclass
class TriggerSpec:
    type: str
    qualifier: str = "$LATEST"
    config: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"Type": self.type, "Qualifier": self.qualifier, "Config": self.config}


@dataclass
class AsyncSpec:
    """A function's event-invoke-config; destinations are function names or BRNs."""

    max_retry_attempts: int | None = None
    max_event_age: int | None = None
    on_success: str = ""
    on_failure: str = ""

    def body(self, destinations: dict[str, str]) -> dict[str, Any]:
        """The PUT body, ``destinations`` mapping the names given here to BRNs."""
        body: dict[str, Any] = {}
        if self.max_retry_attempts is not None:
            body["MaximumRetryAttempts"] = self.max_retry_attempts
        if self.max_event_age is not None:
            body["MaximumEventAgeInSeconds"] = self.max_event_age
        dest = {key: {"Destination": destinations.get(target, target)}
                for key, target in (("OnSuccess", self.on_success), ("OnFailure", self.on_failure)) if target}
        if dest:
            body["DestinationConfig"] = dest
        return body


@dataclass
class StackFunction:
    spec: FunctionSpec
    install: bool = True
    triggers: list[TriggerSpec] = field(default_factory=list)
    async_config: AsyncSpec | None = None


@dataclass
class Stack:
    path: Path
    functions: list[StackFunction]
    url: str = ""
    registry_url: str = ""


def _type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "nothing"}.get(type(value), type(value).__name__)


def _unknown(path: Path, where: str, doc: dict[str, Any], known: set[str]) -> None:
    extra = sorted(str(k) for k in doc if k not in known)
    if extra:
        prefix = f"{where}." if where else ""
        raise StackError(path, f"{prefix}{extra[0]}", f"unknown field (known: {', '.join(sorted(known))})")


def _string(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise StackError(path, where, f"expected a non-empty string, got {_type(value)}")
    return value


def _integer(path: Path, where: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise StackError(path, where, f"expected an integer, got {_type(value)}")
    if not low <= value <= high:
        raise StackError(path, where, f"must be between {low} and {high}, got {value}")
    return value


def _string_map(path: Path, where: str, value: Any, key_re: re.Pattern[str] | None = None) -> dict[str, str]:
    if not isinstance(value, dict):
        raise StackError(path, where, f"expected a mapping of names to strings, got {_type(value)}")
    out: dict[str, str] = {}
    for key, val in value.items():
        if key_re is not None and not (isinstance(key, str) and key_re.match(key)):
            raise StackError(path, f"{where}.{key}", "invalid name (use [A-Za-z_][A-Za-z0-9_]*)")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise StackError(path, f"{where}.{key}", f"expected a string, got {_type(val)}")
        out[str(key)] = str(val)
    return out


def _trigger(path: Path, where: str, doc: Any) -> TriggerSpec:
    if not isinstance(doc, dict):
        raise StackError(path, where, f"expected a mapping with type and config, got {_type(doc)}")
    _unknown(path, where, doc, TRIGGER_KEYS)
    trigger = TriggerSpec(_string(path, f"{where}.type", doc.get("type")))
    if "qualifier" in doc:
        trigger.qualifier = _string(path, f"{where}.qualifier", str(doc["qualifier"]) if isinstance(
            doc["qualifier"], int) and not isinstance(doc["qualifier"], bool) else doc["qualifier"])
    config = doc.get("config", {})
    if not isinstance(config, dict):
        raise StackError(path, f"{where}.config", f"expected a mapping, got {_type(config)}")
    trigger.config = config
    return trigger


def _async(path: Path, where: str, doc: Any) -> AsyncSpec:
    if not isinstance(doc, dict):
        raise StackError(path, where, f"expected a mapping, got {_type(doc)}")
    _unknown(path, where, doc, ASYNC_KEYS)
    spec = AsyncSpec()
    if "max_retry_attempts" in doc:
        spec.max_retry_attempts = _integer(path, f"{where}.max_retry_attempts", doc["max_retry_attempts"],
                                           MIN_RETRY_ATTEMPTS, MAX_RETRY_ATTEMPTS)
    if "max_event_age" in doc:
        spec.max_event_age = _integer(path, f"{where}.max_event_age", doc["max_event_age"], MIN_EVENT_AGE,
                                      MAX_EVENT_AGE)
    for key in ("on_success", "on_failure"):
        if key in doc:
            setattr(spec, key, _string(path, f"{where}.{key}", doc[key]))
    return spec


def _function(path: Path, name: Any, doc: Any) -> StackFunction:
    where = f"functions.{name}"
    if not isinstance(name, str) or not FUNCTION_NAME_RE.match(name):
        raise StackError(path, where, "invalid function name (1-64 characters of [A-Za-z0-9_-])")
    if not isinstance(doc, dict):
        raise StackError(path, where, f"expected a mapping of settings, got {_type(doc)}")
    _unknown(path, where, doc, FUNCTION_KEYS)
    for key in REQUIRED_FUNCTION_KEYS:
        if key not in doc:
            raise StackError(path, f"{where}.{key}", "required field missing")
    directory = (path.parent / _string(path, f"{where}.dir", doc["dir"])).resolve()
    if not directory.is_dir():
        raise StackError(path, f"{where}.dir", f"{directory} is not a directory")
    spec = FunctionSpec(name=name, directory=directory, runtime=_string(path, f"{where}.runtime", doc["runtime"]),
                        handler=_string(path, f"{where}.handler", doc["handler"]))
    if "memory" in doc:
        spec.memory = _integer(path, f"{where}.memory", doc["memory"], 64, 10240)
    if "timeout" in doc:
        spec.timeout = _integer(path, f"{where}.timeout", doc["timeout"], 1, 900)
    if "concurrency" in doc:
        spec.concurrency = _integer(path, f"{where}.concurrency", doc["concurrency"], 0, 1000)
    if "description" in doc:
        if not isinstance(doc["description"], str):
            raise StackError(path, f"{where}.description", f"expected a string, got {_type(doc['description'])}")
        spec.description = doc["description"]
    if "environment" in doc:
        spec.environment = _string_map(path, f"{where}.environment", doc["environment"] or {}, ENV_NAME_RE)
    if "tags" in doc:
        spec.tags = _string_map(path, f"{where}.tags", doc["tags"] or {})
    install = doc.get("install", True)
    if not isinstance(install, bool):
        raise StackError(path, f"{where}.install", f"expected true or false, got {_type(install)}")
    triggers = doc.get("triggers") or []
    if not isinstance(triggers, list):
        raise StackError(path, f"{where}.triggers", f"expected a list, got {_type(triggers)}")
    return StackFunction(spec, install, [_trigger(path, f"{where}.triggers[{i}]", t) for i, t in enumerate(triggers)],
                         _async(path, f"{where}.async", doc["async"]) if "async" in doc else None)


def parse_stack(path: Path, text: str) -> Stack:
    """The stack file's contents, validated; StackError names the first bad field."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StackError(path, "", f"not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise StackError(path, "", f"expected a mapping with 'functions', got {_type(doc)}")
    _unknown(path, "", doc, TOP_KEYS)
    if "version" in doc and str(doc["version"]) not in ("1", "1.0"):
        raise StackError(path, "version", f"unsupported version {doc['version']!r} (only 1)")
    stack = Stack(path, [])
    provider = doc.get("provider") or {}
    if not isinstance(provider, dict):
        raise StackError(path, "provider", f"expected a mapping, got {_type(provider)}")
    _unknown(path, "provider", provider, PROVIDER_KEYS)
    for key in PROVIDER_KEYS:
        if key in provider:
            value = _string(path, f"provider.{key}", provider[key])
            if not value.startswith(("http://", "https://")):
                raise StackError(path, f"provider.{key}", f"expected an http:// or https:// URL, got {value!r}")
            setattr(stack, key, value)
    functions = doc.get("functions")
    if not isinstance(functions, dict) or not functions:
        raise StackError(path, "functions", f"expected a mapping of function names to settings, got {_type(functions)}")
    stack.functions = [_function(path, name, fdoc) for name, fdoc in functions.items()]
    return stack


def load_stack(path: Path) -> Stack:
    try:
        text = path.read_text()
    except OSError as exc:
        raise StackError(path, "", f"cannot read: {exc.strerror}") from None
    return parse_stack(path, text)
