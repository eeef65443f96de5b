"""Start-to-exit latency of a container running /bin/true on one busybox rootfs: nsbox against runc
and crun (Debian's packages), in one run, with ratios.

    tools/run-bench.sh bench/container_start.py        (NSBOX_BENCH_RUNS=N, default 30)

What is timed, each the median of N runs:
* runc / crun: `X run` of a bundle (new pid, net, ipc, uts, mount and cgroup namespaces, an absolute
  cgroupsPath under a group made for the bench) until it exits; their generated specs load no seccomp.
* nsbox in-process: launcher.launch() (fork, namespaces, cgroup join, rootfs, pivot_root, caps,
  no_new_privs, seccomp, exec) plus waiting for PID 1, from a process that already imported it:
  the runtime's own cost, comparable to runc's Go binary being started already compiled.
* nsbox fresh interpreter: the same from a new `python -I` process (what a CLI would pay).
* nsbox module: the nsbox_container module (an Ansible module process, supervisor fork, state) from
  start to `running` reported, not counting the exit.

crun 1.8 refuses this host's hybrid cgroup layout, so it runs in a private mount namespace with
/sys/fs/cgroup/unified unmounted. Every cgroup, bundle and container made here is removed at the end.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / ".ansible" / "collections"))

from ansible_collections.nsbox.primitives.plugins.module_utils import (
    container_spec,
    launcher,
    syscalls,
)
from harness import run_module
from rootfs_builder import busybox_rootfs

RUNS = int(os.environ.get("NSBOX_BENCH_RUNS", "30"))
TAG = f"nsbox-bench-{secrets.token_hex(3)}"
CGROUP_ROOTS = [p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir() and (p / "cgroup.procs").exists()]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(action, runs: int = RUNS) -> list[float]:
    samples = []
    action()  # warm the page cache and the binaries
    for _run in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return samples


def bundle(rootfs: Path, runtime: str, directory: Path) -> Path:
    path = directory / f"bundle-{runtime}"
    path.mkdir()
    subprocess.run([runtime, "spec"], cwd=path, check=True)
    config = json.loads((path / "config.json").read_text())
    config["root"] = {"path": str(rootfs), "readonly": False}
    config["process"].update(terminal=False, args=["/bin/true"])
    config["linux"]["namespaces"].append({"type": "cgroup"})
    config["linux"]["cgroupsPath"] = f"/{TAG}/{runtime}"
    (path / "config.json").write_text(json.dumps(config))
    return path


def run_runtime(runtime: str, path: Path, state_root: str) -> None:
    name = f"nbx{secrets.token_hex(4)}"
    subprocess.run([runtime, "--root", state_root, "run", "--bundle", str(path), name], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def crun_in_private_mount_ns(path: Path, state_root: str) -> list[float]:
    """Fork a child that hides the cgroup2 tree crun 1.8 cannot cope with, and time crun there."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(read)
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            syscalls.umount2("/sys/fs/cgroup/unified", syscalls.MNT_DETACH)
            samples = timed(lambda: run_runtime("crun", path, state_root))
            os.write(write, json.dumps(samples).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.waitpid(child, 0)
    return json.loads(data)


def nsbox_spec(rootfs: Path, cgroup: str | None) -> dict:
    return container_spec.build({"name": f"nbx{secrets.token_hex(3)}", "state": "started", "rootfs": str(rootfs),
                                 "command": ["/bin/true"], "cgroup": cgroup, "log_path": "/dev/null"})


def nsbox_in_process(spec: dict) -> None:
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    log = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
    try:
        pid = launcher.launch(spec, log)
        os.waitpid(pid, 0)
    finally:
        os.close(log)


FRESH = """
import json, os, sys
sys.path.insert(0, {collections!r})
from ansible_collections.nsbox.primitives.plugins.module_utils import launcher, syscalls
syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
log = os.open("/dev/null", os.O_WRONLY)
os.waitpid(launcher.launch(json.loads(sys.argv[1]), log), 0)
"""


def make_cgroup() -> str:
    path = f"{TAG}/nsbox"
    run_module("cgroup2", {"path": path, "pids_max": 10000})
    return path


def remove_cgroups() -> None:
    with contextlib.suppress(Exception):
        run_module("cgroup2", {"path": f"{TAG}/nsbox", "state": "absent", "kill": True})
    for root in CGROUP_ROOTS:
        top = root / TAG
        if top.exists():
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="nsbox-bench-"))
    results: dict[str, float] = {}
    module_name = f"nbx{secrets.token_hex(3)}"
    try:
        rootfs = busybox_rootfs(work / "rootfs")
        state_root = str(work / "runtime-state")
        cgroup = make_cgroup()
        if shutil.which("runc"):
            runc_bundle = bundle(rootfs, "runc", work)
            results["runc run"] = median_ms(timed(lambda: run_runtime("runc", runc_bundle, state_root)))
        if shutil.which("crun"):
            results["crun run"] = median_ms(crun_in_private_mount_ns(bundle(rootfs, "crun", work), state_root))
        spec = nsbox_spec(rootfs, cgroup)
        results["nsbox launch (in-process)"] = median_ms(timed(lambda: nsbox_in_process(spec)))
        code = FRESH.format(collections=str(ROOT / ".ansible" / "collections"))
        argument = json.dumps(spec)
        results["nsbox launch (fresh python -I)"] = median_ms(timed(lambda: subprocess.run(
            [sys.executable, "-I", "-c", code, argument], check=True)))
        params = {"name": module_name, "rootfs": str(rootfs), "command": ["/bin/true"], "cgroup": cgroup}

        def module_start() -> None:
            run_module("nsbox_container", dict(params, state="restarted"))
        results["nsbox_container module (restarted)"] = median_ms(timed(module_start, max(5, RUNS // 3)))
    finally:
        with contextlib.suppress(Exception):
            run_module("nsbox_container", {"name": module_name, "state": "absent", "stop_timeout": 0})
        remove_cgroups()
        shutil.rmtree(work, ignore_errors=True)
    print(f"start-to-exit of /bin/true, median of {RUNS} runs (ms); this host: {os.cpu_count()} CPUs")
    anchors = {k: v for k, v in results.items() if k.split()[0] in ("runc", "crun")}
    for name, value in results.items():
        ratios = "  ".join(f"{value / anchor:.2f}x {anchor_name.split()[0]}" for anchor_name, anchor in anchors.items())
        print(f"  {name:40s} {value:8.1f}   {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
