"""bridge against the real kernel: three namespaces behind a host bridge, TCP in every direction, drift, removal."""

from __future__ import annotations

from harness import four_runs, run_module
from netfixtures import connect, ip, ip_json, link_exists, listen, subnet


def test_three_namespaces_behind_a_bridge(made):
    x, y = subnet()
    bridge = made.new_link()
    args = {"name": bridge, "addresses": [f"10.{x}.{y}.1/24"]}
    created = four_runs("bridge", args)
    assert created[0]["ifindex"] is None and created[3]["ifindex"] > 0
    assert created[3]["addresses"] == [f"10.{x}.{y}.1/24"] and created[3]["ports"] == []
    assert ip_json(None, "-d", "link", "show", "dev", bridge)[0]["linkinfo"]["info_kind"] == "bridge"

    spaces, ends = [], []
    for i in range(3):
        netns, end = made.new_netns(), made.new_link()
        run_module("netns", {"name": netns})
        four_runs("veth", {"name": end, "bridge": bridge,
                           "peer": {"name": "eth0", "netns": netns, "addresses": [f"10.{x}.{y}.{10 + i}/24"],
                                    "routes": [{"dst": "default", "gateway": f"10.{x}.{y}.1"}]}})
        spaces.append(netns)
        ends.append(end)
    assert run_module("bridge", args)["ports"] == sorted(ends)
    assert ip_json(None, "link", "show", "dev", ends[0])[0]["master"] == bridge

    for i, netns in enumerate(spaces):
        listen(made, netns, f"10.{x}.{y}.{10 + i}", 7000, f"hello from {netns}")
    for i, netns in enumerate(spaces):
        assert connect(None, f"10.{x}.{y}.{10 + i}", 7000) == f"hello from {netns}"
        # And from the namespace before it, across the bridge.
        source = spaces[i - 1]
        assert connect(source, f"10.{x}.{y}.{10 + i}", 7000) == f"hello from {netns}"

    # Drift: the address replaced and the bridge set down by hand.
    ip("addr", "flush", "dev", bridge)
    ip("addr", "add", f"10.{x}.{y}.254/24", "dev", bridge)
    ip("link", "set", bridge, "down")
    predicted = run_module("bridge", args, check=True)
    repaired = run_module("bridge", args)
    assert predicted["diff"] == repaired["diff"] == {
        "before": {"bridge": {"link_state": "down", "addresses": [f"10.{x}.{y}.254/24"]}},
        "after": {"bridge": {"link_state": "up", "addresses": [f"10.{x}.{y}.1/24"]}},
    }
    assert not run_module("bridge", args)["changed"]
    assert connect(None, f"10.{x}.{y}.10", 7000) == f"hello from {spaces[0]}"

    removed = four_runs("bridge", {"name": bridge, "state": "absent"})
    assert removed[0]["ports"] == removed[1]["ports"] == sorted(ends)
    assert removed[3]["ports"] == [] and removed[3]["ifindex"] is None
    assert not link_exists(None, bridge)
    assert all(link_exists(None, end) for end in ends), "the ports stay when their bridge goes"


def test_bridge_in_a_namespace_with_mtu(made):
    netns = made.new_netns()
    run_module("netns", {"name": netns})
    result = four_runs("bridge", {"name": "br0", "netns": netns, "mtu": 1400, "addresses": ["fd00:5::1/64"]})[3]
    assert result["mtu"] == 1400 and result["netns"] == netns and result["addresses"] == ["fd00:5::1/64"]
    assert link_exists(netns, "br0") and not link_exists(None, "br0")
    four_runs("bridge", {"name": "br0", "netns": netns, "link_state": "down"})
    four_runs("bridge", {"name": "br0", "netns": netns, "state": "absent"})


def test_bad_input(made):
    netns = made.new_netns()
    run_module("netns", {"name": netns})
    ip("-n", netns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    missing = made.name()
    cases = [
        ({"name": "veth0", "netns": netns}, f"veth0 in netns {netns} exists and is a veth interface", "not a bridge"),
        ({"name": "b" * 16, "netns": netns}, "16 bytes", "1-15 bytes"),
        ({"name": "br 0", "netns": netns}, "'br 0'", "spaces"),
        ({"name": "br0", "netns": missing}, f"'{missing}' does not exist", "nsbox.primitives.netns"),
        ({"name": "br0", "netns": netns, "addresses": ["10.0.0.1/40"]}, "10.0.0.1/40", "not a valid CIDR"),
        ({"name": "br0", "netns": netns, "mtu": 10}, "MTU", "between 68 and 65535"),
    ]
    for args, names, fix in cases:
        failed = run_module("bridge", args, expect_failure=True)
        assert names in failed["msg"] and fix in failed["msg"], (args, failed["msg"])
        assert not link_exists(netns, "br0")
    failed = run_module("bridge", {"name": "veth0", "netns": netns, "state": "absent"}, expect_failure=True)
    assert "not a bridge" in failed["msg"] and link_exists(netns, "veth0")
