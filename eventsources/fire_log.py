"""The last due time each schedule fired, on disk: a restart resumes after it, never before.

One small JSON file per trigger under ``<state dir>/schedules/``, replaced atomically (temporary
file, fsync, rename, directory fsync), so a crash leaves either the old or the new time.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class FireLog:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, trigger_id: str) -> Path:
        if not _ID_RE.match(trigger_id):
            raise ValueError(f"invalid trigger id {trigger_id!r}")
        return self.directory / f"{trigger_id}.json"

    def last_fired(self, trigger_id: str) -> datetime | None:
        try:
            data = json.loads(self._path(trigger_id).read_text())
            return datetime.fromisoformat(data["LastDue"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: as if it never fired (the request id still refuses a repeat)

    def record(self, trigger_id: str, due: datetime) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(trigger_id)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump({"LastDue": due.isoformat()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def forget(self, trigger_id: str) -> None:
        try:
            self._path(trigger_id).unlink()
        except FileNotFoundError:
            pass
