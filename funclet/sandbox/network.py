"""Sandbox networking: one Linux bridge on the host, one veth pair per sandbox, by netlink (pyroute2).

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

No process is spawned and pyroute2's forking netns helpers are not used: to configure the inside
of a sandbox, the calling thread setns()es into the sandbox netns just long enough to open a
netlink socket (a socket stays bound to the netns it was created in), then setns()es back.

Threading: setns() switches only the calling thread, and pyroute2's sync ``IPRoute`` is bound to
the thread that created it. The daemon therefore runs every call on a ``BridgeNetwork`` in one
dedicated worker thread (a single-thread executor), never on the event loop thread.

Teardown is normally the kernel's: when the sandbox's netns dies, its veth pair goes with it
(batched, ~1.6 ms per sandbox). Deleting a veth by hand costs 17–30 ms serialized machine-wide,
so ``detach`` only releases the address unless asked.
"""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog


def _pyroute2_without_its_exports() -> None:
    """Let ``import pyroute2.<submodule>`` load that submodule without the package's ``__init__``.

    pyroute2's ``__init__`` re-exports every API it has (NDB, IPDB, WireGuard, nl80211, IPVS,
    conntrack, plan9, ...): about 5 MiB of the funclet's resident memory, for the one class (IPRoute)
    used here. The package is registered as an empty module on the same path; its ``__init__`` runs
    only when something asks it for a name it lacks (``from pyroute2 import NDB``), so every other
    importer still sees the whole package.
    """
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed as a plain package: the import below says so
    package = types.ModuleType("pyroute2")
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = "pyroute2"
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")  # a submodule (``from pyroute2 import config``)
        del package.__getattr__  # the package's own __init__ runs once, then defines the names
        loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package


_pyroute2_without_its_exports()

from pyroute2.iproute.linux import IPRoute  # noqa: E402  # the class ``from pyroute2 import IPRoute`` gives
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

from easyfaas import syscalls
from easyfaas.egress import EgressPolicy
from funclet.sandbox.firewall import BridgeFirewall

log = structlog.get_logger(__name__)

IFNAMSIZ = 16
ENODEV = 19
EEXIST = 17


class NetworkError(RuntimeError):
    """A sandbox network operation failed (the message names the interface or pid)."""


@dataclass
class SandboxNic:
    host_ifname: str
    address: str
    prefixlen: int
    gateway: str


def _ignore_missing(exc: NetlinkError) -> None:
    if exc.code != ENODEV:
        raise exc


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
def netns_socket(pid: int) -> Iterator[IPRoute]:
    """``with netns_socket(pid) as ipr:`` — an IPRoute whose socket lives in the netns of ``pid``.

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
                ipr = IPRoute(groups=0)
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
        self._ipr: IPRoute | None = None
        self._bridge_index: int | None = None
        self._forwarding_checked = False

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            # groups=0: no multicast subscriptions, so events never pile up in the socket buffer.
            self._ipr = IPRoute(groups=0)
        return self._ipr

    def host_ifname(self, slot_index: int) -> str:
        name = f"{self.veth_prefix}{slot_index}"
        if len(name) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than 15 characters")
        return name

    def _lookup(self, ifname: str) -> int | None:
        found = self.ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def setup(self) -> None:
        """Create the bridge if missing, give it the gateway address, its firewall, bring it up (idempotent)."""
        if self.firewall is not None:
            # Before the bridge exists: a sandbox must never see it unprotected.
            self.firewall.setup()
        index = self._lookup(self.bridge)
        if index is None:
            try:
                self.ipr.link("add", ifname=self.bridge, kind="bridge")
            except NetlinkError as e:
                if e.code != EEXIST:
                    raise NetworkError(f"cannot create bridge {self.bridge}: {e}") from e
            index = self._lookup(self.bridge)
        _disable_ipv6(self.bridge)
        if self.firewall is not None:
            # Only with the firewall in front: it decides what of the sandboxes' traffic is routed.
            _write_sysctl(f"/proc/sys/net/ipv4/conf/{self.bridge}/forwarding", "1")
        addresses = {a.get("IFA_ADDRESS") for a in self.ipr.get_addr(index=index, family=2)}
        if self.gateway not in addresses:
            self.ipr.addr("add", index=index, address=self.gateway, prefixlen=self.prefixlen)
        self.ipr.link("set", index=index, state="up")
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
            # Isolated: the port may only talk to non-isolated ports (the bridge itself).
            self.ipr.brport("set", index=index, isolated=1)
            self.ipr.link("set", index=index, state="up")
            with netns_socket(pid) as inner:
                inner.link("set", index=1, state="up")  # lo is always ifindex 1 in a new netns
                eth0 = inner.link_lookup(ifname="eth0")[0]
                inner.addr("add", index=eth0, address=address, prefixlen=self.prefixlen)
                inner.link("set", index=eth0, state="up")
                inner.route("add", dst="0.0.0.0/0", gateway=self.gateway, oif=eth0)
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
                self.ipr.link("add", ifname=host, kind="veth", master=self._bridge_index,
                              peer={"ifname": "eth0", "net_ns_pid": pid})
                return
            except NetlinkError as e:
                if e.code == EEXIST and attempt == 1:
                    # The previous sandbox of this slot has not finished dying; its pair is useless.
                    log.warning("veth_leftover_deleted", ifname=host)
                    self._delete_link(host)
                    continue
                raise NetworkError(f"cannot create veth {host} for pid {pid}: {e}") from e

    def _delete_link(self, ifname: str) -> bool:
        try:
            self.ipr.link("del", ifname=ifname)
            return True
        except NetlinkError as e:
            _ignore_missing(e)
            return False
        except IndexError:  # pyroute2 could not resolve the name: already gone
            return False

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
        for route in self.ipr.get_default_routes(family=2):
            index = route.get("RTA_OIF")
            links = self.ipr.get_links(index) if index else []
            name = links[0].get("IFLA_IFNAME") if links else None
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
        for link in self.ipr.get_links():
            name = link.get("IFLA_IFNAME") or ""
            if not name.startswith(self.veth_prefix):
                continue
            if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "veth":
                continue
            if self._delete_link(name):
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
