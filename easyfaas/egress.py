"""A function's egress policy, ``Configuration.Network.Egress``: where its sandbox may open connections.

The one definition of the vocabulary: the stubs validate with it (a bad entry is a 400 naming
``Network.Egress[i]``), the funclet turns it into its sandbox's firewall rules at warmup
(``funclet/sandbox/firewall.py``). On the wire::

    "Network": {"Egress": "none"}                        # the default: nothing beyond the sandbox
    "Network": {"Egress": "all"}                         # anything the host routes, but the host itself
    "Network": {"Egress": ["10.1.2.3:1883", "192.0.2.0/24:443", "[2001:db8::1]:53"]}

An entry is an address or a network (``a.b.c.d/len``; IPv6 in brackets) and a port; it allows TCP
and UDP to that port. Whatever the policy, the host's own addresses and other sandboxes are never
reachable. Stdlib only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Mapping

EGRESS_NONE = "none"
EGRESS_ALL = "all"
MAX_EGRESS_ENTRIES = 64
MAX_ENTRY_LENGTH = 64

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressPolicyError(ValueError):
    """The policy is malformed; the message starts with the offending field (``Network.Egress[2]: ...``)."""


@dataclass(frozen=True)
class EgressRule:
    """TCP and UDP to ``port`` on every address of ``network``."""

    network: IPNetwork
    port: int

    @property
    def version(self) -> int:
        return self.network.version

    def __str__(self) -> str:
        net = str(self.network.network_address) if self.network.num_addresses == 1 else str(self.network)
        return f"[{net}]:{self.port}" if self.version == 6 else f"{net}:{self.port}"


@dataclass(frozen=True)
class EgressPolicy:
    allow_all: bool = False
    rules: tuple[EgressRule, ...] = ()

    @property
    def is_none(self) -> bool:
        return not self.allow_all and not self.rules

    def to_wire(self) -> dict[str, Any]:
        if self.allow_all:
            return {"Egress": EGRESS_ALL}
        if not self.rules:
            return {"Egress": EGRESS_NONE}
        return {"Egress": [str(rule) for rule in self.rules]}

    @classmethod
    def from_wire(cls, network: Any, path: str = "Network") -> EgressPolicy:
        """Parse ``Configuration.Network``; None or ``{}`` is the default, ``none``."""
        if network is None:
            return cls()
        if not isinstance(network, Mapping):
            raise EgressPolicyError(f"{path}: expected an object, got {_type_name(network)}")
        unknown = set(network) - {"Egress"}
        if unknown:
            raise EgressPolicyError(f"{path}: unknown field {sorted(unknown)[0]!r} (only Egress is allowed)")
        egress = network.get("Egress")
        where = f"{path}.Egress"
        if egress is None or egress == EGRESS_NONE:
            return cls()
        if egress == EGRESS_ALL:
            return cls(allow_all=True)
        if isinstance(egress, str):
            raise EgressPolicyError(f"{where}: {egress[:MAX_ENTRY_LENGTH]!r} is neither \"none\", \"all\" "
                                    "nor a list of \"address:port\" entries")
        if not isinstance(egress, list):
            raise EgressPolicyError(f"{where}: expected \"none\", \"all\" or an array, got {_type_name(egress)}")
        if len(egress) > MAX_EGRESS_ENTRIES:
            raise EgressPolicyError(f"{where}: at most {MAX_EGRESS_ENTRIES} entries, got {len(egress)}")
        rules: list[EgressRule] = []
        for i, entry in enumerate(egress):
            rule = parse_rule(entry, f"{where}[{i}]")
            if rule not in rules:
                rules.append(rule)
        return cls(rules=tuple(rules))


def parse_rule(entry: Any, where: str) -> EgressRule:
    """``"10.1.2.3:1883"``, ``"192.0.2.0/24:443"``, ``"[2001:db8::1]:53"``, ``"[2001:db8::/32]:53"``."""
    if not isinstance(entry, str):
        raise EgressPolicyError(f"{where}: expected a string, got {_type_name(entry)}")
    if len(entry) > MAX_ENTRY_LENGTH:
        raise EgressPolicyError(f"{where}: longer than {MAX_ENTRY_LENGTH} characters")
    host, colon, port_text = entry.rpartition(":")
    if not colon or not host:
        raise EgressPolicyError(f"{where}: {entry!r} is not address:port")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        network = ipaddress.ip_network(host, strict=True)
    except ValueError as exc:
        raise EgressPolicyError(f"{where}: {entry!r}: {exc}") from None
    if network.version == 6 and not bracketed:
        raise EgressPolicyError(f"{where}: {entry!r}: write an IPv6 address in brackets, e.g. [2001:db8::1]:53")
    if network.version == 4 and bracketed:
        raise EgressPolicyError(f"{where}: {entry!r}: brackets are for IPv6 addresses only")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise EgressPolicyError(f"{where}: {entry!r}: the port must be a number from 1 to 65535")
    return EgressRule(network=network, port=int(port_text))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)
