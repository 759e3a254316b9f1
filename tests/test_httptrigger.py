"""``python -m httptrigger``'s parts in front of the real pod: function URLs over a second HTTP hop
(request → payload 2.0 event, function result → HTTP response, Lambda function URL errors)."""

from __future__ import annotations

import base64
import json
import secrets
from typing import AsyncIterator

import aiohttp
import pytest

from easyfaas.function_code import ACCOUNT, b64zip
from httptrigger.app import controller_call
from httptrigger.gateway import Gateway
from httptrigger.response import map_result
from httptrigger.server import HttpServer

pytestmark = pytest.mark.e2e

PY_HTTP = (
    "import json, base64\n"
    "def handler(event, context):\n"
    "    if event['rawPath'].endswith('/bin') or event.get('queryStringParameters', {}).get('bin'):\n"
    "        return {'statusCode': 200, 'isBase64Encoded': True, 'body': base64.b64encode(b'\\x00\\x01').decode()}\n"
    "    if event.get('queryStringParameters', {}).get('fail'):\n"
    "        raise ValueError('asked to fail')\n"
    "    return {'statusCode': 201, 'headers': {'X-Echo': event['requestContext']['http']['method']},\n"
    "            'body': json.dumps({'body': event.get('body'), 'b64': event['isBase64Encoded'],\n"
    "                                'path': event['rawPath']})}\n"
)


class Trigger:
    def __init__(self, url: str, fn: str, http: aiohttp.ClientSession) -> None:
        self.url, self.fn, self.http = url, fn, http


@pytest.fixture
async def trigger(pod) -> AsyncIterator[Trigger]:  # noqa: ANN001
    name = f"web{secrets.token_hex(3)}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{pod.config.stubs_url}/v1/functions/{name}", headers={"X-easyfaas-Account-Id": ACCOUNT},
                             data=json.dumps({"Runtime": "python3", "Handler": "index.handler",
                                              "Code": b64zip({"index.py": PY_HTTP})})) as r:
            assert r.status == 200, await r.text()
        server = HttpServer(Gateway(controller_call(pod.config.controller_url, http)).handle, max_body_size=6 << 20)
        await server.start("127.0.0.1", 0)
        try:
            yield Trigger(f"http://127.0.0.1:{server.port}", name, http)
        finally:
            await server.close(5)


async def test_event_and_response_mapping(trigger: Trigger) -> None:
    async with trigger.http.put(f"{trigger.url}/{ACCOUNT}/{trigger.fn}/users/42", data=b"plain text",
                                headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 201, await resp.text()
        assert resp.headers["X-Echo"] == "PUT"
        assert json.loads(await resp.text()) == {"body": "plain text", "b64": False, "path": "/users/42"}


async def test_binary_bodies_both_ways(trigger: Trigger) -> None:
    async with trigger.http.post(f"{trigger.url}/{ACCOUNT}/{trigger.fn}", data=b"\xff\xfe",
                                 headers={"Content-Type": "application/octet-stream"}) as resp:
        data = json.loads(await resp.text())
    assert data["b64"] is True and base64.b64decode(data["body"]) == b"\xff\xfe"
    async with trigger.http.get(f"{trigger.url}/{ACCOUNT}/{trigger.fn}", params={"bin": "1"}) as resp:
        assert resp.status == 200 and await resp.read() == b"\x00\x01"


async def test_function_error_and_unknown_function(trigger: Trigger) -> None:
    async with trigger.http.get(f"{trigger.url}/{ACCOUNT}/{trigger.fn}", params={"fail": "1"}) as resp:
        assert resp.status == 502  # a Lambda function URL's answer to a function error
        assert b"asked to fail" not in await resp.read()
    async with trigger.http.get(f"{trigger.url}/{ACCOUNT}/doesnotexist{secrets.token_hex(2)}") as resp:
        assert resp.status == 404 and await resp.json() == {"message": "Not Found"}
    async with trigger.http.get(f"{trigger.url}/{ACCOUNT}/{trigger.fn}/notaversion") as resp:
        assert resp.status == 201 and json.loads(await resp.text())["path"] == "/notaversion"


def test_plain_results_pass_through() -> None:
    answer = map_result(b'{"statusCode": 200, "body": "Hello world!"}', "application/json", "2.0")
    assert answer.status == 200 and answer.body == b"Hello world!"
