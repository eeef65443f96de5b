"""RED/BLUE wiring (two named namespaces, one veth pair with an address on each end, links up) set up and torn
down N times three ways, in one run on the same input:

  ip        the seeds' commands: ip netns add, ip link add ... type veth peer ..., ip addr add, ip link set up
  library   nsbox's module_utils in one process (netlink through pyroute2, no process per step)
  modules   the netns and veth modules, one process per task as Ansible runs them (without AnsiballZ/SSH)

and the modules' idempotent re-run (nothing to change), which ip has no equivalent of. Prints seconds per
scenario and ratios to ip. Only namespaces and links named by this run are made and removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / ".ansible" / "collections"), str(ROOT / "tests")]

from ansible_collections.nsbox.primitives.plugins.module_utils import netlink, netns
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import UndoStack
from harness import run_module

N = int(os.environ.get("NSBOX_BENCH_N", "10"))


def names(i: int) -> tuple[str, str]:
    tag = secrets.token_hex(2)
    return f"nbb{tag}r{i}", f"nbb{tag}b{i}"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def with_ip(red: str, blue: str, i: int) -> None:
    ip("netns", "add", red)
    ip("netns", "add", blue)
    ip("link", "add", "veth0", "netns", red, "type", "veth", "peer", "name", "veth1", "netns", blue)
    ip("-n", red, "addr", "add", f"10.250.{i}.2/24", "dev", "veth0")
    ip("-n", red, "link", "set", "veth0", "up")
    ip("-n", blue, "addr", "add", f"10.250.{i}.3/24", "dev", "veth1")
    ip("-n", blue, "link", "set", "veth1", "up")


def ip_teardown(red: str, blue: str) -> None:
    ip("netns", "del", red)
    ip("netns", "del", blue)


def with_library(red: str, blue: str, i: int) -> None:
    undo = UndoStack()
    netns.create_named(red, undo)
    netns.create_named(blue, undo)
    a, b = netlink.open_named(red), netlink.open_named(blue)
    a.ipr.link("add", ifname="veth0", kind="veth", peer={"ifname": "veth1", "net_ns_fd": b.fd})
    for ns, name, address in ((a, "veth0", f"10.250.{i}.2/24"), (b, "veth1", f"10.250.{i}.3/24")):
        link = netlink.get_link(ns, name)
        netlink.converge_addresses(ns, link.index, [address], name)
        netlink.set_link(ns, link.index, name, state="up")
        ns.close()


def library_teardown(red: str, blue: str) -> None:
    netns.remove_named(red)
    netns.remove_named(blue)


def module_args(red: str, blue: str, i: int) -> list[tuple[str, dict]]:
    return [("netns", {"name": red}), ("netns", {"name": blue}),
            ("veth", {"name": "veth0", "netns": red, "addresses": [f"10.250.{i}.2/24"],
                      "peer": {"name": "veth1", "netns": blue, "addresses": [f"10.250.{i}.3/24"]}})]


def with_modules(red: str, blue: str, i: int) -> None:
    for module, args in module_args(red, blue, i):
        run_module(module, args)


def modules_again(red: str, blue: str, i: int) -> None:
    for module, args in module_args(red, blue, i):
        assert not run_module(module, args)["changed"]


def modules_teardown(red: str, blue: str) -> None:
    run_module("netns", {"name": red, "state": "absent"})
    run_module("netns", {"name": blue, "state": "absent"})


def measure(setup, teardown, again=None) -> tuple[float, float, float | None]:
    made: list[tuple[str, str]] = []
    try:
        start = time.perf_counter()
        for i in range(N):
            made.append(names(i))
            setup(*made[-1], i)
        up = (time.perf_counter() - start) / N
        rerun = None
        if again:
            start = time.perf_counter()
            for i, (red, blue) in enumerate(made):
                again(red, blue, i)
            rerun = (time.perf_counter() - start) / N
        start = time.perf_counter()
        while made:
            teardown(*made.pop())
        down = (time.perf_counter() - start) / N
        return up, down, rerun
    finally:
        for red, blue in made:
            for name in (red, blue):
                with contextlib.suppress(OSError):
                    netns.remove_named(name)


def main() -> None:
    results = {
        "ip": measure(with_ip, ip_teardown),
        "library": measure(with_library, library_teardown),
        "modules": measure(with_modules, modules_teardown, modules_again),
    }
    base_up, base_down = results["ip"][:2]
    print(f"RED/BLUE wiring, {N} scenarios each; seconds per scenario (ratio to ip)")
    for label, (up, down, rerun) in results.items():
        line = f"{label:8s} setup {up:.4f} s ({up / base_up:.2f}x)  teardown {down:.4f} s ({down / base_down:.2f}x)"
        if rerun is not None:
            line += f"  idempotent re-run {rerun:.4f} s"
        print(line)


if __name__ == "__main__":
    main()
