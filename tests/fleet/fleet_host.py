# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet hosts: separate "machines" on this one, each reached by Ansible over real SSH.

    fleet_host.py start NAME INDEX      start host NAME (must start with nbtfleet) at 10.251.INDEX.2
    fleet_host.py stop NAME             stop it and remove every trace of it
    fleet_host.py stop-all PREFIX       stop every host whose name starts with PREFIX
    fleet_host.py inventory PREFIX      print an Ansible inventory (YAML) of the running hosts
    fleet_host.py kill-sshd NAME        kill the host's sshd and its sessions (the host becomes unreachable)
    fleet_host.py revive NAME           start its sshd again
    fleet_host.py residue PREFIX        print what of the harness is left on this machine (nothing: exit 0)

A fleet host is a process tree that has its own network, mount, uts, ipc, pid and cgroup namespaces:

- network: a new netns; a veth pair nbtfleet<INDEX>h (this machine, 10.251.INDEX.1/30) <-> eth0
  (the host, 10.251.INDEX.2/30). No default route: the host reaches this machine and nothing else.
- mount: the machine's root filesystem seen through an overlay (lower: /, upper: a tmpfs of the
  host), so the host may write anywhere (/etc, /root, ...) without touching this machine; fresh
  tmpfs for /run (so /run/netns, /run/lock, /run/nsbox are its own), /tmp, /var/tmp, /var/lib/nsbox,
  /var/log/nsbox, /srv and /opt (the collection's overlays need an upper that is not itself an
  overlay); fresh proc, sysfs, devpts, mqueue and /dev/shm; pivot_root into it, the old root detached.
- uts: hostname NAME. ipc: its own. pid: a tiny init (this file, PID 1) that reaps orphans and runs
  sshd; when it dies, the kernel kills everything in the host, nested containers included.
- cgroup: a cgroup nbtfleet-NAME under each v1 hierarchy and the v2 tree of this machine; the host
  joins them all, then unshares its cgroup namespace and mounts fresh cgroup filesystems at
  /sys/fs/cgroup/<controller>, which show exactly those subtrees as their root. The roles run
  unchanged and cannot reach the machine's own groups.
- sshd (config, host key and authorized key in the host's /etc/ssh/NAME/) runs with a host key and
  an authorized key generated for this start; a known_hosts file is written for the controller
  (StrictHostKeyChecking stays on). kill-sshd and revive make a host unreachable and reachable again.

Every mount lives in the host's own mount namespace: none appears on this machine, and all go away
with the namespace. On this machine the host leaves /run/nbtfleet/NAME (keys, pid, log), its
cgroups and its veth; stop removes them.

Why a launcher over syscalls.py rather than nsbox.primitives.nsbox_container as a "system
container": nsbox_container is an application-container runtime by design, so the fleet host would
have to switch off most of what it does: it mounts /sys, /sys/fs/cgroup and /proc/sys read-only
(the roles must create cgroups and set sysctls inside), makes /dev a tmpfs with six devices, drops
capabilities and loads a seccomp profile that denies mount/unshare/setns (the roles need all of
them), and has no way to give the root an overlay over the machine's own / or to join one cgroup per
v1 hierarchy before unsharing the cgroup namespace. This file reuses its ctypes seam instead.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".ansible" / "collections"))

from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo, syscalls

PREFIX = "nbtfleet"
STATE_ROOT = Path("/run/nbtfleet")
CGROUP_ROOT = "/sys/fs/cgroup"
SSHD = "/usr/sbin/sshd"
# Private writable directories of a host (tmpfs in its mount namespace), with their sizes.
PRIVATE_DIRS = {"/run": "256m", "/tmp": "2g", "/var/tmp": "2g", "/var/lib/nsbox": "4g",
                "/var/log/nsbox": "256m", "/srv": "2g", "/opt": "1g"}
SSHD_CONFIG = """\
Port 22
ListenAddress {address}
HostKey /etc/ssh/{name}/ssh_host_ed25519_key
AuthorizedKeysFile /etc/ssh/{name}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PidFile /run/sshd.pid
MaxStartups 200
MaxSessions 200
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def address_of(index: int) -> tuple[str, str]:
    """(machine side, host side) addresses of fleet host INDEX."""
    if not 1 <= index <= 250:
        raise SystemExit(f"INDEX must be 1..250, not {index}")
    return f"10.251.{index}.1", f"10.251.{index}.2"


def link_of(index: int) -> str:
    return f"{PREFIX}{index}h"


def check_name(name: str) -> None:
    if not name.startswith(PREFIX) or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 40:
        raise SystemExit(f"a fleet host's name starts with {PREFIX} and has letters, digits, - and _: {name!r}")


# ---------------------------------------------------------------------------------------------- cgroups

def cgroup_mounts() -> list[mountinfo.Mount]:
    """This machine's cgroup hierarchies (v1 controllers, named ones, and v2) under /sys/fs/cgroup."""
    return [m for m in mountinfo.read() if m.fstype in ("cgroup", "cgroup2")
            and os.path.dirname(m.mount_point) == CGROUP_ROOT]


def host_cgroups(name: str) -> list[str]:
    return [os.path.join(m.mount_point, name) for m in cgroup_mounts()]


def make_cgroups(name: str) -> list[str]:
    made = []
    for path in host_cgroups(name):
        os.makedirs(path, exist_ok=True)
        made.append(path)
        if os.path.exists(os.path.join(path, "cpuset.cpus")):  # v1 cpuset: empty until given cpus and mems
            parent = os.path.dirname(path)
            for key in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(parent, key)) as src:
                    value = src.read().strip()
                with open(os.path.join(path, key), "w") as dst:
                    dst.write(value)
    return made


def _procs(path: str) -> list[int]:
    pids: list[int] = []
    for directory, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError), open(os.path.join(directory, "cgroup.procs")) as handle:
            pids += [int(line) for line in handle.read().split()]
    return pids


def remove_cgroup_tree(path: str, timeout: float = 15) -> None:
    """Kill what is left in a cgroup tree of ours, then remove it, deepest first."""
    if not os.path.isdir(path):
        return
    deadline = time.monotonic() + timeout
    while True:
        pids = _procs(path)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            for directory, _dirs, _files in sorted(os.walk(path), key=lambda item: -item[0].count("/")):
                os.rmdir(directory)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- the host's PID 1

def _mount(source, target, fstype=None, flags=0, data=None):
    syscalls.mount(source, target, fstype, flags, data)


def build_root(name: str, state: Path, address: str) -> None:
    """In the new mount namespace (as the host's PID 1): build the host's root and pivot into it."""
    _mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    stage = state / "root"
    rw = state / "rw"
    _mount("nbtfleet-rw", str(rw), "tmpfs", 0, "size=1g,mode=0700")
    os.makedirs(rw / "upper")
    os.makedirs(rw / "work")
    _mount("nbtfleet-root", str(stage), "overlay", 0, f"lowerdir=/,upperdir={rw}/upper,workdir={rw}/work")
    for directory, size in PRIVATE_DIRS.items():
        target = f"{stage}{directory}"
        os.makedirs(target, exist_ok=True)
        _mount(f"nbtfleet-{directory.strip('/').replace('/', '-')}", target, "tmpfs",
               syscalls.MS_NOSUID | syscalls.MS_NODEV, f"size={size},mode={'1777' if 'tmp' in directory else '0755'}")
    for directory in ("run/lock", "run/netns", "run/sshd"):
        os.makedirs(stage / directory, exist_ok=True)
    os.chmod(stage / "run/lock", 0o1777)
    # What `ip netns add` makes of /run/netns on first use (a shared mount of itself), made here so that a
    # fresh host looks like this machine and the residue check sees only what a deployment adds.
    _mount(str(stage / "run/netns"), str(stage / "run/netns"), None, syscalls.MS_BIND)
    syscalls.set_propagation(str(stage / "run/netns"), "shared")
    _mount("proc", str(stage / "proc"), "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    _mount("sysfs", str(stage / "sys"), "sysfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    cgroups = stage / "sys/fs/cgroup"
    _mount("tmpfs", str(cgroups), "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC, "mode=0755")
    for mount in cgroup_mounts():
        target = cgroups / os.path.basename(mount.mount_point)
        os.makedirs(target)
        options = ",".join(k if v is None else f"{k}={v}" for k, v in mount.super_options if k not in ("rw", "ro"))
        _mount("cgroup", str(target), mount.fstype, syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
               options or None)
    for entry in os.listdir(CGROUP_ROOT):  # the machine's links such as cpu,cpuacct -> cpu
        if os.path.islink(os.path.join(CGROUP_ROOT, entry)):
            os.symlink(os.readlink(os.path.join(CGROUP_ROOT, entry)), cgroups / entry)
    _mount("/dev", str(stage / "dev"), None, syscalls.MS_BIND | syscalls.MS_REC)
    _mount("devpts", str(stage / "dev/pts"), "devpts", syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
           "newinstance,ptmxmode=0666,mode=0620,gid=5")
    _mount(str(stage / "dev/pts/ptmx"), str(stage / "dev/ptmx"), None, syscalls.MS_BIND)
    _mount("shm", str(stage / "dev/shm"), "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777,size=256m")
    if os.path.isdir(stage / "dev/mqueue"):
        _mount("mqueue", str(stage / "dev/mqueue"), "mqueue", syscalls.MS_NOSUID | syscalls.MS_NODEV)
    # sshd's files of this start, in the host's own /etc (the overlay's upper).
    ssh = stage / "etc/ssh" / name
    os.makedirs(ssh, mode=0o700)
    for src, dst in (("ssh_host_ed25519_key", "ssh_host_ed25519_key"), ("client_key.pub", "authorized_keys")):
        shutil.copyfile(state / src, ssh / dst)
        os.chmod(ssh / dst, 0o600)
    (ssh / "sshd_config").write_text(SSHD_CONFIG.format(address=address, name=name))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(stage / "etc/nologin")
    (stage / "etc/hostname").write_text(name + "\n")
    os.chdir(stage)
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", syscalls.MNT_DETACH)
    os.chdir("/")
    syscalls.sethostname(name)


def init(name: str, state: Path, address: str, go: int) -> None:
    """PID 1 of the host: wait for the network, build the root, run sshd, reap everything."""
    comm = ctypes.create_string_buffer(b"nbtfleet-init")
    syscalls.prctl(syscalls.PR_SET_NAME, ctypes.addressof(comm))
    os.read(go, 1)
    os.close(go)
    build_root(name, state, address)
    children: dict[str, int | None] = {"sshd": None}
    config = f"/etc/ssh/{name}/sshd_config"  # the host's name in sshd's command line, for residue()

    def spawn_sshd() -> None:
        if children["sshd"] is None:
            children["sshd"] = os.spawnv(os.P_NOWAIT, SSHD, [SSHD, "-D", "-e", "-f", config])

    def on_usr1(_sig, _frame) -> None:
        spawn_sshd()

    def on_term(_sig, _frame) -> None:
        os._exit(0)  # the kernel kills every process left in the namespace

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    spawn_sshd()
    while True:
        try:
            pid, _status = os.wait()
        except ChildProcessError:  # no child left (sshd killed): wait for revive or stop
            signal.pause()
            continue
        if pid == children["sshd"]:
            children["sshd"] = None


# ---------------------------------------------------------------------------------------------- commands

def _run(*command: str) -> None:
    subprocess.run(list(command), check=True, capture_output=True, text=True)


def _in_host(pid: int, *command: str) -> None:
    _run("nsenter", "-t", str(pid), "-n", *command)


def keygen(path: Path, comment: str) -> None:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))


def wait_for_sshd(address: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, 22), timeout=1) as conn:
                if conn.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd at {address}:22 did not answer within {timeout} s")
        time.sleep(0.05)


def start(name: str, index: int) -> dict:
    check_name(name)
    outer, inner = address_of(index)
    link = link_of(index)
    state = STATE_ROOT / name
    if state.exists():
        raise SystemExit(f"{name} exists already ({state}); stop it first")
    if os.path.exists(f"/sys/class/net/{link}"):
        raise SystemExit(f"INDEX {index} is in use ({link} exists)")
    state.mkdir(parents=True)
    try:
        for directory in ("root", "rw"):
            (state / directory).mkdir()
        keygen(state / "ssh_host_ed25519_key", name)
        keygen(state / "client_key", f"controller@{name}")
        cgroups = make_cgroups(name)
        to_child, go = os.pipe()[::-1]
        pid_read, pid_write = os.pipe()
        log = os.open(state / "host.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        stage1 = os.fork()
        if stage1 == 0:  # stage 1: join the cgroups, unshare, fork PID 1
            try:
                os.close(to_child)
                os.close(pid_read)
                os.setsid()
                for path in cgroups:
                    with open(os.path.join(path, "cgroup.procs"), "w") as handle:
                        handle.write(str(os.getpid()))
                syscalls.unshare(syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC
                                 | syscalls.CLONE_NEWPID | syscalls.CLONE_NEWNET | syscalls.CLONE_NEWCGROUP)
                child = os.fork()
                if child == 0:
                    os.close(pid_write)
                    devnull = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(devnull, 0)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    try:
                        init(name, state, inner, go)
                    except BaseException as error:
                        print(f"fleet host {name}: {error}", file=sys.stderr, flush=True)
                    os._exit(1)
                os.write(pid_write, str(child).encode())
                os._exit(0)
            except BaseException as error:
                print(f"fleet host {name} stage 1: {error}", file=sys.stderr, flush=True)
                os._exit(1)
        os.close(go)
        os.close(pid_write)
        os.close(log)
        raw = os.read(pid_read, 32)
        os.close(pid_read)
        os.waitpid(stage1, 0)
        if not raw:
            raise RuntimeError(f"{name} did not start: {(state / 'host.log').read_text()}")
        pid = int(raw)
        (state / "pid").write_text(f"{pid}\n")
        (state / "index").write_text(f"{index}\n")
        (state / "pidns").write_text(os.readlink(f"/proc/{pid}/ns/pid") + "\n")
        _run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
        _run("ip", "addr", "add", f"{outer}/30", "dev", link)
        _run("ip", "link", "set", link, "up")
        _in_host(pid, "ip", "link", "set", "lo", "up")
        _in_host(pid, "ip", "addr", "add", f"{inner}/30", "dev", "eth0")
        _in_host(pid, "ip", "link", "set", "eth0", "up")
        os.write(to_child, b"g")
        os.close(to_child)
        try:
            wait_for_sshd(inner)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{(state / 'host.log').read_text()}") from None
        host_key = (state / "ssh_host_ed25519_key.pub").read_text().split()
        (state / "known_hosts").write_text(f"{inner} {host_key[0]} {host_key[1]}\n")
        return describe(name)
    except BaseException:
        stop(name)
        raise


def describe(name: str) -> dict:
    state = STATE_ROOT / name
    index = int((state / "index").read_text())
    return {
        "name": name,
        "address": address_of(index)[1],
        "controller_address": address_of(index)[0],
        "pid": int((state / "pid").read_text()),
        "private_key": str(state / "client_key"),
        "known_hosts": str(state / "known_hosts"),
    }


def processes_of(name: str) -> list[int]:
    """Every process of the host (those in its pid namespace)."""
    pidns = (STATE_ROOT / name / "pidns").read_text().strip()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == pidns:
                    found.append(int(entry))
    return found


def kill_init(name: str) -> None:
    """SIGKILL the host's PID 1 (the kernel then kills everything in the host)."""
    state = STATE_ROOT / name
    with contextlib.suppress(OSError, ValueError):
        pid = int((state / "pid").read_text())
        if os.readlink(f"/proc/{pid}/ns/pid") == (state / "pidns").read_text().strip():  # not a reused pid
            os.kill(pid, signal.SIGKILL)


def stop(name: str) -> None:
    check_name(name)
    state = STATE_ROOT / name
    kill_init(name)
    with contextlib.suppress(OSError, ValueError):
        if (state / "pidns").exists():
            deadline = time.monotonic() + 10
            while processes_of(name) and time.monotonic() < deadline:
                time.sleep(0.05)
    for path in host_cgroups(name):
        remove_cgroup_tree(path)
    with contextlib.suppress(OSError, ValueError):
        link = link_of(int((state / "index").read_text()))
        # It would go with the host's netns, but the kernel frees a netns asynchronously: delete it now.
        if os.path.exists(f"/sys/class/net/{link}"):
            subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/sys/class/net/{link}") and time.monotonic() < deadline:
            time.sleep(0.05)
    if state.exists():
        for mount in ("root", "rw"):
            if mountinfo.mount_at(str(state / mount)) is not None:  # never on the machine, but be sure
                syscalls.umount2(str(state / mount), syscalls.MNT_DETACH)
        shutil.rmtree(state)
    with contextlib.suppress(OSError):
        STATE_ROOT.rmdir()


def hosts(prefix: str) -> list[str]:
    if not prefix.startswith(PREFIX):
        raise SystemExit(f"PREFIX starts with {PREFIX}")
    if not STATE_ROOT.is_dir():
        return []
    return sorted(entry for entry in os.listdir(STATE_ROOT) if entry.startswith(prefix))


def stop_all(prefix: str) -> None:
    names = hosts(prefix)
    for name in names:  # all at once first: their namespaces go away in parallel
        kill_init(name)
    for name in names:
        stop(name)
    for mount in cgroup_mounts():  # groups of a host whose state went missing (a crashed start)
        for entry in os.listdir(mount.mount_point):
            if entry.startswith(prefix) and os.path.isdir(os.path.join(mount.mount_point, entry)):
                remove_cgroup_tree(os.path.join(mount.mount_point, entry))


def inventory(prefix: str, python: str | None = None) -> str:
    # The hosts see this machine's files, the virtualenv with the collection's Python requirements included.
    python = python or os.environ.get("NSBOX_PYTHON", "/usr/bin/python3")
    lines = ["# Written by tests/fleet/fleet_host.py: the fleet hosts running now.", "all:", "  hosts:"]
    for name in hosts(prefix):
        host = describe(name)
        lines += [
            f"    {name}:",
            f"      ansible_host: {host['address']}",
            "      ansible_user: root",
            "      ansible_port: 22",
            f"      ansible_ssh_private_key_file: {host['private_key']}",
            f"      ansible_ssh_common_args: >-\n        -o UserKnownHostsFile={host['known_hosts']}"
            " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o ConnectTimeout=5",
            f"      ansible_python_interpreter: {python}",
            "      ansible_pipelining: true",
            f"      fleet_controller_address: {host['controller_address']}",
        ]
    return "\n".join(lines) + "\n"


def kill_sshd(name: str) -> list[int]:
    """Kill every sshd of the host (listener and sessions): the controller loses it mid-run."""
    killed = []
    for pid in processes_of(name):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def revive(name: str) -> None:
    host = describe(name)
    os.kill(host["pid"], signal.SIGUSR1)
    wait_for_sshd(host["address"])


def residue(prefix: str) -> list[str]:
    """What of the harness is on this machine: state, links, cgroups, mounts, processes."""
    left = [f"state {STATE_ROOT / name}" for name in hosts(prefix)]
    left += [f"link {entry}" for entry in os.listdir("/sys/class/net") if entry.startswith(prefix)]
    for mount in cgroup_mounts():
        left += [f"cgroup {mount.mount_point}/{entry}" for entry in os.listdir(mount.mount_point)
                 if entry.startswith(prefix)]
    left += [f"mount {m.mount_point}" for m in mountinfo.read() if prefix in m.mount_point or prefix in m.source]
    left += [f"netns {entry}" for entry in os.listdir("/run/netns") if entry.startswith(prefix)] \
        if os.path.isdir("/run/netns") else []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if f"/etc/ssh/{prefix}" in cmdline or f"fleet_host.py start {prefix}" in cmdline:
                    left.append(f"process {entry} {cmdline.strip()}")
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start")
    p.add_argument("name")
    p.add_argument("index", type=int)
    for command in ("stop", "kill-sshd", "revive"):
        sub.add_parser(command).add_argument("name")
    for command in ("stop-all", "inventory", "residue"):
        p = sub.add_parser(command)
        p.add_argument("prefix", nargs="?", default=PREFIX)
        if command == "inventory":
            p.add_argument("--python", help="the hosts' Python (default $NSBOX_PYTHON or /usr/bin/python3)")
    args = parser.parse_args(argv)
    if args.command == "start":
        print(json.dumps(start(args.name, args.index)))
    elif args.command == "stop":
        stop(args.name)
    elif args.command == "stop-all":
        stop_all(args.prefix)
    elif args.command == "inventory":
        sys.stdout.write(inventory(args.prefix, args.python))
    elif args.command == "kill-sshd":
        print(json.dumps(kill_sshd(args.name)))
    elif args.command == "revive":
        revive(args.name)
    elif args.command == "residue":
        left = residue(args.prefix)
        print("\n".join(left) if left else "nothing left")
        return 1 if left else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
