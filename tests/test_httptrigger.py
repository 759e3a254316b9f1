"""The HTTP trigger in front of the real pod: request → event, function result → HTTP response."""

from __future__ import annotations

import base64
import json
import secrets

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from httptrigger.app import build_response, make_app
from easyfaas.function_code import ACCOUNT, b64zip

pytestmark = pytest.mark.e2e

PY_HTTP = (
    "import json, base64\n"
    "def handler(event, context):\n"
    "    if event['path'].endswith('/bin') or event.get('queryStringParameters', {}).get('bin'):\n"
    "        return {'statusCode': 200, 'isBase64Encoded': True, 'body': base64.b64encode(b'\\x00\\x01').decode()}\n"
    "    if event.get('queryStringParameters', {}).get('fail'):\n"
    "        raise ValueError('asked to fail')\n"
    "    return {'statusCode': 201, 'headers': {'X-Echo': event['httpMethod']},\n"
    "            'body': json.dumps({'body': event['body'], 'b64': event['isBase64Encoded'], 'path': event['path']})}\n"
)


@pytest.fixture
async def trigger(pod):  # noqa: ANN001
    name = f"web{secrets.token_hex(3)}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{pod.config.stubs_url}/v1/functions/{name}", headers={"X-easyfaas-Account-Id": ACCOUNT},
                             data=json.dumps({"Runtime": "python3", "Handler": "index.handler",
                                              "Code": b64zip({"index.py": PY_HTTP})})) as r:
            assert r.status == 200, await r.text()
    client = TestClient(TestServer(make_app(pod.config.controller_url)))
    await client.start_server()
    client.fn = name  # type: ignore[attr-defined]
    yield client
    await client.close()


async def test_event_and_response_mapping(trigger: TestClient) -> None:
    resp = await trigger.put(f"/{ACCOUNT}/{trigger.fn}", data=b"plain text", headers={"Content-Type": "text/plain"})
    assert resp.status == 201, await resp.text()
    assert resp.headers["X-Echo"] == "PUT"
    data = json.loads(await resp.text())
    assert data == {"body": "plain text", "b64": False, "path": f"/{ACCOUNT}/{trigger.fn}"}


async def test_binary_bodies_both_ways(trigger: TestClient) -> None:
    resp = await trigger.post(f"/{ACCOUNT}/{trigger.fn}", data=b"\xff\xfe", headers={"Content-Type": "application/octet-stream"})
    data = json.loads(await resp.text())
    assert data["b64"] is True and base64.b64decode(data["body"]) == b"\xff\xfe"
    resp = await trigger.get(f"/{ACCOUNT}/{trigger.fn}", params={"bin": "1"})
    assert resp.status == 200 and await resp.read() == b"\x00\x01"


async def test_function_error_and_unknown_function(trigger: TestClient) -> None:
    resp = await trigger.get(f"/{ACCOUNT}/{trigger.fn}", params={"fail": "1"})
    assert resp.status == 500
    assert (await resp.json())["errorType"] == "ValueError"
    resp = await trigger.get(f"/{ACCOUNT}/doesnotexist{secrets.token_hex(2)}")
    assert resp.status == 404
    assert (await resp.json())["Code"] == "ResourceNotFoundException"
    resp = await trigger.get(f"/{ACCOUNT}/{trigger.fn}/notaversion")
    assert resp.status == 400


def test_plain_results_pass_through() -> None:
    resp = build_response(200, {"Content-Type": "text/plain; charset=utf-8"}, b"Hello world!")
    assert resp.status == 200 and resp.body == b"Hello world!"
    resp = build_response(429, {"Content-Type": "application/json"}, b'{"Code":"TooManyRequestsException"}')
    assert resp.status == 429
