"""The guard on requests the pod makes on a caller's behalf (server-side request forgery).

Async callback URLs, MQTT broker addresses and remote code locations are addresses a caller
chose; connecting to them as they are would let a caller reach the pod's own control plane
(whose ports answer the pod's own key) or the host's private services. :class:`OutboundGuard`
refuses, while it is enabled (whenever keys are required), destinations that are loopback,
link-local, unspecified or multicast, and the host's own addresses (every interface's), unless
``--outbound-allow`` (``EASYFAAS_OUTBOUND_ALLOW`` for the whole pod) opens them: a comma-separated
list of addresses or CIDRs, each with an optional port (``10.1.2.3:1883``, ``192.0.2.0/24``,
``[::1]:9000``, ``127.0.0.1/8:8443``).

A name is resolved and every address it resolves to is checked; the connection is then made to a
checked address (:meth:`OutboundGuard.resolve` returns them, and :class:`GuardedResolver` is the
resolver of an aiohttp session), so a name cannot resolve to something else between the check and
the connect. Redirects must not be followed (``allow_redirects=False``): they would skip the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from easyfaas.config import Option
from easyfaas.errors import OutboundRefused

__all__ = ["OUTBOUND_OPTIONS", "AllowRule", "GuardedResolver", "OutboundGuard", "guarded_session",
           "parse_allow"]

OUTBOUND_OPTIONS = [
    Option("outbound-allow", str, "",
           "addresses or CIDRs (with optional :port) the pod may reach on a caller's behalf although they are "
           "loopback, link-local or the host's own, comma-separated"),
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class AllowRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None

    def matches(self, address: Address, port: int) -> bool:
        return address.version == self.network.version and address in self.network and \
            (self.port is None or self.port == port)


_BRACKETED = re.compile(r"^\[(?P<host>[^\]]+)\](?::(?P<port>\d+))?$")
_WITH_PORT = re.compile(r"^(?P<host>[^:\[\]]+):(?P<port>\d+)$")


def parse_allow(text: str) -> list[AllowRule]:
    """``--outbound-allow``'s list; ValueError for an entry that is no address or CIDR.

    Entries: ``10.1.2.3``, ``10.0.0.0/8``, ``10.1.2.3:1883``, ``10.0.0.0/8:443``, ``::1``,
    ``fd00::/8``, ``[::1]:9000``, ``[fd00::/8]:443``.
    """
    rules = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        m = _BRACKETED.match(entry) or _WITH_PORT.match(entry)
        host, port_text = (m.group("host"), m.group("port")) if m else (entry, None)
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise ValueError(f"outbound allow entry {entry!r} is not an address or CIDR (with an optional :port)") \
                from None
        port = int(port_text) if port_text else None
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"outbound allow entry {entry!r}: port out of range")
        rules.append(AllowRule(network, port))
    return rules


def host_addresses() -> set[Address]:
    """Every address of this host's interfaces."""
    import psutil

    out: set[Address] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    out.add(ipaddress.ip_address(a.address.split("%")[0]))
                except ValueError:
                    pass
    return out


def _plain(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class OutboundGuard:
    """Checks destinations (see the module docstring); a disabled guard lets everything through."""

    def __init__(self, *, enabled: bool, allow: Sequence[AllowRule] = (),
                 own_addresses: Iterable[Address] | None = None) -> None:
        self.enabled = enabled
        self.allow = list(allow)
        self._own = set(own_addresses) if own_addresses is not None else None

    @classmethod
    def of(cls, enabled: bool, allow_text: str) -> OutboundGuard:
        try:
            rules = parse_allow(allow_text)
        except ValueError as exc:
            raise SystemExit(f"--outbound-allow: {exc}") from None
        return cls(enabled=enabled, allow=rules)

    @property
    def own_addresses(self) -> set[Address]:
        if self._own is None:
            self._own = host_addresses()
        return self._own

    def refusal(self, address: str, port: int) -> str | None:
        """Why ``address:port`` is refused, or None when it may be reached."""
        if not self.enabled:
            return None
        try:
            ip = _plain(ipaddress.ip_address(address.split("%")[0]))
        except ValueError:
            return f"{address} is not an IP address"
        if any(rule.matches(ip, port) for rule in self.allow):
            return None
        if ip.is_loopback:
            return f"{ip} is a loopback address"
        if ip.is_link_local:
            return f"{ip} is a link-local address"
        if ip.is_unspecified or ip.is_multicast:
            return f"{ip} is not a unicast address"
        if ip in self.own_addresses:
            return f"{ip} is an address of this host"
        return None

    def check_address(self, address: str, port: int, what: str) -> None:
        why = self.refusal(address, port)
        if why is not None:
            raise OutboundRefused(f"{what} {_hostport(address, port)} is refused: {why} (the operator may open it "
                                  f"with --outbound-allow)")

    async def resolve(self, host: str, port: int, what: str = "destination") -> list[str]:
        """The checked addresses of ``host``: every one it resolves to must pass, else OutboundRefused."""
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host.split("%")[0])
            addresses = [host]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise OutboundRefused(f"{what} {host}: the name does not resolve ({exc.strerror})") from None
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            self.check_address(address, port, f"{what} {host} →" if address != host else what)
        return addresses

    async def check_url(self, url: str, what: str = "URL") -> tuple[str, int, list[str]]:
        """(host, port, checked addresses) of an http(s) URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutboundRefused(f"{what} {url!r} must be an http or https URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise OutboundRefused(f"{what} {url!r} has an invalid port") from None
        return parts.hostname, port, await self.resolve(parts.hostname, port, what)


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver with every answer checked: the connector connects to what passed."""

    def __init__(self, guard: OutboundGuard) -> None:
        self.guard = guard

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_UNSPEC) -> list[dict[str, Any]]:
        addresses = await self.guard.resolve(host, port)
        return [{"hostname": host, "host": a, "port": port,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for a in addresses]

    async def close(self) -> None:
        return None


def guarded_session(guard: OutboundGuard, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session whose connections go only where ``guard`` lets them (names resolved by it;
    URLs with an address literal must still go through :meth:`OutboundGuard.check_url` first)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=GuardedResolver(guard)), **kwargs)
