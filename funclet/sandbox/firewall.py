"""The sandbox bridge's firewall: sandboxes reach neither the host nor each other, and spoof nothing.

Isolated bridge ports already keep sandboxes from talking to each other at layer 2, but every host
service listening on a wildcard address (0.0.0.0 or ::) is reachable at the bridge's own address,
and anything the host routes is reachable through it. This module closes that with one nftables
table per bridge, ``inet easyfaas_<bridge>``:

* ``input`` (hook input): everything that arrives from the bridge is dropped; the host serves
  sandboxes over unix sockets only, never over their network.
* ``forward`` (hook forward): traffic from the bridge back onto the bridge is dropped (no hairpin
  between sandboxes); traffic from the bridge that is not IPv4 from the bridge's subnet is dropped
  (spoofed sources, IPv6); and unless ``allow_egress``, all the rest from the bridge is dropped too.

The table is created with the ``owner`` flag: it belongs to the netlink socket that made it, so the
kernel deletes it when that socket closes, including when the funclet dies. Rules are written over
nfnetlink in one batch (all or nothing) with the stdlib only: no nft binary, no iptables.

Sandbox IPv6 is switched off separately (``disable_ipv6`` on the bridge by ``BridgeNetwork`` and in
each sandbox's namespace by the runner), so no link-local address exists to reach or to forge.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_DELTABLE = 2
NFT_MSG_NEWCHAIN = 3
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLA_F_NESTED = 0x8000
NFPROTO_UNSPEC = 0
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFT_TABLE_F_OWNER = 0x2
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
NF_DROP = 0
NF_ACCEPT = 1
NFT_REG_VERDICT = 0
NFT_REG_1 = 1
NFT_META_NFPROTO = 15
NFT_META_IIFNAME = 6
NFT_META_OIFNAME = 7
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_CMP_EQ = 0
NFT_CMP_NEQ = 1
IFNAMSIZ = 16
ENOENT = 2
EINVAL = 22
EOPNOTSUPP = 95

# attribute numbers (linux/netfilter/nf_tables.h)
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE = 1, 3, 4, 5, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_META_DREG, NFTA_META_KEY = 1, 2
NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA = 1, 2, 3
NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_OFFSET, NFTA_PAYLOAD_LEN = 1, 2, 3, 4
NFTA_BITWISE_SREG, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN, NFTA_BITWISE_MASK, NFTA_BITWISE_XOR = 1, 2, 3, 4, 5
NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE = 1
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")


class FirewallError(OSError):
    """The kernel refused the firewall (the message names the table and the errno)."""


# ---- netlink encoding ----------------------------------------------------------------------------

def _attr(kind: int, payload: bytes) -> bytes:
    data = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _be32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("!i" if value < 0 else "!I", value))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nested(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, name), _nested(NFTA_EXPR_DATA, *attrs))


def _counter() -> bytes:
    return _nested(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, "counter"))


def _meta(key: int) -> bytes:
    return _expr("meta", _be32(NFTA_META_KEY, key), _be32(NFTA_META_DREG, NFT_REG_1))


def _cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", _be32(NFTA_CMP_SREG, NFT_REG_1), _be32(NFTA_CMP_OP, op),
                 _nested(NFTA_CMP_DATA, _attr(NFTA_DATA_VALUE, value)))


def _ifname(name: str) -> bytes:
    return name.encode().ljust(IFNAMSIZ, b"\0")


def _verdict(code: int) -> bytes:
    return _expr("immediate", _be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
                 _nested(NFTA_IMMEDIATE_DATA, _nested(NFTA_DATA_VERDICT, _be32(NFTA_VERDICT_CODE, code))))


def match_iifname(name: str, op: int = NFT_CMP_EQ) -> bytes:
    return _meta(NFT_META_IIFNAME) + _cmp(op, _ifname(name))


def match_oifname(name: str, op: int = NFT_CMP_EQ) -> bytes:
    return _meta(NFT_META_OIFNAME) + _cmp(op, _ifname(name))


def match_nfproto(proto: int, op: int = NFT_CMP_EQ) -> bytes:
    return _meta(NFT_META_NFPROTO) + _cmp(op, bytes([proto]))


def match_ipv4_saddr(network: ipaddress.IPv4Network, op: int = NFT_CMP_EQ) -> bytes:
    load = _expr("payload", _be32(NFTA_PAYLOAD_DREG, NFT_REG_1), _be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER),
                 _be32(NFTA_PAYLOAD_OFFSET, 12), _be32(NFTA_PAYLOAD_LEN, 4))
    mask = _expr("bitwise", _be32(NFTA_BITWISE_SREG, NFT_REG_1), _be32(NFTA_BITWISE_DREG, NFT_REG_1),
                 _be32(NFTA_BITWISE_LEN, 4),
                 _nested(NFTA_BITWISE_MASK, _attr(NFTA_DATA_VALUE, network.netmask.packed)),
                 _nested(NFTA_BITWISE_XOR, _attr(NFTA_DATA_VALUE, b"\0\0\0\0")))
    return load + mask + _cmp(op, network.network_address.packed)


def drop() -> bytes:
    return _counter() + _verdict(NF_DROP)


# ---- the netlink conversation --------------------------------------------------------------------

@dataclass
class _Message:
    kind: int
    flags: int
    family: int
    payload: bytes
    res_id: int = 0
    batch_marker: bool = False


@dataclass
class NftSocket:
    """One nfnetlink socket; batches are sent whole and every message in them must be acknowledged."""

    sock: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                                       NETLINK_NETFILTER))
    seq: int = 0

    def __post_init__(self) -> None:
        self.sock.bind((0, 0))
        self.sock.settimeout(5.0)

    def close(self) -> None:
        self.sock.close()

    def _encode(self, message: _Message) -> tuple[int, bytes]:
        self.seq += 1
        body = _NFGENMSG.pack(message.family, 0, socket.htons(message.res_id)) + message.payload
        kind = message.kind if message.batch_marker else (NFNL_SUBSYS_NFTABLES << 8) | message.kind
        return self.seq, _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, message.flags, self.seq, 0) + body

    def transaction(self, messages: list[_Message]) -> None:
        """Send ``messages`` as one atomic batch; raise FirewallError on the first error."""
        begin = _Message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, NFPROTO_UNSPEC, b"", NFNL_SUBSYS_NFTABLES, True)
        end = _Message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, NFPROTO_UNSPEC, b"", NFNL_SUBSYS_NFTABLES, True)
        pending: set[int] = set()
        data = b""
        for message in [begin, *messages, end]:
            seq, raw = self._encode(message)
            if message.flags & NLM_F_ACK:
                pending.add(seq)
            data += raw
        self.sock.send(data)
        while pending:
            for kind, seq, payload in self._receive():
                if kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", payload)[0]
                    pending.discard(seq)
                    if error:
                        raise FirewallError(error, f"nftables: {os.strerror(error)}")

    def dump(self, kind: int, family: int, payload: bytes = b"") -> list[bytes]:
        """Every reply message's attributes (after nfgenmsg) of a GET ... DUMP request."""
        seq, raw = self._encode(_Message(kind, NLM_F_REQUEST | NLM_F_DUMP, family, payload))
        self.sock.send(raw)
        replies: list[bytes] = []
        while True:
            for msg_kind, msg_seq, body in self._receive():
                if msg_seq != seq:
                    continue
                if msg_kind == NLMSG_DONE:
                    return replies
                if msg_kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", body)[0]
                    if error:
                        raise FirewallError(error, f"nftables dump: {os.strerror(error)}")
                    return replies
                replies.append(body[_NFGENMSG.size:])

    def _receive(self) -> list[tuple[int, int, bytes]]:
        data = self.sock.recv(1 << 16)
        out = []
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                break
            out.append((kind & 0xFF if kind >> 8 == NFNL_SUBSYS_NFTABLES else kind, seq,
                        data[offset + _NLMSGHDR.size:offset + length]))
            offset += (length + 3) & ~3
        return out


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Top-level netlink attributes of ``data`` by type (the nested flag masked off)."""
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        attrs[kind & ~NLA_F_NESTED] = data[offset + _NLATTR.size:offset + length]
        offset += (length + 3) & ~3
    return attrs


def list_tables(family: int = NFPROTO_INET) -> list[str]:
    """Names of the nftables tables of ``family`` in the caller's network namespace."""
    nft = NftSocket()
    try:
        return [parse_attrs(body)[NFTA_TABLE_NAME].rstrip(b"\0").decode()
                for body in nft.dump(NFT_MSG_GETTABLE, family)]
    finally:
        nft.close()


# ---- the firewall --------------------------------------------------------------------------------

class BridgeFirewall:
    """The nftables table of one sandbox bridge; lives as long as this object's netlink socket."""

    def __init__(self, bridge: str, subnet: str, *, allow_egress: bool = False) -> None:
        if not bridge or len(bridge) >= IFNAMSIZ:
            raise ValueError(f"bridge name {bridge!r} must be 1-15 characters")
        self.bridge = bridge
        self.subnet = ipaddress.IPv4Network(subnet, strict=False)
        self.allow_egress = allow_egress
        self.table = f"easyfaas_{bridge}"
        self._nft: NftSocket | None = None

    def rules(self) -> dict[str, list[bytes]]:
        """Expressions of each rule, by chain."""
        inbound = match_iifname(self.bridge)
        forward = [inbound + match_oifname(self.bridge) + drop(),
                   inbound + match_nfproto(NFPROTO_IPV4, NFT_CMP_NEQ) + drop(),
                   inbound + match_ipv4_saddr(self.subnet, NFT_CMP_NEQ) + drop()]
        if not self.allow_egress:
            forward.append(inbound + drop())
        return {"input": [inbound + drop()], "forward": forward}

    def setup(self) -> None:
        """Create the table; it must not exist yet (another live funclet's bridge of the same name)."""
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
            raise FirewallError(exc.errno or 0, f"cannot create nftables table inet {self.table}: {exc}") from None
        self._nft = nft
        log.info("firewall_ready", table=self.table, bridge=self.bridge, egress=self.allow_egress)

    def _messages(self, *, owned: bool) -> list[_Message]:
        table = _str(NFTA_TABLE_NAME, self.table)
        if owned:
            table += _be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER)
        messages = [_Message(NFT_MSG_NEWTABLE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, NFPROTO_INET,
                             table)]
        for chain, hook in (("input", NF_INET_LOCAL_IN), ("forward", NF_INET_FORWARD)):
            messages.append(_Message(NFT_MSG_NEWCHAIN, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, NFPROTO_INET,
                                     _str(NFTA_CHAIN_TABLE, self.table) + _str(NFTA_CHAIN_NAME, chain)
                                     + _nested(NFTA_CHAIN_HOOK, _be32(NFTA_HOOK_HOOKNUM, hook),
                                               _be32(NFTA_HOOK_PRIORITY, 0))
                                     + _be32(NFTA_CHAIN_POLICY, NF_ACCEPT) + _str(NFTA_CHAIN_TYPE, "filter")))
        for chain, rules in self.rules().items():
            for expressions in rules:
                messages.append(_Message(NFT_MSG_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
                                         NFPROTO_INET, _str(NFTA_RULE_TABLE, self.table)
                                         + _str(NFTA_RULE_CHAIN, chain)
                                         + _nested(NFTA_RULE_EXPRESSIONS, expressions)))
        return messages

    def _delete(self, nft: NftSocket) -> None:
        try:
            nft.transaction([_Message(NFT_MSG_DELTABLE, NLM_F_REQUEST | NLM_F_ACK, NFPROTO_INET,
                                      _str(NFTA_TABLE_NAME, self.table))])
        except FirewallError as exc:
            if exc.errno != ENOENT:
                raise

    def dropped(self) -> dict[str, int]:
        """Packets counted by the drop rules, by chain (for tests and diagnostics)."""
        if self._nft is None:
            return {}
        counts: dict[str, int] = {}
        payload = _str(NFTA_RULE_TABLE, self.table)
        for body in self._nft.dump(NFT_MSG_GETRULE, NFPROTO_INET, payload):
            attrs = parse_attrs(body)
            if attrs.get(NFTA_RULE_TABLE, b"").rstrip(b"\0").decode() != self.table:
                continue
            chain = attrs[NFTA_RULE_CHAIN].rstrip(b"\0").decode()
            counts[chain] = counts.get(chain, 0) + _counter_packets(attrs.get(NFTA_RULE_EXPRESSIONS, b""))
        return counts

    def teardown(self) -> None:
        """Delete the table (closing the owning socket alone would, too: that is the crash path)."""
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


def _counter_packets(expressions: bytes) -> int:
    total = 0
    offset = 0
    while offset + _NLATTR.size <= len(expressions):
        length, _kind = _NLATTR.unpack_from(expressions, offset)
        if length < _NLATTR.size:
            break
        expr = parse_attrs(expressions[offset + _NLATTR.size:offset + length])
        if expr.get(NFTA_EXPR_NAME, b"").rstrip(b"\0") == b"counter":
            packets = parse_attrs(expr.get(NFTA_EXPR_DATA, b"")).get(NFTA_COUNTER_PACKETS)
            if packets:
                total += struct.unpack("!Q", packets)[0]
        offset += (length + 3) & ~3
    return total
