"""HTTP routes: route templates, the route table, and which route a request path reaches.

A route is a method (or ``ANY``) and a path template of literal segments, ``{name}`` parameters and
at most one greedy ``{name+}`` tail, as in API Gateway HTTP APIs. Matching picks the most specific
route, the way HTTP APIs do: a route that matches the whole path beats any greedy one; between two
of the same kind, the earlier segments decide (literal beats parameter beats greedy); for the same
template, an explicit method beats ``ANY``.

Request paths are matched segment by segment on the path as received: a segment is percent-decoded
on its own, so an encoded slash (``%2F``) stays inside its segment and never reaches another
route's deeper segments. A path with a ``.`` or ``..`` segment, a NUL byte, a malformed percent
escape or a segment that is not UTF-8 matches nothing.

Stdlib only; no I/O.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Generic, Iterable, TypeVar
from urllib.parse import unquote

T = TypeVar("T")

ANY = "ANY"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_TEMPLATE_LENGTH = 512
MAX_SEGMENTS = 64

_LITERAL_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*,;=:@-]+$")
_PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_.-]{0,63})(\+?)\}$")
_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class RouteError(ValueError):
    """A route template or method is not valid; ``field`` names what is wrong (``Path``, ``Methods``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class RouteConflict(ValueError):
    """A route with the same method and template shape is in the table already."""

    def __init__(self, route_key: str, existing: object) -> None:
        super().__init__(f"route {route_key} exists already")
        self.route_key = route_key
        self.existing = existing


class Kind(enum.IntEnum):
    """A template segment's kind; the order is the precedence (lower wins)."""

    LITERAL = 0
    PARAM = 1
    GREEDY = 2


@dataclass(frozen=True)
class Segment:
    kind: Kind
    value: str  # the literal text, or the parameter's name


def parse_template(path: object) -> tuple[Segment, ...]:
    """The segments of a route template such as ``/api/users/{id}`` or ``/files/{proxy+}``."""
    if not isinstance(path, str) or not path:
        raise RouteError("Path", "expected a path such as /api/users/{id}")
    if len(path) > MAX_TEMPLATE_LENGTH:
        raise RouteError("Path", f"longer than {MAX_TEMPLATE_LENGTH} characters")
    if not path.startswith("/"):
        raise RouteError("Path", f"{path!r} must start with /")
    if path == "/":
        return ()
    parts = path[1:].split("/")
    if len(parts) > MAX_SEGMENTS:
        raise RouteError("Path", f"more than {MAX_SEGMENTS} segments")
    segments: list[Segment] = []
    names: set[str] = set()
    for i, part in enumerate(parts):
        if not part:
            raise RouteError("Path", f"{path!r} has an empty segment (a doubled or trailing /)")
        param = _PARAM_RE.match(part)
        if param:
            name, greedy = param.group(1), bool(param.group(2))
            if name in names:
                raise RouteError("Path", f"parameter {{{name}}} appears twice")
            names.add(name)
            if greedy and i != len(parts) - 1:
                raise RouteError("Path", f"the greedy parameter {{{name}+}} must be the last segment")
            segments.append(Segment(Kind.GREEDY if greedy else Kind.PARAM, name))
            continue
        if "{" in part or "}" in part:
            raise RouteError("Path", f"segment {part!r}: a parameter is a whole segment, {{name}} or {{name+}}")
        if part in (".", "..") or not _LITERAL_RE.match(part):
            raise RouteError("Path", f"segment {part!r} may only use letters, digits and -._~!$&'()*,;=:@")
        segments.append(Segment(Kind.LITERAL, part))
    return tuple(segments)


def parse_methods(methods: object) -> tuple[str, ...]:
    """The route's methods, upper-cased and de-duplicated; ``ANY`` stands alone."""
    if not isinstance(methods, list) or not methods:
        raise RouteError("Methods", 'expected a non-empty list such as ["GET", "POST"] or ["ANY"]')
    seen: list[str] = []
    for m in methods:
        if not isinstance(m, str) or m.upper() not in METHODS | {ANY}:
            raise RouteError("Methods", f"{m!r} is not one of {', '.join(sorted(METHODS | {ANY}))}")
        if m.upper() not in seen:
            seen.append(m.upper())
    if ANY in seen and len(seen) > 1:
        raise RouteError("Methods", "ANY already covers every method; give it alone")
    return tuple(seen)


def template_text(segments: tuple[Segment, ...]) -> str:
    out = []
    for s in segments:
        out.append(s.value if s.kind is Kind.LITERAL else f"{{{s.value}}}" if s.kind is Kind.PARAM
                   else f"{{{s.value}+}}")
    return "/" + "/".join(out)


def shape(segments: tuple[Segment, ...]) -> tuple[tuple[int, str], ...]:
    """What two templates must share to collide: parameter names do not count."""
    return tuple((s.kind.value, s.value if s.kind is Kind.LITERAL else "") for s in segments)


@dataclass(frozen=True)
class Route(Generic[T]):
    method: str
    segments: tuple[Segment, ...]
    target: T
    template: str = ""
    route_key: str = field(init=False, compare=False)  # "GET /pets/{id}": what events call it

    def __post_init__(self) -> None:
        object.__setattr__(self, "route_key", f"{self.method} {self.template or template_text(self.segments)}")

    @property
    def greedy(self) -> bool:
        return bool(self.segments) and self.segments[-1].kind is Kind.GREEDY

    def precedence(self) -> tuple[bool, tuple[int, ...], bool]:
        return (self.greedy, tuple(s.kind for s in self.segments), self.method == ANY)


@dataclass(frozen=True)
class Match(Generic[T]):
    route: Route[T]
    path_parameters: dict[str, str]


def split_path(raw_path: str) -> list[str] | None:
    """The decoded segments of a request path; None for a path no route may see."""
    if not raw_path.startswith("/") or "\x00" in raw_path:
        return None
    if raw_path == "/":
        return []
    segments = raw_path[1:].split("/")
    if "%" in raw_path:
        if _ESCAPE_RE.search(raw_path):
            return None
        try:
            segments = [unquote(raw, errors="strict") if "%" in raw else raw for raw in segments]
        except UnicodeDecodeError:
            return None
        if any("\x00" in seg for seg in segments):
            return None
    if "." in raw_path or "%" in raw_path:
        for seg in segments:
            if seg == "." or seg == "..":
                return None
    return segments


@dataclass
class RouteTable(Generic[T]):
    """Routes by precedence. Built once per change of the trigger set; matching takes no lock."""

    _exact: dict[int, list[Route[T]]] = field(default_factory=dict)
    _greedy: list[Route[T]] = field(default_factory=list)
    _keys: dict[tuple[str, tuple[tuple[int, str], ...]], Route[T]] = field(default_factory=dict)

    @classmethod
    def of(cls, routes: Iterable[Route[T]]) -> RouteTable[T]:
        table: RouteTable[T] = cls()
        for route in routes:
            table.add(route)
        return table

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, route: Route[T]) -> None:
        key = (route.method, shape(route.segments))
        existing = self._keys.get(key)
        if existing is not None:
            raise RouteConflict(route.route_key, existing.target)
        self._keys[key] = route
        bucket = self._greedy if route.greedy else self._exact.setdefault(len(route.segments), [])
        bucket.append(route)
        bucket.sort(key=Route.precedence)

    def conflict(self, method: str, segments: tuple[Segment, ...]) -> Route[T] | None:
        return self._keys.get((method, shape(segments)))

    def match(self, method: str, raw_path: str) -> Match[T] | None:
        """The most specific route for ``method`` and the path as received (no query)."""
        segments = split_path(raw_path)
        if segments is None:
            return None
        return self.match_segments(method, segments)

    def match_segments(self, method: str, segments: list[str]) -> Match[T] | None:
        for route in self._exact.get(len(segments), ()):
            if route.method != method and route.method != ANY:
                continue
            params = _bind(route.segments, segments)
            if params is not None:
                return Match(route, params)
        for route in self._greedy:
            if route.method != method and route.method != ANY:
                continue
            fixed = route.segments[:-1]
            if len(segments) <= len(fixed):
                continue  # a greedy tail takes at least one segment
            params = _bind(fixed, segments[:len(fixed)])
            if params is None:
                continue
            rest = segments[len(fixed):]
            if not any(rest):
                continue
            params[route.segments[-1].value] = "/".join(rest)
            return Match(route, params)
        return None


def _bind(template: tuple[Segment, ...], segments: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for t, seg in zip(template, segments):
        if t.kind is Kind.LITERAL:
            if t.value != seg:
                return None
        elif not seg:
            return None
        else:
            params[t.value] = seg
    return params


_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FUNCTION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VERSION_RE = re.compile(r"^(\$LATEST|[0-9]{1,12})$")


@dataclass(frozen=True)
class FunctionUrl:
    """``/<uid>/<function>[/<version>][/<rest>]``: whose function, which version, and the rawPath."""

    account_id: str
    function: str
    qualifier: str
    raw_path: str


def parse_function_url(raw_path: str) -> FunctionUrl | None:
    """The function URL a request path names; None when it names none (or may not be seen)."""
    if split_path(raw_path) is None:
        return None
    parts = raw_path[1:].split("/", 3)
    if len(parts) < 2 or not _ACCOUNT_RE.match(parts[0]) or not _FUNCTION_RE.match(parts[1]):
        return None
    qualifier = "$LATEST"
    rest = parts[2:]
    if rest:
        version = rest[0].replace("%24", "$")
        if _VERSION_RE.match(version):
            qualifier = version
            rest = rest[1:]
    return FunctionUrl(parts[0], parts[1], qualifier, "/" + "/".join(rest))
