"""One HTTP request as the gateway received it: what both payload formats are built from.

Stdlib only; the server fills it, the payload builders read it.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

# Content types whose bodies reach the function as text; anything else is base64, as API Gateway
# and function URLs send binary media.
_TEXT_PREFIXES = ("text/",)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TEXT_TYPES = frozenset({"application/json", "application/javascript", "application/xml",
                         "application/x-www-form-urlencoded", "application/graphql", "application/ld+json",
                         "application/x-javascript", "application/ecmascript"})


@dataclass
class HttpRequest:
    method: str
    raw_path: str                       # as received, still percent-encoded, no query
    raw_query: str                      # without the ?
    headers: list[tuple[str, str]]      # in arrival order, names as sent
    body: bytes = b""
    source_ip: str = "127.0.0.1"
    protocol: str = "HTTP/1.1"
    request_id: str = ""
    time_epoch_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    server_port: int = 0

    @functools.cached_property
    def last_values(self) -> dict[str, str]:
        """The last value of each header, by lower-case name."""
        return {name.lower(): value for name, value in self.headers}

    def header(self, lower_name: str) -> str | None:
        """The last value of a header (``lower_name`` in lower case)."""
        return self.last_values.get(lower_name)

    @functools.cached_property
    def forwarded(self) -> list[tuple[str, str]]:
        """The headers, names lower-cased, as API Gateway passes them on: with X-Forwarded-For (the
        client appended), -Proto and -Port, which web frameworks read for the client and scheme."""
        out = [(name.lower(), value) for name, value in self.headers]
        last = self.last_values
        if "x-forwarded-for" in last:
            out = [(n, f"{v}, {self.source_ip}" if n == "x-forwarded-for" else v) for n, v in out]
        else:
            out.append(("x-forwarded-for", self.source_ip))
        if "x-forwarded-proto" not in last:
            out.append(("x-forwarded-proto", "http"))
        if "x-forwarded-port" not in last and self.server_port:
            out.append(("x-forwarded-port", str(self.server_port)))
        return out

    def host(self) -> str:
        host = self.header("host") or "localhost"
        if host.startswith("["):
            return host.split("]")[0] + "]"
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def body_is_text(content_type: str | None, content_encoding: str | None, body: bytes) -> bool:
    """Whether the body goes to the function as a string (else base64 with isBase64Encoded)."""
    if not body:
        return True
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        return False
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media and not (media.startswith(_TEXT_PREFIXES) or media in _TEXT_TYPES or media.endswith(("+json", "+xml"))):
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def clf_time(epoch_ms: int) -> str:
    """``12/Mar/2020:19:03:58 +0000``: the request time as API Gateway writes it."""
    return _clf_second(epoch_ms // 1000)


@functools.lru_cache(maxsize=4)  # requests of one second share it
def _clf_second(second: int) -> str:
    t = time.gmtime(second)
    return f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
