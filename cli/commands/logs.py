"""``logs``: a function's log lines from the controller (``GET /v1/functions/<name>/logs``, JSON lines).

A pod without that route answers 404 "no route": said as such, not as a missing function.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer

from cli.client import CONTROLLER, ApiError
from cli.exits import CliError, ExitCode
from cli.state import state

LOG_API = "GET /v1/functions/<name>/logs"


def format_line(line: bytes) -> str:
    """One JSON log line for people: time, request id, message; anything else as it came."""
    text = line.decode(errors="replace").rstrip("\n")
    try:
        entry: Any = json.loads(text)
    except ValueError:
        return text
    if not isinstance(entry, dict):
        return text
    when = entry.get("Timestamp") or entry.get("timestamp") or entry.get("time") or ""
    rid = entry.get("RequestId") or entry.get("request_id") or ""
    msg = entry.get("Message") or entry.get("message") or entry.get("line") or ""
    if not msg:
        return text
    return " ".join(str(part) for part in (when, rid, str(msg).rstrip("\n")) if part)


def logs_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Function name.", show_default=False),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until Ctrl-C."),
    since: Optional[str] = typer.Option(None, "--since", help="Only lines after this time (RFC 3339 or seconds)."),
    until: Optional[str] = typer.Option(None, "--until", help="Only lines before this time (RFC 3339 or seconds)."),
    request_id: Optional[str] = typer.Option(None, "--request-id", help="Only the lines of this invocation."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many lines."),
) -> None:
    """Print a function's logs (JSON lines as they are with --output json)."""
    st = state(ctx)
    query = {"since": since, "until": until, "request_id": request_id, "limit": limit,
             "follow": "1" if follow else None}
    client = st.client(timeout=3600.0 if follow else None)
    try:
        for line in client.stream_lines(CONTROLLER, f"/v1/functions/{name}/logs", query=query,
                                        what=f"reading the logs of {name}"):
            if not line.strip():
                continue
            if st.output.json:
                sys.stdout.write(line.decode(errors="replace").rstrip("\n") + "\n")
            else:
                sys.stdout.write(format_line(line) + "\n")
            sys.stdout.flush()
    except ApiError as exc:
        if exc.missing_route:
            raise CliError(f"the pod at {st.settings.url} has no log API ({LOG_API}); read the function's output "
                           f"with `easyfaas invoke {name} --tail`", ExitCode.NOT_FOUND, exc.detail) from None
        raise
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("logs", no_args_is_help=True)(logs_command)
