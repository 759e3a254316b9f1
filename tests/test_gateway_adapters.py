"""Real web frameworks behind their popular Lambda adapters, deployed as functions and reached
through gateway routes with a real HTTP client: Starlette (ASGI) behind Mangum, Express behind
serverless-http — path parameters, query strings, JSON bodies, cookies, non-200 statuses with
custom headers and a binary response, with payload 2.0 and 1.0, and a CORS preflight.

The adapters are installed from the package registries at test time (``pip install --target``,
``npm install``) into the function's zip; when that fails the tests skip, saying why."""

from __future__ import annotations

import base64
import io
import json
import secrets
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway_harness import add_trigger, deploy, gw_pod, http, until_routed  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASGI_APP = """\
from mangum import Mangum
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def user(request):
    return JSONResponse({"id": request.path_params["id"], "q": request.query_params.get("q"),
                         "tags": request.query_params.getlist("tag"), "cookie": request.cookies.get("session"),
                         "path": request.url.path, "method": request.method})


async def create(request):
    response = JSONResponse({"created": await request.json()}, status_code=201, headers={"X-Created": "yes"})
    response.set_cookie("session", "abc123", path="/")
    response.set_cookie("theme", "dark")
    return response


async def teapot(request):
    return Response("short and stout", status_code=418, headers={"X-Tea": "earl-grey"}, media_type="text/plain")


async def binary(request):
    return Response(bytes(range(256)), media_type="application/octet-stream")


app = Starlette(routes=[Route("/{prefix}/users/{id}", user, methods=["GET", "DELETE"]),
                        Route("/{prefix}/items", create, methods=["POST"]),
                        Route("/{prefix}/teapot", teapot), Route("/{prefix}/binary", binary)])
handler = Mangum(app, lifespan="off")
"""

EXPRESS_APP = """\
const express = require('express');
const serverless = require('serverless-http');

const app = express();
app.use(express.json());
const cookies = (header) => Object.fromEntries((header || '').split(';').filter(Boolean)
  .map((c) => c.trim().split('=')));
app.all('/:prefix/users/:id', (req, res) => res.json({
  id: req.params.id, q: req.query.q ?? null, tags: [].concat(req.query.tag ?? []),
  cookie: cookies(req.headers.cookie).session ?? null, path: req.path, method: req.method,
}));
app.post('/:prefix/items', (req, res) => {
  res.cookie('session', 'abc123', { path: '/' });
  res.cookie('theme', 'dark');
  res.set('X-Created', 'yes').status(201).json({ created: req.body });
});
app.get('/:prefix/teapot', (req, res) => res.status(418).set('X-Tea', 'earl-grey').type('text/plain')
  .send('short and stout'));
app.get('/:prefix/binary', (req, res) => res.type('application/octet-stream')
  .send(Buffer.from([...Array(256).keys()])));
module.exports.handler = serverless(app, { binary: ['application/octet-stream'] });
"""


def _zip_dir(root: Path) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(root).as_posix())
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def asgi_zip(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("asgi")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", str(root),
                           "mangum", "starlette"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"cannot install mangum and starlette from PyPI: {proc.stderr.strip()[-500:]}")
    shutil.rmtree(root / "bin", ignore_errors=True)
    (root / "index.py").write_text(ASGI_APP)
    return _zip_dir(root)


@pytest.fixture(scope="module")
def express_zip(tmp_path_factory: pytest.TempPathFactory) -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    root = tmp_path_factory.mktemp("express")
    (root / "package.json").write_text(json.dumps({"name": "web", "version": "1.0.0", "private": True}))
    proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", "express", "serverless-http"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"cannot install express and serverless-http from npm: {proc.stderr.strip()[-500:]}")
    (root / "index.js").write_text(EXPRESS_APP)
    return _zip_dir(root)


APPS = {"asgi": ("python3", "asgi_zip"), "express": ("nodejs", "express_zip")}


@pytest.fixture(scope="module", params=sorted(APPS))
def webapp(request: pytest.FixtureRequest, gw_pod) -> dict[str, Any]:  # noqa: ANN001, F811
    """The app deployed, with a payload 2.0 and a payload 1.0 route in front of it."""
    import asyncio

    runtime, zip_fixture = APPS[request.param]
    code = request.getfixturevalue(zip_fixture)
    name = f"{request.param}{secrets.token_hex(3)}"

    async def setup() -> None:
        async with aiohttp.ClientSession() as session:
            await deploy(session, gw_pod, name, runtime, code, timeout=30)
            await add_trigger(session, gw_pod, name, {"Methods": ["ANY"], "Path": f"/{name}v2/{{proxy+}}",
                                                      "Cors": {"AllowOrigins": ["https://ui.example"],
                                                               "AllowMethods": ["GET", "POST", "DELETE"],
                                                               "AllowHeaders": ["content-type"]}})
            await add_trigger(session, gw_pod, name, {"Methods": ["ANY"], "Path": f"/{name}v1/{{proxy+}}",
                                                      "PayloadFormatVersion": "1.0"})
            await until_routed(session, f"{gw_pod.gateway_url}/{name}v1/teapot")

    asyncio.run(setup())
    return {"name": name, "url": gw_pod.gateway_url, "kind": request.param}


@pytest.mark.parametrize("version", ["v2", "v1"])
async def test_path_params_query_and_cookies(webapp: dict[str, Any], http: aiohttp.ClientSession,  # noqa: F811
                                             version: str) -> None:
    base = f"{webapp['url']}/{webapp['name']}{version}"
    async with http.get(f"{base}/users/42?q=hello%20world&tag=a&tag=b", headers={"Cookie": "session=s3cr3t; x=1"}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body == {"id": "42", "q": "hello world", "tags": ["a", "b"], "cookie": "s3cr3t",
                    "path": f"/{webapp['name']}{version}/users/42", "method": "GET"}
    async with http.delete(f"{base}/users/7") as r:
        assert r.status == 200 and (await r.json())["method"] == "DELETE"


@pytest.mark.parametrize("version", ["v2", "v1"])
async def test_json_body_status_headers_and_set_cookies(webapp: dict[str, Any],  # noqa: F811
                                                        http: aiohttp.ClientSession, version: str) -> None:
    base = f"{webapp['url']}/{webapp['name']}{version}"
    async with http.post(f"{base}/items", json={"name": "widget", "n": 3}) as r:
        assert r.status == 201, await r.text()
        assert r.headers["X-Created"] == "yes"
        cookies = r.headers.getall("Set-Cookie")
        assert await r.json() == {"created": {"name": "widget", "n": 3}}
    assert len(cookies) == 2, cookies
    assert any(c.startswith("session=abc123") and "Path=/" in c for c in cookies), cookies
    assert any(c.startswith("theme=dark") for c in cookies), cookies
    async with http.get(f"{base}/teapot") as r:
        assert r.status == 418 and r.headers["X-Tea"] == "earl-grey" and await r.text() == "short and stout"


@pytest.mark.parametrize("version", ["v2", "v1"])
async def test_binary_response(webapp: dict[str, Any], http: aiohttp.ClientSession,  # noqa: F811
                               version: str) -> None:
    async with http.get(f"{webapp['url']}/{webapp['name']}{version}/binary") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/octet-stream")
        assert await r.read() == bytes(range(256))


async def test_cors_preflight_and_unknown_route(webapp: dict[str, Any],
                                                http: aiohttp.ClientSession) -> None:  # noqa: F811
    url = f"{webapp['url']}/{webapp['name']}v2/items"
    async with http.options(url, headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "Content-Type"}) as r:
        assert r.status == 204  # answered by the gateway: the app has no OPTIONS route
        assert r.headers["Access-Control-Allow-Origin"] == "https://ui.example"
        assert r.headers["Access-Control-Allow-Methods"] == "GET,POST,DELETE"
    async with http.post(url, json={}, headers={"Origin": "https://ui.example"}) as r:
        assert r.status == 201 and r.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    async with http.get(f"{webapp['url']}/{webapp['name']}v3/items") as r:
        assert r.status == 404 and await r.json() == {"message": "Not Found"}
