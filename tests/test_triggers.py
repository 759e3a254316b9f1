"""The stubs trigger API over real HTTP: create/list/get/update/delete, validation naming the field,
ownership, collisions, durability across a restart, removal with the function, and the change feed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from easyfaas.triggers import TriggerChanges
from tests.fakes.stubs_app import HASH, OTHER_UID, UID, create, error_of, start_client, write_runtimes

ROUTE = {"Methods": ["GET"], "Path": "/api/users/{id}"}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    write_runtimes(tmp_path / "runtime")
    return tmp_path / "funcData", tmp_path / "runtime"


@pytest.fixture
async def client(dirs: tuple[Path, Path]) -> AsyncIterator[TestClient]:
    c = await start_client(*dirs)
    try:
        yield c
    finally:
        await c.close()


async def post_trigger(client: TestClient, fn: str, body: Any, uid: str = UID) -> tuple[int, Any]:
    resp = await client.post(f"/v1/functions/{fn}/triggers", data=json.dumps(body),
                             headers={"X-easyfaas-Account-Id": uid})
    return resp.status, await resp.json() if resp.status != 204 else None


async def test_crud(client: TestClient) -> None:
    await create(client, "web", {"Runtime": "python3"})
    status, t = await post_trigger(client, "web", {"Type": "http", "Config": ROUTE})
    assert status == 201, t
    assert set(t) >= {"TriggerId", "Type", "Qualifier", "Config", "CreatedAt", "UpdatedAt", "FunctionBrn"}
    assert t["Type"] == "http" and t["Qualifier"] == "$LATEST" and t["Uid"] == UID
    assert t["FunctionBrn"].endswith(f":{HASH}:function:web:$LATEST")
    assert t["Config"] == {"Methods": ["GET"], "Path": "/api/users/{id}", "PayloadFormatVersion": "2.0",
                           "AuthType": "NONE"}
    tid = t["TriggerId"]
    resp = await client.get("/v1/functions/web/triggers")
    assert resp.status == 200 and [x["TriggerId"] for x in (await resp.json())["Triggers"]] == [tid]
    resp = await client.get(f"/v1/functions/web/triggers/{tid}")
    assert resp.status == 200 and (await resp.json()) == t
    resp = await client.put(f"/v1/functions/web/triggers/{tid}",
                            data=json.dumps({"Config": {**ROUTE, "PayloadFormatVersion": "1.0"}}))
    assert resp.status == 200
    updated = await resp.json()
    assert updated["Config"]["PayloadFormatVersion"] == "1.0" and updated["CreatedAt"] == t["CreatedAt"]
    resp = await client.delete(f"/v1/functions/web/triggers/{tid}")
    assert resp.status == 204
    resp = await client.get(f"/v1/functions/web/triggers/{tid}")
    assert resp.status == 404 and (await error_of(resp))["Code"] == "ResourceNotFoundException"
    resp = await client.delete(f"/v1/functions/web/triggers/{tid}")
    assert resp.status == 404


@pytest.mark.parametrize("body,field", [
    ({"Config": ROUTE}, "Type"),
    ({"Type": "smtp", "Config": ROUTE}, "Type"),
    ({"Type": "http"}, "Config"),
    ({"Type": "http", "Config": ROUTE, "Extra": 1}, "Extra"),
    ({"Type": "http", "Config": ROUTE, "Qualifier": 7}, "Qualifier"),
    ({"Type": "http", "Config": {"Path": "/a", "Methods": ["FETCH"]}}, "Config.Methods"),
    ({"Type": "http", "Config": {"Path": "a/{x"}}, "Config.Path"),
    ({"Type": "http", "Config": {"Path": "/a/{p+}/b"}}, "Config.Path"),
    ({"Type": "http", "Config": {"Path": "/a", "PayloadFormatVersion": "9"}}, "Config.PayloadFormatVersion"),
    ({"Type": "http", "Config": {"Path": "/a", "Cors": {"MaxAge": -5}}}, "Config.Cors.MaxAge"),
    ([1, 2], None),
])
async def test_malformed_definitions_are_400_naming_the_field(client: TestClient, body: Any,
                                                             field: str | None) -> None:
    await create(client, "web", {"Runtime": "python3"})
    status, err = await post_trigger(client, "web", body)
    assert status == 400, err
    assert err["Code"] == "ValidationException" and err["Type"] == "User"
    if field:
        assert err["Cause"].startswith(f"{field}:"), err


async def test_qualifier_must_name_an_existing_version(client: TestClient) -> None:
    await create(client, "web", {"Runtime": "python3"})
    status, err = await post_trigger(client, "web", {"Type": "http", "Qualifier": "3", "Config": ROUTE})
    assert status == 404 and err["Code"] == "ResourceNotFoundException"
    status, err = await post_trigger(client, "web", {"Type": "http", "Qualifier": "latest", "Config": ROUTE})
    assert status == 400 and err["Cause"].startswith("Qualifier:")
    status, err = await post_trigger(client, "nosuch", {"Type": "http", "Config": ROUTE})
    assert status == 404


async def test_collisions_are_409_across_accounts(client: TestClient) -> None:
    await create(client, "web", {"Runtime": "python3"})
    await create(client, "web", {"Runtime": "python3"}, uid=OTHER_UID)
    assert (await post_trigger(client, "web", {"Type": "http", "Config": ROUTE}))[0] == 201
    status, err = await post_trigger(client, "web", {"Type": "http", "Config": {"Methods": ["GET"],
                                                                              "Path": "/api/users/{uid}"}})
    assert status == 409 and err["Code"] == "ResourceConflictException" and "GET /api/users/{uid}" in err["Cause"]
    status, err = await post_trigger(client, "web", {"Type": "http", "Config": ROUTE}, uid=OTHER_UID)
    assert status == 409 and "another account" in err["Cause"]
    # Another method, or a more specific path, is another route.
    assert (await post_trigger(client, "web", {"Type": "http", "Config": {"Methods": ["POST"],
                                                                         "Path": "/api/users/{id}"}}))[0] == 201
    assert (await post_trigger(client, "web", {"Type": "http", "Config": {"Methods": ["ANY"],
                                                                         "Path": "/api/users/me"}},
                               uid=OTHER_UID))[0] == 201


async def test_ownership(client: TestClient) -> None:
    await create(client, "web", {"Runtime": "python3"})
    _, t = await post_trigger(client, "web", {"Type": "http", "Config": ROUTE})
    other = {"X-easyfaas-Account-Id": OTHER_UID}
    resp = await client.get(f"/v1/functions/web/triggers/{t['TriggerId']}", headers=other)
    assert resp.status == 404  # the other account's "web" has no such trigger
    resp = await client.get(f"/v1/functions/brn:cloud:faas:bj:{HASH}:function:web/triggers", headers=other)
    assert resp.status == 403
    resp = await client.delete(f"/v1/functions/web/triggers/{t['TriggerId']}", headers=other)
    assert resp.status == 404
    assert (await client.get(f"/v1/functions/web/triggers/{t['TriggerId']}")).status == 200


async def test_durable_and_removed_with_the_function(dirs: tuple[Path, Path]) -> None:
    client = await start_client(*dirs)
    try:
        await create(client, "web", {"Runtime": "python3"})
        await create(client, "web:1", {"Runtime": "python3"})
        _, keep = await post_trigger(client, "web", {"Type": "http", "Config": ROUTE})
        _, v1 = await post_trigger(client, "web", {"Type": "http", "Qualifier": "1",
                                                   "Config": {"Path": "/v1/users/{id}"}})
        assert v1["FunctionBrn"].endswith(":web:1")
    finally:
        await client.close()
    files = list(dirs[0].glob("*/web/triggers/*.json"))
    assert len(files) == 2 and not list(dirs[0].glob("*/web/triggers/.tmp-*"))
    client = await start_client(*dirs)  # a restarted stubs reads them back
    try:
        resp = await client.get("/v1/trigger-changes")
        snapshot = TriggerChanges.from_dict(await resp.json())
        assert snapshot.Triggers is not None and {t.TriggerId for t in snapshot.Triggers} == {
            keep["TriggerId"], v1["TriggerId"]}
        assert (await client.delete("/v1/functions/web", params={"Qualifier": "1"})).status == 204
        resp = await client.get("/v1/functions/web/triggers")
        assert [t["TriggerId"] for t in (await resp.json())["Triggers"]] == [keep["TriggerId"]]
        assert (await client.delete("/v1/functions/web")).status == 204
        resp = await client.get(f"/v1/trigger-changes?after={snapshot.Seq}")
        changes = TriggerChanges.from_dict(await resp.json())
        assert [(c.Action, c.TriggerId) for c in changes.Changes] == [("Delete", v1["TriggerId"]),
                                                                      ("Delete", keep["TriggerId"])]
        assert changes.Triggers is None
        await create(client, "web", {"Runtime": "python3"})  # a new function of that name has none
        resp = await client.get("/v1/functions/web/triggers")
        assert (await resp.json())["Triggers"] == []
        assert (await post_trigger(client, "web", {"Type": "http", "Config": ROUTE}))[0] == 201  # route is free
    finally:
        await client.close()


async def test_change_feed_long_poll(client: TestClient) -> None:
    await create(client, "web", {"Runtime": "python3"})
    first = TriggerChanges.from_dict(await (await client.get("/v1/trigger-changes?after=-1")).json())
    assert first.Triggers == [] and first.Changes == []
    poll = asyncio.ensure_future(client.get(f"/v1/trigger-changes?after={first.Seq}&wait=10"))
    await asyncio.sleep(0.2)
    assert not poll.done()
    _, t = await post_trigger(client, "web", {"Type": "http", "Config": ROUTE})
    resp = await asyncio.wait_for(poll, 5)
    batch = TriggerChanges.from_dict(await resp.json())
    assert [(c.Action, c.TriggerId) for c in batch.Changes] == [("Put", t["TriggerId"])]
    assert batch.Changes[0].Trigger is not None and batch.Changes[0].Trigger.Config["Path"] == ROUTE["Path"]
    assert batch.BootID == first.BootID and batch.Seq == first.Seq + 1
    lost = TriggerChanges.from_dict(await (await client.get(f"/v1/trigger-changes?after={batch.Seq + 5}")).json())
    assert lost.Lost and lost.Triggers is not None and len(lost.Triggers) == 1
    resp = await client.get("/v1/trigger-changes?after=x")
    assert resp.status == 400
