"""Lambda parity of the Node.js runtime: handlers written for AWS Lambda run unchanged.

Real functions in real sandboxes of the shared test pod, one test per behaviour of Lambda's
Node.js runtime (/work/shared/reference/event-contracts.md §3), each named in its docstring. The
web-framework adapter (serverless-http with express) is installed from npm into the zip at test
time; without the registry the test is skipped, saying so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import pytest

from easyfaas.function_code import brn
from tests.lambda_harness import ISO_MS, call, deploy, http, log_lines, zip_of_dir  # noqa: F401 - http: fixture

NPM = shutil.which("npm")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")]


async def test_aws_request_id_is_the_request_id(http: aiohttp.ClientSession) -> None:
    """``context.awsRequestId`` is the invocation's request id, the one the caller gets back."""
    name = await deploy(http, "nodejs", {"index.js": "exports.handler = async (e, context) => context.awsRequestId;\n"})
    reply = await call(http, name)
    assert reply.status == 200, reply
    assert reply.body.decode() == reply.request_id != ""


async def test_context_object_fields(http: aiohttp.ClientSession) -> None:
    """Lambda's Node.js context: functionName, functionVersion, invokedFunctionArn,
    memoryLimitInMB (a string), logGroupName, logStreamName, identity and clientContext (undefined
    without a caller's), getRemainingTimeInMillis(), callbackWaitsForEmptyEventLoop (true)."""
    name = await deploy(http, "nodejs", {"index.js": """
        exports.handler = async (event, context) => ({
          functionName: context.functionName, functionVersion: context.functionVersion,
          arn: context.invokedFunctionArn, memory: context.memoryLimitInMB, group: context.logGroupName,
          stream: context.logStreamName, identity: context.identity === undefined,
          clientContext: context.clientContext === undefined, remaining: context.getRemainingTimeInMillis(),
          waits: context.callbackWaitsForEmptyEventLoop,
        });
    """})
    out = (await call(http, name)).json()
    stream = out.pop("stream")
    remaining = out.pop("remaining")
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", stream), stream
    assert 0 < remaining <= 5000
    assert out == {"functionName": name, "functionVersion": "$LATEST", "arn": brn(name, "$LATEST"),
                   "memory": "128", "group": f"/aws/lambda/{name}", "identity": True, "clientContext": True,
                   "waits": True}


async def test_callback_waits_for_empty_event_loop_is_settable(http: aiohttp.ClientSession) -> None:
    """Handlers set ``context.callbackWaitsForEmptyEventLoop = false`` (database clients do); the
    callback's result is the answer."""
    name = await deploy(http, "nodejs", {"index.js": """
        exports.handler = (event, context, callback) => {
          context.callbackWaitsForEmptyEventLoop = false;
          callback(null, { waits: context.callbackWaitsForEmptyEventLoop });
        };
    """})
    assert (await call(http, name)).json() == {"waits": False}


@pytest.mark.parametrize("body,ok,expected", [
    ("context.succeed({ via: 'succeed' });", True, {"via": "succeed"}),
    ("context.done(null, { via: 'done' });", True, {"via": "done"}),
    ("context.fail(new TypeError('via fail'));", False, {"errorType": "TypeError", "errorMessage": "via fail"}),
    ("context.done(new RangeError('via done'));", False, {"errorType": "RangeError", "errorMessage": "via done"}),
])
async def test_legacy_context_completion_methods(http: aiohttp.ClientSession, body: str, ok: bool,
                                                 expected: dict) -> None:
    """The legacy ``context.succeed(result)``, ``context.fail(error)`` and ``context.done(error, result)``
    still end an invocation, as in Lambda's Node.js runtime."""
    name = await deploy(http, "nodejs", {"index.js": f"exports.handler = (event, context) => {{ {body} }};\n"})
    reply = await call(http, name)
    assert reply.status == (200 if ok else 500), reply
    out = reply.json()
    assert out == expected if ok else {k: out[k] for k in expected} == expected


async def test_console_lines_in_lambda_format(http: aiohttp.ClientSession) -> None:
    """Console output is ``<ISO time>\\t<request id>\\t<LEVEL>\\t<message>``, the level per console
    method (log and info INFO, warn WARN, error ERROR, debug DEBUG)."""
    name = await deploy(http, "nodejs", {"index.js": """
        exports.handler = async () => {
          console.log('hello %s', 'world'); console.warn('careful'); console.error('broken'); console.debug('detail');
          return 'ok';
        };
    """})
    reply = await call(http, name)
    rid = re.escape(reply.request_id)
    for level, text in (("INFO", "hello world"), ("WARN", "careful"), ("ERROR", "broken"), ("DEBUG", "detail")):
        assert any(re.fullmatch(rf"{ISO_MS}\t{rid}\t{level}\t{text}", line) for line in log_lines(reply)), (level, reply)


async def test_json_log_format_and_level(http: aiohttp.ClientSession) -> None:
    """``AWS_LAMBDA_LOG_FORMAT=JSON`` gives one object per line (timestamp, level, requestId,
    message); ``AWS_LAMBDA_LOG_LEVEL`` drops the levels below it."""
    name = await deploy(http, "nodejs", {"index.js": """
        exports.handler = async () => { console.info('dropped'); console.warn('kept', 1); return 'ok'; };
    """}, variables={"AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": "WARN"})
    reply = await call(http, name)
    records = [json.loads(line) for line in log_lines(reply) if line.startswith("{")]
    assert len(records) == 1, reply
    record = records[0]
    assert re.fullmatch(ISO_MS, record.pop("timestamp"))
    assert record == {"level": "WARN", "requestId": reply.request_id, "message": "kept 1"}


async def test_error_object_of_a_thrown_error(http: aiohttp.ClientSession) -> None:
    """A thrown error answers ``{"errorType": err.name, "errorMessage": err.message, ...}`` and the
    call is marked Unhandled."""
    name = await deploy(http, "nodejs", {"index.js": "exports.handler = async () => { throw new SyntaxError('bad input'); };\n"})
    reply = await call(http, name)
    assert reply.status == 500, reply
    error = reply.json()
    assert (error["errorType"], error["errorMessage"]) == ("SyntaxError", "bad input")


async def test_es_module_handler_mjs_with_top_level_await(http: aiohttp.ClientSession) -> None:
    """An ES-module handler in ``index.mjs`` (``export const handler``), with top-level await,
    loads as in Lambda's Node.js runtime."""
    name = await deploy(http, "nodejs", {"index.mjs": """
        const config = await Promise.resolve({ greeting: 'hi from esm' });
        export const handler = async (event) => ({ message: config.greeting, got: event.n });
    """})
    assert (await call(http, name, {"n": 3})).json() == {"message": "hi from esm", "got": 3}


async def test_es_module_handler_under_type_module(http: aiohttp.ClientSession) -> None:
    """``index.js`` under a package.json with ``"type": "module"`` is an ES module (import(), not
    require), as Lambda's Node.js runtime resolves it."""
    name = await deploy(http, "nodejs", {
        "package.json": json.dumps({"name": "esm-fn", "type": "module"}),
        "lib/greet.js": "export const greet = (who) => `hello ${who}`;\n",
        "index.js": "import { greet } from './lib/greet.js';\nexport const handler = async (e) => greet(e.who);\n",
    })
    assert (await call(http, name, {"who": "module"})).body == b"hello module"


async def test_missing_export_is_handler_not_found(http: aiohttp.ClientSession) -> None:
    """A handler name whose export does not exist fails with ``Runtime.HandlerNotFound``."""
    name = await deploy(http, "nodejs", {"index.js": "exports.other = async () => 1;\n"})
    error = (await call(http, name)).json()
    assert error["errorType"] == "Runtime.HandlerNotFound"
    assert error["errorMessage"] == "index.handler is undefined or not exported"


EXPRESS_APP = """
const serverless = require('serverless-http');
const express = require('express');
const app = express();
app.get('/items/:id', (req, res) => res.json({ id: req.params.id, via: 'express' }));
module.exports.handler = serverless(app);
"""


async def test_serverless_http_express_adapter_runs_unchanged(http: aiohttp.ClientSession) -> None:
    """A popular Lambda web adapter, serverless-http wrapping an express app, installed with
    ``npm install`` into the zip as for Lambda, answers an API Gateway event."""
    from tests.lambda_harness import http_api_event

    if NPM is None:
        pytest.skip("npm is not installed")
    with tempfile.TemporaryDirectory(prefix="ef-express-") as tmp:
        root = Path(tmp)
        (root / "package.json").write_text(json.dumps({"name": "express-fn", "private": True}))
        result = subprocess.run([NPM, "install", "--silent", "--no-audit", "--no-fund", "serverless-http", "express"],
                                cwd=root, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"npm install serverless-http express failed (no npm registry here?): {result.stderr[-300:]}")
        (root / "index.js").write_text(EXPRESS_APP)
        name = await deploy(http, "nodejs", {}, zip_b64=zip_of_dir(root), timeout=10)
    reply = await call(http, name, http_api_event("GET", "/items/42"))
    assert reply.status == 200, reply
    out = reply.json()
    assert out["statusCode"] == 200, out
    assert json.loads(out["body"]) == {"id": "42", "via": "express"}
