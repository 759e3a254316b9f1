"""``invoke``: one synchronous or asynchronous invocation through the controller."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from easyfaas.http_vocabulary import EXEC_TIME, FUNCTION_ERROR, INVOKE_TYPE, LOG_RESULT, LOG_TYPE, REQUEST_ID

from cli.client import CONTROLLER, raise_for_error
from cli.exits import CliError, ExitCode, UsageError
from cli.state import state


def read_event(data: str) -> bytes:
    """The event bytes of ``--data``: JSON text, ``@file``, or ``-`` for stdin; checked to be JSON."""
    if data == "-":
        raw = sys.stdin.buffer.read()
        source = "stdin"
    elif data.startswith("@"):
        try:
            raw = Path(data[1:]).read_bytes()
        except OSError as exc:
            raise UsageError(f"--data {data}: cannot read: {exc.strerror}") from None
        source = data[1:]
    else:
        raw = data.encode()
        source = "--data"
    try:
        json.loads(raw or b"{}")
    except ValueError as exc:
        raise UsageError(f"{source}: the event is not valid JSON: {exc}") from None
    return raw or b"{}"


def _decode_payload(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")


def invoke_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Function name or BRN.", show_default=False),
    qualifier: Optional[str] = typer.Option(None, "--qualifier", "-q", help="Version or $LATEST."),
    data: str = typer.Option("{}", "--data", "-d", help="The event: JSON text, @FILE, or - to read stdin."),
    asynchronous: bool = typer.Option(False, "--async", help="Invoke asynchronously: print the request id and "
                                      "Location of the invocation record."),
    tail: bool = typer.Option(False, "--tail", help="Print the function's decoded log tail to stderr."),
    timeout: float = typer.Option(960.0, "--timeout", help="Seconds to wait for the answer."),
) -> None:
    """Invoke a function and print its result (exit 1 when the function fails)."""
    st = state(ctx)
    event = read_event(data)
    headers = {"Content-Type": "application/json"}
    if tail:
        headers[LOG_TYPE] = "Tail"
    if asynchronous:
        headers[INVOKE_TYPE] = "event"
    resp = st.client().send(CONTROLLER, "POST", f"/v1/functions/{name}/invocations",
                            query={"Qualifier": qualifier}, data=event, headers=headers, timeout=timeout)
    request_id = resp.header(REQUEST_ID)
    function_error = resp.header(FUNCTION_ERROR)
    platform_error = resp.platform_error() if not resp.ok else None
    if platform_error is not None or (not resp.ok and not function_error):
        raise_for_error(resp, f"invoking {name}")
    log_tail = ""
    if resp.header(LOG_RESULT):
        try:
            log_tail = base64.b64decode(resp.header(LOG_RESULT)).decode(errors="replace")
        except ValueError:
            log_tail = "(undecodable log tail)"
    if asynchronous:
        location = resp.header("Location")
        doc = {"RequestId": request_id, "StatusCode": resp.status, "Location": location or None}
        if st.output.json:
            st.output.document(doc)
        else:
            st.output.raw(f"RequestId: {request_id}")
            st.output.raw(f"Location: {location or '(the pod keeps no invocation records)'}")
        return
    if tail and log_tail:
        sys.stderr.write(log_tail if log_tail.endswith("\n") else log_tail + "\n")
    if st.output.json:
        doc = {"RequestId": request_id, "StatusCode": resp.status, "FunctionError": function_error or None,
               "ExecutedTimeMs": float(resp.header(EXEC_TIME)) if resp.header(EXEC_TIME) else None,
               "Payload": _decode_payload(resp.body)}
        if tail:
            doc["LogResult"] = log_tail
        st.output.document(doc)
    else:
        st.output.raw(resp.body.decode(errors="replace"))
    if function_error:
        payload = _decode_payload(resp.body)
        kind = payload.get("errorType", "") if isinstance(payload, dict) else ""
        text = payload.get("errorMessage", "") if isinstance(payload, dict) else str(payload)[:200]
        raise CliError(f"function {name} failed ({function_error}): {kind + ': ' if kind else ''}{text}",
                       ExitCode.FUNCTION_ERROR, {"RequestId": request_id, "FunctionError": function_error})


def register(app: typer.Typer) -> None:
    app.command("invoke", no_args_is_help=True)(invoke_command)
