"""Lambda parity of the Python runtime: handlers written for AWS Lambda run unchanged.

Every test runs a real function in a real sandbox of the shared test pod, through the public
HTTP contract, and names in its docstring the Lambda behaviour it mirrors
(/work/shared/reference/event-contracts.md §2). The Node.js and ``provided`` runtimes have their
own files (``test_lambda_parity_nodejs.py``, ``test_lambda_parity_provided.py``); all three
share the helpers of tests/lambda_harness.py. A web-framework adapter is vendored into the
function's zip at test time from PyPI; when the registry cannot be reached the test is skipped,
saying so.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest

from easyfaas.function_code import brn
from tests.lambda_harness import (ISO_MS, call, deploy, http, http_api_event, log_lines,  # noqa: F401 - http: fixture
                                  pip_install_into, zip_of_dir)

pytestmark = pytest.mark.e2e


# ---- the handler runs on the main thread ----------------------------------------------------------

async def test_handler_runs_on_the_main_thread(http: aiohttp.ClientSession) -> None:
    """Lambda's Python runtime calls the handler on the process's main thread."""
    name = await deploy(http, "python3", {"index.py": (
        "import threading\n"
        "def handler(event, context):\n"
        "    return {'main': threading.current_thread() is threading.main_thread()}\n")})
    reply = await call(http, name)
    assert reply.status == 200, reply
    assert reply.json() == {"main": True}


async def test_signal_alarm_guard_in_a_handler(http: aiohttp.ClientSession) -> None:
    """Handlers may install signal handlers (timeout decorators, ``signal.alarm`` guards), which
    Python allows only on the main thread, where Lambda runs them."""
    name = await deploy(http, "python3", {"index.py": (
        "import signal, time\n"
        "class Timeout(Exception):\n"
        "    pass\n"
        "def on_alarm(signum, frame):\n"
        "    raise Timeout('guarded call took too long')\n"
        "def handler(event, context):\n"
        "    signal.signal(signal.SIGALRM, on_alarm)\n"
        "    signal.setitimer(signal.ITIMER_REAL, 0.05)\n"
        "    try:\n"
        "        time.sleep(2)\n"
        "    except Timeout as exc:\n"
        "        return {'interrupted': str(exc)}\n"
        "    finally:\n"
        "        signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "    return {'interrupted': None}\n")})
    reply = await call(http, name)
    assert reply.status == 200, reply
    assert reply.json() == {"interrupted": "guarded call took too long"}


async def test_asyncio_get_event_loop_in_a_handler(http: aiohttp.ClientSession) -> None:
    """``asyncio.get_event_loop()`` works in a handler (the main thread), as the ASGI adapters for
    Lambda rely on; it keeps working across invocations."""
    name = await deploy(http, "python3", {"index.py": (
        "import asyncio\n"
        "async def work(n):\n"
        "    await asyncio.sleep(0)\n"
        "    return n * 2\n"
        "def handler(event, context):\n"
        "    loop = asyncio.get_event_loop()\n"
        "    return {'doubled': loop.run_until_complete(work(event['n']))}\n")})
    for n in (1, 2):
        reply = await call(http, name, {"n": n})
        assert reply.status == 200, reply
        assert reply.json() == {"doubled": 2 * n}


async def test_concurrent_calls_to_one_sandbox_run_one_after_the_other(http: aiohttp.ClientSession) -> None:
    """Lambda gives a runtime one invocation at a time: with PodConcurrentQuota 2 both calls reach
    the same sandbox, run in turn on its main thread, and both succeed (nothing hangs)."""
    import asyncio

    name = await deploy(http, "python3", {"index.py": (
        "import os, threading, time\n"
        "def handler(event, context):\n"
        "    time.sleep(0.3)\n"
        "    return {'pid': os.getpid(), 'main': threading.current_thread() is threading.main_thread()}\n")},
        quota=2)
    await call(http, name)  # warm one sandbox first
    replies = await asyncio.gather(call(http, name), call(http, name))
    assert [r.status for r in replies] == [200, 200], replies
    assert all(r.json()["main"] for r in replies)


# ---- logging --------------------------------------------------------------------------------------

ROOT_LOGGER = (
    "import logging\n"
    "logger = logging.getLogger()\n"
    "logger.setLevel(logging.INFO)\n"
    "def handler(event, context):\n"
    "    logger.info('hello %s', event['who'])\n"
    "    logging.getLogger('app.db').warning('slow query')\n"
    "    logger.debug('not shown')\n"
    "    return 'ok'\n")


async def test_root_logger_reaches_the_log_in_lambda_format(http: aiohttp.ClientSession) -> None:
    """Lambda's runtime gives the root logger a handler whose lines are
    ``[LEVEL]\\t<UTC time>Z\\t<request id>\\t<message>``: the pattern from Lambda's documentation
    (``logging.getLogger(); setLevel(INFO); info(...)``) shows in the function's log."""
    name = await deploy(http, "python3", {"index.py": ROOT_LOGGER})
    reply = await call(http, name, {"who": "world"})
    assert reply.status == 200, reply
    rid = re.escape(reply.request_id)
    assert any(re.fullmatch(rf"\[INFO\]\t{ISO_MS}\t{rid}\thello world", line) for line in log_lines(reply)), reply
    assert any(re.fullmatch(rf"\[WARNING\]\t{ISO_MS}\t{rid}\tslow query", line) for line in log_lines(reply)), reply
    assert "not shown" not in reply.log


async def test_log_level_from_aws_lambda_log_level(http: aiohttp.ClientSession) -> None:
    """``AWS_LAMBDA_LOG_LEVEL`` sets the root logger's level (Lambda's advanced logging controls);
    without it Python's default, WARNING, applies."""
    code = ("import logging\n"
            "def handler(event, context):\n"
            "    logging.getLogger().debug('debug line')\n"
            "    logging.getLogger().info('info line')\n"
            "    return 'ok'\n")
    verbose = await deploy(http, "python3", {"index.py": code}, variables={"AWS_LAMBDA_LOG_LEVEL": "DEBUG"})
    default = await deploy(http, "python3", {"index.py": code})
    loud, quiet = await call(http, verbose), await call(http, default)
    assert "[DEBUG]" in loud.log and "debug line" in loud.log and "info line" in loud.log, loud
    assert "debug line" not in quiet.log and "info line" not in quiet.log, quiet


async def test_json_log_format(http: aiohttp.ClientSession) -> None:
    """``AWS_LAMBDA_LOG_FORMAT=JSON`` makes each record one JSON object with ``timestamp``,
    ``level``, ``message``, ``logger`` and ``requestId`` (plus ``extra`` keys), as Lambda writes them."""
    name = await deploy(http, "python3", {"index.py": (
        "import logging\n"
        "def handler(event, context):\n"
        "    logging.getLogger('orders').info('placed', extra={'order': 7})\n"
        "    return 'ok'\n")}, variables={"AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": "INFO"})
    reply = await call(http, name)
    records = [json.loads(line) for line in log_lines(reply) if line.startswith("{")]
    assert len(records) == 1, reply
    record = records[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record.pop("timestamp"))
    assert record == {"level": "INFO", "message": "placed", "logger": "orders", "requestId": reply.request_id,
                      "order": 7}


async def test_print_goes_to_the_log_unchanged(http: aiohttp.ClientSession) -> None:
    """``print()`` output reaches the log as written, without a prefix (Lambda writes stdout through)."""
    name = await deploy(http, "python3", {"index.py": "def handler(event, context):\n    print('plain line')\n"})
    reply = await call(http, name)
    assert "plain line" in log_lines(reply), reply


# ---- the context object and the environment ------------------------------------------------------

async def test_context_object_fields(http: aiohttp.ClientSession) -> None:
    """``LambdaContext``: ``aws_request_id`` is the invocation's request id (the caller's
    ``X-easyfaas-Request-Id``), and the function's name, version, ARN, memory, log group and stream,
    Cognito identity and client context are Lambda's fields."""
    name = await deploy(http, "python3", {"index.py": (
        "def handler(event, context):\n"
        "    return {'aws_request_id': context.aws_request_id, 'function_name': context.function_name,\n"
        "            'function_version': context.function_version, 'arn': context.invoked_function_arn,\n"
        "            'memory': int(context.memory_limit_in_mb), 'group': context.log_group_name,\n"
        "            'stream': context.log_stream_name, 'client_context': context.client_context,\n"
        "            'identity': [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],\n"
        "            'remaining': context.get_remaining_time_in_millis()}\n")})
    reply = await call(http, name)
    assert reply.status == 200, reply
    out = reply.json()
    assert out["aws_request_id"] == reply.request_id
    assert out["function_name"] == name and out["function_version"] == "$LATEST"
    assert out["arn"] == brn(name, "$LATEST")
    assert out["memory"] == 128
    assert out["group"] == f"/aws/lambda/{name}"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", out["stream"]), out["stream"]
    assert out["client_context"] is None and out["identity"] == [None, None]
    assert 0 < out["remaining"] <= 5000


async def test_lambda_environment_variables(http: aiohttp.ClientSession) -> None:
    """The variables Lambda sets for a Python function: ``AWS_LAMBDA_FUNCTION_*``,
    ``AWS_LAMBDA_LOG_*_NAME``, ``_HANDLER``, ``LAMBDA_TASK_ROOT``, ``LAMBDA_RUNTIME_DIR``, the region
    of the function's ARN in ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``TZ=:UTC`` and
    ``AWS_EXECUTION_ENV=AWS_Lambda_python<version>``."""
    name = await deploy(http, "python3", {"index.py": (
        "import os\n"
        "def handler(event, context):\n"
        "    return {k: os.environ.get(k) for k in event['keys']}\n")})
    keys = ["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "_HANDLER", "LAMBDA_TASK_ROOT",
            "LAMBDA_RUNTIME_DIR", "AWS_REGION", "AWS_DEFAULT_REGION", "TZ", "AWS_EXECUTION_ENV"]
    reply = await call(http, name, {"keys": keys})
    env = reply.json()
    stream = env.pop("AWS_LAMBDA_LOG_STREAM_NAME")
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", stream or ""), stream
    assert env == {"AWS_LAMBDA_FUNCTION_NAME": name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                   "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128", "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
                   "_HANDLER": "index.handler", "LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime",
                   "AWS_REGION": "bj", "AWS_DEFAULT_REGION": "bj", "TZ": ":UTC",
                   "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info[0]}.{sys.version_info[1]}"}


# ---- errors ---------------------------------------------------------------------------------------

async def test_handler_exception_is_lambdas_error_object(http: aiohttp.ClientSession) -> None:
    """An uncaught exception answers ``{"errorMessage", "errorType": <class name>, "stackTrace"}``
    with the user's frames only, and the call is marked Unhandled."""
    name = await deploy(http, "python3", {"index.py": (
        "def lookup(key):\n"
        "    raise KeyError(key)\n"
        "def handler(event, context):\n"
        "    lookup('missing')\n")})
    reply = await call(http, name)
    assert reply.status == 500, reply
    error = reply.json()
    assert (error["errorType"], error["errorMessage"]) == ("KeyError", "'missing'")
    assert any("lookup" in line and "index.py" in line for line in error["stackTrace"])
    assert not any("/var/runtime" in line for line in error["stackTrace"]), error


async def test_unserializable_result_is_a_marshal_error(http: aiohttp.ClientSession) -> None:
    """A result JSON cannot encode gives ``Runtime.MarshalError`` with Lambda's message."""
    name = await deploy(http, "python3", {"index.py": "def handler(event, context):\n    return {1, 2}\n"})
    error = (await call(http, name)).json()
    assert error["errorType"] == "Runtime.MarshalError"
    assert error["errorMessage"] == "Unable to marshal response: Object of type set is not JSON serializable"


async def test_decimal_result_is_a_json_number(http: aiohttp.ClientSession) -> None:
    """Lambda's marshaller writes ``Decimal`` (what DynamoDB's SDK returns) as a JSON number."""
    name = await deploy(http, "python3", {"index.py": (
        "from decimal import Decimal\n"
        "def handler(event, context):\n"
        "    return {'price': Decimal('9.5'), 'count': Decimal(3)}\n")})
    assert (await call(http, name)).json() == {"price": 9.5, "count": 3}


@pytest.mark.parametrize("files,handler,error_type,message", [
    ({"index.py": "import not_installed_anywhere\n"}, "index.handler", "Runtime.ImportModuleError",
     "Unable to import module 'index': No module named 'not_installed_anywhere'"),
    ({"index.py": "x = 1\n"}, "index.handler", "Runtime.HandlerNotFound", "Handler 'handler' missing on module 'index'"),
    ({"index.py": "def handler(e, c)\n    pass\n"}, "index.handler", "Runtime.UserCodeSyntaxError", None),
    ({"sys.py": "def handler(e, c):\n    return 1\n"}, "sys.handler", "Runtime.BuiltInModuleConflict",
     "Cannot use built-in module sys as a handler module"),
])
async def test_init_errors_have_lambdas_types(http: aiohttp.ClientSession, files: dict[str, str], handler: str,
                                              error_type: str, message: str | None) -> None:
    """A handler that cannot be loaded fails the call with Lambda's init error types and messages."""
    name = await deploy(http, "python3", files, handler=handler)
    reply = await call(http, name)
    assert reply.status == 500, reply
    error = reply.json()
    assert error["errorType"] == error_type
    if message is not None:
        assert error["errorMessage"] == message


# ---- a web-framework adapter vendored into the zip -------------------------------------------------

ASGI_APP = '''
from mangum import Mangum

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = ("hello from %s %s" % (scope["method"], scope["path"])).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})

handler = Mangum(app, lifespan="auto")
'''


async def test_mangum_asgi_adapter_runs_unchanged(http: aiohttp.ClientSession) -> None:
    """A popular Lambda web adapter, Mangum (an ASGI app inside a handler, which needs the main
    thread's event loop), vendored with ``pip install --target`` as for Lambda, answers an API
    Gateway event."""
    with tempfile.TemporaryDirectory(prefix="ef-mangum-") as tmp:
        root = Path(tmp)
        pip_install_into(root, "mangum")
        (root / "index.py").write_text(ASGI_APP)
        name = await deploy(http, "python3", {}, zip_b64=zip_of_dir(root))
    for path in ("/orders", "/users"):
        reply = await call(http, name, http_api_event("GET", path))
        assert reply.status == 200, reply
        out = reply.json()
        assert out["statusCode"] == 200 and out["body"] == f"hello from GET {path}", out
