"""The ``Config`` of an ``http`` trigger: checked field by field, normalised, and turned into routes.

``{"Methods": ["GET", "POST"] | ["ANY"], "Path": "/api/users/{id}", "PayloadFormatVersion": "2.0" |
"1.0", "Cors": {"AllowOrigins", "AllowMethods", "AllowHeaders", "ExposeHeaders", "MaxAge",
"AllowCredentials"}, "AuthType": "NONE"}``. Errors are :class:`httptrigger.routes.RouteError`s
naming the field (``Config.Cors.MaxAge``, say).

Stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from easyfaas.triggers import Trigger
from httptrigger.routes import ANY, METHODS, Route, RouteError, RouteTable, Segment, parse_methods, parse_template

HTTP_TRIGGER_TYPE = "http"

PAYLOAD_VERSIONS = ("2.0", "1.0")
AUTH_TYPES = ("NONE", "KEY")  # KEY: the caller's API key, of the route's account or an admin's
MAX_AGE_LIMIT = 86400
_KNOWN = frozenset({"Methods", "Path", "PayloadFormatVersion", "Cors", "AuthType"})
_CORS_KNOWN = frozenset({"AllowOrigins", "AllowMethods", "AllowHeaders", "ExposeHeaders", "MaxAge",
                         "AllowCredentials"})
_ORIGIN_RE = re.compile(r"^(\*|https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?)$")
_HEADER_RE = re.compile(r"^(\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")


@dataclass(frozen=True)
class Cors:
    AllowOrigins: tuple[str, ...] = ()
    AllowMethods: tuple[str, ...] = ()
    AllowHeaders: tuple[str, ...] = ()
    ExposeHeaders: tuple[str, ...] = ()
    MaxAge: int | None = None
    AllowCredentials: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"AllowOrigins": list(self.AllowOrigins), "AllowMethods": list(self.AllowMethods),
                               "AllowHeaders": list(self.AllowHeaders), "ExposeHeaders": list(self.ExposeHeaders),
                               "AllowCredentials": self.AllowCredentials}
        if self.MaxAge is not None:
            out["MaxAge"] = self.MaxAge
        return out


@dataclass(frozen=True)
class HttpTriggerConfig:
    Methods: tuple[str, ...]
    Path: str
    segments: tuple[Segment, ...] = field(compare=False, repr=False)
    PayloadFormatVersion: str = "2.0"
    Cors: Cors | None = None
    AuthType: str = "NONE"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Methods": list(self.Methods), "Path": self.Path,
                               "PayloadFormatVersion": self.PayloadFormatVersion, "AuthType": self.AuthType}
        if self.Cors is not None:
            out["Cors"] = self.Cors.to_dict()
        return out


def parse_http_config(config: Any) -> HttpTriggerConfig:
    """The checked config; RouteError naming the field (``Config.<Field>``) otherwise."""
    if not isinstance(config, dict):
        raise RouteError("Config", "expected an object with Methods and Path")
    unknown = sorted(set(config) - _KNOWN)
    if unknown:
        raise RouteError(f"Config.{unknown[0]}", f"unknown field; known: {', '.join(sorted(_KNOWN))}")
    try:
        methods = parse_methods(config.get("Methods", [ANY]))
    except RouteError as exc:
        raise RouteError("Config.Methods", str(exc).split(": ", 1)[1]) from None
    try:
        segments = parse_template(config.get("Path"))
    except RouteError as exc:
        raise RouteError("Config.Path", str(exc).split(": ", 1)[1]) from None
    version = config.get("PayloadFormatVersion", "2.0")
    if version not in PAYLOAD_VERSIONS:
        raise RouteError("Config.PayloadFormatVersion", f"{version!r} is not \"2.0\" or \"1.0\"")
    auth = config.get("AuthType", "NONE")
    if auth not in AUTH_TYPES:
        raise RouteError("Config.AuthType", f"{auth!r} is not \"NONE\" or \"KEY\"")
    cors = _parse_cors(config["Cors"]) if config.get("Cors") is not None else None
    return HttpTriggerConfig(methods, config["Path"], segments, version, cors, auth)


def _strings(cors: dict[str, Any], key: str, pattern: re.Pattern[str], upper: bool = False) -> tuple[str, ...]:
    value = cors.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RouteError(f"Config.Cors.{key}", "expected a list of strings")
    out = []
    for v in value:
        v = v.upper() if upper else v
        if not pattern.match(v):
            raise RouteError(f"Config.Cors.{key}", f"{v!r} is not valid")
        out.append(v)
    return tuple(out)


def _parse_cors(cors: Any) -> Cors:
    if not isinstance(cors, dict):
        raise RouteError("Config.Cors", "expected an object")
    unknown = sorted(set(cors) - _CORS_KNOWN)
    if unknown:
        raise RouteError(f"Config.Cors.{unknown[0]}", f"unknown field; known: {', '.join(sorted(_CORS_KNOWN))}")
    origins = _strings(cors, "AllowOrigins", _ORIGIN_RE)
    methods = _strings(cors, "AllowMethods", re.compile("^(\\*|" + "|".join(sorted(METHODS)) + ")$"), upper=True)
    allow_headers = _strings(cors, "AllowHeaders", _HEADER_RE)
    expose = _strings(cors, "ExposeHeaders", _HEADER_RE)
    max_age = cors.get("MaxAge")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int)
                                or not -1 <= max_age <= MAX_AGE_LIMIT):
        raise RouteError("Config.Cors.MaxAge", f"expected an integer from -1 to {MAX_AGE_LIMIT}")
    credentials = cors.get("AllowCredentials", False)
    if not isinstance(credentials, bool):
        raise RouteError("Config.Cors.AllowCredentials", "expected a boolean")
    if credentials and "*" in origins:
        raise RouteError("Config.Cors.AllowOrigins", "\"*\" cannot be used with AllowCredentials")
    return Cors(origins, methods, allow_headers, expose, max_age, credentials)


@dataclass(frozen=True)
class RouteTarget:
    """What a route invokes, and how."""

    trigger_id: str
    function_brn: str
    account_id: str
    config: HttpTriggerConfig


def routes_of(trigger: Trigger) -> list[Route[RouteTarget]]:
    """The routes of one ``http`` trigger (one per method); RouteError if its Config is not valid."""
    config = parse_http_config(trigger.Config)
    target = RouteTarget(trigger.TriggerId, trigger.FunctionBrn, trigger.Uid, config)
    return [Route(method, config.segments, target, config.Path) for method in config.Methods]


def route_table(triggers: Iterable[Trigger]) -> RouteTable[RouteTarget]:
    """The table of every ``http`` trigger's routes; RouteConflict on a collision."""
    table: RouteTable[RouteTarget] = RouteTable()
    for trigger in triggers:
        if trigger.Type == HTTP_TRIGGER_TYPE:
            for route in routes_of(trigger):
                table.add(route)
    return table
