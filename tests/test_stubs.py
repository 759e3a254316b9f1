"""The stubs function registry: every route over real HTTP, validation, versions, the on-disk store
(atomic writes, crash leftovers), the runtime catalog and the daemon process itself."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from easyfaas.models import FunctionRecord
from easyfaas.pod_names import free_port
from easyfaas.runtimes import RuntimeCatalog
from stubs.app import default_code_zip
from stubs.store import FunctionStore
from tests.fakes.stubs_app import (CODE_A, CODE_B, HASH, MAX_CODE, OTHER_HASH, OTHER_UID, UID, b64, create, error_of,
                                   make_zip, sha_b64, start_client, write_runtimes)

ROOT = Path(__file__).resolve().parent.parent


async def get(client: TestClient, path: str, uid: str | None = None, **params: str) -> tuple[int, Any]:
    headers = {"X-easyfaas-Account-Id": uid} if uid else {}
    resp = await client.get(path, headers=headers, params=params)
    if resp.content_type == "application/json":
        return resp.status, await resp.json()
    return resp.status, await resp.read()


# ---- basic routes ---------------------------------------------------------------------------------


async def test_hello_and_healthz(client: TestClient) -> None:
    resp = await client.get("/hello")
    assert resp.status == 200 and await resp.text() == "hello controller stubs"
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/v2/nothing")
    assert resp.status == 404 and (await error_of(resp))["Code"] == "ResourceNotFoundException"
    resp = await client.patch("/v1/functions/f")
    assert resp.status == 405 and "GET" in resp.headers["Allow"]


async def test_create_with_empty_body_gives_the_originals_defaults(client: TestClient, function_dir: Path) -> None:
    record = await create(client, "hello")
    cfg = record["Configuration"]
    assert cfg["FunctionName"] == "hello"
    assert cfg["FunctionArn"] == f"brn:cloud:faas:bj:{HASH}:function:hello:$LATEST"
    assert (cfg["Runtime"], cfg["Timeout"], cfg["MemorySize"], cfg["Handler"]) == ("nodejs10", 5, 128, "index.handler")
    assert (cfg["Version"], cfg["Uid"], cfg["PodConcurrentQuota"]) == ("$LATEST", UID, 0)
    assert cfg["CodeSha256"] == sha_b64(default_code_zip()) and cfg["CodeSize"] == len(default_code_zip())
    assert cfg["Environment"] == {"Variables": {}}
    assert cfg["LastModified"].endswith("Z") and len(cfg["CommitId"]) == 36
    assert record["Code"]["RepositoryType"] == "filesystem"
    location = Path(record["Code"]["Location"])
    assert location.is_absolute() and location.read_bytes() == default_code_zip()
    assert function_dir in location.parents
    with zipfile.ZipFile(location) as zf:
        assert b"Hello world!" in zf.read("index.js")
    status, again = await get(client, "/v1/functions/hello")
    assert status == 200 and again == record


async def test_originals_quickstart_flow(client: TestClient) -> None:
    # docs/op_func.md: POST with Version "1", then the controller asks for the full BRN.
    body = {"Version": "1", "Runtime": "nodejs10", "Timeout": 5, "MemorySize": 128, "Handler": "index.handler",
            "PodConcurrentQuota": 10, "Code": b64(default_code_zip())}
    record = await create(client, "testHelloWorld", body)
    assert record["Configuration"]["Version"] == "1"
    assert record["Configuration"]["FunctionArn"] == f"brn:cloud:faas:bj:{HASH}:function:testHelloWorld:1"
    brn = f"brn:cloud:faas:bj:{HASH}:function:testHelloWorld:1"
    status, by_brn = await get(client, f"/v1/functions/{brn}", uid=UID)
    assert status == 200 and by_brn == record
    status, latest = await get(client, "/v1/functions/testHelloWorld")
    assert status == 200 and latest["Configuration"]["Version"] == "$LATEST"
    assert latest["Configuration"]["CommitId"] != record["Configuration"]["CommitId"]
    assert latest["Configuration"]["PodConcurrentQuota"] == 10
    # the inside-v1 path of the original's embedded HTTP trigger reads the same records
    status, inside = await get(client, f"/inside-v1/functions/{brn}")
    assert status == 200 and inside == record


@pytest.mark.parametrize(
    "path, params",
    [
        ("/v1/functions/f:1", {}),
        ("/v1/functions/f", {"Qualifier": "1"}),
        (f"/v1/functions/{HASH}:f:1", {}),
        (f"/v1/functions/{HASH}:f", {"Qualifier": "1"}),
        (f"/v1/functions/brn:cloud:faas:bj:{HASH}:function:f:1", {}),
        (f"/v1/functions/brn:cloud:faas:bj:{HASH}:function:f", {"Qualifier": "1"}),
        ("/v1/functions/f:01", {}),
    ],
)
async def test_reference_forms(client: TestClient, path: str, params: dict[str, str]) -> None:
    await create(client, "f", {"Version": "1", "Runtime": "python3", "Code": b64(CODE_A)})
    status, record = await get(client, path, **params)
    assert status == 200, record
    assert record["Configuration"]["Version"] == "1"


async def test_reference_errors(client: TestClient) -> None:
    await create(client, "f", {"Version": "1", "Runtime": "python3", "Code": b64(CODE_A)})
    resp = await client.get("/v1/functions/f:1", params={"Qualifier": "2"})
    body = await error_of(resp)
    assert resp.status == 400 and body["Code"] == "InvalidParameterValueException" and "conflicting" in body["Cause"]
    resp = await client.get("/v1/functions/brn:cloud:faas:bj:nothex:function:f")
    assert resp.status == 400 and "account" in (await error_of(resp))["Cause"]
    resp = await client.get("/v1/functions/f:prod")
    assert resp.status == 400 and "alias" in (await error_of(resp))["Cause"]
    for missing in ("f:2", "f:0", "nope"):
        resp = await client.get(f"/v1/functions/{missing}")
        assert resp.status == 404 and (await error_of(resp))["Code"] == "ResourceNotFoundException"


async def test_owner_is_the_caller_and_accounts_are_separate(client: TestClient) -> None:
    mine = await create(client, "shared-name", {"Runtime": "python3", "Code": b64(CODE_A)}, uid=OTHER_UID)
    assert mine["Configuration"]["Uid"] == OTHER_UID
    assert mine["Configuration"]["FunctionArn"] == f"brn:cloud:faas:bj:{OTHER_HASH}:function:shared-name:$LATEST"
    # the default account has no such function...
    status, _ = await get(client, "/v1/functions/shared-name")
    assert status == 404
    # ...and may not read the other account's function by its BRN
    resp = await client.get(f"/v1/functions/{mine['Configuration']['FunctionArn']}")
    body = await error_of(resp)
    assert resp.status == 403 and body["Code"] == "UnrecognizedClientException"
    # nor create one in that account
    resp = await client.post(f"/v1/functions/{OTHER_HASH}:shared-name:1", data="{}")
    assert resp.status == 403
    # the owner reads it by name or BRN
    status, record = await get(client, "/v1/functions/shared-name", uid=OTHER_UID)
    assert status == 200 and record == mine
    resp = await client.get("/v1/functions/x", headers={"X-easyfaas-Account-Id": "bad uid!"})
    assert resp.status == 400 and "X-easyfaas-Account-Id" in (await error_of(resp))["Cause"]


# ---- validation -----------------------------------------------------------------------------------

VALIDATION_CASES = [
    ({"Timeout": "5"}, "ValidationException", "Timeout"),
    ({"Timeout": True}, "ValidationException", "Timeout"),
    ({"Timeout": 0}, "ValidationException", "Timeout"),
    ({"Timeout": 901}, "ValidationException", "Timeout"),
    ({"MemorySize": 32}, "ValidationException", "MemorySize"),
    ({"MemorySize": 10241}, "ValidationException", "MemorySize"),
    ({"MemorySize": 128.5}, "ValidationException", "MemorySize"),
    ({"PodConcurrentQuota": -1}, "ValidationException", "PodConcurrentQuota"),
    ({"PodConcurrentQuota": 1001}, "ValidationException", "PodConcurrentQuota"),
    ({"ReservedConcurrentExecutions": -1}, "ValidationException", "ReservedConcurrentExecutions"),
    ({"ReservedConcurrentExecutions": "3"}, "ValidationException", "ReservedConcurrentExecutions"),
    ({"Description": 7}, "ValidationException", "Description"),
    ({"Description": "d" * 257}, "ValidationException", "Description"),
    ({"Handler": 123}, "ValidationException", "Handler"),
    ({"Handler": "../index.handler"}, "ValidationException", "Handler"),
    ({"Handler": "/abs/index.handler"}, "ValidationException", "Handler"),
    ({"Handler": "lib//index.handler"}, "ValidationException", "Handler"),
    ({"Handler": "index handler"}, "ValidationException", "Handler"),
    ({"Handler": "index"}, "ValidationException", "Handler"),
    ({"Handler": "index."}, "ValidationException", "Handler"),
    ({"Handler": ".handler"}, "ValidationException", "Handler"),
    ({"Handler": "x" * 130 + ".h"}, "ValidationException", "Handler"),
    ({"Environment": "A=1"}, "ValidationException", "Environment"),
    ({"Environment": {"Vars": {}}}, "ValidationException", "Environment"),
    ({"Environment": {"Variables": []}}, "ValidationException", "Environment.Variables"),
    ({"Environment": {"Variables": {"1A": "x"}}}, "ValidationException", "Environment.Variables"),
    ({"Environment": {"Variables": {"A-B": "x"}}}, "ValidationException", "Environment.Variables"),
    ({"Environment": {"Variables": {"A": 1}}}, "ValidationException", "Environment.Variables.A"),
    ({"Environment": {"Variables": {"EASYFAAS_HANDLER": "x"}}}, "ValidationException", "reserved"),
    ({"Environment": {"Variables": {"BIG": "x" * 4096}}}, "ValidationException", "Environment.Variables"),
    ({"Runtime": 10}, "ValidationException", "Runtime"),
    ({"Runtime": "cobol"}, "InvalidParameterValueException", "Runtime"),
    ({"Version": 1}, "ValidationException", "Version"),
    ({"Version": "abc"}, "InvalidParameterValueException", "Version"),
    ({"Version": "0"}, "InvalidParameterValueException", "Version"),
    ({"Code": 5}, "ValidationException", "Code"),
    ({"Code": "!!!not base64!!!"}, "InvalidParameterValueException", "Code"),
    ({"Code": b64(b"just text")}, "InvalidParameterValueException", "Code"),
    ([], "ValidationException", "request body"),
    ("text", "ValidationException", "request body"),
]


@pytest.mark.parametrize("body, code, field", VALIDATION_CASES)
async def test_create_validation(client: TestClient, body: Any, code: str, field: str) -> None:
    resp = await client.post("/v1/functions/v", data=json.dumps(body))
    err = await error_of(resp)
    assert resp.status == 400, err
    assert err["Code"] == code and field in err["Cause"], err
    assert err["Type"] == "User"
    status, _ = await get(client, "/v1/functions/v")
    assert status == 404  # nothing was written


async def test_unknown_runtime_lists_the_known_ones(client: TestClient) -> None:
    resp = await client.post("/v1/functions/v", data=json.dumps({"Runtime": "cobol"}))
    cause = (await error_of(resp))["Cause"]
    assert "cobol" in cause and "nodejs10" in cause and "python3" in cause and "exec" in cause


async def test_malformed_json_and_bad_names(client: TestClient) -> None:
    resp = await client.post("/v1/functions/v", data=b'{"Timeout": 5')
    assert resp.status == 400 and (await error_of(resp))["Code"] == "InvalidRequestContentException"
    for ref in ("bad.name", "x" * 65, "a:b:c:d"):
        resp = await client.post(f"/v1/functions/{ref}", data=b"{}")
        err = await error_of(resp)
        assert resp.status == 400 and err["Code"] == "InvalidParameterValueException", err


async def test_version_in_ref_and_body_must_agree(client: TestClient) -> None:
    resp = await client.post("/v1/functions/f:2", data=json.dumps({"Version": "3"}))
    assert resp.status == 400 and "conflicting" in (await error_of(resp))["Cause"]
    record = await create(client, "f:2", {"Version": "2", "Runtime": "python3"})
    assert record["Configuration"]["Version"] == "2"


async def test_handler_rules_depend_on_the_runtime(client: TestClient) -> None:
    record = await create(client, "tool", {"Runtime": "exec", "Handler": "bin/handler", "Code": b64(CODE_A)})
    assert record["Configuration"]["Handler"] == "bin/handler"
    resp = await client.post("/v1/functions/tool2", data=json.dumps({"Runtime": "nodejs10", "Handler": "bin/handler"}))
    assert resp.status == 400 and "Handler" in (await error_of(resp))["Cause"]
    record = await create(client, "nested", {"Runtime": "python3", "Handler": "src/app.main.handler"})
    assert record["Configuration"]["Handler"] == "src/app.main.handler"


async def test_full_configuration_is_stored(client: TestClient) -> None:
    body = {"Runtime": "python3", "Handler": "index.handler", "Timeout": 900, "MemorySize": 10240,
            "Description": "all fields", "PodConcurrentQuota": 1000, "ReservedConcurrentExecutions": 0,
            "Environment": {"Variables": {"GREETING": "hi", "_X1": ""}}, "Code": b64(CODE_A),
            "UnknownField": "ignored"}
    record = await create(client, "full", body)
    cfg = record["Configuration"]
    assert (cfg["Timeout"], cfg["MemorySize"], cfg["Description"], cfg["PodConcurrentQuota"]) == (
        900, 10240, "all fields", 1000)
    assert cfg["Environment"]["Variables"] == {"GREETING": "hi", "_X1": ""}
    assert record["Concurrency"]["ReservedConcurrentExecutions"] == 0
    assert cfg["CodeSha256"] == sha_b64(CODE_A) and cfg["CodeSize"] == len(CODE_A)


# ---- hostile and oversized code -------------------------------------------------------------------


def zip_with(name: str, mode: int = 0o100644, content: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        zf.writestr(info, content)
    return buf.getvalue()


def bomb_with_lying_header() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.bin", b"\x00" * (4 << 20))
    data = bytearray(buf.getvalue())
    data[data.find(b"PK\x03\x04") + 22 : data.find(b"PK\x03\x04") + 26] = (100).to_bytes(4, "little")
    data[data.find(b"PK\x01\x02") + 24 : data.find(b"PK\x01\x02") + 28] = (100).to_bytes(4, "little")
    return bytes(data)


def duplicate_zip() -> bytes:
    buf = io.BytesIO()
    with pytest.warns(UserWarning), zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.js", "a")
        zf.writestr("index.js", "b")
    return buf.getvalue()


def empty_zip() -> bytes:
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    return buf.getvalue()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: zip_with("../../etc/evil.js"), ".."),
        (lambda: zip_with("/etc/evil.js"), "absolute"),
        (lambda: zip_with("link", 0o120777, b"/etc/passwd"), "symbolic link"),
        (duplicate_zip, "duplicate"),
        (bomb_with_lying_header, "corrupt"),
        (empty_zip, "no files"),
        (lambda: zip_with("__MACOSX/._index.js"), "no files"),
        (lambda: b"PK\x03\x04garbage" * 10, "not a valid zip"),
        (lambda: zip_with("big.bin", content=os.urandom(MAX_CODE + 1)), "limit"),
    ],
)
async def test_hostile_code_is_refused(client: TestClient, function_dir: Path, make: Any, reason: str) -> None:
    resp = await client.post("/v1/functions/evil", data=json.dumps({"Runtime": "python3", "Code": b64(make())}))
    err = await error_of(resp)
    assert resp.status == 400 and err["Code"] == "InvalidParameterValueException"
    assert err["Cause"].startswith("Code:") and reason in err["Cause"], err
    assert not list(function_dir.rglob("*.zip"))
    assert not (function_dir / HASH / "evil").exists()


async def test_junk_entries_are_fine(client: TestClient) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", "def handler(e, c):\n    return 1\n")
        zf.writestr("__MACOSX/._index.py", b"\x00\x05\x16\x07")
        zf.writestr(".DS_Store", b"\x00")
    record = await create(client, "junk", {"Runtime": "python3", "Code": b64(buf.getvalue())})
    assert record["Configuration"]["CodeSize"] == len(buf.getvalue())


async def test_request_body_limit(client: TestClient) -> None:
    huge = "A" * (MAX_CODE * 4 // 3 + 1024 * 1024 + 10)
    resp = await client.post("/v1/functions/huge", data=json.dumps({"Code": huge}))
    err = await error_of(resp)
    assert resp.status == 413 and err["Code"] == "RequestTooLargeException"


# ---- versions, update, list, delete, code ---------------------------------------------------------


async def test_update_publishes_versions(client: TestClient) -> None:
    created = await create(client, "app", {"Runtime": "python3", "Timeout": 7, "Code": b64(CODE_A),
                                            "Environment": {"Variables": {"K": "v"}}})
    resp = await client.put("/v1/functions/app", data=json.dumps({"Timeout": 9}))
    assert resp.status == 200, await resp.text()
    v1 = await resp.json()
    cfg = v1["Configuration"]
    assert cfg["Version"] == "1" and cfg["FunctionArn"].endswith(":function:app:1")
    assert (cfg["Timeout"], cfg["Runtime"], cfg["Environment"]["Variables"]) == (9, "python3", {"K": "v"})
    assert cfg["CodeSha256"] == sha_b64(CODE_A)

    resp = await client.put("/v1/functions/app", data=json.dumps({"Code": b64(CODE_B), "MemorySize": 256}))
    v2 = await resp.json()
    assert v2["Configuration"]["Version"] == "2" and v2["Configuration"]["Timeout"] == 9
    assert v2["Configuration"]["CodeSha256"] == sha_b64(CODE_B) and v2["Configuration"]["MemorySize"] == 256

    _, latest = await get(client, "/v1/functions/app")
    assert latest["Configuration"]["CodeSha256"] == sha_b64(CODE_B) and latest["Configuration"]["Timeout"] == 9
    commit_ids = {created["Configuration"]["CommitId"], v1["Configuration"]["CommitId"],
                  v2["Configuration"]["CommitId"], latest["Configuration"]["CommitId"]}
    assert len(commit_ids) == 4

    # each version keeps its own code
    assert (await get(client, "/v1/functions/app:1/code"))[1] == CODE_A
    assert (await get(client, "/v1/functions/app/code", Qualifier="2"))[1] == CODE_B
    assert (await get(client, "/v1/functions/app/code"))[1] == CODE_B

    status, versions = await get(client, "/v1/functions/app/versions")
    assert status == 200
    assert [v["Version"] for v in versions["Versions"]] == ["$LATEST", "1", "2"]


async def test_update_errors(client: TestClient) -> None:
    resp = await client.put("/v1/functions/ghost", data=b"{}")
    assert resp.status == 404 and (await error_of(resp))["Code"] == "ResourceNotFoundException"
    await create(client, "app", {"Runtime": "python3"})
    resp = await client.put("/v1/functions/app:1", data=b"{}")
    assert resp.status == 400
    resp = await client.put("/v1/functions/app", data=json.dumps({"Version": "5"}))
    assert resp.status == 400 and "Version" in (await error_of(resp))["Cause"]
    resp = await client.put("/v1/functions/app", data=json.dumps({"Timeout": "long"}))
    assert resp.status == 400 and "Timeout" in (await error_of(resp))["Cause"]
    resp = await client.put("/v1/functions/app", data=json.dumps({"Handler": "nodot"}))
    assert resp.status == 400 and "Handler" in (await error_of(resp))["Cause"]
    status, versions = await get(client, "/v1/functions/app/versions")
    assert [v["Version"] for v in versions["Versions"]] == ["$LATEST"]  # failed updates published nothing


async def test_concurrent_updates_get_distinct_versions(client: TestClient) -> None:
    await create(client, "busy", {"Runtime": "python3"})
    responses = await asyncio.gather(
        *(client.put("/v1/functions/busy", data=json.dumps({"Timeout": t})) for t in range(1, 7))
    )
    versions = sorted([int((await r.json())["Configuration"]["Version"]) for r in responses])
    assert versions == [1, 2, 3, 4, 5, 6]


async def test_versions_sort_numerically(client: TestClient) -> None:
    for version in ("10", "9", "2"):
        await create(client, "sorted", {"Version": version, "Runtime": "python3"})
    _, versions = await get(client, "/v1/functions/sorted/versions")
    assert [v["Version"] for v in versions["Versions"]] == ["$LATEST", "2", "9", "10"]
    status, _ = await get(client, "/v1/functions/unknown/versions")
    assert status == 404


async def test_list_functions_of_the_caller(client: TestClient) -> None:
    await create(client, "b-fn", {"Runtime": "python3"})
    await create(client, "a-fn", {"Runtime": "python3", "Version": "1"})
    await create(client, "theirs", {"Runtime": "python3"}, uid=OTHER_UID)
    status, listing = await get(client, "/v1/functions")
    assert status == 200
    assert [f["FunctionName"] for f in listing["Functions"]] == ["a-fn", "b-fn"]
    assert all(f["Version"] == "$LATEST" for f in listing["Functions"])
    _, theirs = await get(client, "/v1/functions", uid=OTHER_UID)
    assert [f["FunctionName"] for f in theirs["Functions"]] == ["theirs"]


async def test_delete_version_and_function(client: TestClient, function_dir: Path) -> None:
    await create(client, "gone", {"Runtime": "python3", "Code": b64(CODE_A), "Version": "1"})
    await client.put("/v1/functions/gone", data=json.dumps({"Code": b64(CODE_B)}))  # version 2, code B
    code_dir = function_dir / HASH / "gone" / "code"
    assert len(list(code_dir.iterdir())) == 2

    resp = await client.delete("/v1/functions/gone", params={"Qualifier": "$LATEST"})
    assert resp.status == 400 and "$LATEST" in (await error_of(resp))["Cause"]
    resp = await client.delete("/v1/functions/gone:1")
    assert resp.status == 204
    assert (await get(client, "/v1/functions/gone:1"))[0] == 404
    assert (await get(client, "/v1/functions/gone:2"))[0] == 200
    assert [p.name for p in code_dir.iterdir()] == [hashlib.sha256(CODE_B).hexdigest() + ".zip"]  # A collected
    resp = await client.delete("/v1/functions/gone:1")
    assert resp.status == 404

    resp = await client.delete("/v1/functions/gone")
    assert resp.status == 204
    assert (await get(client, "/v1/functions/gone"))[0] == 404
    assert (await get(client, "/v1/functions"))[1] == {"Functions": []}
    assert not (function_dir / HASH / "gone").exists()
    assert list((function_dir / HASH).iterdir()) == []  # no trash left
    resp = await client.delete("/v1/functions/gone")
    assert resp.status == 404


async def test_get_code(client: TestClient) -> None:
    await create(client, "zipped", {"Runtime": "python3", "Code": b64(CODE_A)})
    resp = await client.get("/v1/functions/zipped/code")
    assert resp.status == 200 and resp.content_type == "application/zip" and await resp.read() == CODE_A
    resp = await client.get("/v1/functions/missing/code")
    assert resp.status == 404


async def test_public_url_gives_http_code_locations(function_dir: Path, runtime_dir: Path) -> None:
    c = await start_client(function_dir, runtime_dir, public_url="http://registry.local:8002/")
    try:
        record = await create(c, "web", {"Runtime": "python3", "Code": b64(CODE_A)})
        location = record["Code"]["Location"]
        assert record["Code"]["RepositoryType"] == "bos"
        prefix = "http://registry.local:8002/v1/code/"
        assert location == f"{prefix}{HASH}/web/{hashlib.sha256(CODE_A).hexdigest()}.zip"
        resp = await c.get(location.removeprefix("http://registry.local:8002"))
        assert resp.status == 200 and await resp.read() == CODE_A
        resp = await c.get(f"/v1/code/{HASH}/web/{'0' * 64}.zip")
        assert resp.status == 404
        resp = await c.get(f"/v1/code/{HASH}/web/..%2F..%2Fetc.zip")
        assert resp.status == 404
    finally:
        await c.close()


# ---- runtimes -------------------------------------------------------------------------------------


async def test_runtime_configurations(client: TestClient) -> None:
    status, listing = await get(client, "/v1/runtimes")
    assert status == 200 and [r["Name"] for r in listing["Runtimes"]] == ["exec", "nodejs", "python3"]
    status, node = await get(client, "/v1/runtimes/nodejs/configuration")
    assert status == 200
    assert node == {"Name": "nodejs", "Bin": "/usr/bin/node", "Path": "/var/faas/runtime/nodejs",
                    "Args": ["/var/runtime/bootstrap.js"], "Launch": "exec", "Env": {},
                    "Aliases": ["nodejs10", "nodejs12", "nodejs20"], "Standby": False}
    assert (await get(client, "/v1/runtimes/nodejs10/configuration"))[1] == node
    status, python = await get(client, "/inside-v1/runtimes/python3.11/configuration")
    assert python["Name"] == "python3" and python["Launch"] == "fork-python"
    assert python["Env"] == {"PYTHONDONTWRITEBYTECODE": "1"}
    resp = await client.get("/v1/runtimes/nodejs8.5/configuration")
    err = await error_of(resp)
    assert resp.status == 404 and err["Code"] == "ResourceNotFoundException" and "nodejs8.5" in err["Cause"]


def test_runtime_catalog_reloads_and_skips_bad_files(tmp_path: Path) -> None:
    catalog = RuntimeCatalog.load(tmp_path / "missing")
    assert catalog.list() == [] and catalog.get("nodejs") is None
    d = tmp_path / "rt"
    write_runtimes(d)
    (d / "broken").mkdir()
    (d / "broken" / "runtime.yaml").write_text("Name: [unclosed\n")
    (d / "wrongtype").mkdir()
    (d / "wrongtype" / "runtime.yaml").write_text("Name: wrongtype\nArgs: not-a-list\n")
    (d / "noname").mkdir()
    (d / "noname" / "runtime.yaml").write_text("Bin: /bin/true\n")
    catalog = RuntimeCatalog.load(d)
    assert [r.Name for r in catalog.list()] == ["exec", "nodejs", "noname", "python3"]
    assert catalog.get("nodejs12").Name == "nodejs"
    (d / "lua").mkdir()
    (d / "lua" / "runtime.yaml").write_text("Name: lua\nAliases: [lua5.3]\nBin: /usr/bin/lua\n")
    assert catalog.get("lua5.3") is not None and catalog.get("lua5.3").Bin == "/usr/bin/lua"
    (d / "lua" / "runtime.yaml").write_text("Name: lua\nAliases: [lua5.4]\nBin: /usr/bin/lua5.4\n")
    os.utime(d / "lua" / "runtime.yaml", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert catalog.get("lua5.3") is None and catalog.get("lua5.4").Bin == "/usr/bin/lua5.4"


# ---- store: atomicity and crash leftovers ---------------------------------------------------------


def failing_meta_replace(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every rename onto a meta.json fail, as if the process died at that moment."""
    real_replace = os.replace
    attempts: list[str] = []

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(dst).endswith("meta.json"):
            attempts.append(os.fspath(dst))
            raise OSError(5, "simulated crash")
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return attempts


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_failed_update_leaves_the_old_function(
    client: TestClient, function_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await create(client, "stable", {"Runtime": "python3", "Code": b64(CODE_A)})
    files_before = tree(function_dir)
    attempts = failing_meta_replace(monkeypatch)
    resp = await client.put("/v1/functions/stable", data=json.dumps({"Code": b64(CODE_B), "Timeout": 30}))
    err = await error_of(resp)
    assert resp.status == 500 and err["Code"] == "ServiceException" and "simulated" not in json.dumps(err)
    assert attempts  # the failure really happened on the meta write
    monkeypatch.undo()
    status, after = await get(client, "/v1/functions/stable")
    assert status == 200 and after == before
    assert (await get(client, "/v1/functions/stable:1"))[0] == 404
    assert (await get(client, "/v1/functions/stable/code"))[1] == CODE_A
    assert tree(function_dir) == files_before  # no tmp file, no orphan zip, no empty version dir


async def test_failed_create_leaves_no_half_function(
    client: TestClient, function_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create(client, "other", {"Runtime": "python3"})
    files_before = tree(function_dir)
    failing_meta_replace(monkeypatch)
    resp = await client.post("/v1/functions/fresh", data=json.dumps({"Runtime": "python3", "Version": "1",
                                                                     "Code": b64(CODE_B)}))
    assert resp.status == 500
    monkeypatch.undo()
    assert (await get(client, "/v1/functions/fresh"))[0] == 404
    assert [f["FunctionName"] for f in (await get(client, "/v1/functions"))[1]["Functions"]] == ["other"]
    assert tree(function_dir) == files_before


async def test_store_start_removes_crash_leftovers(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path / "data")
    await store.start()
    record = FunctionRecord()
    record.Configuration.CodeSha256 = sha_b64(CODE_A)
    async with store.lock(HASH, "kept"):
        await store.write(HASH, "kept", "$LATEST", record, CODE_A)
    fdir = store.function_dir(HASH, "kept")
    # what a crash at various points leaves behind
    (fdir / "code" / f"{hashlib.sha256(CODE_B).hexdigest()}.zip").write_bytes(CODE_B)  # zip, meta never written
    (fdir / "code" / ".tmp-x.zip.123").write_bytes(b"half")
    (fdir / "versions" / "$LATEST" / ".tmp-meta.json.456").write_bytes(b"{")
    (fdir / "versions" / "3").mkdir()  # version dir without meta
    (fdir / "versions" / ".trash-1.abc").mkdir()
    (fdir / "versions" / ".trash-1.abc" / "meta.json").write_text("{}")
    (store.root / HASH / ".trash-old.def" / "versions").mkdir(parents=True)
    half = store.function_dir(HASH, "half")
    (half / "code").mkdir(parents=True)
    (half / "code" / f"{hashlib.sha256(CODE_B).hexdigest()}.zip").write_bytes(CODE_B)

    restarted = FunctionStore(tmp_path / "data")
    await restarted.start()
    assert tree(store.root) == sorted([
        HASH, f"{HASH}/kept", f"{HASH}/kept/code", f"{HASH}/kept/code/{hashlib.sha256(CODE_A).hexdigest()}.zip",
        f"{HASH}/kept/versions", f"{HASH}/kept/versions/$LATEST", f"{HASH}/kept/versions/$LATEST/meta.json",
    ])
    assert await restarted.functions(HASH) == ["kept"]
    kept = await restarted.read(HASH, "kept", "$LATEST")
    assert kept is not None and Path(kept.Code.Location).read_bytes() == CODE_A


async def test_store_files_are_written_durably(tmp_path: Path) -> None:
    store = FunctionStore(tmp_path / "data")
    await store.start()
    record = FunctionRecord()
    record.Configuration.CodeSha256 = sha_b64(CODE_A)
    await store.write(HASH, "f", "$LATEST", record, CODE_A)
    meta = store.function_dir(HASH, "f") / "versions" / "$LATEST" / "meta.json"
    assert json.loads(meta.read_text())["Configuration"]["CodeSha256"] == sha_b64(CODE_A)
    assert stat.S_IMODE(meta.stat().st_mode) == 0o600  # root-only (docs/security.md)
    # a second write without code reuses the stored zip; a missing zip without code is an error
    await store.write(HASH, "f", "1", record, None)
    other = FunctionRecord()
    other.Configuration.CodeSha256 = sha_b64(CODE_B)
    with pytest.raises(Exception, match="not stored"):
        await store.write(HASH, "f", "2", other, None)
    assert await store.versions(HASH, "f") == ["$LATEST", "1"]


# ---- the daemon -----------------------------------------------------------------------------------


def wait_for_json(url: str, proc: subprocess.Popen, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"stubs exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"stubs did not answer {url} within {timeout}s")


def test_daemon_serves_and_stops_cleanly_on_sigterm(tmp_path: Path, runtime_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stubs", "--port", str(port), "--function-dir", str(tmp_path / "fd"),
         "--runtime-dir", str(runtime_dir), "--max_code_size", "1M"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        body = wait_for_json(f"http://127.0.0.1:{port}/v1/runtimes/nodejs10/configuration", proc)
        assert body["Name"] == "nodejs"
        assert (tmp_path / "fd").is_dir()  # the store was started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert b"stubs_stopping" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


async def test_tags_carry_scaling_labels_through_versions(client: TestClient) -> None:
    labels = {"com.openfaas.scale.min": "1", "com.openfaas.scale.zero-duration": "30s"}
    record = await create(client, "tagged", {"Runtime": "python3", "Handler": "index.handler", "Tags": labels,
                                             "Code": b64(make_zip({"index.py": "def handler(e, c): return 1\n"}))})
    assert record["Tags"] == labels
    resp = await client.put("/v1/functions/tagged", data=json.dumps({"Tags": {"team": "edge"}}))
    assert resp.status == 200, await resp.text()
    published = await resp.json()
    assert published["Tags"] == {"team": "edge"}
    status, latest = await get(client, "/v1/functions/tagged")
    assert status == 200 and latest["Tags"] == {"team": "edge"}


@pytest.mark.parametrize("tags,fragment", [
    (["a"], "Tags: expected an object"),
    ({"k": 1}, "Tags.k: expected a string"),
    ({"": "v"}, "1 to 128 characters"),
    ({f"k{i}": "v" for i in range(51)}, "more than 50"),
])
async def test_bad_tags_are_rejected_naming_the_field(client: TestClient, tags: Any, fragment: str) -> None:
    resp = await client.post("/v1/functions/badtags", data=json.dumps({"Tags": tags}))
    assert resp.status == 400
    assert fragment in (await error_of(resp))["Cause"]
