"""An "outside" host for the egress tests: a network namespace of the test's own, joined to the host
by a veth pair, serving TCP and UDP on two ports of two addresses (and IPv6) — the ``outside``
fixture, one per module, which the test modules import — and sockets made inside a netns."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from easyfaas import syscalls
from tests.sandbox_harness import netns_iproute, sandbox_process

def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@contextmanager
def in_netns(pid: int) -> Iterator[None]:
    """The calling thread in the netns of ``pid`` (sockets made here stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        syscalls.setns(target, syscalls.CLONE_NEWNET)
        try:
            yield
        finally:
            syscalls.setns(own, syscalls.CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(target)


def socket_in(pid: int, family: int, kind: int) -> socket.socket:
    with in_netns(pid):
        return socket.socket(family, kind)


@dataclass
class Outside:
    pid: int
    host_ifname: str
    host_address: str          # the host's end: a host address, never reachable from a sandbox
    address: str               # served
    other_address: str         # served too, on the same ports
    address6: str
    ports: tuple[int, int]
    tcp: dict[tuple[int, int], socket.socket]  # (family, port) -> listener
    udp: dict[tuple[int, int], socket.socket]


def _free_ports(count: int) -> tuple[int, ...]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(20000 + secrets.randbelow(20000))
    return tuple(sorted(ports))


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    n = secrets.randbelow(250) + 1
    host_ifname = f"t{secrets.token_hex(3)}o"
    ports = _free_ports(2)
    with sandbox_process() as pid, ExitStack() as stack:
        with IPRoute(groups=0) as ipr:
            ipr.link("add", ifname=host_ifname, kind="veth", peer={"ifname": "eth0", "net_ns_pid": pid})
            stack.callback(_delete_link, host_ifname)
            (index,) = ipr.link_lookup(ifname=host_ifname)
            ipr.addr("add", index=index, address=f"198.18.{n}.1", prefixlen=24)
            ipr.link("set", index=index, state="up")
            # Replies to masqueraded traffic come in here and are forwarded to the bridge.
            _write(f"/proc/sys/net/ipv4/conf/{host_ifname}/forwarding", "1")
            ipr.addr("add", index=index, address=f"2001:db8:{n:x}::1", prefixlen=64, flags=0x80)  # nodad
        with netns_iproute(pid) as inner:
            inner.link("set", index=1, state="up")
            (eth0,) = inner.link_lookup(ifname="eth0")
            for host in (2, 3):
                inner.addr("add", index=eth0, address=f"198.18.{n}.{host}", prefixlen=24)
            inner.addr("add", index=eth0, address=f"2001:db8:{n:x}::2", prefixlen=64, flags=0x80)
            inner.link("set", index=eth0, state="up")
        tcp, udp = {}, {}
        for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for port in ports:
                listener = stack.enter_context(socket_in(pid, family, socket.SOCK_STREAM))
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind((wildcard, port))
                listener.listen(16)
                tcp[(family, port)] = listener
                receiver = stack.enter_context(socket_in(pid, family, socket.SOCK_DGRAM))
                if family == socket.AF_INET6:
                    receiver.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                receiver.bind((wildcard, port))
                udp[(family, port)] = receiver
        yield Outside(pid=pid, host_ifname=host_ifname, host_address=f"198.18.{n}.1", address=f"198.18.{n}.2",
                      other_address=f"198.18.{n}.3", address6=f"2001:db8:{n:x}::2", ports=ports, tcp=tcp, udp=udp)
    with IPRoute(groups=0) as ipr:
        assert not ipr.link_lookup(ifname=host_ifname)


def _delete_link(ifname: str) -> None:
    with IPRoute(groups=0) as ipr:
        try:
            ipr.link("del", ifname=ifname)
        except Exception:  # noqa: BLE001 - already gone with its netns
            pass

