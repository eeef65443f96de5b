"""Time from "start the container" to the first HTTP 200 from nginx, nsbox_container against runc,
on one nginx rootfs (tests/rootfs_builder.py) in one network namespace reached over a veth pair.

    tools/run-bench.sh bench/nginx_first_response.py      (NSBOX_BENCH_RUNS=N, default 5)

nsbox: the nsbox_container module run (an Ansible module process) until the response; then absent.
runc: `runc run -d` of a bundle joining the same netns until the response; then kill and delete.
Each is the median of N runs. The netns, veth, cgroups and containers are removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / ".ansible" / "collections"))

import pyroute2
from ansible_collections.nsbox.primitives.plugins.module_utils import capabilities
from harness import run_module
from rootfs_builder import nginx_rootfs

RUNS = int(os.environ.get("NSBOX_BENCH_RUNS", "5"))
TAG = secrets.token_hex(3)
NETNS, HOST_IF, PEER_IF = f"nbxn{TAG}", f"nbxh{TAG}", f"nbxp{TAG}"
HOST_IP, CONTAINER_IP = "10.249.7.1", "10.249.7.2"
URL = f"http://{CONTAINER_IP}/"


def network_up() -> None:
    pyroute2.netns.create(NETNS)
    with pyroute2.IPRoute() as ipr:
        ipr.link("add", ifname=HOST_IF, kind="veth", peer=PEER_IF)
        ipr.link("set", index=ipr.link_lookup(ifname=PEER_IF)[0], net_ns_fd=NETNS)
        host = ipr.link_lookup(ifname=HOST_IF)[0]
        ipr.addr("add", index=host, address=HOST_IP, prefixlen=30)
        ipr.link("set", index=host, state="up")
    with pyroute2.NetNS(NETNS, flags=0) as ns:
        index = ns.link_lookup(ifname=PEER_IF)[0]
        ns.addr("add", index=index, address=CONTAINER_IP, prefixlen=30)
        ns.link("set", index=index, state="up")
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def network_down() -> None:
    with pyroute2.IPRoute() as ipr, contextlib.suppress(Exception):
        ipr.link("del", index=ipr.link_lookup(ifname=HOST_IF)[0])
    with contextlib.suppress(Exception):
        pyroute2.netns.remove(NETNS)


def first_200(start: float, timeout: float = 20.0) -> float:
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(URL, timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"no HTTP 200 from {URL} within {timeout} s")


def nsbox_once(rootfs: Path) -> float:
    name = f"nbxw{secrets.token_hex(3)}"
    params = {"name": name, "rootfs": str(rootfs), "command": ["/usr/sbin/nginx"], "netns": NETNS,
              "stop_timeout": 1}
    start = time.perf_counter()
    try:
        run_module("nsbox_container", params)
        return first_200(start)
    finally:
        run_module("nsbox_container", {"name": name, "state": "absent", "stop_timeout": 0})


def runc_bundle(rootfs: Path, directory: Path) -> Path:
    path = directory / "bundle-runc"
    path.mkdir()
    subprocess.run(["runc", "spec"], cwd=path, check=True)
    config = json.loads((path / "config.json").read_text())
    config["root"] = {"path": str(rootfs), "readonly": False}
    caps = [f"CAP_{name}" for name in capabilities.DOCKER_DEFAULT]  # runc's spec has 3: nginx must setuid
    config["process"].update(terminal=False, args=["/usr/sbin/nginx"],
                             capabilities={"bounding": caps, "effective": caps, "permitted": caps})
    namespaces = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
    config["linux"]["namespaces"] = [*namespaces, {"type": "network", "path": f"/run/netns/{NETNS}"},
                                     {"type": "cgroup"}]
    config["linux"]["cgroupsPath"] = f"/nsbox-bench-{TAG}/runc"
    (path / "config.json").write_text(json.dumps(config))
    return path


def runc_once(bundle: Path, state_root: str) -> float:
    name = f"nbxr{secrets.token_hex(3)}"
    start = time.perf_counter()
    try:
        subprocess.run(["runc", "--root", state_root, "run", "-d", "--bundle", str(bundle), name], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return first_200(start)
    finally:
        subprocess.run(["runc", "--root", state_root, "delete", "-f", name], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def remove_runc_cgroups() -> None:
    for root in Path("/sys/fs/cgroup").iterdir():
        top = root / f"nsbox-bench-{TAG}"
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) \
                if top.exists() else []:
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="nsbox-bench-"))
    results: dict[str, float] = {}
    try:
        rootfs = nginx_rootfs(work / "rootfs")
        network_up()
        nsbox_once(rootfs)  # warm up
        results["nsbox_container module"] = statistics.median(nsbox_once(rootfs) for _run in range(RUNS)) * 1000

        # What any Ansible module process costs here before it does anything (interpreter, imports).
        def baseline() -> float:
            start = time.perf_counter()
            run_module("nsbox_container_info", {"name": "nbx-none"})
            return time.perf_counter() - start

        results["(module process baseline: _info)"] = statistics.median(baseline() for _run in range(RUNS)) * 1000
        if shutil.which("runc"):
            bundle = runc_bundle(rootfs, work)
            state_root = str(work / "runc-state")
            runc_once(bundle, state_root)
            results["runc run -d"] = statistics.median(runc_once(bundle, state_root) for _run in range(RUNS)) * 1000
    finally:
        network_down()
        remove_runc_cgroups()
        shutil.rmtree(work, ignore_errors=True)
    print(f"start to first HTTP 200 from nginx, median of {RUNS} runs (ms)")
    anchor = results.get("runc run -d")
    for name, value in results.items():
        ratio = f"{value / anchor:.2f}x runc" if anchor else ""
        print(f"  {name:34s} {value:8.1f}   {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
