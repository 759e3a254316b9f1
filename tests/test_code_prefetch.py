"""Code images prepared off the request path: the numbered feed, stubs' code-changes feed, the
funclet's image limit, and the controller's prefetcher following real stubs."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from controller.code_prefetch import CodePrefetcher
from controller.funclet_client import FuncletError
from controller.registry import Registry
from easyfaas.feed import NumberedFeed
from easyfaas.models import CodeChanges, CodePrepareRequest, CodePrepareResponse
from easyfaas.pod_names import free_port
from easyfaas.runtimes import RuntimeCatalog
from stubs.app import make_app
from stubs.store import FunctionStore
from tests.fakes.stubs_app import CODE_A, CODE_B, MAX_CODE, UID, b64, create, error_of, sha_b64, start_client


# ---- the feed ----------------------------------------------------------------------------------


async def test_feed_numbers_waits_and_reports_loss() -> None:
    feed: NumberedFeed[str] = NumberedFeed(16)
    assert feed.since(-1).items == [] and feed.since(-1).seq == 0
    waiter = asyncio.create_task(feed.wait(0, 5))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    feed.append(lambda seq: f"item{seq}")
    batch = await asyncio.wait_for(waiter, 1)
    assert (batch.seq, batch.items, batch.lost) == (1, ["item1"], False)

    for _ in range(20):
        feed.append(lambda seq: f"item{seq}")
    batch = feed.since(1)
    assert batch.lost and batch.items[0] == "item6" and batch.items[-1] == "item21" and len(batch.items) == 16
    assert not feed.since(5).lost and feed.since(5).items[0] == "item6"
    assert feed.since(99).lost and feed.since(99).items == []  # a number of another run of the writer

    empty = await feed.wait(21, 0.05)  # nothing new: the wait times out with no items
    assert empty.items == [] and not empty.lost
    waiter = asyncio.create_task(feed.wait(21, 30))
    await asyncio.sleep(0.01)
    feed.close()
    assert (await asyncio.wait_for(waiter, 1)).items == []


# ---- stubs: GET /v1/code-changes --------------------------------------------------------------


async def test_stubs_announce_new_code_only(function_dir: Path, runtime_dir: Path) -> None:
    client = await start_client(function_dir, runtime_dir)
    try:
        resp = await client.get("/v1/code-changes", params={"after": "-1"})
        start = CodeChanges.from_dict(await resp.json())
        assert start.Seq == 0 and start.Changes == [] and start.BootID

        poll = asyncio.create_task(client.get("/v1/code-changes", params={"after": "0", "wait": "10"}))
        await asyncio.sleep(0.05)
        assert not poll.done()
        await create(client, "fa", {"Runtime": "python3", "Handler": "index.handler", "Code": b64(CODE_A)})
        batch = CodeChanges.from_dict(await (await asyncio.wait_for(poll, 5)).json())
        (change,) = batch.Changes
        assert change.Seq == batch.Seq == 1
        assert change.CodeSha256 == sha_b64(CODE_A) and change.CodeSize == len(CODE_A)
        assert change.Runtime == "python3" and change.FunctionBrn.endswith(":function:fa:$LATEST")
        assert Path(change.Code.Location).read_bytes() == CODE_A  # the funclet can load it from there

        # An update that changes only settings announces nothing; one with new code does.
        resp = await client.put("/v1/functions/fa", data=json.dumps({"Timeout": 9}))
        assert resp.status == 200, await resp.text()
        resp = await client.put("/v1/functions/fa", data=json.dumps({"Code": b64(CODE_B)}))
        assert resp.status == 200, await resp.text()
        batch = CodeChanges.from_dict(await (await client.get("/v1/code-changes", params={"after": "1"})).json())
        assert [c.CodeSha256 for c in batch.Changes] == [sha_b64(CODE_B)]
        assert batch.Changes[0].FunctionBrn.endswith(":function:fa:2")

        for params in ({"after": "x"}, {"wait": "soon"}, {"wait": "nan"}):
            resp = await client.get("/v1/code-changes", params=params)
            assert resp.status == 400
            assert (await error_of(resp))["Code"] == "InvalidParameterValueException"
    finally:
        await client.close()


# ---- funclet: the image store's limit ----------------------------------------------------------


async def test_image_store_keeps_at_most_max_images(tmp_path: Path, root_required: None) -> None:
    from funclet.sandbox.codeimage import CodeImageStore
    from funclet.sandbox.mounts import mounts_at
    from tests.fakes.stubs_app import make_zip

    store = CodeImageStore(tmp_path / "images", max_images=2)
    store.cleanup_stale()
    zips = [make_zip({"index.py": f"X = {i}\n"}) for i in range(4)]
    hashes = [hashlib.sha256(z).hexdigest() for z in zips]

    def loader(data: bytes) -> Any:
        async def load() -> bytes:
            return data
        return load

    try:
        for h, z in zip(hashes[:3], zips[:3]):
            await store.ensure(h, loader(z))
        await store.ensure(hashes[0], loader(zips[0]))  # used again: now the most recent
        assert await store.trim(in_use={hashes[1]}) == [hashes[2]]  # hashes[1] is bound by a sandbox
        assert {i.code_hash for i in store.images()} == {hashes[0], hashes[1]}
        assert mounts_at(store.root / hashes[2]) == [] and not (store.root / f"{hashes[2]}.erofs").exists()

        await store.ensure(hashes[3], loader(zips[3]))
        assert await store.trim(in_use=set()) == [hashes[1]]  # least recently used, no longer bound
        assert {i.code_hash for i in store.images()} == {hashes[0], hashes[3]}
        assert await store.trim(in_use=set()) == []
    finally:
        await store.close()
        store.cleanup_stale()


# ---- the controller's prefetcher against real stubs ---------------------------------------------


async def stubs_on(port: int, function_dir: Path, runtime_dir: Path) -> TestClient:
    """Stubs on a fixed port, so a restarted one is found where the prefetcher looks."""
    app = make_app(FunctionStore(function_dir), RuntimeCatalog.load(runtime_dir), default_account=UID,
                   max_code_size=MAX_CODE)
    client = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    return client


class RecordingFunclet:
    """Only the funclet's prepare call (the real one needs root and a pool): records what it built."""

    def __init__(self) -> None:
        self.prepared: list[str] = []
        self.unavailable = 0
        self.refuse: set[str] = set()

    async def prepare_code(self, request: CodePrepareRequest) -> CodePrepareResponse:
        if self.unavailable:
            self.unavailable -= 1
            raise FuncletError(503, "FuncletUnavailable", "socket missing")
        if request.CodeSha256 in self.refuse:
            raise FuncletError(400, "InvalidParameterValueException", "code: not a zip archive")
        if not Path(request.Code.Location).is_file():
            raise FuncletError(500, "ServiceException", f"cannot read {request.Code.Location}")
        self.prepared.append(request.CodeSha256)
        return CodePrepareResponse(CodeSha256=request.CodeSha256, ImageSize=1, Built=True)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_prefetcher_follows_stubs_and_resyncs_after_restart(function_dir: Path, runtime_dir: Path) -> None:
    body = {"Runtime": "python3", "Handler": "index.handler"}
    port = free_port()
    client = await stubs_on(port, function_dir, runtime_dir)
    funclet = RecordingFunclet()
    funclet.unavailable = 1  # the funclet is still starting when the first code arrives
    registry = Registry(f"http://127.0.0.1:{port}")
    await registry.start()
    prefetcher = CodePrefetcher(registry, funclet, poll_wait=0.5)  # type: ignore[arg-type]
    await prefetcher.start()
    try:
        await create(client, "fa", {**body, "Code": b64(CODE_A)})
        created = await create(client, "fb", {**body, "Version": "1", "Code": b64(CODE_A)})  # same code: built once
        await until(lambda: prefetcher.stats()["Prepared"] == 1)
        assert funclet.prepared == [sha_b64(CODE_A)]
        # A published version's record is read into the controller's cache ahead of its first call.
        published = created["Configuration"]["FunctionArn"]
        assert published.endswith(":function:fb:1")
        await until(lambda: registry.cached_function(published) is not None)
        assert registry.cached_function(published).record.Configuration.CodeSha256 == sha_b64(CODE_A)

        # stubs restarts (a new feed, numbered from 1 again) and gets new code.
        await client.close()
        client = await stubs_on(port, function_dir, runtime_dir)
        await create(client, "fc", {**body, "Code": b64(CODE_B)})
        await until(lambda: sha_b64(CODE_B) in funclet.prepared, timeout=10)
        assert funclet.prepared == [sha_b64(CODE_A), sha_b64(CODE_B)]
        stats = prefetcher.stats()
        assert (stats["Prepared"], stats["Pending"], stats["Failed"]) == (2, 0, 0)
    finally:
        await prefetcher.close()
        await registry.close()
        await client.close()


async def test_prefetcher_counts_failures_and_goes_on(function_dir: Path, runtime_dir: Path) -> None:
    body = {"Runtime": "python3", "Handler": "index.handler"}
    client = await start_client(function_dir, runtime_dir)
    funclet = RecordingFunclet()
    funclet.refuse = {sha_b64(CODE_A)}
    registry = Registry(str(client.make_url("")).rstrip("/"))
    await registry.start()
    prefetcher = CodePrefetcher(registry, funclet, poll_wait=0.5)  # type: ignore[arg-type]
    await prefetcher.start()
    try:
        await create(client, "fa", {**body, "Code": b64(CODE_A)})
        await create(client, "fb", {**body, "Code": b64(CODE_B)})
        await until(lambda: prefetcher.stats()["Failed"] + prefetcher.stats()["Prepared"] == 2)
        stats = prefetcher.stats()
        assert (stats["Failed"], stats["Prepared"], stats["Pending"]) == (1, 1, 0)
        assert "not a zip archive" in stats["LastError"] and ":function:fa:" in stats["LastError"]
        assert funclet.prepared == [sha_b64(CODE_B)]
    finally:
        await prefetcher.close()
        await registry.close()
        await client.close()
