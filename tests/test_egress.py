"""Egress policies against real network namespaces: each policy lets a sandbox reach exactly what it says.

The "outside" is a network namespace of the test's own, joined to the host by a veth pair on a
subnet of the benchmarking range (198.18.<n>.0/24, with 2001:db8:<n>::/64 for IPv6) and serving
TCP and UDP on two ports at two addresses. Sandboxes are forked children in namespaces of their
own on a bridge of the test's own (10.216.<n>.0/24). No packet is ever sent anywhere else.

The policy parser and the stubs' validation are tested here too; ``tests/test_security_functions.py``
runs a function with a policy through a real pod.
"""

from __future__ import annotations

import errno
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute

from easyfaas.egress import EgressPolicy, EgressPolicyError
from funclet.sandbox.network import BridgeNetwork, SandboxNic
from funclet.sandbox.nftables import NFPROTO_BRIDGE, list_tables
from tests.egress_harness import Outside, _write, in_netns, outside, socket_in
from tests.sandbox_harness import sandbox_process

IP_FREEBIND = 15
IP_TRANSPARENT = 19
TCP_PORT_TIMEOUT = 1.5


# ---- the policy vocabulary -----------------------------------------------------------------------

def test_policy_parses_every_form_and_keeps_its_wire_form() -> None:
    assert EgressPolicy.from_wire(None).is_none and EgressPolicy.from_wire({}).is_none
    assert EgressPolicy.from_wire({"Egress": "none"}).to_wire() == {"Egress": "none"}
    assert EgressPolicy.from_wire({"Egress": "all"}).allow_all
    entries = ["10.1.2.3:1883", "192.0.2.0/24:443", "[2001:db8::1]:53", "[2001:db8::/32]:53"]
    policy = EgressPolicy.from_wire({"Egress": entries + ["10.1.2.3:1883"]})
    assert policy.to_wire() == {"Egress": entries}  # duplicates dropped, order kept
    assert [(r.version, r.port) for r in policy.rules] == [(4, 1883), (4, 443), (6, 53), (6, 53)]


@pytest.mark.parametrize("network, field", [
    ({"Egress": "some"}, "Network.Egress"),
    ({"Egress": 3}, "Network.Egress"),
    ({"Egress": ["10.1.2.3:80", "10.1.2.3"]}, "Network.Egress[1]"),
    ({"Egress": ["10.1.2.3:0"]}, "Network.Egress[0]"),
    ({"Egress": ["10.1.2.3:65536"]}, "Network.Egress[0]"),
    ({"Egress": ["10.1.2.0/16:80"]}, "Network.Egress[0]"),    # host bits set
    ({"Egress": ["2001:db8::1:53"]}, "Network.Egress[0]"),    # IPv6 without brackets
    ({"Egress": ["[10.1.2.3]:53"]}, "Network.Egress[0]"),
    ({"Egress": ["example.com:443"]}, "Network.Egress[0]"),  # addresses only: no resolver involved
    ({"Egress": [None]}, "Network.Egress[0]"),
    ({"Egress": [f"10.0.{i}.1:80" for i in range(65)]}, "Network.Egress"),
    ({"Egress": "all", "Ingress": "all"}, "Network"),
    ("all", "Network"),
])
def test_bad_policies_are_refused_naming_the_field(network: object, field: str) -> None:
    with pytest.raises(EgressPolicyError) as info:
        EgressPolicy.from_wire(network)
    assert str(info.value).startswith(f"{field}: "), str(info.value)


# ---- the outside host and the sandboxes ----------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> Iterator[BridgeNetwork]:
    tag = secrets.token_hex(3)
    network = BridgeNetwork(bridge=f"t{tag}eb", cidr=f"10.216.{secrets.randbelow(250) + 1}.1/24",
                            veth_prefix=f"t{tag}e")
    network.setup()
    try:
        yield network
    finally:
        network.cleanup_stale()
        network.teardown()
        network.close()
    assert network.firewall is not None
    assert network.firewall.table not in list_tables()
    assert network.firewall.table not in list_tables(NFPROTO_BRIDGE)


@dataclass
class Box:
    pid: int
    nic: SandboxNic


@contextmanager
def sandbox(net: BridgeNetwork, slot: int) -> Iterator[Box]:
    with sandbox_process() as pid:
        with in_netns(pid):  # as the runner does: no IPv6 on the sandbox's interfaces
            _write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
        nic = net.attach(pid, slot)
        try:
            yield Box(pid, nic)
        finally:
            net.detach(nic, delete_link=True)
            assert net.firewall is not None and net.firewall.tagged(nic.host_ifname) == {}


@pytest.fixture
def boxes(net: BridgeNetwork) -> Iterator[tuple[Box, Box]]:
    with sandbox(net, 0) as a, sandbox(net, 1) as b:
        yield a, b


def tcp_reaches(box: Box, address: str, port: int, outside: Outside | None = None) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket_in(box.pid, family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TCP_PORT_TIMEOUT)
        try:
            sock.connect((address, port))
        except OSError:
            return False
        sock.sendall(b"x")
    if outside is not None:  # take the connection off the listener; it came from the host (NAT)
        listener = outside.tcp[(family, port)]
        listener.settimeout(TCP_PORT_TIMEOUT)
        conn, peer = listener.accept()
        conn.close()
        assert peer[0] == outside.host_address, f"not masqueraded: the outside saw {peer}"
    return True


def udp_reaches(box: Box, outside: Outside, address: str, port: int, *, source: str | None = None) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    token = secrets.token_bytes(8)
    receiver = outside.udp[(family, port)]
    with socket_in(box.pid, family, socket.SOCK_DGRAM) as sock:
        if source is not None:  # an address that is not ours (IP_TRANSPARENT: root here, never a function)
            sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
            sock.bind((source, 0))
        try:
            sock.sendto(token, (address, port))
        except OSError as exc:
            assert exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EPERM), exc
            return False
        deadline = time.monotonic() + 1.0
        receiver.settimeout(1.0)
        while time.monotonic() < deadline:
            try:
                data, _ = receiver.recvfrom(64)
            except (socket.timeout, BlockingIOError):
                return False
            if data == token:
                return True
    return False


def reachable(box: Box, outside: Outside, targets: list[tuple[str, int]]) -> dict[str, bool]:
    """TCP and UDP to each target: what got through."""
    seen = {}
    for address, port in targets:
        seen[f"tcp {address}:{port}"] = tcp_reaches(box, address, port, outside)
        seen[f"udp {address}:{port}"] = udp_reaches(box, outside, address, port)
    return seen


def every_target(outside: Outside) -> list[tuple[str, int]]:
    p1, p2 = outside.ports
    return [(outside.address, p1), (outside.address, p2), (outside.other_address, p1), (outside.other_address, p2)]


def expect(outside: Outside, allowed: set[tuple[str, int]]) -> dict[str, bool]:
    return {f"{proto} {a}:{p}": (a, p) in allowed for a, p in every_target(outside) for proto in ("tcp", "udp")}


# ---- each policy allows exactly what it says -----------------------------------------------------

def test_no_policy_reaches_nothing(net: BridgeNetwork, outside: Outside, boxes: tuple[Box, Box]) -> None:
    a, _ = boxes
    assert reachable(a, outside, every_target(outside)) == expect(outside, set())
    net.set_egress(a.nic, EgressPolicy())  # "none" written explicitly: the same
    assert reachable(a, outside, every_target(outside)) == expect(outside, set())


def test_one_address_and_port(net: BridgeNetwork, outside: Outside, boxes: tuple[Box, Box]) -> None:
    a, b = boxes
    p1, _ = outside.ports
    net.set_egress(a.nic, EgressPolicy.from_wire({"Egress": [f"{outside.address}:{p1}"]}))
    assert reachable(a, outside, every_target(outside)) == expect(outside, {(outside.address, p1)})
    # The neighbour's policy is its own.
    assert reachable(b, outside, [(outside.address, p1)]) == {f"tcp {outside.address}:{p1}": False,
                                                              f"udp {outside.address}:{p1}": False}


def test_a_network_and_port(net: BridgeNetwork, outside: Outside, boxes: tuple[Box, Box]) -> None:
    a, _ = boxes
    _, p2 = outside.ports
    net_of = outside.address.rsplit(".", 1)[0] + ".0/24"
    net.set_egress(a.nic, EgressPolicy.from_wire({"Egress": [f"{net_of}:{p2}"]}))
    assert reachable(a, outside, every_target(outside)) == expect(
        outside, {(outside.address, p2), (outside.other_address, p2)})


def test_all_reaches_everything_beyond_the_host_and_nothing_of_it(net: BridgeNetwork, outside: Outside,
                                                                  boxes: tuple[Box, Box]) -> None:
    a, b = boxes
    net.set_egress(a.nic, EgressPolicy(allow_all=True))
    net.set_egress(b.nic, EgressPolicy(allow_all=True))
    assert reachable(a, outside, every_target(outside)) == expect(outside, set(every_target(outside)))
    # The host: a listener on all its addresses (0.0.0.0), tried at the bridge address and at the
    # host's end of the outside link.
    with socket.socket() as host_listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host_udp:
        host_listener.bind(("0.0.0.0", 0))
        host_listener.listen(4)
        port = host_listener.getsockname()[1]
        host_udp.bind(("0.0.0.0", port))
        host_udp.settimeout(0.5)
        for address in (net.gateway, outside.host_address):
            assert not tcp_reaches(a, address, port), address
            with socket_in(a.pid, socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"host?", (address, port))
            with pytest.raises(socket.timeout):
                host_udp.recvfrom(64)
    # Another sandbox, even one whose policy is "all" too.
    with socket_in(b.pid, socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((b.nic.address, 0))
        listener.listen(4)
        assert not tcp_reaches(a, b.nic.address, listener.getsockname()[1])
    assert net.firewall is not None and net.firewall.dropped()["forward"] >= 1


def test_nothing_from_outside_opens_a_connection_to_a_sandbox(net: BridgeNetwork, outside: Outside,
                                                              boxes: tuple[Box, Box]) -> None:
    a, _ = boxes
    net.set_egress(a.nic, EgressPolicy(allow_all=True))
    with socket_in(a.pid, socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((a.nic.address, 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        with in_netns(outside.pid):  # the outside routes the sandbox subnet to the host
            with IPRoute(groups=0) as ipr:
                subnet = f"{net.interface.network.network_address}"
                ipr.route("add", dst=subnet, dst_len=net.prefixlen, gateway=outside.host_address)
                try:
                    with socket.socket() as sock:
                        sock.settimeout(TCP_PORT_TIMEOUT)
                        with pytest.raises(OSError):
                            sock.connect((a.nic.address, port))
                finally:
                    ipr.route("del", dst=subnet, dst_len=net.prefixlen, gateway=outside.host_address)


def test_ipv6_is_refused_whatever_the_policy(net: BridgeNetwork, outside: Outside, boxes: tuple[Box, Box]) -> None:
    a, _ = boxes
    p1, _ = outside.ports
    policy = EgressPolicy.from_wire({"Egress": [f"[{outside.address6}]:{p1}", f"{outside.address}:{p1}"]})
    net.set_egress(a.nic, policy)
    assert tcp_reaches(a, outside.address, p1, outside)  # the IPv4 entry works
    # Sandboxes have no IPv6 address and the bridge none either: nothing leaves, by TCP or UDP.
    assert not tcp_reaches(a, outside.address6, p1)
    assert not udp_reaches(a, outside, outside.address6, p1)
    # ... while the outside does serve IPv6 (the host reaches it).
    with socket.create_connection((outside.address6, p1), timeout=TCP_PORT_TIMEOUT):
        pass
    outside.tcp[(socket.AF_INET6, p1)].settimeout(TCP_PORT_TIMEOUT)
    outside.tcp[(socket.AF_INET6, p1)].accept()[0].close()


def test_reset_takes_the_policy_away(net: BridgeNetwork, outside: Outside, boxes: tuple[Box, Box]) -> None:
    a, _ = boxes
    p1, _ = outside.ports
    net.set_egress(a.nic, EgressPolicy(allow_all=True))
    assert tcp_reaches(a, outside.address, p1, outside)
    assert net.firewall is not None and net.firewall.tagged(a.nic.host_ifname).get("egress") == 1
    net.clear_egress(a.nic)
    assert net.firewall.tagged(a.nic.host_ifname) == {"prerouting": 2}  # only its address binding
    assert reachable(a, outside, every_target(outside)) == expect(outside, set())
    # Replacing one policy by another leaves none of the first.
    net.set_egress(a.nic, EgressPolicy(allow_all=True))
    net.set_egress(a.nic, EgressPolicy.from_wire({"Egress": [f"{outside.other_address}:{p1}"]}))
    assert reachable(a, outside, every_target(outside)) == expect(outside, {(outside.other_address, p1)})


def test_no_sandbox_borrows_another_ones_policy(net: BridgeNetwork, outside: Outside,
                                                boxes: tuple[Box, Box]) -> None:
    a, b = boxes
    p1, _ = outside.ports
    net.set_egress(b.nic, EgressPolicy(allow_all=True))
    assert net.firewall is not None
    before = net.firewall.dropped_spoofed()
    assert udp_reaches(b, outside, outside.address, p1)
    # a (no egress) sends with b's address as its source. A function cannot even send it (a
    # non-local source needs IP_TRANSPARENT, a capability it lacks; IP_FREEBIND only binds), so
    # this is the port's own check, which holds even for a sandbox that could.
    with socket_in(a.pid, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((b.nic.address, 0))
        with pytest.raises(OSError) as info:
            sock.sendto(b"spoofed", (outside.address, p1))
        assert info.value.errno == errno.ENETUNREACH
    assert not udp_reaches(a, outside, outside.address, p1, source=b.nic.address)
    assert net.firewall.dropped_spoofed() > before


def _arp_reply(box: Box, sender_ip: str, target_ip: str) -> None:
    """One ARP reply out of the sandbox's eth0 saying ``sender_ip`` is at its MAC (AF_PACKET: root here,
    never a function: no CAP_NET_RAW, and the seccomp filter refuses the family)."""
    with in_netns(box.pid):
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind(("eth0", 0))
            mac = raw.getsockname()[4]
            broadcast = b"\xff" * 6
            frame = (broadcast + mac + b"\x08\x06"
                     + bytes.fromhex("0001" "0800" "06" "04" "0002") + mac + socket.inet_aton(sender_ip)
                     + broadcast + socket.inet_aton(target_ip))
            raw.send(frame)


def test_no_sandbox_claims_another_ones_address_by_arp(net: BridgeNetwork, boxes: tuple[Box, Box]) -> None:
    a, b = boxes
    assert net.firewall is not None
    before = net.firewall.dropped_spoofed()
    _arp_reply(a, a.nic.address, net.gateway)  # its own address: passes
    assert net.firewall.dropped_spoofed() == before
    _arp_reply(a, b.nic.address, net.gateway)  # b's: dropped at a's port
    assert net.firewall.dropped_spoofed() == before + 1
