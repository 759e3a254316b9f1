"""Faults of asynchronous invocations, with a real pod: ``kill -9`` of the controller with hundreds
of events queued and some running (SQLite queue), a NATS server killed and restarted mid-load, and a
full disk under the event queue.

Executions are counted from the controller's own log: every attempt that ran to its end logs
``invoke_async`` with its request id and attempt number (the log is appended across restarts).
After the fault, every accepted event ends ``succeeded``, ``failed`` or dead-lettered; an event
that had finished before the fault never runs again; one in flight may, and then its record's
``Attempts`` says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from tests.nats_harness import NatsServer
from tests.pod_harness import H, LivePod, all_finished, enqueue, live_pod, records, unique, wait_healthy

pytestmark = pytest.mark.e2e


async def enqueue_many(lp: LivePod, name: str, count: int, concurrency: int = 32,
                       sleep: float = 0.02) -> tuple[list[str], list[int]]:
    """Enqueue ``count`` events; (accepted request ids, statuses of the refused ones)."""
    accepted: list[str] = []
    refused: list[int] = []
    todo = iter(range(count))

    async def client() -> None:
        for n in todo:
            try:
                status, rid, _ = await enqueue(lp, name, {"sleep": sleep, "n": n})
            except (aiohttp.ClientError, asyncio.TimeoutError):
                refused.append(0)
                await asyncio.sleep(0.05)
                continue
            if status == 202:
                accepted.append(rid)
            else:
                refused.append(status)
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return accepted, refused


def executions(lp: LivePod) -> dict[str, list[int]]:
    """Attempt numbers of every run that ended, per request id, from the controller's log."""
    runs: dict[str, list[int]] = defaultdict(list)
    log = (lp.config.log_dir / "controller.log").read_text(errors="replace")  # type: ignore[operator]
    for line in log.splitlines():
        if '"invoke_async"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "invoke_async":
            runs[entry["request_id"]].append(entry["attempt"])
    return runs


def check_runs(ids: list[str], done_before: set[str], final: dict[str, dict[str, Any]],
               runs: dict[str, list[int]]) -> None:
    for rid in ids:
        record = final[rid]
        assert record["Status"] == "succeeded", record
        attempts = runs.get(rid, [])
        assert attempts, f"{rid} succeeded without a run in the log"
        assert len(set(attempts)) == len(attempts), f"{rid}: an attempt ran twice: {attempts}"
        assert max(attempts) <= record["Attempts"], (rid, attempts, record)
        if rid in done_before:
            assert attempts == [1] and record["Attempts"] == 1, f"{rid} finished before the fault, ran again"


@pytest.fixture
def sqlite_pod() -> Iterator[LivePod]:
    for lp in live_pod(container_num=3, funclet_args=("--max-sandboxes", "4"),
                       controller_args=("--event-retry-base", "0.2s", "--queue-timeout", "2s")):
        lp.pod.supervise(poll=0.1)
        yield lp


async def test_kill_9_of_the_controller_loses_no_event_and_reruns_no_finished_one(sqlite_pod: LivePod) -> None:
    lp = sqlite_pod
    name = unique("aq")
    await lp.create(name, PodConcurrentQuota=4)
    try:
        ids, refused = await enqueue_many(lp, name, 300)
        assert not refused and len(ids) == 300
        # Let some finish and some run, then kill the controller in the middle of the drain.
        await lp.until(lambda: _finished_at_least(lp, name, 30), timeout=60, what="30 events finished")
        before = await records(lp, name)
        done_before = {rid for rid, r in before.items() if r["Status"] == "succeeded"}
        assert len(done_before) < len(ids), "the queue drained before the kill: nothing was tested"
        old = lp.pod.pid("controller")
        lp.pod.kill("controller", signal.SIGKILL)
        await wait_healthy(lp, "controller", old)
        final = await all_finished(lp, name, ids)
        check_runs(ids, done_before, final, executions(lp))
    finally:
        await lp.close_clients()


async def test_kill_9_of_the_whole_pod_loses_no_event(sqlite_pod: LivePod) -> None:
    lp = sqlite_pod
    name = unique("ap")
    await lp.create(name, PodConcurrentQuota=4)
    try:
        ids, refused = await enqueue_many(lp, name, 200)
        assert not refused and len(ids) == 200
        await lp.until(lambda: _finished_at_least(lp, name, 20), timeout=60, what="20 events finished")
        done_before = {rid for rid, r in (await records(lp, name)).items() if r["Status"] == "succeeded"}
        assert len(done_before) < len(ids), "the queue drained before the kill: nothing was tested"
        old = {daemon: lp.pod.pid(daemon) for daemon in ("controller", "stubs", "funclet")}
        for daemon in old:
            lp.pod.kill(daemon, signal.SIGKILL)
        for daemon, pid in old.items():
            await wait_healthy(lp, daemon, pid, timeout=60)
        lp.note_zygote()
        final = await all_finished(lp, name, ids, timeout=180)
        check_runs(ids, done_before, final, executions(lp))
    finally:
        await lp.close_clients()


async def _finished_at_least(lp: LivePod, name: str, count: int) -> bool:
    found = await records(lp, name)
    return sum(1 for r in found.values() if r["Status"] == "succeeded") >= count


@pytest.fixture
def nats_pod(tmp_path: Path) -> Iterator[tuple[LivePod, NatsServer]]:
    server = NatsServer(tmp_path)
    server.start()
    try:
        for lp in live_pod(container_num=3, funclet_args=("--max-sandboxes", "4"),
                           controller_args=("--event-queue", server.url, "--event-ack-wait", "2s",
                                            "--event-retry-base", "0.2s")):
            yield lp, server
    finally:
        server.stop()


async def test_nats_server_restart_mid_load_loses_nothing(nats_pod: tuple[LivePod, NatsServer]) -> None:
    lp, server = nats_pod
    name = unique("an")
    await lp.create(name, PodConcurrentQuota=4)
    try:
        ids, refused = await enqueue_many(lp, name, 150)
        assert not refused and len(ids) == 150
        await lp.until(lambda: _finished_at_least(lp, name, 10), timeout=60, what="10 events finished")
        done_before = {rid for rid, r in (await records(lp, name)).items() if r["Status"] == "succeeded"}
        server.stop(signal.SIGKILL)
        # While it is down the enqueue refuses clearly (nothing is accepted that is not stored).
        status, _, body = await enqueue(lp, name, {"n": "down"})
        assert status == 503 and body is not None and body["Code"] == "EventStoreUnavailableException", body
        server.start()
        more, refused = await enqueue_many(lp, name, 30)
        ids += more
        final = await all_finished(lp, name, ids)
        check_runs(ids, done_before, final, executions(lp))
    finally:
        await lp.close_clients()


@pytest.fixture
def full_disk_pod() -> Iterator[tuple[LivePod, Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    import tempfile

    mnt = Path(tempfile.mkdtemp(prefix="ef-evq-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "evq", str(mnt)], check=True)
    try:
        for lp in live_pod(container_num=2, controller_args=("--state-dir", str(mnt))):
            yield lp, mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


async def test_full_disk_refuses_the_enqueue_and_writes_nothing(full_disk_pod: tuple[LivePod, Path]) -> None:
    lp, mnt = full_disk_pod
    name = unique("ad")
    await lp.create(name)
    try:
        status, rid, _ = await enqueue(lp, name, {"n": "before"})
        assert status == 202
        filler = mnt / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=1000"], capture_output=True)
        big = {"pad": "x" * (256 << 10)}
        refused: list[tuple[str, dict[str, Any] | None]] = []
        for _ in range(20):
            status, rid_full, body = await enqueue(lp, name, big)
            if status != 202:
                refused.append((rid_full, body))
                break
        assert refused, "the disk never filled up"
        rid_full, body = refused[0]
        assert body is not None and body["Status"] == 503 and body["Code"] == "EventStoreUnavailableException", body
        assert "full" in body["Cause"]
        async with lp.session().get(f"{lp.config.controller_url}/v1/invocations/{rid_full}", headers=H) as resp:
            assert resp.status == 404  # nothing half-written
        db = sqlite3.connect(f"file:{mnt / 'event-queue.sqlite3'}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("SELECT COUNT(*) FROM invocations WHERE request_id = ?", (rid_full,)).fetchone()[0] == 0
        finally:
            db.close()
        filler.unlink()
        status, rid_after, _ = await enqueue(lp, name, {"n": "after"})
        assert status == 202
        final = await all_finished(lp, name, [rid, rid_after])
        assert final[rid]["Status"] == final[rid_after]["Status"] == "succeeded"
    finally:
        await lp.close_clients()
