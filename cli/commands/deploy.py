"""``deploy`` (one directory) and ``up`` (a stack file)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, List, Optional

import typer

from cli.client import REGISTRY, ApiError, Client
from cli.deployer import BuildOptions, DeployResult, FunctionSpec, deploy
from cli.exits import UsageError
from cli.readiness import DEFAULT_TIMEOUT
from cli.stack import AsyncSpec, TriggerSpec, load_stack
from cli.state import CliState, state


def parse_env(pairs: list[str]) -> dict[str, str] | None:
    """``K=V`` options as a mapping (None when none given)."""
    if not pairs:
        return None
    env: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def _show(st: CliState, result: DeployResult) -> None:
    cfg = result.record.get("Configuration") or {}
    if st.output.json:
        return
    verb = "created" if result.created else "updated"
    ready = result.readiness.how if result.readiness else "not waited for (--no-wait)"
    st.output.raw(f"{result.name}: {verb}, version {cfg.get('Version')} ({cfg.get('FunctionArn')}); {ready}")


def deploy_command(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., help="The function's code directory (zipped without `.git`, `__pycache__`, "
                                     "`.DS_Store`, `.venv`, `node_modules/.cache`, `*.pyc`).", show_default=False),
    name: str = typer.Option(..., "--name", "-n", help="Function name (1-64 characters of [A-Za-z0-9_-])."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r",
                                          help="Runtime: python3, nodejs (or nodejs10/12/...), exec. "
                                               "Required when the function is new."),
    handler: Optional[str] = typer.Option(None, "--handler", "-H",
                                          help="Handler `FILE.EXPORT`, e.g. `index.handler` (exec: a path)."),
    memory: Optional[int] = typer.Option(None, "--memory", "-m", min=64, max=10240, help="Memory in MiB."),
    timeout: Optional[int] = typer.Option(None, "--timeout", "-t", min=1, max=900, help="Timeout in seconds."),
    env: List[str] = typer.Option([], "--env", "-e", help="Environment variable KEY=VALUE; repeatable. Given "
                                  "at all, the set replaces the function's variables."),
    description: Optional[str] = typer.Option(None, "--description", "-d", help="Description (≤ 256 characters)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c", min=0, max=1000,
                                              help="Concurrent invocations per pod (PodConcurrentQuota)."),
    python: str = typer.Option(sys.executable, "--python",
                               help="Python that installs requirements.txt (pip --target); the pod's python3 "
                                    "runtime runs this machine's interpreter."),
    npm: str = typer.Option("npm", "--npm", help="npm that installs package.json dependencies."),
    install: bool = typer.Option(True, "--install/--no-install",
                                 help="Install requirements.txt / package.json dependencies into the package."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the code image is ready."),
    wait_timeout: float = typer.Option(DEFAULT_TIMEOUT, "--wait-timeout", help="Seconds to wait for readiness."),
) -> None:
    """Deploy a directory: create the function (version 1), or publish a new version if it exists.

    Dependencies are installed into a temporary copy of DIR, never DIR itself. Without --no-wait,
    returns once the pod has the code image ready (the README's "Command line reference" says
    what ready means).
    """
    st = state(ctx)
    spec = FunctionSpec(name=name, directory=directory, runtime=runtime, handler=handler, memory=memory,
                        timeout=timeout, description=description, concurrency=concurrency,
                        environment=parse_env(env))
    options = BuildOptions(python=python, npm=npm, install=install, wait=wait, wait_timeout=wait_timeout)
    client = st.client()
    with st.reporter() as reporter:
        result = deploy(client, spec, options, reporter)
    if st.output.json:
        st.output.document(result.to_dict())
    _show(st, result)


def config_matches(wanted: Any, existing: Any) -> bool:
    """Whether a stored trigger Config has what the stack asks for.

    The pod normalises a Config (defaults filled in, methods upper-cased), so the stack's keys are
    looked up in it: lists of names compare without case or order, mappings recursively.
    """
    if isinstance(wanted, dict):
        return isinstance(existing, dict) and all(
            key in existing and config_matches(value, existing[key]) for key, value in wanted.items())
    if isinstance(wanted, list) and all(isinstance(item, str) for item in wanted):
        return (isinstance(existing, list) and all(isinstance(item, str) for item in existing)
                and sorted(i.upper() for i in wanted) == sorted(i.upper() for i in existing))
    return bool(wanted == existing)


def _same_trigger(existing: dict[str, Any], wanted: TriggerSpec) -> bool:
    return (existing.get("Type") == wanted.type and existing.get("Qualifier", "$LATEST") == wanted.qualifier
            and config_matches(wanted.config, existing.get("Config")))


def _sync_triggers(client: Client, name: str, triggers: list[TriggerSpec], *, prune: bool) -> list[dict[str, Any]]:
    """Create the stack's triggers the function lacks (a matching one is kept); with ``prune``, first
    remove the function's triggers the stack does not list (so a changed route does not collide)."""
    if not triggers and not prune:
        return []
    listed = client.call(REGISTRY, "GET", f"/v1/functions/{name}/triggers", what=f"listing triggers of {name}")
    existing = listed.get("Triggers", []) if isinstance(listed, dict) else listed or []
    matches = [next((t for t in existing if _same_trigger(t, wanted)), None) for wanted in triggers]
    if prune:
        kept = {id(t) for t in matches if t is not None}
        for stale in (t for t in existing if id(t) not in kept):
            client.call(REGISTRY, "DELETE", f"/v1/functions/{name}/triggers/{stale.get('TriggerId')}",
                        what=f"removing trigger {stale.get('TriggerId')} of {name}")
    out = []
    for wanted, match in zip(triggers, matches):
        if match is None:
            match = client.call(REGISTRY, "POST", f"/v1/functions/{name}/triggers", body=wanted.body(),
                                what=f"adding a {wanted.type} trigger to {name}")
        out.append(match)
    return out


def up_command(
    ctx: typer.Context,
    file: Path = typer.Option(Path("stack.yaml"), "--file", "-f", help="The stack file (schema: README)."),
    only: List[str] = typer.Option([], "--only", help="Deploy only this function of the stack; repeatable."),
    python: str = typer.Option(sys.executable, "--python", help="Python that installs requirements.txt."),
    npm: str = typer.Option("npm", "--npm", help="npm that installs package.json dependencies."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until each code image is ready."),
    wait_timeout: float = typer.Option(DEFAULT_TIMEOUT, "--wait-timeout", help="Seconds to wait, per function."),
    prune: bool = typer.Option(False, "--prune-triggers", help="Remove the functions' triggers the stack file "
                               "does not list (before adding new ones)."),
) -> None:
    """Deploy every function of a stack file, with its settings, triggers and async invocation config.

    The whole file is validated first; an error names the field (e.g. functions.hello.memory).
    A trigger already present with the same type, qualifier and config is kept, not added twice.
    """
    st = state(ctx)
    stack = load_stack(file)
    unknown = sorted(set(only) - {f.spec.name for f in stack.functions})
    if unknown:
        raise UsageError(f"--only {unknown[0]!r}: no such function in {file}")
    settings = st.settings
    # The stack's provider URLs apply unless a flag or the environment set them (see cli.app).
    overrides = {k: v for k, v in (("url", stack.url), ("registry_url", stack.registry_url))
                 if v and k not in st.explicit}
    client = Client(replace(settings, **overrides))
    chosen = [fn for fn in stack.functions if not only or fn.spec.name in only]
    results: dict[str, dict[str, Any]] = {}
    with st.reporter() as reporter:
        for fn in chosen:
            options = BuildOptions(python=python, npm=npm, install=fn.install, wait=wait, wait_timeout=wait_timeout)
            result = deploy(client, fn.spec, options, reporter)
            try:
                triggers = _sync_triggers(client, fn.spec.name, fn.triggers, prune=prune)
            except ApiError as exc:
                if exc.missing_route:
                    raise UsageError(f"{fn.spec.name}: the pod has no trigger API; remove the triggers of "
                                     f"functions.{fn.spec.name} or upgrade the pod") from None
                raise
            results[fn.spec.name] = {**result.to_dict(), "Triggers": triggers}
            _show(st, result)
    # After every function is deployed: a destination may be a function defined further down.
    for fn in chosen:
        if fn.async_config is not None:
            results[fn.spec.name]["EventInvokeConfig"] = _put_async_config(client, fn.spec.name, fn.async_config)
    if st.output.json:
        st.output.document({"Functions": list(results.values())})


def _put_async_config(client: Client, name: str, spec: AsyncSpec) -> Any:
    """PUT the function's event-invoke-config; destinations given by name become their BRNs."""
    destinations = {}
    for target in (spec.on_success, spec.on_failure):
        if target and not target.startswith("brn:"):
            record = client.call(REGISTRY, "GET", f"/v1/functions/{target}",
                                 what=f"resolving the destination {target} of {name}")
            destinations[target] = record["Configuration"]["FunctionArn"]
    try:
        return client.call(REGISTRY, "PUT", f"/v1/functions/{name}/event-invoke-config",
                           body=spec.body(destinations), what=f"setting the async invocation config of {name}")
    except ApiError as exc:
        if exc.missing_route:
            raise UsageError(f"{name}: the pod has no event-invoke-config API; remove functions.{name}.async "
                             "or upgrade the pod") from None
        raise


def register(app: typer.Typer) -> None:
    app.command("deploy", no_args_is_help=True)(deploy_command)
    app.command("up")(up_command)
