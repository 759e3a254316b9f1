"""Route netlink (rtnetlink): the few link, address and route requests the sandbox network makes.

The bridge network (``funclet/sandbox/network.py``) needs a dozen kernel requests: look links up,
create the bridge and the veth pairs, bring links up, isolate a bridge port, add an IPv4 address and
the default route, list links, addresses and routes. This module sends them on a plain
``AF_NETLINK`` socket with ``struct``, one request at a time, blocking, waiting for the kernel's
acknowledgement (or its error) before it returns. A general netlink library (pyroute2) costs the
funclet about 7 MiB of resident memory for message classes of every family it knows; these
requests are all the funclet ever sends.

Message layouts are the kernel's (``linux/netlink.h``, ``linux/rtnetlink.h``, ``linux/if_link.h``,
``linux/if_addr.h``); attribute values are what ``ip link``/``ip addr``/``ip route`` and ``bridge
link`` send for the same commands.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterator

from funclet.sandbox.netlink_codec import (NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_MULTI,
                                            NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, attr, error_code, message, messages,
                                            parse_attrs)

__all__ = ["Link", "NetlinkError", "RouteSocket"]

# Message types (linux/rtnetlink.h).
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26

# Attributes (linux/if_link.h, linux/if_addr.h, linux/rtnetlink.h, linux/veth.h).
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_PROTINFO = 12
IFLA_LINKINFO = 18
IFLA_NET_NS_PID = 19
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFLA_BRPORT_ISOLATED = 33
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15

IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

_IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")   # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")   # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RECV_SIZE = 1 << 16  # a dump datagram is at most 32 KiB


class NetlinkError(OSError):
    """The kernel refused a request; ``code`` is its errno (``ENODEV``, ``EEXIST``, ...)."""

    def __init__(self, code: int, request: str) -> None:
        super().__init__(code, f"{request}: {os.strerror(code)}")
        self.code = code


@dataclass(frozen=True)
class Link:
    """One network interface as a link dump gives it."""

    index: int
    name: str
    kind: str  # IFLA_INFO_KIND: "veth", "bridge", ... ("" for a physical or loopback interface)
    flags: int


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def _text(value: bytes | None) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace") if value else ""


class RouteSocket:
    """A ``NETLINK_ROUTE`` socket of the netns it was created in. Use it from one thread at a time."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))  # no multicast groups: no events pile up in its buffer
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the exchange -----------------------------------------------------------------------------

    def _exchange(self, kind: int, flags: int, body: bytes, what: str) -> Iterator[tuple[int, bytes]]:
        """Send one request; yield the (type, payload) of the replies until the kernel is done."""
        self._seq += 1
        seq = self._seq
        self._sock.send(message(kind, NLM_F_REQUEST | flags, seq, body))
        while True:
            data = self._sock.recv(_RECV_SIZE)
            try:
                replies = list(messages(data))
            except OSError:
                raise NetlinkError(errno.EPROTO, f"{what}: malformed reply") from None
            for msg_type, msg_flags, msg_seq, payload in replies:
                if msg_seq != seq:
                    continue  # the reply to an earlier request that gave up
                if msg_type == NLMSG_ERROR:
                    code = error_code(payload)
                    if code:
                        raise NetlinkError(code, what)
                    return  # the acknowledgement
                if msg_type == NLMSG_DONE:
                    return
                yield msg_type, payload
                if not msg_flags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return

    def _command(self, kind: int, flags: int, body: bytes, what: str) -> None:
        for _ in self._exchange(kind, flags | NLM_F_ACK, body, what):
            pass

    def _dump(self, kind: int, body: bytes, what: str) -> list[bytes]:
        return [payload for _, payload in self._exchange(kind, NLM_F_DUMP, body, what)]

    # ---- links ------------------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        """The index of the link ``name``; None when there is none."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _name(name))
        try:
            for _, payload in self._exchange(RTM_GETLINK, 0, body, f"look up {name}"):
                return _IFINFOMSG.unpack_from(payload)[2]
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return None

    def links(self) -> list[Link]:
        result = []
        for payload in self._dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), "list links"):
            _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
            attrs = parse_attrs(payload, _IFINFOMSG.size)
            info = parse_attrs(attrs.get(IFLA_LINKINFO, b""))
            result.append(Link(index, _text(attrs.get(IFLA_IFNAME)), _text(info.get(IFLA_INFO_KIND)), flags))
        return result

    def add_bridge(self, name: str) -> None:
        linkinfo = attr(IFLA_INFO_KIND, _name("bridge"))
        body = (_IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _name(name))
                + attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo))
        self._command(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create bridge {name}")

    def add_veth(self, name: str, *, master: int, peer: str, peer_netns_pid: int) -> None:
        """A veth pair: ``name`` here, enslaved to ``master`` and down; ``peer`` in the netns of
        ``peer_netns_pid``."""
        peer_msg = (_IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _name(peer))
                    + attr(IFLA_NET_NS_PID, struct.pack("=I", peer_netns_pid)))
        linkinfo = (attr(IFLA_INFO_KIND, _name("veth"))
                    + attr(IFLA_INFO_DATA | NLA_F_NESTED, attr(VETH_INFO_PEER, peer_msg)))
        body = (_IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _name(name))
                + attr(IFLA_MASTER, struct.pack("=I", master)) + attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo))
        self._command(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {name}")

    def delete_link(self, name: str) -> bool:
        """Delete the link ``name``; False when there was none."""
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, _name(name))
        try:
            self._command(RTM_DELLINK, 0, body, f"delete {name}")
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise
        return True

    def set_up(self, index: int) -> None:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
        self._command(RTM_NEWLINK, 0, body, f"bring link {index} up")

    def isolate_bridge_port(self, index: int) -> None:
        """Mark the bridge port ``index`` isolated: it talks only to the bridge's non-isolated ports."""
        protinfo = attr(IFLA_BRPORT_ISOLATED, b"\1")
        body = _IFINFOMSG.pack(socket.AF_BRIDGE, 0, index, 0, 0) + attr(IFLA_PROTINFO | NLA_F_NESTED, protinfo)
        self._command(RTM_SETLINK, 0, body, f"isolate bridge port {index}")

    # ---- addresses and routes ---------------------------------------------------------------------

    def ipv4_addresses(self, index: int) -> list[str]:
        result = []
        for payload in self._dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0), "list addresses"):
            if _IFADDRMSG.unpack_from(payload)[4] != index:
                continue
            address = parse_attrs(payload, _IFADDRMSG.size).get(IFA_ADDRESS)
            if address and len(address) == 4:
                result.append(socket.inet_ntoa(address))
        return result

    def add_ipv4_address(self, index: int, address: str, prefixlen: int) -> None:
        packed = ipaddress.IPv4Address(address).packed
        body = (_IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
                + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed))
        self._command(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add {address}/{prefixlen}")

    def add_default_route(self, gateway: str, oif: int) -> None:
        body = (_RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                + attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed) + attr(RTA_OIF, struct.pack("=I", oif)))
        self._command(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"add default route via {gateway}")

    def default_route_interfaces(self) -> list[int]:
        """The output interfaces of the IPv4 default routes of the main table."""
        result = []
        for payload in self._dump(RTM_GETROUTE, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0), "list routes"):
            _, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(payload)
            attrs = parse_attrs(payload, _RTMSG.size)
            if RTA_TABLE in attrs:
                (table,) = struct.unpack("=I", attrs[RTA_TABLE])
            if dst_len == 0 and table == RT_TABLE_MAIN and RTA_OIF in attrs:
                result.append(struct.unpack("=I", attrs[RTA_OIF])[0])
        return result

    def link_name(self, index: int) -> str | None:
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        try:
            for _, payload in self._exchange(RTM_GETLINK, 0, body, f"look up link {index}"):
                return _text(parse_attrs(payload, _IFINFOMSG.size).get(IFLA_IFNAME)) or None
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return None
