"""The ``easyfaas`` application: root options (where the pod is, who calls, how to print) and the
command groups of :mod:`cli.commands`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from cli.commands import deploy, functions, invocations, invoke, keys, logs, triggers
from cli.exits import EXIT_CODES_HELP
from cli.output import Output
from cli.settings import ENVIRONMENT, resolve
from cli.state import CliState

HELP = """Deploy, invoke and manage functions on an EasyFaaS pod.

Settings come from flags, then the environment (EASYFAAS_URL, EASYFAAS_REGISTRY_URL, EASYFAAS_KEY,
EASYFAAS_ACCOUNT, EASYFAAS_PROFILE), then the chosen profile of ~/.config/easyfaas/config.yaml,
then the defaults (controller http://127.0.0.1:8001, registry http://127.0.0.1:8002).
"""

app = typer.Typer(name="easyfaas", help=HELP, epilog=EXIT_CODES_HELP, no_args_is_help=True,
                  add_completion=False, context_settings={"help_option_names": ["-h", "--help"]},
                  pretty_exceptions_enable=False, rich_markup_mode="markdown")


@app.callback()
def root(
    ctx: typer.Context,
    url: Optional[str] = typer.Option(None, "--url", help="Controller URL (invocations, async records) "
                                      "(env EASYFAAS_URL; default http://127.0.0.1:8001)."),
    registry_url: Optional[str] = typer.Option(None, "--registry-url", help="Function registry (stubs) URL "
                                               "(env EASYFAAS_REGISTRY_URL; default http://127.0.0.1:8002)."),
    key: Optional[str] = typer.Option(None, "--key", help="API key, sent as Authorization: Bearer "
                                      "(env EASYFAAS_KEY)."),
    account: Optional[str] = typer.Option(None, "--account", help="Account id, sent as X-easyfaas-Account-Id "
                                          "(env EASYFAAS_ACCOUNT)."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile of the config file to use "
                                          "(env EASYFAAS_PROFILE)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Profile file (env EASYFAAS_CONFIG; default "
                                          "~/.config/easyfaas/config.yaml)."),
    output: str = typer.Option("text", "--output", "-o", help="text for people, json for scripts."),
) -> None:
    st = ctx.obj if isinstance(ctx.obj, CliState) else CliState()
    ctx.obj = st
    st.output = Output("json" if output == "json" else "text")
    flags = {"url": url, "registry_url": registry_url, "key": key, "account": account}
    st.settings = resolve(flags, os.environ, config=config, profile=profile or "", output=output)
    st.explicit = {k for k, var in ENVIRONMENT.items() if flags.get(k) or os.environ.get(var)}


for group in (deploy, functions, invoke, logs, triggers, invocations, keys):
    group.register(app)
