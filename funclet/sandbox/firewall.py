"""The sandbox bridge's firewall: sandboxes reach neither the host nor each other, spoof nothing, and
reach beyond the host only what their function's egress policy allows.

Isolated bridge ports already keep sandboxes from talking to each other at layer 2, but every host
service listening on a wildcard address (0.0.0.0 or ::) is reachable at the bridge's own address,
and anything the host routes is reachable through it. This module closes that with two nftables
tables per bridge, both named ``easyfaas_<bridge>``:

``inet`` (routed traffic):

* ``input`` (hook input): everything that arrives from the bridge is dropped; the host serves
  sandboxes over unix sockets only, never over their network. Every host address (the bridge's,
  loopback, any other interface's) is local, so this covers them all whatever the egress policy.
* ``forward`` (hook forward): from the bridge back onto the bridge (hairpin between sandboxes),
  not IPv4, or IPv4 from outside the bridge's subnet: dropped. Towards the bridge, only replies
  (conntrack established or related) pass: nobody beyond the host opens a connection to a
  sandbox. What is left from the bridge jumps to ``egress`` and is dropped unless accepted there.
* ``egress`` (regular chain): the sandboxes' egress policies, one group of rules per sandbox
  (matched on its source address, tagged with its host veth name), added at warmup and removed at
  reset or destroy (:meth:`BridgeFirewall.set_egress`).
* ``postrouting`` (nat, hook postrouting): what a sandbox was allowed to send leaves masqueraded
  with the address of the outgoing interface (the host's default route, usually).

``bridge`` (frames on the bridge's ports, before routing):

* ``prerouting``: an IPv4 packet or ARP message from a port must carry the address the port's
  sandbox was given (:meth:`BridgeFirewall.bind_port`); anything else from an interface named
  ``<port_prefix>*`` is dropped, so a sandbox can neither borrow another's egress policy nor take
  over its replies with a forged ARP answer. (Ports are matched by name: this kernel's bridge
  family may lack ``meta ibrname``; the veth prefix is the funclet's own, as its veths are.)

Both tables are created with the ``owner`` flag: they belong to the netlink socket that made them,
so the kernel deletes them when that socket closes, including when the funclet dies. Every change
is one nfnetlink batch (all or nothing) written with the stdlib only (``nftables.py``): no nft
binary, no iptables. Forwarding itself is switched on for the bridge only
(``net.ipv4.conf.<bridge>.forwarding``, by ``network.py``).

Sandbox IPv6 is off (``disable_ipv6`` on the bridge by ``BridgeNetwork`` and in each sandbox's
namespace by the runner), so no link-local address exists to reach or to forge, and IPv6 entries
of an egress policy open nothing yet.
"""

from __future__ import annotations

import ipaddress
import socket

import structlog

from easyfaas.egress import EgressPolicy
from funclet.sandbox.nftables import (
    CT_STATE_ESTABLISHED,
    CT_STATE_RELATED,
    EINVAL,
    ENOENT,
    EOPNOTSUPP,
    ETH_P_ARP,
    ETH_P_IP,
    IFNAMSIZ,
    NF_BR_PRE_ROUTING,
    NF_BR_PRI_FILTER_BRIDGED,
    NF_INET_FORWARD,
    NF_INET_LOCAL_IN,
    NF_INET_POST_ROUTING,
    NF_IP_PRI_NAT_SRC,
    NFPROTO_BRIDGE,
    NFPROTO_INET,
    NFPROTO_IPV4,
    NFT_CMP_NEQ,
    FirewallError,
    Message,
    NftSocket,
    accept,
    counter_packets,
    delete_rule,
    delete_table,
    drop,
    jump,
    list_rules,
    list_tables,
    masquerade,
    match_arp_sender,
    match_ct_state_none_of,
    match_dport,
    match_ethertype,
    match_iifname,
    match_iifname_prefix,
    match_ipv4_daddr,
    match_ipv4_saddr,
    match_l4proto,
    match_nfproto,
    match_oifname,
    new_chain,
    new_rule,
    new_table,
)

__all__ = ["BridgeFirewall", "FirewallError", "list_tables"]

log = structlog.get_logger(__name__)

EGRESS_CHAIN = "egress"
PORTS_CHAIN = "prerouting"


class BridgeFirewall:
    """The nftables tables of one sandbox bridge; they live as long as this object's netlink socket.

    Call every method from the same thread (the network's worker thread).
    """

    def __init__(self, bridge: str, subnet: str, *, port_prefix: str = "", allow_egress: bool = False) -> None:
        if not bridge or len(bridge) >= IFNAMSIZ:
            raise ValueError(f"bridge name {bridge!r} must be 1-15 characters")
        if len(port_prefix) >= IFNAMSIZ:
            raise ValueError(f"port prefix {port_prefix!r} must be at most 15 characters")
        self.bridge = bridge
        # The names of the bridge's sandbox ports start with it; "" leaves unbound ports unchecked.
        self.port_prefix = port_prefix
        self.subnet = ipaddress.IPv4Network(subnet, strict=False)
        # Every sandbox may reach anything beyond the host (the operator's switch, before policies).
        self.allow_egress = allow_egress
        self.table = f"easyfaas_{bridge}"
        self._nft: NftSocket | None = None

    def rules(self) -> dict[str, list[bytes]]:
        """Expressions of each rule of the ``inet`` table, by chain."""
        inbound = match_iifname(self.bridge)
        forward = [inbound + match_oifname(self.bridge) + drop(),
                   inbound + match_nfproto(NFPROTO_IPV4, NFT_CMP_NEQ) + drop(),
                   inbound + match_ipv4_saddr(self.subnet, NFT_CMP_NEQ) + drop(),
                   match_oifname(self.bridge) + match_ct_state_none_of(CT_STATE_ESTABLISHED | CT_STATE_RELATED)
                   + drop()]
        if self.allow_egress:
            forward.append(inbound + accept())
        else:
            forward += [inbound + jump(EGRESS_CHAIN), inbound + drop()]
        postrouting = [match_ipv4_saddr(self.subnet) + match_oifname(self.bridge, NFT_CMP_NEQ) + masquerade()]
        return {"input": [inbound + drop()], "forward": forward, EGRESS_CHAIN: [], "postrouting": postrouting}

    def port_rules(self) -> list[bytes]:
        """The ``bridge`` table's default: IPv4 and ARP from a port no sandbox address is bound to."""
        if not self.port_prefix:
            return []
        ours = match_iifname_prefix(self.port_prefix)
        return [ours + match_ethertype(ETH_P_IP) + drop(), ours + match_ethertype(ETH_P_ARP) + drop()]

    def setup(self) -> None:
        """Create the tables; they must not exist yet (another live funclet's bridge of the same name)."""
        if self._nft is not None:
            return
        nft = NftSocket()
        try:
            try:
                nft.transaction(self._messages(owned=True))
            except FirewallError as exc:
                if exc.errno not in (EOPNOTSUPP, EINVAL):
                    raise
                # A kernel before 5.12 has no owned tables: replace what a crashed predecessor left.
                self._delete(nft)
                nft.transaction(self._messages(owned=False))
        except OSError as exc:
            nft.close()
            raise FirewallError(exc.errno or 0, f"cannot create nftables tables {self.table}: {exc}") from None
        self._nft = nft
        log.info("firewall_ready", table=self.table, bridge=self.bridge, egress=self.allow_egress)

    def _messages(self, *, owned: bool) -> list[Message]:
        t = self.table
        messages = [new_table(NFPROTO_INET, t, owned=owned),
                    new_chain(NFPROTO_INET, t, "input", NF_INET_LOCAL_IN),
                    new_chain(NFPROTO_INET, t, "forward", NF_INET_FORWARD),
                    new_chain(NFPROTO_INET, t, EGRESS_CHAIN),
                    new_chain(NFPROTO_INET, t, "postrouting", NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC, "nat"),
                    new_table(NFPROTO_BRIDGE, t, owned=owned),
                    new_chain(NFPROTO_BRIDGE, t, PORTS_CHAIN, NF_BR_PRE_ROUTING, NF_BR_PRI_FILTER_BRIDGED)]
        for chain, rules in self.rules().items():
            messages += [new_rule(NFPROTO_INET, t, chain, expressions) for expressions in rules]
        messages += [new_rule(NFPROTO_BRIDGE, t, PORTS_CHAIN, expressions) for expressions in self.port_rules()]
        return messages

    def _delete(self, nft: NftSocket) -> None:
        for family in (NFPROTO_INET, NFPROTO_BRIDGE):
            try:
                nft.transaction([delete_table(family, self.table)])
            except FirewallError as exc:
                if exc.errno != ENOENT:
                    raise

    def _socket(self) -> NftSocket:
        if self._nft is None:
            raise FirewallError(ENOENT, f"the firewall of {self.bridge} is not set up")
        return self._nft

    # -- per sandbox --

    def bind_port(self, ifname: str, address: str) -> None:
        """Let the port ``ifname`` send IPv4 and ARP from ``address`` (and nothing else)."""
        ip = ipaddress.IPv4Address(address)
        port = match_iifname(ifname)
        self._socket().transaction(self._untagged(ifname, PORTS_CHAIN, NFPROTO_BRIDGE) + [
            new_rule(NFPROTO_BRIDGE, self.table, PORTS_CHAIN, port + match_ethertype(ETH_P_IP)
                     + match_ipv4_saddr(ipaddress.IPv4Network(ip)) + accept(), tag=ifname, first=True),
            new_rule(NFPROTO_BRIDGE, self.table, PORTS_CHAIN, port + match_ethertype(ETH_P_ARP)
                     + match_arp_sender(ip) + accept(), tag=ifname, first=True)])

    def set_egress(self, ifname: str, address: str, policy: EgressPolicy) -> None:
        """Replace the egress rules of the sandbox on port ``ifname`` (source ``address``) in one batch."""
        source = match_ipv4_saddr(ipaddress.IPv4Network(ipaddress.IPv4Address(address)))
        rules: list[bytes] = []
        if policy.allow_all:
            rules.append(source + accept())
        for rule in policy.rules:
            if not isinstance(rule.network, ipaddress.IPv4Network):
                continue  # sandboxes have no IPv6 (module docstring)
            for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                rules.append(source + match_ipv4_daddr(rule.network) + match_l4proto(proto)
                             + match_dport(rule.port) + accept())
        messages = self._untagged(ifname, EGRESS_CHAIN, NFPROTO_INET)
        messages += [new_rule(NFPROTO_INET, self.table, EGRESS_CHAIN, expressions, tag=ifname) for expressions in rules]
        if messages:
            self._socket().transaction(messages)
        log.info("egress_set", table=self.table, port=ifname, address=address, egress=policy.to_wire()["Egress"])

    def clear_egress(self, ifname: str) -> None:
        messages = self._untagged(ifname, EGRESS_CHAIN, NFPROTO_INET)
        if messages:
            self._socket().transaction(messages)

    def release_port(self, ifname: str) -> None:
        """Remove everything the sandbox on ``ifname`` had: its egress rules and its address binding."""
        messages = (self._untagged(ifname, EGRESS_CHAIN, NFPROTO_INET)
                    + self._untagged(ifname, PORTS_CHAIN, NFPROTO_BRIDGE))
        if messages:
            self._socket().transaction(messages)

    def _untagged(self, tag: str, chain: str, family: int) -> list[Message]:
        """Messages deleting the rules of ``chain`` tagged ``tag``."""
        return [delete_rule(family, self.table, chain, rule.handle)
                for rule in list_rules(self._socket(), family, self.table) if rule.chain == chain and rule.tag == tag]

    def tagged(self, tag: str) -> dict[str, int]:
        """How many rules each chain (of both tables) holds for ``tag`` (for tests and diagnostics)."""
        counts: dict[str, int] = {}
        if self._nft is None:
            return counts
        for family in (NFPROTO_INET, NFPROTO_BRIDGE):
            for rule in list_rules(self._nft, family, self.table):
                if rule.tag == tag:
                    counts[rule.chain] = counts.get(rule.chain, 0) + 1
        return counts

    def dropped(self) -> dict[str, int]:
        """Packets counted by the drop rules of the ``inet`` table, by chain (for tests and diagnostics)."""
        if self._nft is None:
            return {}
        counts: dict[str, int] = {}
        for rule in list_rules(self._nft, NFPROTO_INET, self.table):
            packets = counter_packets(rule.expressions)
            if packets is not None:
                counts[rule.chain] = counts.get(rule.chain, 0) + packets
        return counts

    def dropped_spoofed(self) -> int:
        """Frames the ``bridge`` table dropped (a forged source address or ARP sender)."""
        if self._nft is None:
            return 0
        return sum(counter_packets(rule.expressions) or 0 for rule in list_rules(self._nft, NFPROTO_BRIDGE, self.table))

    def teardown(self) -> None:
        """Delete the tables (closing the owning socket alone would, too: that is the crash path)."""
        nft, self._nft = self._nft, None
        if nft is None:
            return
        try:
            self._delete(nft)
        except FirewallError as exc:
            log.warning("firewall_delete_failed", table=self.table, error=str(exc))
        finally:
            nft.close()
        log.info("firewall_deleted", table=self.table)
