"""``triggers add|ls|rm``: the registry's trigger API (``/v1/functions/<name>/triggers``)."""

from __future__ import annotations

import json
from typing import Any, List, Optional

import typer

from cli.client import REGISTRY
from cli.exits import UsageError
from cli.state import state

app = typer.Typer(help="Manage a function's triggers (HTTP routes and others).", no_args_is_help=True)


def trigger_config(config: Optional[str], methods: list[str], path: Optional[str]) -> dict[str, Any]:
    """The Config of ``triggers add``: --config JSON, with --method/--path filled in for HTTP routes."""
    doc: dict[str, Any] = {}
    if config:
        try:
            doc = json.loads(config)
        except ValueError as exc:
            raise UsageError(f"--config: not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise UsageError("--config: expected a JSON object")
    if methods:
        doc["Methods"] = [m.upper() for m in methods]
    if path:
        doc["Path"] = path
    return doc


@app.command("add", no_args_is_help=True)
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Function name.", show_default=False),
    type_: str = typer.Option("http", "--type", help="Trigger type (http, ...)."),
    qualifier: str = typer.Option("$LATEST", "--qualifier", "-q", help="Version the trigger invokes."),
    config: Optional[str] = typer.Option(None, "--config", help="The trigger's Config as a JSON object."),
    method: List[str] = typer.Option([], "--method", help="HTTP route method (GET, POST, ..., ANY); repeatable."),
    path: Optional[str] = typer.Option(None, "--path", help="HTTP route path, e.g. /api/users/{id}."),
) -> None:
    """Add a trigger to a function; prints its TriggerId."""
    st = state(ctx)
    body = {"Type": type_, "Qualifier": qualifier, "Config": trigger_config(config, method, path)}
    doc = st.client().call(REGISTRY, "POST", f"/v1/functions/{name}/triggers", body=body,
                           what=f"adding a {type_} trigger to {name}")
    if st.output.json:
        st.output.document(doc)
    else:
        st.output.raw(str(doc.get("TriggerId", "")))


@app.command("ls", no_args_is_help=True)
def ls(ctx: typer.Context, name: str = typer.Argument(..., help="Function name.", show_default=False)) -> None:
    """List a function's triggers."""
    st = state(ctx)
    doc = st.client().call(REGISTRY, "GET", f"/v1/functions/{name}/triggers", what=f"listing triggers of {name}")
    triggers = doc.get("Triggers", []) if isinstance(doc, dict) else doc or []
    st.output.table(doc, ("TRIGGER ID", "TYPE", "QUALIFIER", "CONFIG", "CREATED"),
                    ((t.get("TriggerId"), t.get("Type"), t.get("Qualifier"),
                      json.dumps(t.get("Config") or {}, ensure_ascii=False), t.get("CreatedAt")) for t in triggers),
                    empty=f"{name} has no triggers")


@app.command("rm", no_args_is_help=True)
def rm(ctx: typer.Context, name: str = typer.Argument(..., help="Function name.", show_default=False),
       trigger_id: str = typer.Argument(..., help="The trigger's TriggerId.", show_default=False)) -> None:
    """Remove one trigger of a function."""
    st = state(ctx)
    st.client().call(REGISTRY, "DELETE", f"/v1/functions/{name}/triggers/{trigger_id}",
                     what=f"removing trigger {trigger_id} of {name}")
    if st.output.json:
        st.output.document({"FunctionName": name, "TriggerId": trigger_id, "Deleted": True})
    else:
        st.output.raw(f"{trigger_id}: removed")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="triggers")
