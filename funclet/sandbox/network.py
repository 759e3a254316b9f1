"""Sandbox networking: one Linux bridge on the host, one veth pair per sandbox, by netlink (``netlink.py``).

Each sandbox (a process that unshared its own network namespace) gets ``eth0`` with an address
from the bridge subnet and a default route via the bridge; the host end ``<prefix><slot>`` is an
ISOLATED bridge port, so sandboxes never talk to each other at layer 2. The bridge's firewall
(``firewall.py``, set up with the bridge) drops what sandboxes send to the host itself, what a port
sends from any address but its sandbox's, and what they send anywhere else unless their function's
egress policy allows it (``set_egress`` at warmup, ``clear_egress`` at reset); the bridge has no
IPv6 address at all.

Allowed egress is routed: the bridge forwards (``net.ipv4.conf.<bridge>.forwarding``, set here),
and the replies must be forwarded from the outgoing interface too, which is the operator's choice
(``net.ipv4.conf.<interface>.forwarding=1``, or ``net.ipv4.ip_forward=1``): this module does not
open forwarding between the host's other networks. ``set_egress`` logs a warning when the default
route's interface does not forward.

No process is spawned: to configure the inside of a sandbox, the calling thread setns()es into the sandbox netns just long enough to open a
netlink socket (a socket stays bound to the netns it was created in), then setns()es back.

Threading: setns() switches only the calling thread, and a netlink socket is used by one thread at
a time. The daemon therefore runs every call on a ``BridgeNetwork`` in one
dedicated worker thread (a single-thread executor), never on the event loop thread.

Teardown is normally the kernel's: when the sandbox's netns dies, its veth pair goes with it
(batched, ~1.6 ms per sandbox). Deleting a veth by hand costs 17–30 ms serialized machine-wide,
so ``detach`` only releases the address unless asked.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog

from easyfaas import syscalls
from easyfaas.egress import EgressPolicy
from funclet.sandbox.firewall import BridgeFirewall
from funclet.sandbox.netlink import NetlinkError, RouteSocket

log = structlog.get_logger(__name__)

IFNAMSIZ = 16
EEXIST = 17


class NetworkError(RuntimeError):
    """A sandbox network operation failed (the message names the interface or pid)."""


@dataclass
class SandboxNic:
    host_ifname: str
    address: str
    prefixlen: int
    gateway: str


class AddressPool:
    """Host addresses of a subnet minus the gateway, handed out round-robin.

    Round-robin (rather than lowest-free) delays reuse of an address, so a neighbour entry cached
    for the previous owner has time to expire.
    """

    def __init__(self, interface: ipaddress.IPv4Interface):
        net = interface.network
        if net.num_addresses < 4:
            raise ValueError(f"subnet {net} is too small for sandboxes")
        self._first = int(net.network_address) + 1
        self._last = int(net.broadcast_address) - 1
        self._gateway = int(interface.ip)
        self._next = self._first
        self._used: set[int] = set()

    def allocate(self) -> str:
        size = self._last - self._first + 1
        for _ in range(size):
            candidate = self._next
            self._next = self._first if candidate >= self._last else candidate + 1
            if candidate != self._gateway and candidate not in self._used:
                self._used.add(candidate)
                return str(ipaddress.IPv4Address(candidate))
        raise NetworkError("no free sandbox address left in the bridge subnet")

    def release(self, address: str) -> None:
        self._used.discard(int(ipaddress.IPv4Address(address)))

    def in_use(self) -> list[str]:
        return [str(ipaddress.IPv4Address(a)) for a in sorted(self._used)]


@contextmanager
def netns_socket(pid: int) -> Iterator[RouteSocket]:
    """``with netns_socket(pid) as ipr:`` — a netlink socket that lives in the netns of ``pid``.

    Only the calling thread switches netns, and only while the socket is created.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise NetworkError(f"sandbox process {pid} is gone") from e
        try:
            syscalls.setns(target, syscalls.CLONE_NEWNET)
            try:
                ipr = RouteSocket()
            finally:
                # Always back: the thread must never stay in a sandbox netns.
                syscalls.setns(own, syscalls.CLONE_NEWNET)
        finally:
            os.close(target)
    finally:
        os.close(own)
    try:
        yield ipr
    finally:
        ipr.close()


class BridgeNetwork:
    """The host bridge plus per-sandbox veths. Call every method from the same thread."""

    def __init__(self, bridge: str = "efbr0", cidr: str = "172.33.0.1/24", veth_prefix: str = "efv", *,
                 firewall: bool = True, allow_egress: bool = False):
        if not bridge or len(bridge) >= IFNAMSIZ:
            raise ValueError(f"bridge name {bridge!r} must be 1-15 characters")
        self.bridge = bridge
        self.interface = ipaddress.IPv4Interface(cidr)
        self.firewall = (BridgeFirewall(bridge, cidr, port_prefix=veth_prefix, allow_egress=allow_egress)
                         if firewall else None)
        self.gateway = str(self.interface.ip)
        self.prefixlen = self.interface.network.prefixlen
        self.veth_prefix = veth_prefix
        self._pool = AddressPool(self.interface)
        self._ipr: RouteSocket | None = None
        self._bridge_index: int | None = None
        self._forwarding_checked = False

    @property
    def ipr(self) -> RouteSocket:
        if self._ipr is None:
            self._ipr = RouteSocket()
        return self._ipr

    def host_ifname(self, slot_index: int) -> str:
        name = f"{self.veth_prefix}{slot_index}"
        if len(name) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than 15 characters")
        return name

    def _lookup(self, ifname: str) -> int | None:
        return self.ipr.link_index(ifname)

    def setup(self) -> None:
        """Create the bridge if missing, give it the gateway address, its firewall, bring it up (idempotent)."""
        if self.firewall is not None:
            # Before the bridge exists: a sandbox must never see it unprotected.
            self.firewall.setup()
        index = self._lookup(self.bridge)
        if index is None:
            try:
                self.ipr.add_bridge(self.bridge)
            except NetlinkError as e:
                if e.code != EEXIST:
                    raise NetworkError(f"cannot create bridge {self.bridge}: {e}") from e
            index = self._lookup(self.bridge)
            if index is None:
                raise NetworkError(f"bridge {self.bridge} vanished as it was created")
        _disable_ipv6(self.bridge)
        if self.firewall is not None:
            # Only with the firewall in front: it decides what of the sandboxes' traffic is routed.
            _write_sysctl(f"/proc/sys/net/ipv4/conf/{self.bridge}/forwarding", "1")
        if self.gateway not in self.ipr.ipv4_addresses(index):
            self.ipr.add_ipv4_address(index, self.gateway, self.prefixlen)
        self.ipr.set_up(index)
        self._bridge_index = index
        log.info("bridge_ready", bridge=self.bridge, address=f"{self.gateway}/{self.prefixlen}")

    def attach(self, pid: int, slot_index: int) -> SandboxNic:
        """Give the netns of ``pid`` an ``eth0`` on the bridge (isolated port) with an address."""
        if self._bridge_index is None:
            raise NetworkError("BridgeNetwork.setup() was not called")
        host = self.host_ifname(slot_index)
        address = self._pool.allocate()
        try:
            if self.firewall is not None:
                # Before the port exists: its first frame already has to carry this address.
                self.firewall.bind_port(host, address)
            self._add_veth(host, pid)
            index = self._lookup(host)
            if index is None:
                raise NetworkError(f"veth {host} vanished as it was created")
            # Isolated: the port may only talk to non-isolated ports (the bridge itself).
            self.ipr.isolate_bridge_port(index)
            self.ipr.set_up(index)
            with netns_socket(pid) as inner:
                inner.set_up(1)  # lo is always ifindex 1 in a new netns
                eth0 = inner.link_index("eth0")
                if eth0 is None:
                    raise NetworkError(f"the sandbox of pid {pid} has no eth0")
                inner.add_ipv4_address(eth0, address, self.prefixlen)
                inner.set_up(eth0)
                inner.add_default_route(self.gateway, eth0)
        except BaseException:
            self._pool.release(address)
            try:
                self._delete_link(host)
                if self.firewall is not None:
                    self.firewall.release_port(host)
            except Exception as e:  # keep the original error
                log.warning("veth_cleanup_failed", ifname=host, error=str(e))
            raise
        return SandboxNic(host_ifname=host, address=address, prefixlen=self.prefixlen, gateway=self.gateway)

    def _add_veth(self, host: str, pid: int) -> None:
        # Created down and already enslaved; it comes up only once the port is isolated.
        for attempt in (1, 2):
            try:
                self.ipr.add_veth(host, master=self._bridge_index, peer="eth0", peer_netns_pid=pid)
                return
            except NetlinkError as e:
                if e.code == EEXIST and attempt == 1:
                    # The previous sandbox of this slot has not finished dying; its pair is useless.
                    log.warning("veth_leftover_deleted", ifname=host)
                    self._delete_link(host)
                    continue
                raise NetworkError(f"cannot create veth {host} for pid {pid}: {e}") from e

    def _delete_link(self, ifname: str) -> bool:
        return self.ipr.delete_link(ifname)

    def detach(self, nic: SandboxNic, *, delete_link: bool = False) -> None:
        """Release the address and the port's firewall rules; delete the host veth only if asked
        (slow, see module doc)."""
        if self.firewall is not None:
            try:
                self.firewall.release_port(nic.host_ifname)
            except OSError as exc:
                # Keep the address: a rule left for it must not let the next sandbox given it out.
                log.error("firewall_release_failed", ifname=nic.host_ifname, address=nic.address, error=str(exc))
                return
        self._pool.release(nic.address)
        if delete_link:
            self._delete_link(nic.host_ifname)

    def set_egress(self, nic: SandboxNic, policy: EgressPolicy) -> None:
        """Let the sandbox of ``nic`` reach what ``policy`` allows (and nothing else) until cleared."""
        if self.firewall is None:
            if not policy.is_none:
                raise NetworkError(f"the bridge {self.bridge} has no firewall: egress policies need it")
            return
        if not self.firewall.allow_egress:
            self.firewall.set_egress(nic.host_ifname, nic.address, policy)
        if not policy.is_none:
            self._warn_if_replies_are_not_forwarded()

    def clear_egress(self, nic: SandboxNic) -> None:
        if self.firewall is not None:
            self.firewall.clear_egress(nic.host_ifname)

    def _warn_if_replies_are_not_forwarded(self) -> None:
        if self._forwarding_checked:
            return
        self._forwarding_checked = True
        for index in self.ipr.default_route_interfaces():
            name = self.ipr.link_name(index)
            if name and _read_sysctl(f"/proc/sys/net/ipv4/conf/{name}/forwarding") == "0":
                log.warning("egress_replies_not_forwarded", interface=name,
                            hint=f"sysctl -w net.ipv4.conf.{name}.forwarding=1")

    def addresses_in_use(self) -> list[str]:
        return self._pool.in_use()

    def teardown(self) -> None:
        """Delete the bridge (its remaining ports are released, not deleted), then its firewall."""
        self._delete_link(self.bridge)
        self._bridge_index = None
        if self.firewall is not None:
            self.firewall.teardown()
        log.info("bridge_deleted", bridge=self.bridge)

    def cleanup_stale(self) -> int:
        """Delete leftover host veths named ``<prefix>*`` (a crashed predecessor's)."""
        removed = 0
        for link in self.ipr.links():
            if not link.name.startswith(self.veth_prefix) or link.kind != "veth":
                continue
            if self._delete_link(link.name):
                removed += 1
        if removed:
            log.info("veth_stale_removed", prefix=self.veth_prefix, count=removed)
        return removed

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self.firewall is not None:
            self.firewall.teardown()


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_sysctl(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _disable_ipv6(ifname: str) -> None:
    """No IPv6 address on ``ifname``: sandboxes have no IPv6 either, and a link-local address would
    be a way to the host that the IPv4 subnet checks do not cover."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    try:
        with open(path, "w") as f:
            f.write("1")
    except FileNotFoundError:
        pass  # a kernel without IPv6
