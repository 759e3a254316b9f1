"""Deploying one function: package the directory, create it or publish a new version, wait for it.

A first deploy creates the function and publishes version 1; each later deploy updates $LATEST
(``PUT /v1/functions/<name>``), which publishes the next version. Fields left out of a later deploy
keep their values.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.client import REGISTRY, ApiError, Client, raise_for_error
from cli.exits import UsageError
from cli.packaging import build_package
from cli.progress import QuietReporter, Reporter
from cli.readiness import DEFAULT_TIMEOUT, Readiness, baseline, wait_ready


@dataclass
class FunctionSpec:
    name: str
    directory: Path
    runtime: str | None = None
    handler: str | None = None
    memory: int | None = None
    timeout: int | None = None
    description: str | None = None
    concurrency: int | None = None           # PodConcurrentQuota: concurrent invocations per pod
    environment: dict[str, str] | None = None
    tags: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        """The create/update fields this spec sets (Code added by the deployer)."""
        body: dict[str, Any] = {}
        for key, value in (("Runtime", self.runtime), ("Handler", self.handler), ("MemorySize", self.memory),
                           ("Timeout", self.timeout), ("Description", self.description),
                           ("PodConcurrentQuota", self.concurrency), ("Tags", self.tags)):
            if value is not None:
                body[key] = value
        if self.environment is not None:
            body["Environment"] = {"Variables": dict(self.environment)}
        return body


@dataclass
class BuildOptions:
    python: str = sys.executable
    npm: str = "npm"
    install: bool = True
    wait: bool = True
    wait_timeout: float = DEFAULT_TIMEOUT


@dataclass
class DeployResult:
    name: str
    created: bool
    record: dict[str, Any]
    installed: list[str] = field(default_factory=list)
    readiness: Readiness | None = None

    def to_dict(self) -> dict[str, Any]:
        cfg = self.record.get("Configuration") or {}
        return {"FunctionName": self.name, "Created": self.created, "Version": cfg.get("Version"),
                "FunctionArn": cfg.get("FunctionArn"), "CodeSha256": cfg.get("CodeSha256"),
                "CodeSize": cfg.get("CodeSize"), "DependenciesInstalled": self.installed,
                **(self.readiness.to_dict() if self.readiness else {"Ready": None})}


def function_exists(client: Client, name: str) -> bool:
    resp = client.send(REGISTRY, "GET", f"/v1/functions/{name}")
    if resp.status == 404:
        err = resp.platform_error()
        if err is None or not ApiError.is_missing_route(err, resp.status):
            return False
    raise_for_error(resp, f"reading function {name}")
    return True


def deploy(client: Client, spec: FunctionSpec, options: BuildOptions, reporter: Reporter | None = None) -> DeployResult:
    reporter = reporter or QuietReporter()
    exists = function_exists(client, spec.name)
    if not exists and not (spec.runtime and spec.handler):
        raise UsageError(f"{spec.name} is a new function: give its runtime and handler (--runtime, --handler)")
    package = build_package(spec.directory, python=options.python, npm=options.npm, install=options.install,
                            reporter=reporter)
    before = baseline(client) if options.wait else None
    body = spec.body()
    reporter.start(f"uploading {package.size / 1024:.0f} KiB", total=1)
    body["Code"] = base64.b64encode(package.zip_bytes).decode()
    if exists:
        record = client.call(REGISTRY, "PUT", f"/v1/functions/{spec.name}", body=body,
                             what=f"updating function {spec.name}", timeout=300)
    else:
        body["Version"] = "1"
        record = client.call(REGISTRY, "POST", f"/v1/functions/{spec.name}", body=body,
                             what=f"creating function {spec.name}", timeout=300)
    reporter.advance()
    reporter.finish()
    result = DeployResult(spec.name, not exists, record, package.installed)
    if before is not None:
        result.readiness = wait_ready(client, before, record, timeout=options.wait_timeout, reporter=reporter)
    return result
