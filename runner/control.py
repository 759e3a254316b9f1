"""The funclet ↔ zygote ↔ runner control protocol: one JSON object per SOCK_SEQPACKET datagram.

File descriptors travel with a message by SCM_RIGHTS. This module is the single definition of that
protocol (docs/design.md, "Funclet ↔ zygote ↔ runner"):

* funclet → zygote ``{"op": "spawn", "spec": SandboxSpec}`` + fds ``[control, invoke_listener]``;
  zygote → funclet ``{"op": "spawned", "pid": <host pid>}`` (``pid`` 0 and ``error`` on failure).
* runner → funclet ``{"op": "ready"}`` | ``{"op": "failed", "error": "..."}`` once the sandbox is built.
* ``start`` → ``started`` (``ok``, ``error``, ``pid``), ``reset`` → ``reset_done``,
  ``ping`` → ``pong`` (``runtime_pid``; ``standby``: a standby runtime the funclet asked for waits;
  ``spare``: the runner's own Python standby runtime waits), and the unprompted ``exited`` (``pid``,
  ``code``, ``signal``; ``standby`` true when it was a standby runtime no function had yet).
* ``prestart`` (``runtime``) → ``prestarted`` (``ok``, ``pid``, ``error``): start a standby runtime
  (``runner/standby.py``) of a runtime that supports it; a later ``start`` of the same runtime hands
  it the function's environment instead of starting a new process.

Stdlib only: the zygote and the sandbox init import it.
"""

from __future__ import annotations

import enum
import json
import os
import socket
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MAX_DATAGRAM = 1 << 20
MAX_FDS = 8


class Op(str, enum.Enum):
    """The ``op`` field of a control message: its wire string."""

    SPAWN = "spawn"
    SPAWNED = "spawned"
    READY = "ready"
    FAILED = "failed"
    START = "start"
    STARTED = "started"
    RESET = "reset"
    RESET_DONE = "reset_done"
    PING = "ping"
    PONG = "pong"
    EXITED = "exited"
    PRESTART = "prestart"
    PRESTARTED = "prestarted"
    ERROR = "error"


class ControlError(ValueError):
    """A control datagram that is not a JSON object, too large, or truncated."""


@dataclass
class SandboxSpec:
    """What the runner needs to build one sandbox; sent by the funclet inside the spawn message.

    ``slot_dir`` is a host directory holding ``root`` (mountpoint of the new root tmpfs), ``task``
    and ``runtime`` (mountpoints the funclet fills later; they reach the sandbox by propagation
    because the funclet made their parent a shared mount). ``binds`` are read-only bind mounts
    ``{"src": host path, "dst": sandbox path}``; ``symlinks`` map a sandbox path to a link target.
    """

    id: str
    hostname: str
    slot_dir: str
    uid: int
    gid: int
    cgroup_procs: list[str] = field(default_factory=list)
    binds: list[dict[str, str]] = field(default_factory=list)
    symlinks: dict[str, str] = field(default_factory=dict)
    tmp_size: int = 64 << 20
    shm_size: int = 0  # 0: same as tmp_size
    root_size: int = 1 << 20
    nofile: int = 1024
    loopback_up: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SandboxSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SandboxSpec fields: {sorted(unknown)}")
        missing = [name for name in ("id", "hostname", "slot_dir", "uid", "gid") if name not in data]
        if missing:
            raise ValueError(f"SandboxSpec lacks {missing}")
        spec = cls(**data)
        if not isinstance(spec.uid, int) or not isinstance(spec.gid, int) or spec.uid <= 0 or spec.gid <= 0:
            raise ValueError(f"sandbox uid/gid must be positive integers, not {spec.uid!r}/{spec.gid!r}")
        for name in ("tmp_size", "root_size", "nofile"):
            value = getattr(spec, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"SandboxSpec.{name} must be a positive integer, not {value!r}")
        if not isinstance(spec.shm_size, int) or spec.shm_size < 0:
            raise ValueError(f"SandboxSpec.shm_size must be a non-negative integer, not {spec.shm_size!r}")
        for bind in spec.binds:
            if not isinstance(bind, dict) or not bind.get("src") or not str(bind.get("dst", "")).startswith("/"):
                raise ValueError(f"bad bind {bind!r}: needs src and an absolute dst")
        for dst in spec.symlinks:
            if not dst.startswith("/"):
                raise ValueError(f"bad symlink {dst!r}: needs an absolute path")
        return spec

    @property
    def effective_shm_size(self) -> int:
        return self.shm_size or self.tmp_size


def encode_message(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_DATAGRAM:
        raise ControlError(f"control message of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def decode_message(data: bytes) -> dict[str, Any]:
    """Parse one datagram; raises ControlError (a ValueError) if it is not a JSON object."""
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ControlError(f"control message is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ControlError("control message is not a JSON object with an op")
    return message


def send_message(sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message (blocking), with fds by SCM_RIGHTS when given."""
    data = encode_message(message)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Receive one message (blocking) and the fds that came with it; the caller owns the fds.

    Raises EOFError when the peer closed the socket, ControlError on a malformed datagram (any fds
    that came with it are closed).
    """
    data, fds, msg_flags, _addr = socket.recv_fds(sock, MAX_DATAGRAM, MAX_FDS)
    if not data and not fds:
        raise EOFError("control socket closed")
    try:
        if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ControlError("control message truncated")
        return decode_message(data), list(fds)
    except ControlError:
        for fd in fds:
            _close_quietly(fd)
        raise


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def zygote_command(python: str, repo_root: str, fd: int) -> list[str]:
    """argv that starts the zygote (``runner/zygote.py``) on inherited socket fd ``fd`` (stdlib only: -I -S)."""
    code = f"import sys; sys.path.insert(0, {repo_root!r}); import runner.zygote as z; z.main({int(fd)})"
    return [python, "-I", "-S", "-c", code]
