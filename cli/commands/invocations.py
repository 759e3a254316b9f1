"""``invocations get|ls`` and ``dead-letters ls|redrive|rm``: asynchronous invocations on the controller."""

from __future__ import annotations

import base64
import json
import sys
from typing import Optional

import typer

from cli.client import CONTROLLER
from cli.exits import CliError, ExitCode
from cli.state import state

invocations = typer.Typer(help="Records of asynchronous invocations.", no_args_is_help=True)
dead_letters = typer.Typer(help="Asynchronous events that exhausted their retries or age.", no_args_is_help=True)

STATUSES = ("queued", "running", "succeeded", "failed", "expired")


@invocations.command("get", no_args_is_help=True)
def get(
    ctx: typer.Context,
    request_id: str = typer.Argument(..., help="The request id `invoke --async` printed.", show_default=False),
    check: bool = typer.Option(False, "--check", help="Exit 1 when the invocation failed or expired."),
    tail: bool = typer.Option(False, "--tail", help="Print the decoded log tail (LogResult) to stderr."),
) -> None:
    """Show an asynchronous invocation's record: status, attempts, result or error."""
    st = state(ctx)
    doc = st.client().call(CONTROLLER, "GET", f"/v1/invocations/{request_id}", what=f"reading invocation {request_id}")
    st.output.fields(doc, [(key, doc.get(key)) for key in (
        "RequestId", "FunctionArn", "Status", "Attempts", "EnqueuedAt", "StartedAt", "FinishedAt", "Result", "Error")])
    if tail and doc.get("LogResult"):
        try:
            text = base64.b64decode(doc["LogResult"]).decode(errors="replace")
        except ValueError:
            text = "(undecodable log tail)"
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
    if check and doc.get("Status") in ("failed", "expired"):
        raise CliError(f"invocation {request_id} {doc.get('Status')}", ExitCode.FUNCTION_ERROR)


@invocations.command("ls")
def ls(
    ctx: typer.Context,
    function: Optional[str] = typer.Option(None, "--function", "-f", help="Only this function's invocations."),
    status: Optional[str] = typer.Option(None, "--status", "-s", help=f"Only this status: {', '.join(STATUSES)}."),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", min=1, help="At most this many, newest first."),
) -> None:
    """List asynchronous invocations, newest first."""
    st = state(ctx)
    doc = st.client().call(CONTROLLER, "GET", "/v1/invocations",
                           query={"FunctionName": function, "Status": status, "Limit": limit},
                           what="listing invocations")
    records = doc.get("Invocations", []) if isinstance(doc, dict) else doc or []
    st.output.table(doc, ("REQUEST ID", "FUNCTION", "STATUS", "ATTEMPTS", "ENQUEUED", "FINISHED"),
                    ((r.get("RequestId"), r.get("FunctionArn"), r.get("Status"), r.get("Attempts"),
                      r.get("EnqueuedAt"), r.get("FinishedAt")) for r in records), empty="no invocations")


@dead_letters.command("ls")
def dl_ls(
    ctx: typer.Context,
    function: Optional[str] = typer.Option(None, "--function", "-f", help="Only this function's dead letters."),
    limit: Optional[int] = typer.Option(None, "--limit", "-l", min=1, help="At most this many, newest first."),
) -> None:
    """List dead letters (their request id is what `redrive` and `rm` take)."""
    st = state(ctx)
    doc = st.client().call(CONTROLLER, "GET", "/v1/dead-letters", query={"FunctionName": function, "Limit": limit},
                           what="listing dead letters")
    letters = doc.get("DeadLetters", []) if isinstance(doc, dict) else doc or []
    st.output.table(doc, ("REQUEST ID", "FUNCTION", "STATUS", "ATTEMPTS", "FINISHED", "ERROR"),
                    ((d.get("RequestId"), d.get("FunctionArn"), d.get("Status"), d.get("Attempts"),
                      d.get("FinishedAt"), json.dumps(d.get("Error"), ensure_ascii=False) if d.get("Error") else "")
                     for d in letters),
                    empty="no dead letters")


@dead_letters.command("redrive", no_args_is_help=True)
def redrive(ctx: typer.Context, request_id: str = typer.Argument(..., help="The dead letter's request id.",
                                                                  show_default=False)) -> None:
    """Enqueue a dead letter again, its attempts reset."""
    st = state(ctx)
    doc = st.client().call(CONTROLLER, "POST", f"/v1/dead-letters/{request_id}/redrive",
                           what=f"redriving dead letter {request_id}")
    if st.output.json:
        st.output.document(doc or {"RequestId": request_id})
    else:
        status = doc.get("Status") if isinstance(doc, dict) else None
        st.output.raw(f"{request_id}: enqueued again" + (f" ({status})" if status else ""))


@dead_letters.command("rm", no_args_is_help=True)
def dl_rm(ctx: typer.Context, request_id: str = typer.Argument(..., help="The dead letter's request id.",
                                                                show_default=False)) -> None:
    """Remove a dead letter for good."""
    st = state(ctx)
    st.client().call(CONTROLLER, "DELETE", f"/v1/dead-letters/{request_id}", what=f"removing dead letter {request_id}")
    if st.output.json:
        st.output.document({"RequestId": request_id, "Deleted": True})
    else:
        st.output.raw(f"{request_id}: removed")


def register(root: typer.Typer) -> None:
    root.add_typer(invocations, name="invocations")
    root.add_typer(dead_letters, name="dead-letters")
