"""Runs wrk (the load generator) and parses what it prints.

wrk is C and event driven: at the rates a Python server reaches here it uses a fraction of a core,
so it is not the bottleneck the way an aiohttp client is (which saturates at 4-6k req/s). Requests
are POSTs with a small JSON body; a Lua script cycles through a list of paths, so one run can
spread its requests round-robin over many functions.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_PCT_RE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL_RE = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.M)
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")

_SCRIPT = """
local paths = {%(paths)s}
local i = 0
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(headers)s
request = function()
  i = i %% #paths + 1
  return wrk.format(nil, paths[i])
end
"""


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed something we cannot read."""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # socket errors plus non-2xx answers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed (apt-get install wrk, or `make install`)")
    return path


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse(output: str) -> WrkResult:
    pcts = {int(p): float(v) * _UNITS[u] for p, v, u in _PCT_RE.findall(output)}
    rps = _RPS_RE.search(output)
    total = _TOTAL_RE.search(output)
    if rps is None or total is None or len(pcts) < 4:
        raise WrkError(f"cannot read wrk's output:\n{output[-2000:]}")
    socket_errors = _ERRORS_RE.search(output)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    non2xx = _NON2XX_RE.search(output)
    if non2xx:
        errors += int(non2xx.group(1))
    return WrkResult(requests=int(total.group(1)), seconds=float(total.group(2)) * _UNITS[total.group(3)] / 1000,
                     rps=float(rps.group(1)), p50_ms=pcts[50], p75_ms=pcts[75], p90_ms=pcts[90], p99_ms=pcts[99],
                     errors=errors)


def run_wrk(base_url: str, paths: list[str], *, connections: int, seconds: float, body: str = '{"n": 1}',
            headers: dict[str, str] | None = None, threads: int = 1, timeout_s: float = 10.0) -> WrkResult:
    """One wrk run: ``connections`` keep-alive connections for ``seconds``, POSTing ``body``."""
    if not paths:
        raise ValueError("at least one path is needed")
    header_lines = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in (headers or {}).items())
    script = _SCRIPT % {"paths": ", ".join(_lua_string(p) for p in paths), "body": _lua_string(body),
                        "headers": header_lines}
    with tempfile.TemporaryDirectory(prefix="efbench-wrk-") as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(script)
        cmd = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               f"--timeout={timeout_s:g}s", "--latency", "-s", str(lua), base_url.rstrip("/") + paths[0]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}: {proc.stderr.strip() or proc.stdout[-500:]}")
    return parse(proc.stdout)
