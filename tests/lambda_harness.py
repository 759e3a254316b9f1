"""Helpers for the Lambda parity tests (tests/test_lambda_parity*.py): an HTTP session on the
session pod (the ``http`` fixture, which the test modules import), deploying
and calling a function through the public HTTP contract with its log tail (:class:`Reply`), zips of
a directory tree, ``pip install --target`` for vendored packages, Lambda's own event shapes, and
the small stdlib Runtime API client that ``provided`` bootstraps start from (:func:`python_bootstrap`)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from easyfaas.function_code import ACCOUNT, b64zip
from tests.pod_harness import unique

PIP = [sys.executable, "-m", "pip"]
ISO_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
PYTHON = os.path.realpath(sys.executable)  # bound into every sandbox (runner.prepare.host_binds)

# A minimal Runtime API client the parity tests' Python bootstraps share (stdlib, one keep-alive connection).
CLIENT = f"""#!{PYTHON} -IS
import http.client, json, os, socket, sys, time
API = os.environ["AWS_LAMBDA_RUNTIME_API"]
BASE = "/2018-06-01/runtime"
conn = http.client.HTTPConnection(*API.split(":"))

def api(method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {{}})
    reply = conn.getresponse()
    data = reply.read()
    try:
        data = json.loads(data)
    except ValueError:
        data = data.decode()
    return reply.status, data, reply

def next_event():
    status, event, reply = api("GET", BASE + "/invocation/next")
    return event, reply.getheader("Lambda-Runtime-Aws-Request-Id")

def respond(request_id, result):
    return api("POST", f"{{BASE}}/invocation/{{request_id}}/response", json.dumps(result),
               {{"Content-Type": "application/json"}})[:2]
"""


def python_bootstrap(body: str) -> dict[str, str]:
    return {"bootstrap": CLIENT + body}


@pytest.fixture
async def http(pod):  # noqa: ANN001 - pytest fixture
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        session.pod = pod  # type: ignore[attr-defined]
        yield session


class Reply:
    """One invocation's answer: status, body, the request id header and the log tail."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.request_id = headers.get("X-easyfaas-Request-Id") or headers.get("X-Easyfaas-Request-Id", "")
        log = headers.get("X-Bce-Log-Result")
        self.log = base64.b64decode(log).decode("utf-8", "replace") if log else ""

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r}, log={self.log[-500:]!r})"


async def deploy(http: aiohttp.ClientSession, runtime: str, files: dict[str, str | bytes], *,
                 handler: str = "index.handler", variables: dict[str, str] | None = None,
                 executable: tuple[str, ...] = (), name: str | None = None, timeout: int = 5,
                 quota: int = 1, zip_b64: str | None = None, expect: int = 200) -> str:
    """Create a function; returns its name (or, with ``expect`` other than 200, the error body)."""
    name = name or unique(runtime.replace(".", "").replace("3", "py"))
    body: dict[str, Any] = {"Runtime": runtime, "Handler": handler, "Timeout": timeout, "MemorySize": 128,
                            "PodConcurrentQuota": quota, "Code": zip_b64 or b64zip(files, executable=executable)}
    if variables:
        body["Environment"] = {"Variables": variables}
    async with http.post(f"{http.pod.config.stubs_url}/v1/functions/{name}",  # type: ignore[attr-defined]
                         headers={"X-easyfaas-Account-Id": ACCOUNT}, data=json.dumps(body)) as resp:
        text = await resp.text()
        assert resp.status == expect, text
        return name if expect == 200 else text


async def call(http: aiohttp.ClientSession, name: str, payload: Any = None, *, raw: bytes | None = None) -> Reply:
    data = raw if raw is not None else json.dumps({} if payload is None else payload).encode()
    async with http.post(f"{http.pod.config.controller_url}/v1/functions/{name}/invocations",  # type: ignore[attr-defined]
                         headers={"X-easyfaas-Account-Id": ACCOUNT, "Log-Type": "Tail"}, data=data) as resp:
        return Reply(resp.status, dict(resp.headers), await resp.read())


def zip_of_dir(root: Path, executable: tuple[str, ...] = ()) -> str:
    """The base64 zip of a directory tree (what a user uploads after ``pip install --target``)."""
    files: dict[str, str | bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files[str(path.relative_to(root))] = path.read_bytes()
    return b64zip(files, executable=executable)


def pip_install_into(target: Path, *packages: str) -> None:
    """``pip install --target`` from PyPI; skips the test when the registry cannot be used."""
    result = subprocess.run([*PIP, "install", "-q", "--disable-pip-version-check", "--no-compile",
                             "--only-binary=:all:", "--target", str(target), *packages],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"pip install {' '.join(packages)} failed (no PyPI here?): {result.stderr.strip()[-300:]}")


def log_lines(reply: Reply) -> list[str]:
    return reply.log.splitlines()


def http_api_event(method: str, path: str) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as Lambda receives it."""
    return {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "", "headers":
            {"host": "example.test", "user-agent": "curl/8"}, "requestContext": {
                "accountId": "123456789012", "apiId": "api", "domainName": "example.test", "domainPrefix": "example",
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1",
                         "userAgent": "curl/8"}, "requestId": "abc", "routeKey": "$default", "stage": "$default",
                "time": "01/May/2024:12:00:00 +0000", "timeEpoch": 1714564800000},
            "isBase64Encoded": False}
