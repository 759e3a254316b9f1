"""A language runtime's stand-in for the controller: :class:`FrameRuntime` accepts connections on a
real unix socket and answers each request frame according to the event."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from easyfaas.frames import HEADER, encode, read_frame

class FrameRuntime:
    """A runtime stand-in. The event (JSON) says what to do:

    ``{"sleep": s}`` wait s seconds first; ``{"crash": true}`` close without answering;
    ``{"garbage": true}`` answer with a frame that is not JSON; ``{"half": true}`` send half a frame
    and close; ``{"fail": msg}`` a function error; ``{"fatal": true}`` a fatal error;
    ``{"return": v}`` return v; ``{"log": text}`` captured output; ``{"memory_peak_kb": n}`` reports n
    as the runtime's peak memory; anything else: echo the event.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0
        self.max_connections = 0
        self.accepted = 0
        self.requests: list[dict[str, Any]] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> FrameRuntime:
        self.server = await asyncio.start_unix_server(self._serve, path=self.path)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                w.close()
            await self.server.wait_closed()
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.connections += 1
        self.max_connections = max(self.max_connections, self.connections)
        self._writers.add(writer)
        try:
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    return
                self.requests.append(frame)
                event = json.loads(frame["event"])
                if not isinstance(event, dict):
                    event = {}
                if "sleep" in event:
                    await asyncio.sleep(event["sleep"])
                if event.get("crash"):
                    return
                if event.get("garbage"):
                    writer.write(HEADER.pack(5) + b"hello")
                    await writer.drain()
                    continue
                if event.get("half"):
                    writer.write(HEADER.pack(100) + b"{\"id\"")
                    await writer.drain()
                    return
                logs = event.get("log", "") if frame.get("log") else ""
                if "fail" in event or event.get("fatal"):
                    reply = {"id": frame["id"], "ok": False, "fatal": bool(event.get("fatal")), "logs": logs,
                             "error": {"errorMessage": event.get("fail", "fatal"), "errorType": "Error",
                                       "stackTrace": ["at handler"]}}
                elif "return" in event:
                    value = event["return"]
                    reply = {"id": frame["id"], "ok": True, "logs": logs,
                             "result": value if isinstance(value, str) else json.dumps(value),
                             "content_type": "text/plain; charset=utf-8" if isinstance(value, str)
                             else "application/json"}
                else:
                    reply = {"id": frame["id"], "ok": True, "result": frame["event"],
                             "content_type": "application/json", "logs": logs}
                if "memory_peak_kb" in event:
                    reply["memory_peak_kb"] = event["memory_peak_kb"]
                writer.write(encode(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.connections -= 1
            self._writers.discard(writer)
            writer.close()
