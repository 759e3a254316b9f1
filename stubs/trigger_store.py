"""The stubs trigger store: trigger records on disk, an index of all of them, and their change feed.

A trigger lives beside the function it invokes, ``<account-hash>/<name>/triggers/<id>.json`` under
the function store's root, so deleting the function's directory deletes its triggers with it; the
index and the feed are told by :meth:`TriggerStore.forget`. Files are written as the function
store writes its records (temporary file, fsync, rename, directory fsync). Every change is numbered
on :attr:`TriggerStore.feed` (``GET /v1/trigger-changes``).

Writers hold :meth:`TriggerStore.lock` (one for all triggers: a route must not collide with any
account's route, so checking and writing are one step). Blocking file I/O runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import structlog

from easyfaas.feed import FeedBatch, NumberedFeed
from easyfaas.models import ModelError
from easyfaas.triggers import Trigger, TriggerChange, TriggerChangeAction
from stubs.store import TMP_PREFIX, FunctionStore, StoreError, _atomic_write, _mkdirs

log = structlog.get_logger(__name__)

TRIGGERS_DIR = "triggers"
FEED_SIZE = 1024
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class TriggerStore:
    """Triggers by id, with the (account hash, function name) each belongs to."""

    def __init__(self, functions: FunctionStore) -> None:
        self.functions = functions
        self.feed: NumberedFeed[TriggerChange] = NumberedFeed(FEED_SIZE)
        self._triggers: dict[str, tuple[str, str, Trigger]] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def valid_id(trigger_id: str) -> bool:
        return bool(_ID_RE.match(trigger_id))

    def _path(self, account: str, name: str, trigger_id: str) -> Path:
        if not _ID_RE.match(trigger_id):
            raise ValueError(f"invalid trigger id {trigger_id!r}")
        return self.functions.function_dir(account, name) / TRIGGERS_DIR / f"{trigger_id}.json"

    # ---- start -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every trigger of every stored function; remove what an interrupted writer left."""
        found = await asyncio.to_thread(self._scan)
        self._triggers = found
        log.info("trigger_store_started", triggers=len(found))

    def _scan(self) -> dict[str, tuple[str, str, Trigger]]:
        found: dict[str, tuple[str, str, Trigger]] = {}
        root = self.functions.root
        if not root.is_dir():
            return found
        for tdir in root.glob(f"*/*/{TRIGGERS_DIR}"):
            account, name = tdir.parent.parent.name, tdir.parent.name
            if tdir.parent.name.startswith(".") or not (tdir.parent / "versions").is_dir():
                continue
            for entry in tdir.iterdir():
                if entry.name.startswith(TMP_PREFIX):
                    entry.unlink(missing_ok=True)
                    continue
                trigger_id = entry.name.removesuffix(".json")
                if not _ID_RE.match(trigger_id):
                    continue
                try:
                    trigger = Trigger.from_dict(json.loads(entry.read_bytes()))
                except (ValueError, ModelError) as exc:
                    raise StoreError(f"corrupt trigger record {entry}: {exc}") from None
                found[trigger_id] = (account, name, trigger)
        return found

    # ---- reads -----------------------------------------------------------------------------------

    def lock(self) -> asyncio.Lock:
        return self._lock

    def all(self) -> list[Trigger]:
        return [t for _, _, t in self._triggers.values()]

    def of_function(self, account: str, name: str) -> list[Trigger]:
        found = [t for a, n, t in self._triggers.values() if a == account and n == name]
        return sorted(found, key=lambda t: (t.CreatedAt, t.TriggerId))

    def get(self, account: str, name: str, trigger_id: str) -> Trigger | None:
        entry = self._triggers.get(trigger_id)
        if entry is None or entry[0] != account or entry[1] != name:
            return None
        return entry[2]

    def changes(self, after: int) -> FeedBatch[TriggerChange]:
        return self.feed.since(after)

    # ---- writes (hold lock()) --------------------------------------------------------------------

    async def put(self, account: str, name: str, trigger: Trigger) -> Trigger:
        path = self._path(account, name, trigger.TriggerId)
        await asyncio.to_thread(self._write_sync, path, trigger.to_json().encode())
        self._triggers[trigger.TriggerId] = (account, name, trigger)
        self.feed.append(lambda seq: TriggerChange(Seq=seq, Action=TriggerChangeAction.PUT.value,
                                                   TriggerId=trigger.TriggerId, Trigger=trigger))
        return trigger

    def _write_sync(self, path: Path, data: bytes) -> None:
        _mkdirs(path.parent, self.functions.root)
        _atomic_write(path, data)

    async def delete(self, account: str, name: str, trigger_id: str) -> bool:
        if self.get(account, name, trigger_id) is None:
            return False
        path = self._path(account, name, trigger_id)
        await asyncio.to_thread(self._unlink_sync, path)
        self._drop(trigger_id)
        return True

    @staticmethod
    def _unlink_sync(path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop(self, trigger_id: str) -> None:
        del self._triggers[trigger_id]
        self.feed.append(lambda seq: TriggerChange(Seq=seq, Action=TriggerChangeAction.DELETE.value,
                                                   TriggerId=trigger_id))

    async def forget(self, account: str, name: str, version: str | None) -> int:
        """The function (``version`` None) or one of its versions is gone: so are its triggers.

        A whole function's trigger files went with its directory; a version's are deleted here.
        """
        gone = [tid for tid, (a, n, t) in self._triggers.items()
                if a == account and n == name and (version is None or t.Qualifier == version)]
        async with self._lock:
            for trigger_id in gone:
                if trigger_id not in self._triggers:
                    continue
                if version is not None:
                    await asyncio.to_thread(self._unlink_sync, self._path(account, name, trigger_id))
                self._drop(trigger_id)
        if gone:
            log.info("triggers_removed_with_function", account=account, function=name, version=version,
                     count=len(gone))
        return len(gone)
