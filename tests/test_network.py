"""Bridge + veth sandbox networking against real network namespaces (a forked child per sandbox).

Names and the subnet are unique per run ("t<hex>br", 10.213.<n>.0/24) and only ever carry traffic
between this test's own namespaces and its own bridge.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from funclet.sandbox.netlink import NetlinkError, RouteSocket
from funclet.sandbox.network import AddressPool, BridgeNetwork, NetworkError
from tests.sandbox_harness import netns_iproute, sandbox_process, socket_in_netns
from tests.sandbox_harness import udp_probe as _probe


def _link_names() -> set[str]:
    with IPRoute(groups=0) as ipr:
        return {link.get("IFLA_IFNAME") for link in ipr.get_links()}


@pytest.fixture
def net() -> Iterator[BridgeNetwork]:
    tag = secrets.token_hex(3)
    network = BridgeNetwork(bridge=f"t{tag}br", cidr=f"10.213.{secrets.randbelow(250) + 1}.1/24",
                            veth_prefix=f"t{tag}v")
    network.setup()
    try:
        yield network
    finally:
        network.cleanup_stale()
        network.teardown()
        network.close()
        names = _link_names()
        assert network.bridge not in names
        assert not [n for n in names if n.startswith(network.veth_prefix)]


def test_pool_round_robin_skips_gateway_network_broadcast():
    import ipaddress

    pool = AddressPool(ipaddress.IPv4Interface("10.9.0.3/29"))  # hosts .1-.6, gateway .3
    got = [pool.allocate() for _ in range(5)]
    assert got == ["10.9.0.1", "10.9.0.2", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    with pytest.raises(NetworkError):
        pool.allocate()
    pool.release("10.9.0.2")
    assert pool.allocate() == "10.9.0.2"


def test_setup_is_idempotent(net):
    net.setup()
    with IPRoute(groups=0) as ipr:
        (idx,) = ipr.link_lookup(ifname=net.bridge)
        addrs = [a.get("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=socket.AF_INET)]
        link = ipr.link("get", index=idx)[0]
    assert addrs == [net.gateway]
    assert link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"
    assert link.get("IFLA_OPERSTATE") in ("UP", "UNKNOWN", "DOWN")  # no ports yet: DOWN is normal
    assert link["flags"] & 1  # IFF_UP


def test_attach_configures_sandbox_netns(net):
    with sandbox_process() as pid:
        t0 = time.perf_counter()
        nic = net.attach(pid, 0)
        elapsed = (time.perf_counter() - t0) * 1000
        print(f"\nattach took {elapsed:.1f} ms")
        assert nic.host_ifname == f"{net.veth_prefix}0"
        assert nic.gateway == net.gateway and nic.prefixlen == 24
        assert nic.address.rsplit(".", 1)[0] == net.gateway.rsplit(".", 1)[0]
        assert nic.address != net.gateway

        with IPRoute(groups=0) as ipr:
            (host_idx,) = ipr.link_lookup(ifname=nic.host_ifname)
            (br_idx,) = ipr.link_lookup(ifname=net.bridge)
            host = ipr.link("get", index=host_idx)[0]
            assert host.get("IFLA_MASTER") == br_idx
            assert host["flags"] & 1
            assert host.get_nested("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA", "IFLA_BRPORT_ISOLATED") == 1

        with netns_iproute(pid) as inner:
            links = {link.get("IFLA_IFNAME"): link for link in inner.get_links()}
            assert set(links) == {"lo", "eth0"}
            assert links["lo"]["flags"] & 1 and links["eth0"]["flags"] & 1
            eth0 = links["eth0"]["index"]
            addrs = [(a.get("IFA_ADDRESS"), a["prefixlen"])
                     for a in inner.get_addr(index=eth0, family=socket.AF_INET)]
            assert addrs == [(nic.address, 24)]
            defaults = [r for r in inner.get_routes(family=socket.AF_INET)
                        if r["dst_len"] == 0 and r.get("RTA_TABLE") == 254]
            assert [r.get("RTA_GATEWAY") for r in defaults] == [net.gateway]

        # Our own thread is back in the host netns.
        assert os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net")
        assert net.addresses_in_use() == [nic.address]
        net.detach(nic)
        assert net.addresses_in_use() == []


def test_sandboxes_reach_neither_the_host_nor_each_other(net):
    with sandbox_process() as pid_a, sandbox_process() as pid_b:
        nic_a = net.attach(pid_a, 1)
        nic_b = net.attach(pid_b, 2)
        assert nic_a.address != nic_b.address
        with socket_in_netns(pid_a) as a_tx, socket_in_netns(pid_b) as b_rx, \
                socket_in_netns(pid_a) as a_rx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host_rx:
            host_rx.bind((net.gateway, 0))
            b_rx.bind((nic_b.address, 0))
            a_rx.bind((nic_a.address, 0))
            # sandbox -> host (bridge address): dropped by the bridge firewall
            assert not _probe(a_tx, host_rx, net.gateway)
            # host -> sandbox: allowed (the bridge is not an isolated port)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host_tx:
                assert _probe(host_tx, a_rx, nic_a.address)
            # sandbox -> sandbox: dropped by the isolated ports
            assert not _probe(a_tx, b_rx, nic_b.address)
        net.detach(nic_a)
        net.detach(nic_b)


def test_veth_disappears_when_sandbox_dies(net):
    with sandbox_process() as pid:
        nic = net.attach(pid, 3)
        assert nic.host_ifname in _link_names()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 2.0
        while nic.host_ifname in _link_names():
            assert time.monotonic() < deadline, "host veth survived its netns by > 2 s"
            time.sleep(0.02)
        net.detach(nic)


def test_attach_reuses_slot_name_and_detach_can_delete(net):
    with sandbox_process() as pid:
        nic = net.attach(pid, 4)
        # Same slot again (say the old pair has not died yet): the old host end is replaced.
        with sandbox_process() as pid2:
            nic2 = net.attach(pid2, 4)
            assert nic2.host_ifname == nic.host_ifname
            net.detach(nic)
            net.detach(nic2, delete_link=True)
            assert nic2.host_ifname not in _link_names()
            assert net.addresses_in_use() == []


def test_attach_to_dead_pid_fails_cleanly(net):
    with sandbox_process() as pid:
        pass  # the child has exited and been reaped
    with pytest.raises(NetworkError):
        net.attach(pid, 5)
    assert f"{net.veth_prefix}5" not in _link_names()
    assert net.addresses_in_use() == []


def test_cleanup_stale_and_teardown(net):
    with sandbox_process() as pid_a, sandbox_process() as pid_b:
        net.attach(pid_a, 6)
        net.attach(pid_b, 7)
        # A new daemon (same names) finds the leftovers of the crashed one.
        successor = BridgeNetwork(bridge=net.bridge, cidr=f"{net.gateway}/24", veth_prefix=net.veth_prefix)
        try:
            assert successor.cleanup_stale() == 2
            names = _link_names()
            assert not [n for n in names if n.startswith(net.veth_prefix)]
            successor.teardown()
            assert net.bridge not in _link_names()
        finally:
            successor.close()


def test_route_socket_agrees_with_pyroute2_and_reports_the_kernels_errors(net):
    with RouteSocket() as rs, IPRoute(groups=0) as ipr:
        (bridge,) = ipr.link_lookup(ifname=net.bridge)
        assert rs.link_index(net.bridge) == bridge
        assert rs.link_name(bridge) == net.bridge
        assert rs.ipv4_addresses(bridge) == [net.gateway]
        mine = {link.name: link for link in rs.links()}
        assert mine[net.bridge].kind == "bridge" and mine[net.bridge].index == bridge
        assert mine["lo"].kind == "" and mine["lo"].index == ipr.link_lookup(ifname="lo")[0]
        defaults = sorted(r.get("RTA_OIF") for r in ipr.get_default_routes(family=socket.AF_INET) if r.get("RTA_OIF"))
        assert sorted(rs.default_route_interfaces()) == defaults

        missing = f"{net.veth_prefix}x"
        assert rs.link_index(missing) is None
        assert rs.delete_link(missing) is False
        with pytest.raises(NetlinkError) as exc:
            rs.add_bridge(net.bridge)
        assert exc.value.code == errno.EEXIST
        with pytest.raises(NetlinkError) as exc:
            rs.add_ipv4_address(bridge, net.gateway, net.prefixlen)
        assert exc.value.code == errno.EEXIST
        with pytest.raises(NetlinkError) as exc:
            rs.set_up(0x7FFFFFF0)  # no such index
        assert exc.value.code == errno.ENODEV
