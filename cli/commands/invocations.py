"""``invocations get|ls`` and ``dead-letters ls|redrive``: asynchronous invocations on the controller."""

from __future__ import annotations

import json
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
) -> None:
    """Show an asynchronous invocation's record: status, attempts, result or error."""
    st = state(ctx)
    doc = st.client().call(CONTROLLER, "GET", f"/v1/invocations/{request_id}", what=f"reading invocation {request_id}")
    st.output.fields(doc, [(key, doc.get(key)) for key in (
        "RequestId", "FunctionArn", "Status", "Attempts", "EnqueuedAt", "StartedAt", "FinishedAt", "Result", "Error")])
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
) -> None:
    """List dead letters."""
    st = state(ctx)
    doc = st.client().call(CONTROLLER, "GET", "/v1/dead-letters", query={"FunctionName": function},
                           what="listing dead letters")
    letters = doc.get("DeadLetters", []) if isinstance(doc, dict) else doc or []
    st.output.table(doc, ("ID", "FUNCTION", "ATTEMPTS", "REASON", "ERROR"),
                    ((d.get("Id") or d.get("RequestId"), d.get("FunctionArn"), d.get("Attempts"), d.get("Reason"),
                      json.dumps(d.get("Error"), ensure_ascii=False) if d.get("Error") else "") for d in letters),
                    empty="no dead letters")


@dead_letters.command("redrive", no_args_is_help=True)
def redrive(ctx: typer.Context, letter_id: str = typer.Argument(..., help="The dead letter's id.",
                                                                 show_default=False)) -> None:
    """Enqueue a dead letter again, its attempts reset."""
    st = state(ctx)
    doc = st.client().call(CONTROLLER, "POST", f"/v1/dead-letters/{letter_id}/redrive",
                           what=f"redriving dead letter {letter_id}")
    if st.output.json:
        st.output.document(doc or {"Id": letter_id, "Redriven": True})
    else:
        st.output.raw(f"{letter_id}: enqueued again")


def register(root: typer.Typer) -> None:
    root.add_typer(invocations, name="invocations")
    root.add_typer(dead_letters, name="dead-letters")
