"""nsbox_container against the real kernel: the isolation seen from inside a busybox container, the
escape battery, start errors, idempotence, drift, supervision and cleanup.

Every container has a unique name and is removed by a finalizer that asserts no process and no state
is left. Probes run inside the container and write to its log, which the test reads."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import capabilities, mountinfo, rootfs
from container_helpers import processes_of, remove_container, state_of, wait_for, wait_for_log
from harness import COLLECTION_ROOT, four_runs, run_module, run_playbook
from rootfs_builder import busybox_rootfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")

FILES = Path(__file__).parent / "files"
PLAYBOOKS = COLLECTION_ROOT / "tests" / "integration" / "playbooks"
DOCKER_CAPS = capabilities.mask(capabilities.DOCKER_DEFAULT)


@pytest.fixture(scope="module")
def busybox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rootfs") / "busybox"
    busybox_rootfs(root)
    (root / "nsbox-marker").write_text("inside\n")
    escape = root / "escape"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(escape), str(FILES / "chroot_escape.c")], check=True)
    return root


@pytest.fixture
def container(unique_name):
    """A unique container name; the container is removed afterwards and nothing may be left."""
    names = []

    def make() -> str:
        names.append(unique_name("nbtc"))
        return names[-1]
    yield make
    for name in names:
        remove_container(name)


def _params(name: str, rootfs: Path, script: str, **extra):
    return {"name": name, "rootfs": str(rootfs), "command": ["/bin/sh", "-c", script], "stop_timeout": 1, **extra}


PROBE = r"""
echo "pid=$$"
echo "hostname=$(hostname)"
grep -E '^(Cap[A-Za-z]+|NoNewPrivs|Seccomp):' /proc/self/status
echo "dev=$(ls /dev | tr '\n' ' ')"
echo "pids=$(ls /proc | grep -c '^[0-9]')"
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "mountpoints=$(cut -d' ' -f5 /proc/self/mountinfo | sort | tr '\n' ' ')"
echo "cgroups=$(cut -d: -f3 /proc/self/cgroup | sort -u | tr '\n' ' ')"
echo "keys=$(wc -c < /proc/keys)"
echo "firmware=$(ls -A /sys/firmware | wc -l)"
echo "acpi=$(ls -A /proc/acpi 2>/dev/null | wc -l)"
try() { if "$@" >/dev/null 2>&1; then echo "ESCAPE-OK: $*"; else echo "refused: $*"; fi; }
try mount -t tmpfs none /mnt
try mount --bind / /mnt
try unshare -m true
try unshare -U true
try unshare -n true
try pivot_root /tmp /tmp
try sh -c 'cat /proc/kcore | head -c 1 | grep -q .'
try sh -c 'echo 1 > /proc/sys/kernel/domainname'
try sh -c 'echo 0 > /proc/sys/vm/overcommit_memory'
try sh -c 'echo x > /sys/kernel/uevent_helper'
try sh -c 'echo c > /proc/sysrq-trigger'
try mknod /tmp/disk b 8 0
try mknod /tmp/tty0 c 4 0
try mknod /tmp/mem c 1 1
try insmod /nonexistent.ko
try sh -c 'test "$(/escape /bin/cat /nsbox-marker 2>/dev/null)" != inside'
try sh -c 'test -e /work || test -e /proc/1/root/work'
mknod /tmp/null c 1 3 && echo "mknod-null=ok"
echo DONE
exec sleep 1000
"""


def _values(log: str) -> dict[str, str]:
    """key=value and Key:<tab>value lines of a probe's output (first occurrence wins)."""
    values: dict[str, str] = {}
    for line in log.splitlines():
        match = re.match(r"^([A-Za-z][\w-]*)(?:=|:\s)(.*)$", line)
        if match:
            values.setdefault(match.group(1), match.group(2).strip())
    return values


def test_default_isolation_and_escape_battery(busybox: Path, container):
    name = container()
    params = _params(name, busybox, PROBE, hostname="probe")
    results = four_runs("nsbox_container", params)
    pid = results[1]["pid"]
    assert results[3]["pid"] == pid and results[3]["status"] == "running"
    log = wait_for_log(results[1]["log_path"], "DONE")
    values = _values(log)
    assert "ESCAPE-OK" not in log, log
    assert values["pid"] == "1" and values["hostname"] == "probe"
    for key in ("CapPrm", "CapEff", "CapBnd"):
        assert key in values, log
        assert int(values[key], 16) == DOCKER_CAPS, (key, values[key])
    assert int(values["CapInh"], 16) == 0 and int(values["CapAmb"], 16) == 0
    assert values["NoNewPrivs"] == "1" and values["Seccomp"] == "2"
    assert values["dev"].split() == sorted(["fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr",
                                            "stdin", "stdout", "tty", "urandom", "zero"])
    assert int(values["pids"]) <= 4, "host processes are visible"
    assert values["ifaces"].split() == ["lo"], "host interfaces are visible"
    assert values["cgroups"].split() == ["/"], "the cgroup namespace does not hide the host's tree"
    assert values["keys"] == "0" and values["firmware"] == "0" and values["acpi"] == "0"
    assert "mknod-null=ok" in log  # the standard character devices may still be made
    points = set(values["mountpoints"].split())
    expected = {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/proc/sys"}
    # Masked and read-only paths are covered where this kernel has them.
    expected |= {p for p in rootfs.MASKED_PATHS + rootfs.READONLY_PATHS if os.path.exists(p)}
    assert expected <= points, expected - points
    assert not any(p.startswith(("/work", "/tmp/pytest", "/run/nsbox")) for p in points), points

    # Seen from the host: PID 1 is in its own namespaces and exec'd with stdio only.
    wait_for(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep", what="exec of sleep")
    for ns in ("mnt", "pid", "uts", "ipc", "cgroup", "net"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert sorted(os.listdir(f"/proc/{pid}/fd"), key=int) == ["0", "1", "2"]
    mounts = {m.mount_point: m for m in mountinfo.read(pid)}
    assert "ro" in mounts["/sys"].options and "ro" in mounts["/proc/sys"].options
    assert {"nosuid", "nodev", "noexec"} <= set(mounts["/proc"].options)
    assert mounts["/"].propagation == "private"
    # The host's mounts are untouched: nothing of the container appears in our mount table.
    assert not mountinfo.mounts_below(str(busybox))


def test_symlinked_proc_is_refused_and_leaves_nothing(tmp_path: Path, container):
    root = busybox_rootfs(tmp_path / "evil")
    host_target = tmp_path / "host-proc-target"
    host_target.mkdir()
    (root / "proc").rmdir()
    (root / "proc").symlink_to(str(host_target))
    name = container()
    result = run_module("nsbox_container", _params(name, root, "true"), expect_failure=True)
    assert "/proc as a symlink" in result["msg"], result["msg"]
    assert state_of(name) is None
    assert not mountinfo.mounts_below(str(tmp_path)) and not list(host_target.iterdir())


def test_symlinked_mount_destination_stays_inside(tmp_path: Path, container):
    """A mount destination reached through an absolute symlink lands inside the rootfs, never on the host."""
    root = busybox_rootfs(tmp_path / "tricky")
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (root / "data").symlink_to(str(host_dir))
    name = container()
    result = run_module("nsbox_container", _params(
        name, root, "echo hi > /data/inner/file; ls /data/inner; echo DONE; exec sleep 1000",
        mounts=[{"type": "tmpfs", "destination": "/data/inner", "size": "1m"}]))
    log = wait_for_log(result["log_path"], "DONE")
    assert "file" in log
    assert not list(host_dir.iterdir()), "the mount followed the symlink onto the host"
    assert (root / str(host_dir).lstrip("/") / "inner").is_dir()


def test_start_errors_are_module_errors(busybox: Path, container):
    name = container()
    missing = run_module("nsbox_container", {"name": name, "rootfs": str(busybox), "command": ["/no/such/binary"]},
                         expect_failure=True)
    assert "not found in the rootfs" in missing["msg"]
    not_in_path = run_module("nsbox_container", {"name": name, "rootfs": str(busybox), "command": ["nosuchcmd"]},
                             expect_failure=True)
    assert "not found in the container's PATH" in not_in_path["msg"]
    bad_user = run_module("nsbox_container", {"name": name, "rootfs": str(busybox), "command": ["true"],
                                              "user": "nosuchuser"}, expect_failure=True)
    assert "nosuchuser" in bad_user["msg"] and "/etc/passwd" in bad_user["msg"]
    bad_cap = run_module("nsbox_container", {"name": name, "rootfs": str(busybox), "command": ["true"],
                                             "cap_add": ["NET_WIZARD"]}, expect_failure=True)
    assert "unknown capability" in bad_cap["msg"]
    bad_sysctl = run_module("nsbox_container", {"name": name, "rootfs": str(busybox), "command": ["true"],
                                                "sysctls": {"vm.swappiness": 1}}, expect_failure=True)
    assert "not namespaced" in bad_sysctl["msg"]
    assert state_of(name) is None and not Path(missing["log_path"]).exists()


def test_user_caps_rlimits_sysctls_readonly(busybox: Path, container, tmp_path: Path):
    name = container()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "host.txt").write_text("from the host\n")
    script = ("cat /shared/host.txt; touch /shared/new 2>/dev/null && echo shared-rw=yes; "
              "grep -E '^(CapEff|CapBnd|Uid|Gid|Groups):' /proc/self/status; echo nofile=$(ulimit -n); "
              "echo somax=$(cat /proc/sys/net/core/somaxconn); touch /rootfile 2>/dev/null && echo rw=yes; "
              "touch /scratch/f && echo scratch=yes; pwd; echo DONE; exec sleep 1000")
    params = _params(name, busybox, script, user="nobody", groups=["root"], workdir="/tmp",
                     cap_drop=["NET_RAW"], cap_add=["NET_ADMIN"], rlimits={"nofile": "512:1024"},
                     sysctls={"net.core.somaxconn": 1000}, readonly_rootfs=True,
                     mounts=[{"type": "tmpfs", "destination": "/scratch", "options": ["nosuid", "nodev"]},
                             {"source": str(shared), "destination": "/shared", "options": ["ro"]}])
    result = four_runs("nsbox_container", params)[1]
    log = wait_for_log(result["log_path"], "DONE")
    values = _values(log)
    assert values["Uid"].split() == ["65534"] * 4 and values["Gid"].split() == ["65534"] * 4
    assert values["Groups"].split() == ["0", "65534"]
    assert int(values["CapEff"], 16) == 0  # a non-root user gets nothing, as in Docker
    wanted = set(capabilities.DOCKER_DEFAULT) - {"NET_RAW"} | {"NET_ADMIN"}
    assert int(values["CapBnd"], 16) == capabilities.mask(sorted(wanted))
    assert values["nofile"] == "512" and values["somax"] == "1000"
    assert "rw=yes" not in log and "scratch=yes" in log and "/tmp" in log.splitlines()
    assert "from the host" in log and "shared-rw=yes" not in log and not (shared / "new").exists()


def test_drift_death_stop_start_restart_absent(busybox: Path, container):
    name = container()
    params = _params(name, busybox, "exec sleep 1000")
    first = four_runs("nsbox_container", params)[1]
    # A changed spec recreates the container, and the diff says which keys changed.
    changed = dict(params, env={"COLOR": "blue"})
    check = run_module("nsbox_container", changed, check=True)
    real = run_module("nsbox_container", changed)
    assert check["changed"] and real["changed"] and check["diff"] == real["diff"]
    assert real["changed_keys"] == ["env"] and real["recreated"]
    assert real["pid"] != first["pid"] and not processes_of({"pid": first["pid"]})
    # A container that died is started again, and reported.
    os.kill(real["pid"], signal.SIGKILL)
    wait_for(lambda: (state_of(name) or {}).get("status") == "exited", what="the supervisor to record the exit")
    assert state_of(name)["exit_code"] == 137
    revived = four_runs("nsbox_container", changed)[1]
    assert revived["was"]["status"] == "exited" and revived["was"]["exit_code"] == 137
    # stopped: stop signal, then SIGKILL after stop_timeout (sh as PID 1 ignores SIGTERM).
    stopped = four_runs("nsbox_container", {"name": name, "state": "stopped", "stop_timeout": 0.5})
    assert stopped[1]["status"] == "stopped" and stopped[1]["pid"] is None
    assert not processes_of({"pid": revived["pid"]})
    started = four_runs("nsbox_container", changed)[1]
    restarted = run_module("nsbox_container", dict(changed, state="restarted"))
    assert restarted["changed"] and restarted["pid"] != started["pid"]
    log_path = restarted["log_path"]
    absent = four_runs("nsbox_container", {"name": name, "state": "absent", "stop_timeout": 0})
    assert absent[1]["status"] == "absent" and state_of(name) is None and not Path(log_path).exists()
    assert not processes_of({"pid": restarted["pid"], "supervisor_pid": restarted["state"]["supervisor_pid"]})


def test_restart_policy_always_and_on_failure(busybox: Path, container):
    name = container()
    result = run_module("nsbox_container", _params(name, busybox, "exec sleep 1000", restart_policy="always"))
    first = result["pid"]
    os.kill(first, signal.SIGKILL)
    state = wait_for(lambda: (s := state_of(name)) and s["status"] == "running" and s["pid"] != first and s,
                     what="the container to come back")
    assert state["restart_count"] == 1 and state["exit_code"] == 137
    again = run_module("nsbox_container", _params(name, busybox, "exec sleep 1000", restart_policy="always"))
    assert not again["changed"] and again["pid"] == state["pid"]

    failing = container()
    run_module("nsbox_container", _params(failing, busybox, "exit 3", restart_policy="on-failure:2"))
    final = wait_for(lambda: (s := state_of(failing)) and s["status"] == "exited" and s, what="retries to end")
    assert final["restart_count"] == 2 and final["exit_code"] == 3


def test_stopped_records_a_created_container_then_started(busybox: Path, container):
    name = container()
    params = _params(name, busybox, "exec sleep 1000", state="stopped")
    created = four_runs("nsbox_container", params)[1]
    assert created["status"] == "created" and created["pid"] is None
    assert state_of(name)["spec"]["argv"] == ["/bin/sh", "-c", "exec sleep 1000"]
    started = four_runs("nsbox_container", dict(params, state="started"))[1]
    assert started["status"] == "running" and processes_of(started["state"])


def test_signal_is_delivered(busybox: Path, container):
    name = container()
    script = "trap 'echo got-hup' HUP; echo READY; while true; do sleep 0.1; done"
    params = _params(name, busybox, script)
    result = run_module("nsbox_container", params)
    wait_for_log(result["log_path"], "READY")
    check = run_module("nsbox_container", dict(params, signal="HUP"), check=True)
    sent = run_module("nsbox_container", dict(params, signal="HUP"))
    assert check["changed"] and sent["changed"] and sent["pid"] == result["pid"]
    wait_for_log(result["log_path"], "got-hup")


def test_rootfs_left_clean(tmp_path: Path, container):
    """After absent, nothing of the container is mounted anywhere and the rootfs can be deleted."""
    root = busybox_rootfs(tmp_path / "clean")
    name = container()
    run_module("nsbox_container", _params(name, root, "exec sleep 1000"))
    run_module("nsbox_container", {"name": name, "state": "absent", "stop_timeout": 0})
    assert not mountinfo.mounts_below(str(root))
    shutil.rmtree(root)


def test_through_ansible_playbook(busybox: Path, container):
    name = container()
    proc = run_playbook(PLAYBOOKS / "nsbox_container.yml", "-e", f"rootfs={busybox}", "-e", f"name={name}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    assert state_of(name) is None


def test_info_lists_status_pids_and_exit_codes(busybox: Path, container):
    running, ended = container(), container()
    started = run_module("nsbox_container", _params(running, busybox, "exec sleep 1000", cgroup=None))
    run_module("nsbox_container", _params(ended, busybox, "exit 7"))
    wait_for(lambda: (state_of(ended) or {}).get("status") == "exited", what="the exit to be recorded")
    listing = {c["name"]: c for c in run_module("nsbox_container_info", {})["containers"]}
    assert listing[running]["status"] == "running" and listing[running]["pid"] == started["pid"]
    assert listing[running]["netns"] == "private" and listing[running]["rootfs"] == str(busybox)
    assert listing[ended]["status"] == "exited" and listing[ended]["exit_code"] == 7 and listing[ended]["pid"] is None
    one = run_module("nsbox_container_info", {"name": ended})
    assert [c["name"] for c in one["containers"]] == [ended] and not one["changed"]
    # A recorded 'running' whose processes are gone (the supervisor killed too) is reported dead.
    os.kill(started["state"]["supervisor_pid"], signal.SIGKILL)
    os.kill(started["pid"], signal.SIGKILL)
    wait_for(lambda: run_module("nsbox_container_info", {"name": running})["containers"][0]["status"] == "dead",
             what="dead status")
    assert run_module("nsbox_container_info", {"name": "nbt-no-such"})["containers"] == []
