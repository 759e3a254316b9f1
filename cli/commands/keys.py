"""``keys create|ls|rm``: the registry's API key admin API (``/v1/keys``; admin keys only)."""

from __future__ import annotations

from typing import Optional

import typer

from cli.client import REGISTRY
from cli.state import state

app = typer.Typer(help="Manage API keys (needs an admin key: --key or EASYFAAS_KEY).", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    account: Optional[str] = typer.Option(None, "--for", help="Account the key acts for (omit with --admin: any)."),
    admin: bool = typer.Option(False, "--admin", help="An admin key: every account and the admin routes."),
    description: str = typer.Option("", "--description", help="What the key is for (shown by keys ls)."),
) -> None:
    """Make a key; prints it (this is the only time it is shown)."""
    st = state(ctx)
    doc = st.client().call(REGISTRY, "POST", "/v1/keys",
                           body={"Account": account, "Admin": admin, "Description": description},
                           what="creating an API key")
    if st.output.json:
        st.output.document(doc)
    else:
        st.output.raw(str(doc.get("Key", "")))


@app.command("ls")
def ls(ctx: typer.Context) -> None:
    """List the keys (never their secrets)."""
    st = state(ctx)
    doc = st.client().call(REGISTRY, "GET", "/v1/keys", what="listing API keys")
    keys = doc.get("Keys", []) if isinstance(doc, dict) else []
    st.output.table(doc, ("KEY ID", "ACCOUNT", "ADMIN", "DESCRIPTION", "CREATED"),
                    ((k.get("Id"), k.get("Account") or "-", "yes" if k.get("Admin") else "no", k.get("Description"),
                      k.get("Created")) for k in keys), empty="no API keys")


@app.command("rm", no_args_is_help=True)
def rm(ctx: typer.Context, key_id: str = typer.Argument(..., help="The key's id (keys ls).", show_default=False)
       ) -> None:
    """Revoke a key: it stops working at once, in every daemon of the pod."""
    st = state(ctx)
    st.client().call(REGISTRY, "DELETE", f"/v1/keys/{key_id}", what=f"revoking API key {key_id}")
    if st.output.json:
        st.output.document({"Id": key_id, "Deleted": True})
    else:
        st.output.raw(f"{key_id}: revoked")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="keys")
