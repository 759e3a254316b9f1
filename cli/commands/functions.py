"""``ls``, ``describe``, ``versions`` and ``rm``: the registry's records of functions."""

from __future__ import annotations

from typing import Any, Optional

import typer

from cli.client import REGISTRY
from cli.state import state


def _kib(size: Any) -> str:
    return f"{int(size) / 1024:.1f} KiB" if isinstance(size, int) else ""


def ls_command(ctx: typer.Context) -> None:
    """List the account's functions ($LATEST of each)."""
    st = state(ctx)
    doc = st.client().call(REGISTRY, "GET", "/v1/functions", what="listing functions")
    functions = doc.get("Functions") or []
    st.output.table(doc, ("NAME", "RUNTIME", "HANDLER", "MEMORY", "TIMEOUT", "CODE", "MODIFIED"),
                    ((f.get("FunctionName"), f.get("Runtime"), f.get("Handler"), f.get("MemorySize"),
                      f.get("Timeout"), _kib(f.get("CodeSize")), f.get("LastModified")) for f in functions),
                    empty="no functions")


def describe_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Function name.", show_default=False),
    qualifier: Optional[str] = typer.Option(None, "--qualifier", "-q", help="Version to describe (default $LATEST)."),
) -> None:
    """Show a function's configuration, concurrency and tags."""
    st = state(ctx)
    doc = st.client().call(REGISTRY, "GET", f"/v1/functions/{name}", query={"Qualifier": qualifier},
                           what=f"describing function {name}")
    cfg = doc.get("Configuration") or {}
    env = ((cfg.get("Environment") or {}).get("Variables")) or {}
    st.output.fields(doc, [
        ("Name", cfg.get("FunctionName")), ("Version", cfg.get("Version")), ("FunctionArn", cfg.get("FunctionArn")),
        ("Runtime", cfg.get("Runtime")), ("Handler", cfg.get("Handler")), ("MemorySize", cfg.get("MemorySize")),
        ("Timeout", cfg.get("Timeout")), ("Description", cfg.get("Description")),
        ("PodConcurrentQuota", cfg.get("PodConcurrentQuota")),
        ("ReservedConcurrency", (doc.get("Concurrency") or {}).get("ReservedConcurrentExecutions")),
        ("Environment", env), ("Tags", doc.get("Tags") or {}), ("CodeSha256", cfg.get("CodeSha256")),
        ("CodeSize", cfg.get("CodeSize")), ("LastModified", cfg.get("LastModified")),
    ])


def versions_command(ctx: typer.Context, name: str = typer.Argument(..., help="Function name.",
                                                                    show_default=False)) -> None:
    """List a function's versions ($LATEST and every published one)."""
    st = state(ctx)
    doc = st.client().call(REGISTRY, "GET", f"/v1/functions/{name}/versions", what=f"listing versions of {name}")
    st.output.table(doc, ("VERSION", "CODE SHA256", "CODE", "MODIFIED", "DESCRIPTION"),
                    ((v.get("Version"), v.get("CodeSha256"), _kib(v.get("CodeSize")), v.get("LastModified"),
                      v.get("Description")) for v in doc.get("Versions") or []))


def rm_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Function name.", show_default=False),
    version: Optional[str] = typer.Option(None, "--version", "-v",
                                          help="Remove only this published version (default: the whole function)."),
) -> None:
    """Remove a function with all its versions, or one published version."""
    st = state(ctx)
    what = f"removing {name}" + (f" version {version}" if version else "")
    st.client().call(REGISTRY, "DELETE", f"/v1/functions/{name}", query={"Qualifier": version}, what=what)
    doc = {"FunctionName": name, "Version": version, "Deleted": True}
    if st.output.json:
        st.output.document(doc)
    else:
        st.output.raw(f"{name}{' version ' + version if version else ''}: removed")


def register(app: typer.Typer) -> None:
    app.command("ls")(ls_command)
    app.command("describe", no_args_is_help=True)(describe_command)
    app.command("versions", no_args_is_help=True)(versions_command)
    app.command("rm", no_args_is_help=True)(rm_command)
