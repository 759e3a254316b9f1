"""The real stubs application in one process, for the tests of stubs and of what follows it: a
runtime catalog on disk (``runtime_dir``), a function store (``function_dir``) and a test client of
the app on both (``client``) as fixtures (shared through ``pytest_plugins`` in tests/conftest.py),
the app on a test server (:func:`start_client`), code zips of fixed content, and the create and
error helpers."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from easyfaas.brn import account_hash
from easyfaas.runtimes import RuntimeCatalog
from stubs.app import DEFAULT_ACCOUNT_ID, make_app
from stubs.store import FunctionStore

UID = DEFAULT_ACCOUNT_ID
HASH = "8f6e5a28c663957ea04522547a66d08f"  # account_hash(UID)
OTHER_UID = "someoneelse"
OTHER_HASH = account_hash(OTHER_UID)
MAX_CODE = 256 * 1024

NODE_RUNTIME = """\
Name: nodejs
Aliases: [nodejs10, nodejs12, nodejs20]
Bin: /usr/bin/node
Args: [/var/runtime/bootstrap.js]
Path: /var/faas/runtime/nodejs
Launch: exec
"""
PYTHON_RUNTIME = """\
Name: python3
Aliases: [python3.11]
Bin: /usr/bin/python3
Args: [-I, /var/runtime/bootstrap.py]
Path: /var/faas/runtime/python3
Launch: fork-python
Env: {PYTHONDONTWRITEBYTECODE: "1"}
"""
EXEC_RUNTIME = "Name: exec\nBin: /usr/bin/python3\nArgs: [/var/runtime/exec.py]\nPath: /var/faas/runtime/exec\n"


def make_zip(files: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(2021, 1, 1, 0, 0, 0))
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


CODE_A = make_zip({"index.py": "def handler(event, context):\n    return 'A'\n"})
CODE_B = make_zip({"index.py": "def handler(event, context):\n    return 'B'\n"})


def write_runtimes(runtime_dir: Path) -> None:
    for name, text in (("nodejs", NODE_RUNTIME), ("python3", PYTHON_RUNTIME), ("exec", EXEC_RUNTIME)):
        (runtime_dir / name).mkdir(parents=True, exist_ok=True)
        (runtime_dir / name / "runtime.yaml").write_text(text)


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runtime"
    write_runtimes(d)
    return d


@pytest.fixture
def function_dir(tmp_path: Path) -> Path:
    return tmp_path / "funcData"


async def start_client(function_dir: Path, runtime_dir: Path, **kwargs: Any) -> TestClient:
    store = FunctionStore(function_dir)
    app = make_app(store, RuntimeCatalog.load(runtime_dir), default_account=UID, max_code_size=MAX_CODE, **kwargs)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client(function_dir: Path, runtime_dir: Path) -> AsyncIterator[TestClient]:
    c = await start_client(function_dir, runtime_dir)
    try:
        yield c
    finally:
        await c.close()


async def create(client: TestClient, ref: str, body: Any = None, uid: str | None = None) -> dict[str, Any]:
    headers = {"X-easyfaas-Account-Id": uid} if uid else {}
    data = json.dumps(body) if body is not None else b""
    resp = await client.post(f"/v1/functions/{ref}", data=data, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) >= {"Code", "Message", "Status", "Type"} and body["Status"] == resp.status
    return body
