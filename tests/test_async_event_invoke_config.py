"""Per-function asynchronous-invocation settings on stubs: Lambda's names, bounds and defaults,
validation naming the field, atomic storage beside the function and removal with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from easyfaas.event_invoke import EventInvokeConfig, destination_record, Condition
from stubs.store import EVENT_INVOKE_CONFIG_FILE
from tests.fakes.stubs_app import HASH, OTHER_UID, UID, create, error_of

DEST = f"brn:cloud:faas:bj:{HASH}:function:dest"
PATH = "/v1/functions/fn/event-invoke-config"


async def put(client: TestClient, body: Any, uid: str = UID, path: str = PATH) -> Any:
    return await client.put(path, data=json.dumps(body), headers={"X-easyfaas-Account-Id": uid})


async def test_put_get_delete_round_trip(client: TestClient, function_dir: Path) -> None:
    await create(client, "fn")
    resp = await client.get(PATH)
    assert resp.status == 404 and (await error_of(resp))["Code"] == "ResourceNotFoundException"
    resp = await put(client, {"MaximumRetryAttempts": 1, "MaximumEventAgeInSeconds": 120,
                              "DestinationConfig": {"OnFailure": {"Destination": DEST}}})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["MaximumRetryAttempts"] == 1 and body["MaximumEventAgeInSeconds"] == 120
    assert body["DestinationConfig"] == {"OnSuccess": {}, "OnFailure": {"Destination": DEST}}
    assert body["FunctionArn"] == f"brn:cloud:faas:bj:{HASH}:function:fn"
    got = await (await client.get(PATH)).json()
    assert got == body
    stored = function_dir / HASH / "fn" / EVENT_INVOKE_CONFIG_FILE
    assert json.loads(stored.read_bytes())["MaximumRetryAttempts"] == 1
    assert not [p for p in stored.parent.iterdir() if p.name.startswith(".tmp-")]
    resp = await client.delete(PATH)
    assert resp.status == 204
    assert (await client.get(PATH)).status == 404
    assert (await client.delete(PATH)).status == 404


async def test_defaults_are_lambdas(client: TestClient) -> None:
    await create(client, "fn")
    body = await (await put(client, {})).json()
    assert body["MaximumRetryAttempts"] == 2 and body["MaximumEventAgeInSeconds"] == 21600


@pytest.mark.parametrize("body, field", [
    ({"MaximumRetryAttempts": 3}, "MaximumRetryAttempts"),
    ({"MaximumRetryAttempts": -1}, "MaximumRetryAttempts"),
    ({"MaximumRetryAttempts": "2"}, "MaximumRetryAttempts"),
    ({"MaximumRetryAttempts": True}, "MaximumRetryAttempts"),
    ({"MaximumEventAgeInSeconds": 59}, "MaximumEventAgeInSeconds"),
    ({"MaximumEventAgeInSeconds": 21601}, "MaximumEventAgeInSeconds"),
    ({"DestinationConfig": []}, "DestinationConfig"),
    ({"DestinationConfig": {"OnSuccess": {"Destination": "arn:aws:sqs:x"}}}, "DestinationConfig.OnSuccess.Destination"),
    ({"DestinationConfig": {"OnFailure": {"Destination": 5}}}, "DestinationConfig.OnFailure.Destination"),
    ({"DestinationConfig": {"OnWhatever": {}}}, "DestinationConfig"),
    ({"Bogus": 1}, "Bogus"),
])
async def test_validation_names_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    await create(client, "fn")
    resp = await put(client, body)
    assert resp.status == 400
    err = await error_of(resp)
    assert err["Code"] == "InvalidParameterValueException" and err["Cause"].startswith(field), err
    assert (await client.get(PATH)).status == 404  # nothing stored


async def test_unknown_function_and_other_account(client: TestClient) -> None:
    resp = await put(client, {})
    assert resp.status == 404
    await create(client, "fn")
    other = f"/v1/functions/brn:cloud:faas:bj:{HASH}:function:fn/event-invoke-config"
    resp = await put(client, {}, uid=OTHER_UID, path=other)
    assert resp.status == 403


async def test_config_goes_with_the_function(client: TestClient, function_dir: Path) -> None:
    await create(client, "fn")
    assert (await put(client, {"MaximumRetryAttempts": 0})).status == 200
    assert (await client.delete("/v1/functions/fn")).status == 204
    assert not (function_dir / HASH / "fn").exists()
    await create(client, "fn")
    assert (await client.get(PATH)).status == 404  # a new function with the same name starts clean


def test_destination_record_has_lambdas_shape() -> None:
    rec = destination_record(request_id="r1", function_arn="brn:x:$LATEST", condition=Condition.RETRIES_EXHAUSTED,
                             invoke_count=3, request_payload={"a": 1}, status_code=200, executed_version="$LATEST",
                             function_error="Unhandled", response_payload={"errorType": "E"}, now=0.5)
    assert rec == {"version": "1.0", "timestamp": "1970-01-01T00:00:00.500Z",
                   "requestContext": {"requestId": "r1", "functionArn": "brn:x:$LATEST",
                                      "condition": "RetriesExhausted", "approximateInvokeCount": 3},
                   "requestPayload": {"a": 1},
                   "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
                   "responsePayload": {"errorType": "E"}}
    ok = destination_record(request_id="r1", function_arn="f", condition=Condition.SUCCESS, invoke_count=1,
                            request_payload={}, status_code=200, executed_version="$LATEST", function_error=None,
                            response_payload="x")
    assert ok["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert EventInvokeConfig.from_dict(EventInvokeConfig.parse({"MaximumRetryAttempts": 0}).to_dict()) \
        .MaximumRetryAttempts == 0
