"""The seeds' nginx, for real: nginx as PID 1 with `daemon off`, workers dropping to the nginx user,
CPU 10% and a small memory limit through a cgroup made by cgroup2, reached from the host over a veth
pair into a network namespace the test makes. Once without a user namespace and once with a full
65536-id mapping in which container root is an unprivileged host user (the rootfs is seen through an
idmapped mount, so its files, owned by host root and host uid 101, need no chown).

The netns and veth are made here with pyroute2 (the netns/veth modules are other issues) and
removed, with the cgroup and the containers, by finalizers."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import urllib.request
from pathlib import Path

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import cgroups, syscalls
from container_helpers import remove_container, state_of, wait_for
from harness import four_runs, run_module
from rootfs_builder import NGINX_UID, nginx_rootfs

pyroute2 = pytest.importorskip("pyroute2")
pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"), pytest.mark.slow]


@pytest.fixture(scope="module")
def nginx_root(tmp_path_factory) -> Path:
    return nginx_rootfs(tmp_path_factory.mktemp("nginx") / "rootfs")


def _in_netns(name: str, action) -> None:
    """Run action in a forked child that joined the named network namespace (sysctls there)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            syscalls.enter_namespace(f"/run/netns/{name}", syscalls.CLONE_NEWNET)
            action()
            status = 0
        finally:
            os._exit(status)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@pytest.fixture
def network():
    """A netns with one end of a veth pair (10.X.Y.2/30) and the host end (10.X.Y.1/30)."""
    suffix = secrets.token_hex(3)
    name, host_if, peer_if = f"nbtn{suffix}", f"nbth{suffix}", f"nbtp{suffix}"
    third, fourth = int(suffix[:2], 16), int(suffix[2:4], 16) & 0xFC
    host_ip, container_ip = f"10.{200 + third % 50}.{fourth}.1", f"10.{200 + third % 50}.{fourth}.2"
    pyroute2.netns.create(name)
    try:
        with pyroute2.IPRoute() as ipr:
            ipr.link("add", ifname=host_if, kind="veth", peer=peer_if)
            peer = ipr.link_lookup(ifname=peer_if)[0]
            ipr.link("set", index=peer, net_ns_fd=name)
            host = ipr.link_lookup(ifname=host_if)[0]
            ipr.addr("add", index=host, address=host_ip, prefixlen=30)
            ipr.link("set", index=host, state="up")
        with pyroute2.NetNS(name, flags=0) as ns:
            index = ns.link_lookup(ifname=peer_if)[0]
            ns.addr("add", index=index, address=container_ip, prefixlen=30)
            ns.link("set", index=index, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")

        def unprivileged_ports():
            # Container root in a user namespace holds no capability over this (host-owned) netns.
            Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").write_text("0")
        _in_netns(name, unprivileged_ports)
        yield {"netns": name, "ip": container_ip}
    finally:
        with pyroute2.IPRoute() as ipr, contextlib.suppress(Exception):
            ipr.link("del", index=ipr.link_lookup(ifname=host_if)[0])
        pyroute2.netns.remove(name)


@pytest.fixture
def cgroup():
    """A cgroup made by the cgroup2 module: the seed's 10% CPU and a small memory limit."""
    path = f"nsbox-test-{secrets.token_hex(4)}/web"
    run_module("cgroup2", {"path": path, "cpus": 0.1, "memory_max": "64M"})
    yield path
    run_module("cgroup2", {"path": path, "state": "absent", "kill": True})
    run_module("cgroup2", {"path": path.split("/", maxsplit=1)[0], "state": "absent", "kill": True})


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read().decode()


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


@pytest.mark.parametrize("userns", [False, True], ids=["no-userns", "userns-65536"])
def test_nginx_served_over_veth(nginx_root, network, cgroup, unique_name, userns):
    name = unique_name("nbtw")
    host_uid = 100000 + secrets.randbelow(1000) * 65536
    params = {"name": name, "rootfs": str(nginx_root), "command": ["/usr/sbin/nginx"], "netns": network["netns"],
              "cgroup": cgroup, "restart_policy": "always", "stop_timeout": 2, "stop_signal": "QUIT"}
    if userns:
        params["user_namespace"] = {"host_uid": host_uid, "size": 65536}
    try:
        result = four_runs("nsbox_container", params)[1]
        url = f"http://{network['ip']}/"
        status, body = wait_for(lambda: _try(url), 20, 0.1, what=f"HTTP 200 from {url}")
        assert status == 200 and "nsbox nginx" in body
        master = result["pid"]
        workers = wait_for(lambda: len(_children(master)) == 2 and _children(master), what="two workers")
        # Workers drop to the image's nginx user; with a user namespace both sit on mapped host ids.
        offset = host_uid if userns else 0
        assert _uid(master) == offset and all(_uid(w) == offset + NGINX_UID for w in workers)
        group = cgroups.open_cgroup(cgroup)
        assert {master, *workers} <= set(group.processes())

        # kill -9 of PID 1 under restart_policy always: it comes back and serves again.
        os.kill(master, signal.SIGKILL)
        state = wait_for(lambda: (s := state_of(name)) and s["status"] == "running" and s["pid"] != master and s,
                         what="nginx to be restarted")
        assert state["restart_count"] == 1
        assert wait_for(lambda: _try(url), 20, 0.1, what="HTTP 200 after the restart")[0] == 200
        again = run_module("nsbox_container", params)
        assert not again["changed"]
        reload = run_module("nsbox_container", dict(params, signal="HUP"))
        assert reload["changed"] and reload["pid"] == state["pid"]

        stopped = run_module("nsbox_container", {"name": name, "state": "stopped"})
        assert stopped["status"] == "stopped" and not group.processes()
        started = run_module("nsbox_container", params)
        assert started["changed"] and wait_for(lambda: _try(url), 20, 0.1, what="HTTP 200 after start")[0] == 200
    finally:
        remove_container(name)
    assert not cgroups.open_cgroup(cgroup).processes()


def _try(url: str):
    try:
        return _get(url)
    except OSError:
        return None
