"""Netlink's framing, shared by the two netlink families the funclet speaks: rtnetlink
(``funclet/sandbox/netlink.py``: links, addresses, routes) and nftables
(``funclet/sandbox/nftables.py``: the egress firewall). Layouts are the kernel's
(``linux/netlink.h``): a 16-byte header per message, type-length-value attributes, both padded to
4 bytes."""

from __future__ import annotations

import errno
import struct
from typing import Iterator

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLA_F_NESTED = 0x8000

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
NLATTR = struct.Struct("=HH")       # length, type
ERRNO = struct.Struct("=i")         # the first field of an NLMSG_ERROR payload: 0 (an ack) or -errno


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """One message: the header, then ``body``."""
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """The (type, flags, sequence, payload) of each message in one datagram from the kernel."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _port = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            raise OSError(errno.EPROTO, "a malformed netlink message")
        yield kind, flags, seq, data[offset + NLMSGHDR.size:offset + length]
        offset += (length + 3) & ~3


def error_code(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR payload (0 for an acknowledgement)."""
    return -ERRNO.unpack_from(payload)[0]


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded."""
    size = NLATTR.size + len(payload)
    return NLATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def nested(kind: int, *attrs: bytes) -> bytes:
    """An attribute holding ``attrs``."""
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes in ``data`` from ``offset`` on, by type (the nested flag masked off)."""
    out: dict[int, bytes] = {}
    while offset + NLATTR.size <= len(data):
        size, kind = NLATTR.unpack_from(data, offset)
        if size < NLATTR.size:
            break
        out[kind & ~NLA_F_NESTED] = data[offset + NLATTR.size:offset + size]
        offset += (size + 3) & ~3
    return out
