"""Validation of interface names, addresses and routes (no kernel needed)."""

from __future__ import annotations

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import netlink
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError
from ansible_collections.nsbox.primitives.plugins.module_utils.netns import normalize_sysctls


@pytest.mark.parametrize("name", ["eth0", "veth-red", "a" * 15, "x.y"])
def test_valid_interface_names(name):
    assert netlink.check_ifname(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"), ("a" * 16, "16 bytes"), ("é" * 8, "16 bytes"), ("a/b", "'/'"), ("a b", "whitespace"),
    ("a:1", "':'"), (".", "not allowed"), ("..", "not allowed"),
])
def test_invalid_interface_names(name, why):
    with pytest.raises(NsboxError, match=why):
        netlink.check_ifname(name)


def test_addresses_are_normalized_deduplicated_and_sorted():
    got = netlink.normalize_addresses(["fd00:0::2/64", "10.0.0.9/24", "10.0.0.10/24", "10.0.0.9/24"])
    assert got == ["10.0.0.9/24", "10.0.0.10/24", "fd00::2/64"]
    assert netlink.normalize_addresses(None) is None


@pytest.mark.parametrize(("value", "why"), [("10.0.0.1", "no prefix length"), ("10.0.0.300/24", "not a valid"),
                                            ("10.0.0.1/33", "not a valid"), ("fd00::zz/64", "not a valid")])
def test_invalid_cidr(value, why):
    with pytest.raises(NsboxError, match=why):
        netlink.normalize_cidr(value)


def test_routes():
    addresses = ["10.1.0.2/24", "fd00:1::2/64"]
    routes = netlink.normalize_routes([
        {"dst": "default", "gateway": "10.1.0.1"},
        {"dst": "::/0", "gateway": "fd00:1::1"},
        {"dst": "192.168.5.7/24", "metric": 20},
    ], addresses)
    assert [r.as_dict() for r in routes] == [
        {"dst": "default", "gateway": "10.1.0.1", "metric": 0},
        {"dst": "192.168.5.0/24", "gateway": None, "metric": 20},
        {"dst": "default", "gateway": "fd00:1::1", "metric": 1024},
    ]


@pytest.mark.parametrize(("route", "why"), [
    ({"dst": "default", "gateway": "10.9.9.1"}, "outside every subnet"),
    ({"dst": "10.0.0.0/8", "gateway": "fd00:1::1"}, "IPv6 but dst"),
    ({"dst": "nowhere"}, "not 'default' or a CIDR"),
    ({"dst": "default", "gateway": "x"}, "not an IP address"),
    ({"dst": "default", "via": "10.1.0.1"}, "unknown keys via"),
    ({"gateway": "10.1.0.1"}, "must be a dict with dst"),
    ({"dst": "default", "metric": -1}, "metric"),
])
def test_invalid_routes(route, why):
    with pytest.raises(NsboxError, match=why):
        netlink.normalize_routes([route], ["10.1.0.2/24"])


def test_conflicting_routes():
    with pytest.raises(NsboxError, match="two routes"):
        netlink.normalize_routes([{"dst": "default", "gateway": "10.1.0.1"},
                                  {"dst": "default", "gateway": "10.1.0.3"}], ["10.1.0.2/24"])


def test_mac_and_mtu():
    assert netlink.normalize_mac("02-AA-bb-cc-dd-ee") == "02:aa:bb:cc:dd:ee"
    for bad, why in (("01:00:5e:00:00:01", "multicast"), ("00:00:00:00:00:00", "all zeros"), ("zz", "not a MAC")):
        with pytest.raises(NsboxError, match=why):
            netlink.normalize_mac(bad)
    assert netlink.normalize_mtu("9000") == 9000
    for bad in (67, 65536, "big"):
        with pytest.raises(NsboxError, match="MTU"):
            netlink.normalize_mtu(bad)


def test_sysctls():
    assert normalize_sysctls({"net/ipv4/ip_forward": True, "net.ipv4.ping_group_range": "0\t 10"}) == {
        "net.ipv4.ip_forward": "1", "net.ipv4.ping_group_range": "0 10"}
    with pytest.raises(NsboxError, match=r"start with net\."):
        normalize_sysctls({"vm.swappiness": 1})
    with pytest.raises(NsboxError, match="no value"):
        normalize_sysctls({"net.ipv4.ip_forward": None})
