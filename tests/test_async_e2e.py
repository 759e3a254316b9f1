"""Asynchronous invocations through a real pod: real stubs (event-invoke-config), real sandboxes.
A function error, a timeout and an OOM are failed attempts; retries follow MaximumRetryAttempts; a
destination function receives Lambda's invocation record."""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

import pytest

from easyfaas.function_code import b64zip, brn
from tests.pod_harness import PY_FN, H, LivePod, all_finished, enqueue, live_pod, records, unique

pytestmark = pytest.mark.e2e

FAILING_FN = (
    "import time\n"
    "def handler(event, context):\n"
    "    if event.get('sleep'):\n"
    "        time.sleep(event['sleep'])\n"
    "    if event.get('alloc'):\n"
    "        hog = b'x' * (event['alloc'] << 20)\n"
    "        return len(hog)\n"
    "    if event.get('raise'):\n"
    "        raise ValueError(event['raise'])\n"
    "    print('async got', event)\n"
    "    return {'echo': event}\n"
)


@pytest.fixture(scope="module")
def ap() -> Iterator[LivePod]:
    yield from live_pod(container_num=2, controller_args=("--event-retry-base", "0.1s"))


@pytest.fixture
async def pod(ap: LivePod) -> Any:
    try:
        yield ap
    finally:
        await ap.close_clients()


async def put_config(lp: LivePod, name: str, body: dict[str, Any]) -> None:
    async with lp.session().put(f"{lp.config.stubs_url}/v1/functions/{name}/event-invoke-config",
                                headers=H, data=json.dumps(body)) as resp:
        assert resp.status == 200, await resp.text()


async def one(lp: LivePod, name: str, event: Any) -> dict[str, Any]:
    status, rid, body = await enqueue(lp, name, event)
    assert status == 202, body
    return (await all_finished(lp, name, [rid], timeout=60))[rid]


async def test_success_with_result_and_log(pod: LivePod) -> None:
    name = unique("as")
    await pod.create(name, Code=b64zip({"index.py": FAILING_FN}))
    rec = await one(pod, name, {"n": 7})
    assert rec["Status"] == "succeeded" and rec["Attempts"] == 1
    assert json.loads(rec["Result"]) == {"echo": {"n": 7}}
    log = base64.b64decode(rec["LogResult"]).decode()
    assert "async got {'n': 7}" in log and f"START RequestID: {rec['RequestId']}" in log


async def test_function_error_retries_then_reaches_the_failure_destination(pod: LivePod) -> None:
    name, dest = unique("af"), unique("adest")
    await pod.create(name, Code=b64zip({"index.py": FAILING_FN}))
    await pod.create(dest, Code=b64zip({"index.py": FAILING_FN}))
    await put_config(pod, name, {"MaximumRetryAttempts": 1,
                                 "DestinationConfig": {"OnFailure": {"Destination": brn(dest, "$LATEST")[:-8]}}})
    rec = await one(pod, name, {"raise": "nope"})
    assert rec["Status"] == "failed" and rec["Attempts"] == 2
    assert rec["Error"]["errorType"] == "ValueError" and rec["Error"]["errorMessage"] == "nope"

    async def delivered() -> Any:
        found = [r for r in (await records(pod, dest)).values() if r["Status"] == "succeeded"]
        return found[0] if found else None
    got = await pod.until(delivered, timeout=60, what="the destination ran")
    record = json.loads(got["Result"])["echo"]
    assert record["requestContext"] == {"requestId": rec["RequestId"], "functionArn": brn(name, "$LATEST"),
                                        "condition": "RetriesExhausted", "approximateInvokeCount": 2}
    assert record["requestPayload"] == {"raise": "nope"}
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorType"] == "ValueError"


async def test_timeout_and_oom_are_failed_attempts(pod: LivePod) -> None:
    # The OOM on a function of its own with room to run: at a 1 s timeout, a loaded machine could
    # still be filling the 400 MB when the timeout struck, and the attempt failed as a timeout.
    name, hog = unique("at"), unique("ao")
    await pod.create(name, Code=b64zip({"index.py": FAILING_FN}), Timeout=1)
    await pod.create(hog, Code=b64zip({"index.py": FAILING_FN}), Timeout=30)
    for fn in (name, hog):
        await put_config(pod, fn, {"MaximumRetryAttempts": 0})
    timed_out = await one(pod, name, {"sleep": 3})
    assert timed_out["Status"] == "failed" and timed_out["Attempts"] == 1
    assert timed_out["Error"]["errorType"] == "Sandbox.Timedout"
    oom = await one(pod, hog, {"alloc": 400})
    assert oom["Status"] == "failed" and oom["Attempts"] == 1, oom
    assert oom["Error"]["errorType"] != "Sandbox.Timedout"
    for fn, record in ((name, timed_out), (hog, oom)):
        letters_resp = await pod.session().get(f"{pod.config.controller_url}/v1/dead-letters", headers=H,
                                               params={"FunctionName": fn})
        letters = (await letters_resp.json())["DeadLetters"]
        assert {d["RequestId"] for d in letters} == {record["RequestId"]}


async def test_config_goes_with_the_function_and_unknown_is_404(pod: LivePod) -> None:
    name = unique("ac")
    await pod.create(name, Code=b64zip({"index.py": PY_FN}))
    await put_config(pod, name, {"MaximumRetryAttempts": 0})
    async with pod.session().delete(f"{pod.config.stubs_url}/v1/functions/{name}", headers=H) as resp:
        assert resp.status == 204
    status, _, body = await enqueue(pod, name, {})
    assert status == 404 and body is not None and body["Code"] == "ResourceNotFoundException"
