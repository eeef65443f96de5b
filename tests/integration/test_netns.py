"""netns against the real kernel: ip netns sees it, loopback and sysctls inside, drift, processes, bad input."""

from __future__ import annotations

import os
import time

from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo
from harness import COLLECTIONS_PATH, four_runs, run_module
from netfixtures import NETNS_DIR, ip_json, netns_exists, run_in


def test_create_with_sysctls_then_absent(made):
    name = made.new_netns()
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as handle:
        host_value = handle.read()
    args = {"name": name, "sysctls": {"net.ipv4.ip_forward": 1, "net.ipv4.ip_unprivileged_port_start": "80",
                                      "net.ipv4.ping_group_range": "0   2147483647"}}
    results = four_runs("netns", args)
    assert results[0]["diff"]["after"]["netns"] == {
        "exists": True, "loopback": "up",
        "sysctls": {"net.ipv4.ip_forward": "1", "net.ipv4.ip_unprivileged_port_start": "80",
                    "net.ipv4.ping_group_range": "0 2147483647"}}
    assert results[3]["exists"] and results[3]["path"] == f"{NETNS_DIR}/{name}"
    assert results[3]["sysctls"]["net.ipv4.ip_forward"] == "1"

    # Another tool sees it: ip netns list and ip netns exec.
    assert name in [entry["name"] for entry in ip_json(None, "netns", "list")]
    lo = ip_json(name, "link", "show", "dev", "lo")[0]
    assert "UP" in lo["flags"]
    inside = run_in(None, "ip", "netns", "exec", name, "cat", "/proc/sys/net/ipv4/ip_forward")
    assert inside.stdout.strip() == "1", inside
    # The host's own value is untouched.
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as handle:
        assert handle.read() == host_value
    mount = mountinfo.mount_at(f"{NETNS_DIR}/{name}")
    assert mount.fstype == "nsfs" and mount.propagation == "private"

    removed = four_runs("netns", {"name": name, "state": "absent"})
    assert removed[1]["exists"] is False
    assert not netns_exists(name) and mountinfo.mount_at(f"{NETNS_DIR}/{name}") is None


def test_exact_name_matching(made):
    long_name = made.new_netns()
    short = long_name[:-2]
    made.netns.append(short)
    run_module("netns", {"name": long_name})
    # A name that is a prefix (substring) of an existing one is another namespace.
    created = run_module("netns", {"name": short})
    assert created["changed"]
    assert netns_exists(short) and netns_exists(long_name)
    run_module("netns", {"name": short, "state": "absent"})
    assert netns_exists(long_name)


def test_drift_of_loopback_and_sysctls_is_repaired(made):
    name = made.new_netns()
    args = {"name": name, "sysctls": {"net.ipv4.ip_forward": "1"}}
    run_module("netns", args)
    run_in(name, "ip", "link", "set", "lo", "down")
    proc = run_in(name, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
    assert proc.returncode == 0, proc.stderr
    predicted = run_module("netns", args, check=True)
    repaired = run_module("netns", args)
    assert predicted["diff"] == repaired["diff"] == {
        "before": {"loopback": "down", "sysctls": {"net.ipv4.ip_forward": "0"}},
        "after": {"loopback": "up", "sysctls": {"net.ipv4.ip_forward": "1"}},
    }
    assert "UP" in ip_json(name, "link", "show", "dev", "lo")[0]["flags"]
    assert not run_module("netns", args)["changed"]


def test_absent_refuses_while_processes_live_and_kills_when_asked(made):
    name = made.new_netns()
    run_module("netns", {"name": name})
    sleeper = made.spawn(name, "sleep", "300")
    time.sleep(0.1)
    for check in (True, False):
        failed = run_module("netns", {"name": name, "state": "absent"}, check=check, expect_failure=True)
        assert failed["pids"] == [sleeper.pid], failed
        assert f"{sleeper.pid} (sleep)" in failed["msg"] and "kill: true" in failed["msg"]
    assert netns_exists(name)
    results = four_runs("netns", {"name": name, "state": "absent", "kill": True})
    assert results[1]["killed"] == [sleeper.pid]
    assert sleeper.wait(timeout=10) == -9
    assert not netns_exists(name)


def test_bad_input(made):
    name = made.new_netns()
    cases = [
        ({"name": "a/b"}, "'a/b'", "without '/'"),
        ({"name": ""}, "''", "1-255 bytes"),
        ({"name": "x" * 256}, "not a usable", "1-255 bytes"),
        ({"name": name, "sysctls": {"kernel.hostname": "x"}}, "kernel.hostname", "start with net."),
        ({"name": name, "sysctls": {"net.ipv4.no_such_knob": 1}}, "net.ipv4.no_such_knob", "does not exist"),
        ({"name": name, "sysctls": {"net.ipv4.ip_forward": "banana"}}, "net.ipv4.ip_forward=banana", "Errno 22"),
    ]
    for args, names, fix in cases:
        for check in (True, False):
            if check and "banana" in str(args):
                continue  # only the kernel knows which values it takes
            failed = run_module("netns", args, check=check, expect_failure=True)
            assert names in failed["msg"] and fix in failed["msg"], failed["msg"]
            assert not netns_exists(name), f"{args} left {name} behind"
            if "rolled_back" in failed:
                assert f"unmount {NETNS_DIR}/{name}" in failed["rolled_back"]
    # A value the kernel refuses after the namespace was made: it is removed again.
    failed = run_module("netns", cases[-1][0], expect_failure=True)
    assert failed["rolled_back"][:2] == [f"unmount {NETNS_DIR}/{name}", f"remove {NETNS_DIR}/{name}"]


def test_a_file_that_is_not_a_namespace_is_refused(made):
    name = made.new_netns()
    os.makedirs(NETNS_DIR, exist_ok=True)
    path = f"{NETNS_DIR}/{name}"
    with open(path, "w") as handle:
        handle.write("not a namespace\n")
    try:
        failed = run_module("netns", {"name": name}, expect_failure=True)
        assert "is not a network namespace" in failed["msg"] and path in failed["msg"]
        with open(path) as handle:
            assert handle.read() == "not a namespace\n"
    finally:
        os.unlink(path)
    # An empty file (what an interrupted creation leaves) is used.
    open(path, "w").close()
    four_runs("netns", {"name": name})
    assert mountinfo.mount_at(path).fstype == "nsfs"


def test_removal_while_another_mount_namespace_holds_a_copy(made):
    """A mount namespace made after the netns (a container's, say) has its own copy of the mount: removing the
    name must not fail with EBUSY, and the host's mount table must be clean afterwards."""
    name = made.new_netns()
    run_module("netns", {"name": name})
    holder = made.python_in(None, f"import sys, time\nsys.path.insert(0, {str(COLLECTIONS_PATH)!r})\n"
                                  "from ansible_collections.nsbox.primitives.plugins.module_utils import syscalls\n"
                                  "syscalls.unshare(syscalls.CLONE_NEWNS)\nprint('ready', flush=True)\n"
                                  "time.sleep(300)")
    assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
    with open(f"/proc/{holder.pid}/mountinfo") as handle:
        assert f" {NETNS_DIR}/{name} " in handle.read(), "the other mount namespace has a copy"
    four_runs("netns", {"name": name, "state": "absent"})
    assert not netns_exists(name) and mountinfo.mount_at(f"{NETNS_DIR}/{name}") is None
