"""nf_tables over nfnetlink with the stdlib only: attribute encoding, expressions, one socket's batches.

What ``firewall.py`` builds its tables from. A rule is the concatenation of expression attributes
(``match_*`` load a value into register 1 and compare it; ``drop``/``accept``/``jump`` end it); a
batch of messages is sent whole and applied by the kernel all or nothing (``NftSocket.transaction``).
Numbers are those of ``linux/netfilter/nf_tables.h``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

from funclet.sandbox.netlink_codec import (NLATTR, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
                                            NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, attr, error_code, messages, nested,
                                            parse_attrs)
from funclet.sandbox.netlink_codec import message as netlink_message

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
NFT_MSG_DELRULE = 8
NFPROTO_UNSPEC = 0
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_BRIDGE = 7
NFT_TABLE_F_OWNER = 0x2
NF_INET_LOCAL_IN = 1
NF_INET_FORWARD = 2
NF_INET_POST_ROUTING = 4
NF_BR_PRE_ROUTING = 0
NF_BR_PRI_FILTER_BRIDGED = -200
NF_IP_PRI_NAT_SRC = 100
NF_DROP = 0
NF_ACCEPT = 1
NFT_JUMP = -3
NFT_REG_VERDICT = 0
NFT_REG_1 = 1
NFT_META_PROTOCOL = 1
NFT_META_NFPROTO = 15
NFT_META_L4PROTO = 16
NFT_META_IIFNAME = 6
NFT_META_OIFNAME = 7
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_PAYLOAD_TRANSPORT_HEADER = 2
NFT_CT_STATE = 0
# ct state bits (NF_CT_STATE_BIT of enum ip_conntrack_info)
CT_STATE_ESTABLISHED = 1 << 1
CT_STATE_RELATED = 1 << 2
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
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
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 3, 4, 7
NFTA_CT_DREG, NFTA_CT_KEY = 1, 2
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_META_DREG, NFTA_META_KEY = 1, 2
NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA = 1, 2, 3
NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_OFFSET, NFTA_PAYLOAD_LEN = 1, 2, 3, 4
NFTA_BITWISE_SREG, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN, NFTA_BITWISE_MASK, NFTA_BITWISE_XOR = 1, 2, 3, 4, 5
NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2

_NFGENMSG = struct.Struct("=BBH")


class FirewallError(OSError):
    """The kernel refused the firewall (the message names the table and the errno)."""


# ---- netlink encoding ----------------------------------------------------------------------------

def _str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def _be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!i" if value < 0 else "!I", value))


def _expr(name: str, *attrs: bytes) -> bytes:
    return nested(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, name), nested(NFTA_EXPR_DATA, *attrs))


def _counter() -> bytes:
    return nested(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, "counter"))


def _meta(key: int) -> bytes:
    return _expr("meta", _be32(NFTA_META_KEY, key), _be32(NFTA_META_DREG, NFT_REG_1))


def _cmp(op: int, value: bytes) -> bytes:
    return _expr("cmp", _be32(NFTA_CMP_SREG, NFT_REG_1), _be32(NFTA_CMP_OP, op),
                 nested(NFTA_CMP_DATA, attr(NFTA_DATA_VALUE, value)))


def _ifname(name: str) -> bytes:
    return name.encode().ljust(IFNAMSIZ, b"\0")


def _verdict(code: int, chain: str = "") -> bytes:
    verdict = _be32(NFTA_VERDICT_CODE, code) + (_str(NFTA_VERDICT_CHAIN, chain) if chain else b"")
    return _expr("immediate", _be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
                 nested(NFTA_IMMEDIATE_DATA, nested(NFTA_DATA_VERDICT, verdict)))


def match_iifname(name: str, op: int = NFT_CMP_EQ) -> bytes:
    return _meta(NFT_META_IIFNAME) + _cmp(op, _ifname(name))


def match_oifname(name: str, op: int = NFT_CMP_EQ) -> bytes:
    return _meta(NFT_META_OIFNAME) + _cmp(op, _ifname(name))


def match_nfproto(proto: int, op: int = NFT_CMP_EQ) -> bytes:
    return _meta(NFT_META_NFPROTO) + _cmp(op, bytes([proto]))


def match_iifname_prefix(prefix: str) -> bytes:
    """An input interface whose name starts with ``prefix`` (the comparison covers its bytes only)."""
    return _meta(NFT_META_IIFNAME) + _cmp(NFT_CMP_EQ, prefix.encode())


def match_ethertype(ethertype: int) -> bytes:
    return _meta(NFT_META_PROTOCOL) + _cmp(NFT_CMP_EQ, struct.pack("!H", ethertype))


def match_l4proto(proto: int) -> bytes:
    return _meta(NFT_META_L4PROTO) + _cmp(NFT_CMP_EQ, bytes([proto]))


def _payload(base: int, offset: int, length: int) -> bytes:
    return _expr("payload", _be32(NFTA_PAYLOAD_DREG, NFT_REG_1), _be32(NFTA_PAYLOAD_BASE, base),
                 _be32(NFTA_PAYLOAD_OFFSET, offset), _be32(NFTA_PAYLOAD_LEN, length))


def _mask(mask: bytes) -> bytes:
    return _expr("bitwise", _be32(NFTA_BITWISE_SREG, NFT_REG_1), _be32(NFTA_BITWISE_DREG, NFT_REG_1),
                 _be32(NFTA_BITWISE_LEN, len(mask)),
                 nested(NFTA_BITWISE_MASK, attr(NFTA_DATA_VALUE, mask)),
                 nested(NFTA_BITWISE_XOR, attr(NFTA_DATA_VALUE, bytes(len(mask)))))


def _match_ipv4(offset: int, network: ipaddress.IPv4Network, op: int) -> bytes:
    load = _payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4)
    if network.prefixlen < 32:
        load += _mask(network.netmask.packed)
    return load + _cmp(op, network.network_address.packed)


def match_ipv4_saddr(network: ipaddress.IPv4Network, op: int = NFT_CMP_EQ) -> bytes:
    return _match_ipv4(12, network, op)


def match_ipv4_daddr(network: ipaddress.IPv4Network, op: int = NFT_CMP_EQ) -> bytes:
    return _match_ipv4(16, network, op)


def match_arp_sender(address: ipaddress.IPv4Address, op: int = NFT_CMP_EQ) -> bytes:
    """The sender protocol address of an Ethernet/IPv4 ARP packet (bridge family)."""
    return _payload(NFT_PAYLOAD_NETWORK_HEADER, 14, 4) + _cmp(op, address.packed)


def match_dport(port: int) -> bytes:
    """The destination port of TCP or UDP (match the protocol first)."""
    return _payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2) + _cmp(NFT_CMP_EQ, struct.pack("!H", port))


def match_ct_state_none_of(bits: int) -> bytes:
    """The connection's conntrack state is none of ``bits`` (a host-order u32 bit set)."""
    return (_expr("ct", _be32(NFTA_CT_KEY, NFT_CT_STATE), _be32(NFTA_CT_DREG, NFT_REG_1))
            + _mask(struct.pack("=I", bits)) + _cmp(NFT_CMP_EQ, b"\0\0\0\0"))


def drop() -> bytes:
    return _counter() + _verdict(NF_DROP)


def accept() -> bytes:
    return _verdict(NF_ACCEPT)


def jump(chain: str) -> bytes:
    return _verdict(NFT_JUMP, chain)


def masquerade() -> bytes:
    return nested(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, "masq"))


# ---- the netlink conversation --------------------------------------------------------------------

@dataclass
class Message:
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

    def _encode(self, message: Message) -> tuple[int, bytes]:
        self.seq += 1
        body = _NFGENMSG.pack(message.family, 0, socket.htons(message.res_id)) + message.payload
        kind = message.kind if message.batch_marker else (NFNL_SUBSYS_NFTABLES << 8) | message.kind
        return self.seq, netlink_message(kind, message.flags, self.seq, body)

    def transaction(self, messages: list[Message]) -> None:
        """Send ``messages`` as one atomic batch; raise FirewallError on the first error."""
        begin = Message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, NFPROTO_UNSPEC, b"", NFNL_SUBSYS_NFTABLES, True)
        end = Message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, NFPROTO_UNSPEC, b"", NFNL_SUBSYS_NFTABLES, True)
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
                    error = error_code(payload)
                    pending.discard(seq)
                    if error:
                        raise FirewallError(error, f"nftables: {os.strerror(error)}")

    def dump(self, kind: int, family: int, payload: bytes = b"") -> list[bytes]:
        """Every reply message's attributes (after nfgenmsg) of a GET ... DUMP request."""
        seq, raw = self._encode(Message(kind, NLM_F_REQUEST | NLM_F_DUMP, family, payload))
        self.sock.send(raw)
        replies: list[bytes] = []
        while True:
            for msg_kind, msg_seq, body in self._receive():
                if msg_seq != seq:
                    continue
                if msg_kind == NLMSG_DONE:
                    return replies
                if msg_kind == NLMSG_ERROR:
                    error = error_code(body)
                    if error:
                        raise FirewallError(error, f"nftables dump: {os.strerror(error)}")
                    return replies
                replies.append(body[_NFGENMSG.size:])

    def _receive(self) -> list[tuple[int, int, bytes]]:
        data = self.sock.recv(1 << 16)
        try:
            return [(kind & 0xFF if kind >> 8 == NFNL_SUBSYS_NFTABLES else kind, seq, payload)
                    for kind, _flags, seq, payload in messages(data)]
        except OSError as exc:
            raise FirewallError(exc.errno, f"nftables: {exc.strerror}") from None


def list_tables(family: int = NFPROTO_INET) -> list[str]:
    """Names of the nftables tables of ``family`` in the caller's network namespace."""
    nft = NftSocket()
    try:
        return [parse_attrs(body)[NFTA_TABLE_NAME].rstrip(b"\0").decode()
                for body in nft.dump(NFT_MSG_GETTABLE, family)]
    finally:
        nft.close()


# ---- messages ------------------------------------------------------------------------------------

_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE


def new_table(family: int, name: str, *, owned: bool) -> Message:
    """A table that must not exist yet; ``owned``: the kernel deletes it when this socket closes."""
    payload = _str(NFTA_TABLE_NAME, name) + (_be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER) if owned else b"")
    return Message(NFT_MSG_NEWTABLE, _CREATE | NLM_F_EXCL, family, payload)


def delete_table(family: int, name: str) -> Message:
    return Message(NFT_MSG_DELTABLE, NLM_F_REQUEST | NLM_F_ACK, family, _str(NFTA_TABLE_NAME, name))


def new_chain(family: int, table: str, name: str, hook: int | None = None, priority: int = 0,
              kind: str = "filter") -> Message:
    """A base chain (policy accept) on ``hook``, or a regular chain (jump target) when hook is None."""
    payload = _str(NFTA_CHAIN_TABLE, table) + _str(NFTA_CHAIN_NAME, name)
    if hook is not None:
        payload += (nested(NFTA_CHAIN_HOOK, _be32(NFTA_HOOK_HOOKNUM, hook), _be32(NFTA_HOOK_PRIORITY, priority))
                    + _be32(NFTA_CHAIN_POLICY, NF_ACCEPT) + _str(NFTA_CHAIN_TYPE, kind))
    return Message(NFT_MSG_NEWCHAIN, _CREATE, family, payload)


def new_rule(family: int, table: str, chain: str, expressions: bytes, *, tag: str = "",
             first: bool = False) -> Message:
    """A rule at the end of ``chain`` (at its start if ``first``), marked with ``tag`` (its userdata)."""
    payload = (_str(NFTA_RULE_TABLE, table) + _str(NFTA_RULE_CHAIN, chain)
               + nested(NFTA_RULE_EXPRESSIONS, expressions))
    if tag:
        payload += attr(NFTA_RULE_USERDATA, tag.encode())
    return Message(NFT_MSG_NEWRULE, _CREATE | (0 if first else NLM_F_APPEND), family, payload)


def delete_rule(family: int, table: str, chain: str, handle: int) -> Message:
    payload = (_str(NFTA_RULE_TABLE, table) + _str(NFTA_RULE_CHAIN, chain)
               + attr(NFTA_RULE_HANDLE, struct.pack("!Q", handle)))
    return Message(NFT_MSG_DELRULE, NLM_F_REQUEST | NLM_F_ACK, family, payload)


@dataclass(frozen=True)
class Rule:
    chain: str
    handle: int
    tag: str
    expressions: bytes


def list_rules(nft: NftSocket, family: int, table: str) -> list[Rule]:
    """The rules of ``table``, in chain order."""
    rules = []
    for body in nft.dump(NFT_MSG_GETRULE, family, _str(NFTA_RULE_TABLE, table)):
        attrs = parse_attrs(body)
        if attrs.get(NFTA_RULE_TABLE, b"").rstrip(b"\0").decode() != table:
            continue
        rules.append(Rule(chain=attrs[NFTA_RULE_CHAIN].rstrip(b"\0").decode(),
                          handle=struct.unpack("!Q", attrs[NFTA_RULE_HANDLE])[0],
                          tag=attrs.get(NFTA_RULE_USERDATA, b"").decode(errors="replace"),
                          expressions=attrs.get(NFTA_RULE_EXPRESSIONS, b"")))
    return rules


def counter_packets(expressions: bytes) -> int | None:
    """Packets counted by a rule's counter; None if it has none."""
    total: int | None = None
    offset = 0
    while offset + NLATTR.size <= len(expressions):
        length, _kind = NLATTR.unpack_from(expressions, offset)
        if length < NLATTR.size:
            break
        expr = parse_attrs(expressions[offset + NLATTR.size:offset + length])
        if expr.get(NFTA_EXPR_NAME, b"").rstrip(b"\0") == b"counter":
            packets = parse_attrs(expr.get(NFTA_EXPR_DATA, b"")).get(NFTA_COUNTER_PACKETS)
            total = (total or 0) + (struct.unpack("!Q", packets)[0] if packets else 0)
        offset += (length + 3) & ~3
    return total
