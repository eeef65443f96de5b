"""veth against the real kernel: namespace-to-namespace and host-to-namespace pairs, drift, bad input, rollback."""

from __future__ import annotations

import json
import os

import pytest
from harness import COLLECTIONS_PATH, four_runs, run_module
from netfixtures import connect, ip, ip_json, link_exists, listen, netns_exists, ping, subnet


@pytest.fixture
def two_netns(made):
    names = [made.new_netns(), made.new_netns()]
    for name in names:
        run_module("netns", {"name": name})
    return names


def test_namespace_to_namespace_and_back_to_nothing(made, two_netns):
    red, blue = two_netns
    x, y = subnet()
    args = {"name": "veth0", "netns": red, "addresses": [f"10.{x}.{y}.2/24"],
            "peer": {"name": "veth1", "netns": blue, "addresses": [f"10.{x}.{y}.3/24"]}}
    results = four_runs("veth", args)
    assert results[0]["interface"]["ifindex"] is None and results[1]["interface"]["ifindex"] > 0
    for key in ("name", "netns", "addresses", "link_state"):
        assert results[0]["interface"][key] == results[3]["interface"][key]
        assert results[0]["peer"][key] == results[3]["peer"][key]
    assert results[3]["peer"] == {**results[3]["peer"], "name": "veth1", "netns": blue,
                                  "addresses": [f"10.{x}.{y}.3/24"], "link_state": "up", "master": None}
    # Another tool agrees.
    assert [a["local"] for a in ip_json(blue, "addr", "show", "dev", "veth1")[0]["addr_info"]
            if a["family"] == "inet"] == [f"10.{x}.{y}.3"]
    assert not link_exists(None, "veth0")
    for source, target in ((red, f"10.{x}.{y}.3"), (blue, f"10.{x}.{y}.2")):
        proc = ping(source, target)
        assert proc.returncode == 0 and " 0% packet loss" in proc.stdout, proc

    removed = four_runs("veth", {"name": "veth0", "netns": red, "state": "absent"})
    assert removed[1]["interface"]["name"] == "veth0" and removed[1]["peer"]["netns"] == blue
    assert not link_exists(red, "veth0") and not link_exists(blue, "veth1")


def test_host_to_namespace_with_everything(made, two_netns):
    web = two_netns[0]
    host_end = made.new_link()
    x, y = subnet()
    args = {"name": host_end, "addresses": [f"10.{x}.{y}.1/30", f"fd00:{x}:{y}::1/64"], "mtu": 9000,
            "mac": "02:00:00:00:00:01",
            "peer": {"name": "eth0", "netns": web, "mtu": 9000, "mac": "02:00:00:00:00:02",
                     "addresses": [f"10.{x}.{y}.2/30", f"fd00:{x}:{y}::2/64"],
                     "routes": [{"dst": "default", "gateway": f"10.{x}.{y}.1"},
                                {"dst": "default", "gateway": f"fd00:{x}:{y}::1"},
                                {"dst": "192.0.2.0/24", "gateway": f"10.{x}.{y}.1", "metric": 50}]}}
    result = four_runs("veth", args)[3]
    assert result["interface"]["mtu"] == 9000 and result["interface"]["mac"] == "02:00:00:00:00:01"
    assert result["peer"]["routes"] == [
        {"dst": "default", "gateway": f"10.{x}.{y}.1", "metric": 0},
        {"dst": "192.0.2.0/24", "gateway": f"10.{x}.{y}.1", "metric": 50},
        {"dst": "default", "gateway": f"fd00:{x}:{y}::1", "metric": 1024},
    ]
    routes = ip_json(web, "route", "show", "default")
    assert routes[0]["gateway"] == f"10.{x}.{y}.1" and routes[0]["dev"] == "eth0"
    # The container listens, the host connects (the EC2 seed's nginx path).
    listen(made, web, f"10.{x}.{y}.2", 8080, "hello from web")
    assert connect(None, f"10.{x}.{y}.2", 8080) == "hello from web"


def test_drift_is_repaired_and_shown(made, two_netns):
    red, blue = two_netns
    elsewhere = made.new_netns()
    run_module("netns", {"name": elsewhere})
    x, y = subnet()
    args = {"name": "veth0", "netns": red, "addresses": [f"10.{x}.{y}.2/24"], "mtu": 1400,
            "peer": {"name": "eth0", "netns": blue, "addresses": [f"10.{x}.{y}.3/24"],
                     "routes": [{"dst": "default", "gateway": f"10.{x}.{y}.2"}]}}
    run_module("veth", args)

    def repaired(expected_diff):
        predicted = run_module("veth", args, check=True)
        real = run_module("veth", args)
        assert predicted["diff"] == real["diff"] == expected_diff
        assert not run_module("veth", args)["changed"]
        assert ping(red, f"10.{x}.{y}.3").returncode == 0
        return real

    # An address changed by hand, the link set down, the MTU changed.
    ip("-n", red, "addr", "del", f"10.{x}.{y}.2/24", "dev", "veth0")
    ip("-n", red, "addr", "add", f"10.{x}.{y}.9/24", "dev", "veth0")
    ip("-n", red, "link", "set", "veth0", "down", "mtu", "1300")
    repaired({"before": {"interface": {"addresses": [f"10.{x}.{y}.9/24"], "link_state": "down", "mtu": 1300}},
              "after": {"interface": {"addresses": [f"10.{x}.{y}.2/24"], "link_state": "up", "mtu": 1400}}})

    # The peer's default route removed and the peer set down.
    ip("-n", blue, "route", "del", "default")
    ip("-n", blue, "link", "set", "eth0", "down")
    repaired({"before": {"peer": {"link_state": "down", "routes": []}},
              "after": {"peer": {"link_state": "up",
                                 "routes": [{"dst": "default", "gateway": f"10.{x}.{y}.2", "metric": 0}]}}})

    # The peer renamed where it is, and its MAC address changed.
    ip("-n", blue, "link", "set", "eth0", "down")
    ip("-n", blue, "link", "set", "eth0", "name", "eth9")
    ip("-n", blue, "link", "set", "eth9", "up")
    args["peer"]["mac"] = "02:00:00:00:00:03"
    # (Setting it down took its default route away too.)
    repaired({"before": {"peer": {"name": "eth9", "mac": ip_json(blue, "link", "show", "dev", "eth9")[0]["address"],
                                  "routes": []}},
              "after": {"peer": {"name": "eth0", "mac": "02:00:00:00:00:03",
                                 "routes": [{"dst": "default", "gateway": f"10.{x}.{y}.2", "metric": 0}]}}})
    ip("-n", blue, "link", "set", "eth0", "address", "02:00:00:00:00:09")
    repaired({"before": {"peer": {"mac": "02:00:00:00:00:09"}}, "after": {"peer": {"mac": "02:00:00:00:00:03"}}})

    # The peer moved to another namespace and renamed there: it is brought back.
    ip("-n", blue, "link", "set", "eth0", "netns", elsewhere)
    ip("-n", elsewhere, "link", "set", "eth0", "name", "stray0")
    result = repaired({"before": {"peer": {"name": "stray0", "netns": elsewhere, "addresses": [], "link_state": "down",
                                           "routes": []}},
                       "after": {"peer": {"name": "eth0", "netns": blue, "addresses": [f"10.{x}.{y}.3/24"],
                                          "link_state": "up",
                                          "routes": [{"dst": "default", "gateway": f"10.{x}.{y}.2", "metric": 0}]}}})
    assert result["peer"]["netns"] == blue and not link_exists(elsewhere, "stray0")

    # The peer moved to the host (renamed on the way: the host has an eth0 of its own).
    made.links.append((None, stray := made.name()))
    ip("-n", blue, "link", "set", "eth0", "netns", str(os.getpid()), "name", stray)
    real = run_module("veth", args)
    assert real["diff"]["before"]["peer"]["netns"] is None and real["peer"]["netns"] == blue
    assert ping(blue, f"10.{x}.{y}.2").returncode == 0


def test_a_peer_in_an_unnamed_namespace_cannot_be_brought_back(made, two_netns):
    red, blue = two_netns
    run_module("veth", {"name": "veth0", "netns": red, "peer": {"name": "eth0", "netns": blue}})
    # A process in a network namespace of its own, with no name under /run/netns.
    holder = made.python_in(None, f"import sys, time\nsys.path.insert(0, {str(COLLECTIONS_PATH)!r})\n"
                                  "from ansible_collections.nsbox.primitives.plugins.module_utils import syscalls\n"
                                  "syscalls.unshare(syscalls.CLONE_NEWNET)\nprint('ready', flush=True)\n"
                                  "time.sleep(300)")
    assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
    ip("-n", blue, "link", "set", "eth0", "netns", str(holder.pid))
    failed = run_module("veth", {"name": "veth0", "netns": red, "peer": {"name": "eth0", "netns": blue}},
                        expect_failure=True)
    assert "in a network namespace without a name" in failed["msg"] and "state: absent" in failed["msg"]
    # Removing the pair still works: deleting one end deletes both.
    four_runs("veth", {"name": "veth0", "netns": red, "state": "absent"})


def _nothing_left(*ends: tuple[str | None, str]) -> None:
    for netns, name in ends:
        assert not link_exists(netns, name), f"a failed run left {name} in {netns or 'the host'}"


def test_bad_input_fails_clearly_and_leaves_nothing(made, two_netns):
    red, blue = two_netns
    x, y = subnet()
    base = {"name": "veth0", "netns": red, "addresses": [f"10.{x}.{y}.2/24"],
            "peer": {"name": "veth1", "netns": blue, "addresses": [f"10.{x}.{y}.3/24"]}}
    missing = made.name()
    cases = [
        ({"name": "a" * 16}, "16 bytes", "1-15 bytes"),
        ({"name": "a/b"}, "'a/b'", "without '/'"),
        ({"name": "my veth"}, "'my veth'", "spaces"),
        ({"peer": {**base["peer"], "name": "eth 0"}}, "peer.name 'eth 0'", "spaces"),
        ({"netns": missing}, f"'{missing}' does not exist", "nsbox.primitives.netns"),
        ({"peer": {**base["peer"], "netns": missing}}, "peer.netns", "create it first"),
        ({"addresses": ["10.1.2.300/24"]}, "10.1.2.300/24", "not a valid CIDR"),
        ({"addresses": ["10.1.2.3"]}, "no prefix length", "10.0.0.2/24"),
        ({"peer": {**base["peer"], "routes": [{"dst": "default", "gateway": "10.250.250.1"}]}},
         "gateway 10.250.250.1", "outside every subnet"),
        ({"mac": "01:00:5e:00:00:01"}, "multicast", "unicast"),
        ({"mtu": 70000}, "70000", "between 68 and 65535"),
        ({"peer": {**base["peer"], "netns": red, "name": "veth0"}}, "both ends", "another name"),
    ]
    for extra, names, fix in cases:
        for check in (True, False):
            if check and missing in str(extra):
                # Check mode assumes an earlier task (itself only predicted) makes the namespace.
                predicted = run_module("veth", {**base, **extra}, check=True)
                assert predicted["changed"] and missing in json.dumps(predicted["warnings"])
                continue
            failed = run_module("veth", {**base, **extra}, check=check, expect_failure=True)
            assert names in failed["msg"] and fix in failed["msg"], (extra, failed["msg"])
        _nothing_left((red, "veth0"), (blue, "veth1"))
        assert not netns_exists(missing), "a lookup created a namespace"


def test_names_taken_by_other_interfaces(made, two_netns):
    red, blue = two_netns
    ip("-n", red, "link", "add", "br0", "type", "bridge")
    failed = run_module("veth", {"name": "br0", "netns": red, "peer": {"name": "eth0", "netns": blue}},
                        expect_failure=True)
    assert f"br0 in netns {red} exists and is a bridge interface, not a veth" in failed["msg"]
    assert link_exists(red, "br0"), "an interface the module did not make stays"
    failed = run_module("veth", {"name": "br0", "netns": red, "state": "absent"}, expect_failure=True)
    assert "not a veth" in failed["msg"] and link_exists(red, "br0")

    # The peer name exists in the peer's namespace as the end of another pair.
    ip("-n", red, "link", "add", "other0", "type", "veth", "peer", "name", "eth0", "netns", blue)
    failed = run_module("veth", {"name": "veth0", "netns": red, "peer": {"name": "eth0", "netns": blue}},
                        expect_failure=True)
    assert (f"peer eth0 in netns {blue} already exists (veth, whose other end is other0 in netns {red})"
            in failed["msg"]), failed["msg"]
    assert not link_exists(red, "veth0")

    # A bridge name that is not a bridge.
    failed = run_module("veth", {"name": "veth0", "netns": red, "bridge": "other0",
                                 "peer": {"name": "eth1", "netns": blue}}, expect_failure=True)
    assert f"other0 in netns {red} is a veth interface, not a bridge" in failed["msg"], failed["msg"]
    _nothing_left((red, "veth0"), (blue, "eth1"))


def test_pair_is_removed_when_configuring_it_fails(made, two_netns):
    red = two_netns[0]
    no_ipv6 = made.new_netns()
    run_module("netns", {"name": no_ipv6, "sysctls": {"net.ipv6.conf.default.disable_ipv6": 1,
                                                      "net.ipv6.conf.all.disable_ipv6": 1}})
    x, y = subnet()
    args = {"name": "veth0", "netns": red, "addresses": [f"10.{x}.{y}.2/24"],
            "peer": {"name": "eth0", "netns": no_ipv6, "addresses": [f"10.{x}.{y}.3/24", "fd00:1::3/64"]}}
    failed = run_module("veth", args, expect_failure=True)
    assert "adding address fd00:1::3/64 to veth eth0" in failed["msg"] and "disable_ipv6" in failed["msg"]
    assert failed["rolled_back"] == [f"remove veth pair veth0 in netns {red} <-> eth0 in netns {no_ipv6}"]
    _nothing_left((red, "veth0"), (no_ipv6, "eth0"))

    # Routes need the link up: the kernel's refusal also rolls the new pair back.
    down = {**args, "peer": {"name": "eth0", "netns": no_ipv6, "link_state": "down",
                             "addresses": [f"10.{x}.{y}.3/24"],
                             "routes": [{"dst": "default", "gateway": f"10.{x}.{y}.2"}]}}
    failed = run_module("veth", down, expect_failure=True)
    assert "adding route to default" in failed["msg"] and "rolled_back" in failed
    _nothing_left((red, "veth0"), (no_ipv6, "eth0"))
