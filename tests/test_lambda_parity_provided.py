"""Lambda parity of the ``provided`` runtime: Lambda's Runtime API inside every sandbox.

Real functions in real sandboxes of the shared test pod; the zip's ``bootstrap`` is a custom
runtime (a shell script with curl as in AWS's tutorial, small Python clients of the Runtime API,
and AWS's own Python runtime interface client ``awslambdaric`` installed from PyPI at test time).
Each test names the Lambda behaviour it mirrors (/work/shared/reference/event-contracts.md §1).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from easyfaas.function_code import brn
from tests.lambda_harness import (ISO_MS, PYTHON, call, deploy, http, log_lines, pip_install_into,  # noqa: F401 - http: fixture
                                  python_bootstrap, zip_of_dir)

pytestmark = pytest.mark.e2e

SHELL_BOOTSTRAP = """#!/bin/sh
set -eu
while true; do
  HEADERS="$(mktemp)"
  EVENT_DATA=$(curl -sS -LD "$HEADERS" "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next")
  header() { grep -Fi "$1:" "$HEADERS" | tr -d '\\r' | cut -d' ' -f2; }
  REQUEST_ID=$(header Lambda-Runtime-Aws-Request-Id)
  echo "handling $REQUEST_ID"
  RESPONSE="{\\"event\\": $EVENT_DATA, \\"request_id\\": \\"$REQUEST_ID\\", \\"deadline\\": \\"$(header Lambda-Runtime-Deadline-Ms)\\", \\"arn\\": \\"$(header Lambda-Runtime-Invoked-Function-Arn)\\"}"
  curl -sS "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$REQUEST_ID/response" -d "$RESPONSE" >/dev/null
done
"""

async def deploy_provided(http: aiohttp.ClientSession, files: dict[str, str], runtime: str = "provided",
                          **kwargs: object) -> str:
    return await deploy(http, runtime, files, executable=("bootstrap",), **kwargs)  # type: ignore[arg-type]


# ---- the happy path -----------------------------------------------------------------------------

async def test_shell_bootstrap_from_awss_tutorial(http: aiohttp.ClientSession) -> None:
    """AWS's custom-runtime tutorial (a shell ``bootstrap`` with curl) runs unchanged: ``next`` gives
    the event with ``Lambda-Runtime-Aws-Request-Id`` (the caller's request id), ``-Deadline-Ms`` (epoch
    ms) and ``-Invoked-Function-Arn``; the posted response is the call's result; its output is the log."""
    name = await deploy_provided(http, {"bootstrap": SHELL_BOOTSTRAP})
    before = int(time.time() * 1000)
    reply = await call(http, name, {"hello": "custom runtime"})
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("application/json")
    out = reply.json()
    assert out["event"] == {"hello": "custom runtime"}
    assert out["request_id"] == reply.request_id
    assert before < int(out["deadline"]) <= before + 5000 + 2000
    assert out["arn"] == brn(name, "$LATEST")
    assert f"handling {reply.request_id}" in log_lines(reply)
    again = await call(http, name, {"n": 2})
    assert again.json()["event"] == {"n": 2} and again.json()["request_id"] == again.request_id


@pytest.mark.parametrize("runtime", ["provided.al2", "provided.al2023"])
async def test_lambdas_runtime_names_map_to_provided(http: aiohttp.ClientSession, runtime: str) -> None:
    """Lambda's names ``provided.al2`` and ``provided.al2023`` select the custom runtime."""
    name = await deploy_provided(http, {"bootstrap": SHELL_BOOTSTRAP}, runtime=runtime)
    reply = await call(http, name, {"via": runtime})
    assert reply.status == 200, reply
    assert reply.json()["event"] == {"via": runtime}


@pytest.fixture(scope="module")
def c_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """bench/provided_bootstrap.c built as Lambda's provided.al2023 users build theirs: a static binary."""
    from bench.provided import compile_bootstrap

    binary, why = compile_bootstrap(str(tmp_path_factory.mktemp("c-bootstrap")))
    if binary is None:
        pytest.skip(f"the compiled bootstrap cannot be built here: {why}")
    return binary


async def test_compiled_bootstrap_runs_unchanged(http: aiohttp.ClientSession, c_bootstrap: bytes) -> None:
    """A compiled custom runtime (a static C Runtime API client, as Go, Rust's lambda_runtime and C++
    runtimes are deployed on provided.al2023) runs unchanged: each call returns the event it posted
    back, over one keep-alive connection."""
    name = await deploy_provided(http, {"bootstrap": c_bootstrap}, runtime="provided.al2023")
    for n in range(3):
        reply = await call(http, name, {"compiled": True, "n": n})
        assert reply.status == 200, reply
        assert reply.json() == {"compiled": True, "n": n}


async def test_compiled_bootstrap_sees_the_callers_request_id(http: aiohttp.ClientSession, c_bootstrap: bytes) -> None:
    """``Lambda-Runtime-Aws-Request-Id``, as a compiled runtime reads it off ``next``, is the request
    id the caller got back in ``X-easyfaas-Request-Id``."""
    name = await deploy_provided(http, {"bootstrap": c_bootstrap}, variables={"BOOTSTRAP_ECHO_REQUEST_ID": "1"})
    for event in ({"a": 1}, [1, 2, 3]):
        reply = await call(http, name, event)
        assert reply.status == 200, reply
        assert reply.json() == {"event": event, "request_id": reply.request_id}
        assert reply.request_id


async def test_environment_of_a_custom_runtime(http: aiohttp.ClientSession) -> None:
    """A custom runtime gets ``AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001``, ``_HANDLER``,
    ``LAMBDA_TASK_ROOT``, the function's variables, and no ``AWS_EXECUTION_ENV``; it runs in
    ``/var/task``."""
    name = await deploy_provided(http, python_bootstrap("""
keys = ["AWS_LAMBDA_RUNTIME_API", "_HANDLER", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME", "GREETING"]
while True:
    event, request_id = next_event()
    respond(request_id, {**{k: os.environ.get(k) for k in keys}, "cwd": os.getcwd()})
"""), handler="function.handler", variables={"GREETING": "hi"})
    out = (await call(http, name)).json()
    assert out == {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001", "_HANDLER": "function.handler",
                   "LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime", "AWS_EXECUTION_ENV": None,
                   "AWS_LAMBDA_FUNCTION_NAME": name, "GREETING": "hi", "cwd": "/var/task"}


async def test_invocation_error_route(http: aiohttp.ClientSession) -> None:
    """``POST /runtime/invocation/<id>/error`` (202) fails that call with the posted error object;
    the runtime goes on serving (NodeRIC's ``trace`` list is Lambda's ``stackTrace``)."""
    name = await deploy_provided(http, python_bootstrap("""
said = None
while True:
    event, request_id = next_event()
    if event.get("fail"):
        said = api("POST", f"{BASE}/invocation/{request_id}/error", json.dumps(
            {"errorMessage": "no such order", "errorType": "OrderNotFound", "trace": ["at lookup"]}),
            {"Lambda-Runtime-Function-Error-Type": "Function.OrderNotFound"})[:2]
    else:
        respond(request_id, {"error_route_said": said})
"""))
    failed = await call(http, name, {"fail": True})
    assert failed.status == 500, failed
    assert failed.json() == {"errorMessage": "no such order", "errorType": "OrderNotFound", "stackTrace": ["at lookup"]}
    fine = await call(http, name, {"fail": False})
    assert fine.status == 200, fine
    assert fine.json() == {"error_route_said": [202, {"status": "OK"}]}


async def test_init_error_route(http: aiohttp.ClientSession) -> None:
    """``POST /runtime/init/error`` fails the cold start with the posted error, as the caller of
    Lambda's first invoke sees it."""
    name = await deploy_provided(http, python_bootstrap("""
api("POST", BASE + "/init/error", json.dumps({"errorMessage": "config file missing", "errorType": "Runtime.ConfigInvalid"}),
    {"Lambda-Runtime-Function-Error-Type": "Runtime.ConfigInvalid"})
sys.exit(1)
"""))
    reply = await call(http, name)
    assert reply.status == 500, reply
    error = reply.json()
    assert (error["errorType"], error["errorMessage"]) == ("Runtime.ConfigInvalid", "config file missing")


async def test_protocol_misuse_gets_the_runtime_apis_4xx(http: aiohttp.ClientSession) -> None:
    """Requests that do not follow the protocol get the Runtime API's answers, never a crash:
    a response before ``next`` → 403 ``InvalidStateTransition``; an unknown route → 404; a wrong
    method → 405; a malformed request → 400; ``/init/error`` after init and a second ``next``
    during an invocation → 403; a second response for the same id → 400 ``InvalidRequestID``."""
    name = await deploy_provided(http, python_bootstrap("""
seen = {}
seen["early_response"] = respond("nobody", "x")
seen["unknown_route"] = api("GET", BASE + "/nope")[0]
seen["wrong_method"] = api("POST", BASE + "/invocation/next")[0]
raw = socket.create_connection(tuple(API.split(":")))
raw.sendall(b"NOT HTTP AT ALL\\r\\n\\r\\n")
seen["malformed"] = raw.recv(4096).split(b" ")[1].decode()
raw.close()
while True:
    event, request_id = next_event()
    seen["init_error_late"] = api("POST", BASE + "/init/error", "{}")[:2]
    second = http.client.HTTPConnection(*API.split(":"))
    second.request("GET", BASE + "/invocation/next")
    seen["second_next"] = second.getresponse().status
    second.close()
    respond(request_id, seen)
    seen = {"duplicate_response": respond(request_id, "again")}
"""))
    first = (await call(http, name)).json()
    assert first["early_response"][0] == 403 and first["early_response"][1]["errorType"] == "InvalidStateTransition"
    assert (first["unknown_route"], first["wrong_method"], first["malformed"]) == (404, 405, "400")
    assert first["init_error_late"][0] == 403 and first["init_error_late"][1]["errorType"] == "InvalidStateTransition"
    assert first["second_next"] == 403
    second = (await call(http, name)).json()
    assert second["duplicate_response"] == [400, {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"}]


# ---- bad bootstraps -------------------------------------------------------------------------------

async def test_missing_bootstrap_is_refused_at_create(http: aiohttp.ClientSession) -> None:
    """A ``provided`` zip without ``bootstrap`` cannot run (Lambda fails it at invoke with
    ``Runtime.InvalidEntrypoint``): it is refused when the function is created."""
    body = await deploy(http, "provided", {"index.sh": "echo hi\n"}, expect=400)
    assert "bootstrap" in body and "ValidationException" in body


async def test_non_executable_bootstrap_is_an_init_error(http: aiohttp.ClientSession) -> None:
    """A ``bootstrap`` without the executable bit fails the cold start with ``Runtime.InvalidEntrypoint``."""
    name = await deploy(http, "provided", {"bootstrap": SHELL_BOOTSTRAP})
    reply = await call(http, name)
    assert reply.status == 500, reply
    error = reply.json()
    assert error["errorType"] == "Runtime.InvalidEntrypoint"
    assert "/var/task/bootstrap" in error["errorMessage"] and "not executable" in error["errorMessage"]


async def test_bootstrap_exiting_at_init_is_an_exit_error(http: aiohttp.ClientSession) -> None:
    """A bootstrap that exits before asking for an event fails the cold start with ``Runtime.ExitError``."""
    name = await deploy_provided(http, {"bootstrap": "#!/bin/sh\necho 'cannot start: no config' >&2\nexit 2\n"})
    reply = await call(http, name)
    assert reply.status == 500, reply
    error = reply.json()
    assert error["errorType"] == "Runtime.ExitError"
    assert "Runtime exited with error: exit status 2" in error["errorMessage"]
    assert "cannot start: no config" in error["errorMessage"]


async def test_bootstrap_exiting_during_an_invocation(http: aiohttp.ClientSession) -> None:
    """A bootstrap that exits while it has an invocation fails that call with ``Runtime.ExitError``
    (``RequestId: <id> Error: Runtime exited with error: exit status <n>``); the environment is
    discarded and the next call starts a fresh one."""
    name = await deploy_provided(http, python_bootstrap("""
started = time.time()
while True:
    event, request_id = next_event()
    if event.get("exit") is not None:
        os._exit(event["exit"])
    respond(request_id, {"started": started, "pid": os.getpid()})
"""))
    first = (await call(http, name, {})).json()
    crash = await call(http, name, {"exit": 3})
    assert crash.status == 500, crash
    assert crash.json()["errorType"] == "Runtime.ExitError"
    assert crash.json()["errorMessage"] == f"RequestId: {crash.request_id} Error: Runtime exited with error: exit status 3"
    fresh = await call(http, name, {})
    assert fresh.status == 200, fresh
    assert fresh.json()["started"] != first["started"]


async def test_response_for_another_request_id_fails_the_call(http: aiohttp.ClientSession) -> None:
    """A response posted for a request id that is not the invocation's gets 400 ``InvalidRequestID``;
    the call fails and the sandbox is recycled (a fresh runtime serves the next call)."""
    name = await deploy_provided(http, python_bootstrap("""
started = time.time()
while True:
    event, request_id = next_event()
    respond("not-" + request_id if event.get("lie") else request_id, {"started": started})
"""))
    first = (await call(http, name, {})).json()
    wrong = await call(http, name, {"lie": True})
    assert wrong.status == 500, wrong
    assert wrong.json()["errorType"] == "Runtime.InvalidRequestID"
    assert (await call(http, name, {})).json()["started"] != first["started"]


async def test_oversized_response_is_function_response_size_too_large(http: aiohttp.ClientSession) -> None:
    """A response over 6 MiB + 100 bytes gets 413 ``RequestEntityTooLarge`` and the call fails with
    ``Function.ResponseSizeTooLarge`` and Lambda's message; the next call gets a fresh runtime."""
    name = await deploy_provided(http, python_bootstrap("""
while True:
    event, request_id = next_event()
    respond(request_id, "x" * event["size"])
"""))
    big = await call(http, name, {"size": 7 * 1024 * 1024})
    assert big.status == 500, big
    error = big.json()
    assert error["errorType"] == "Function.ResponseSizeTooLarge"
    assert re.fullmatch(r"Response payload size \(\d+ bytes\) exceeded maximum allowed payload size "
                        r"\(6291556 bytes\)\.", error["errorMessage"]), error
    small = await call(http, name, {"size": 3})
    assert small.status == 200 and small.json() == "xxx"


async def test_hanging_bootstrap_times_out(http: aiohttp.ClientSession) -> None:
    """An invocation the bootstrap never answers fails at the function's timeout with
    ``Sandbox.Timedout``; the next call gets a fresh runtime."""
    name = await deploy_provided(http, python_bootstrap("""
while True:
    event, request_id = next_event()
    if event.get("hang"):
        time.sleep(3600)
    respond(request_id, "awake")
"""), timeout=1)
    hung = await call(http, name, {"hang": True})
    assert hung.status == 500 and hung.json()["errorType"] == "Sandbox.Timedout", hung
    assert (await call(http, name, {})).json() == "awake"


@pytest.mark.slow
async def test_bootstrap_that_never_asks_for_an_event(http: aiohttp.ClientSession) -> None:
    """A bootstrap that never calls ``next`` fails its cold start after the init limit (Lambda's
    10 s) with a clear init error."""
    name = await deploy_provided(http, {"bootstrap": "#!/bin/sh\nexec sleep 3600\n"})
    reply = await call(http, name)
    assert reply.status == 500, reply
    error = reply.json()
    assert error["errorType"] == "Runtime.InitTimeout"
    assert "did not ask for an invocation" in error["errorMessage"]


# ---- AWS's own runtime interface client -----------------------------------------------------------

RIC_APP = """
import logging, os
logger = logging.getLogger()
logger.setLevel(logging.INFO)

def handler(event, context):
    logger.info("order %s", event["order"])
    return {"order": event["order"], "request_id": context.aws_request_id, "function": context.function_name,
            "remaining_positive": context.get_remaining_time_in_millis() > 0}
"""


async def test_awslambdaric_from_pypi_runs_unchanged(http: aiohttp.ClientSession) -> None:
    """AWS's Python runtime interface client (``awslambdaric`` from PyPI) as the bootstrap of a
    ``provided`` function: it speaks the Runtime API to our server as it does to Lambda's."""
    with tempfile.TemporaryDirectory(prefix="ef-ric-") as tmp:
        root = Path(tmp)
        pip_install_into(root, "awslambdaric")
        (root / "app.py").write_text(RIC_APP)
        (root / "bootstrap").write_text(f'#!/bin/sh\nexport PYTHONPATH="$LAMBDA_TASK_ROOT"\n'
                                        f'exec {PYTHON} -S -m awslambdaric "$_HANDLER"\n')
        name = await deploy(http, "provided", {}, handler="app.handler", zip_b64=zip_of_dir(root, ("bootstrap",)),
                            timeout=10)
    reply = await call(http, name, {"order": 17})
    assert reply.status == 200, reply
    assert reply.json() == {"order": 17, "request_id": reply.request_id, "function": name, "remaining_positive": True}
    rid = re.escape(reply.request_id)
    assert any(re.fullmatch(rf"\[INFO\]\t{ISO_MS}\t{rid}\torder 17", line) for line in log_lines(reply)), reply


async def test_bootstrap_exiting_between_invocations_gets_a_fresh_init(http: aiohttp.ClientSession) -> None:
    """A bootstrap that exits after answering (a one-shot custom runtime) is not an error for
    anyone: its environment is discarded and the next call starts a fresh one, as in Lambda."""
    name = await deploy_provided(http, python_bootstrap("""
event, request_id = next_event()
respond(request_id, {"pid": os.getpid(), "started": time.time()})
"""))
    first = await call(http, name)
    assert first.status == 200, first
    for _ in range(3):
        reply = await call(http, name)
        assert reply.status == 200, reply
        assert reply.json()["started"] != first.json()["started"]
