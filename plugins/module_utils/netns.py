# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The netns module's logic: named network namespaces the way `ip netns` keeps them.

A named namespace is the namespace file of a thread bind-mounted on /run/netns/NAME. The thread
that makes it unshares its own network namespace and returns to the module's afterwards, so the
module's process never leaves the host's namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo, netlink, syscalls, sysctl
from ansible_collections.nsbox.primitives.plugins.module_utils.locking import object_lock
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError, kernel_error


def normalize_sysctls(values: dict[str, Any] | None) -> dict[str, str]:
    """Keys in dotted form, values as the kernel prints them (one space between fields)."""
    result: dict[str, str] = {}
    for key, value in (values or {}).items():
        name = str(key).strip().replace("/", ".")
        if not name.startswith("net.") or ".." in name or name.endswith("."):
            raise NsboxError(f"sysctl {key!r} is not a network-namespaced setting (those start with net.); set "
                             "others on the host (ansible.posix.sysctl) or per container", sysctl=str(key))
        if value is None:
            raise NsboxError(f"sysctl {name} has no value; give one, e.g. {name}: 1", sysctl=name)
        result[name] = sysctl.normalize(value)
    return result


def read_sysctls(ns: netlink.Namespace, names: list[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    with netlink.inside(ns.fd, ns.label):
        for name in names:
            try:
                with open(sysctl.proc_path(name)) as handle:
                    values[name] = sysctl.normalize(handle.read())
            except FileNotFoundError:
                values[name] = None
            except OSError as error:
                raise kernel_error(error, f"reading sysctl {name} in {ns.label}") from None
    return values


def fresh_sysctls(names: list[str]) -> dict[str, str | None]:
    """The values a new network namespace starts with, read in a throwaway one (gone when the thread leaves)."""
    if not names:
        return {}
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    values: dict[str, str | None] = {}
    try:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        try:
            for name in names:
                try:
                    with open(sysctl.proc_path(name)) as handle:
                        values[name] = sysctl.normalize(handle.read())
                except OSError:
                    values[name] = None
        finally:
            syscalls.setns(home, syscalls.CLONE_NEWNET, "the module's own network namespace")
    finally:
        os.close(home)
    return values


def write_sysctl(ns: netlink.Namespace, name: str, value: str) -> None:
    with netlink.inside(ns.fd, ns.label):
        try:
            with open(sysctl.proc_path(name), "w") as handle:
                handle.write(value)
        except OSError as error:
            raise kernel_error(error, f"setting sysctl {name}={value} in {ns.label}",
                               "Check the value against the kernel's ip-sysctl documentation") from None


def processes_in(ns: netlink.Namespace) -> list[int]:
    """Processes whose network namespace is this one."""
    wanted = ns.inode
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == wanted:
            found.append(int(entry))
    return sorted(found)


def describe(pids: list[int]) -> str:
    def comm(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/comm") as handle:
                return handle.read().strip()
        except OSError:
            return "?"
    shown = ", ".join(f"{pid} ({comm(pid)})" for pid in pids[:20])
    return shown + (f" and {len(pids) - 20} more" if len(pids) > 20 else "")


def _mount_point(path: str) -> mountinfo.Mount | None:
    return mountinfo.mount_at(path)


def ensure_run_dir(undo: Any) -> None:
    """/run/netns exists and is a mount point of its own with private propagation, so the namespace
    mounts below it are not copied into mount namespaces made later as propagating peers (the EBUSY
    that `ip netns delete` sometimes meets). An existing mount point is left as its owner set it."""
    if not os.path.isdir(netlink.NETNS_DIR):
        os.makedirs(netlink.NETNS_DIR, mode=0o755, exist_ok=True)
        undo.push(f"remove directory {netlink.NETNS_DIR}", lambda: _rmdir_if_empty(netlink.NETNS_DIR))
    if _mount_point(netlink.NETNS_DIR) is None:
        syscalls.mount(netlink.NETNS_DIR, netlink.NETNS_DIR, None, syscalls.MS_BIND)
        syscalls.set_propagation(netlink.NETNS_DIR, "private")


def _rmdir_if_empty(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def create_named(name: str, undo: Any) -> None:
    path = netlink.netns_path(name)
    # Runs for different names may race to make /run/netns a mount point; only one may do it.
    with object_lock("netns-dir", netlink.NETNS_DIR):
        ensure_run_dir(undo)
    if not os.path.lexists(path):
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        undo.push(f"remove {path}", lambda: os.unlink(path))
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        try:
            syscalls.mount("/proc/thread-self/ns/net", path, None, syscalls.MS_BIND)
        finally:
            syscalls.setns(home, syscalls.CLONE_NEWNET, "the module's own network namespace")
    finally:
        os.close(home)
    undo.push(f"unmount {path}", lambda: syscalls.umount2(path, syscalls.MNT_DETACH))
    syscalls.set_propagation(path, "private")


def remove_named(name: str) -> None:
    path = netlink.netns_path(name)
    with contextlib.suppress(FileNotFoundError):
        # A lazy detach never fails with EBUSY; the namespace lives on only while something holds it.
        if _mount_point(path) is not None:
            syscalls.umount2(path, syscalls.MNT_DETACH)
        os.unlink(path)


def kill_processes(ns: netlink.Namespace, timeout: float = 10.0) -> list[int]:
    victims: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        remaining = processes_in(ns)
        if not remaining:
            return sorted(victims)
        if time.monotonic() > deadline:
            raise NsboxError(f"processes {describe(remaining)} are still in {ns.label} {timeout:.0f} s after SIGKILL "
                             "(uninterruptible sleep?); try again", pids=remaining)
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        victims.update(remaining)
        time.sleep(0.02)


class NetnsManager(Manager):
    lock_kind = "netns"

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.name = str(self.params["name"])
        self.path = netlink.netns_path(self.name)
        self.ns: netlink.Namespace | None = None

    def lock_name(self) -> str:
        # Called inside execute(), so a bad name is reported like any other error.
        return netlink.check_netns_name(self.params["name"], "name")

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.ns is not None:
                self.ns.close()

    # -- present --------------------------------------------------------------------------------

    def present(self) -> None:
        sysctls = normalize_sysctls(self.params["sysctls"])
        loopback = self.params["loopback"]
        self.ns = netlink.open_named(self.name)
        if self.ns is None:
            self._refuse_foreign_file()
            wanted: dict[str, Any] = {"exists": True}
            if loopback:
                wanted["loopback"] = "up"
            if sysctls:
                wanted["sysctls"] = sysctls
            # Known before anything is made: a key a new namespace lacks fails the same in check mode.
            self._refuse_unknown([k for k, v in fresh_sysctls(list(sysctls)).items() if v is None])
            self.diff.add("netns", {"exists": False}, wanted)
            if self.check_mode:
                self._report(True, sysctls)
                return
            try:
                create_named(self.name, self.undo)
            except OSError as error:
                raise kernel_error(error, f"creating network namespace {self.name} at {self.path}") from None
            self.ns = netlink.open_named(self.name)
            if self.ns is None:
                raise NsboxError(f"network namespace {self.name} was mounted at {self.path} but cannot be opened "
                                 "again", path=self.path)
            if loopback:
                self._loopback_up(record=False)
            for key, value in sysctls.items():
                write_sysctl(self.ns, key, value)
            self._report(True, read_sysctls(self.ns, list(sysctls)))
            return

        current = read_sysctls(self.ns, list(sysctls))
        self._refuse_unknown([k for k, v in current.items() if v is None])
        if loopback:
            self._loopback_up(record=True)
        changed = {k: v for k, v in sysctls.items() if current[k] != v}
        if changed:
            self.diff.add("sysctls", {k: current[k] for k in changed}, changed)
            if not self.check_mode:
                for key, value in changed.items():
                    write_sysctl(self.ns, key, value)
        effective = {**current, **changed} if self.check_mode else read_sysctls(self.ns, list(sysctls))
        self._report(True, effective)

    def _refuse_foreign_file(self) -> None:
        if not os.path.lexists(self.path):
            return
        if os.path.islink(self.path) or not os.path.isfile(self.path) or os.path.getsize(self.path):
            raise NsboxError(f"{self.path} exists but is not a network namespace (nor the empty file a namespace is "
                             "mounted on); move it away", path=self.path)
        mount = _mount_point(self.path)
        if mount is not None:
            raise NsboxError(f"{self.path} is a mount of {mount.fstype} ({mount.source}), not a network namespace; "
                             "unmount it first", path=self.path)

    def _refuse_unknown(self, unknown: list[str]) -> None:
        if unknown:
            raise NsboxError(f"sysctl {', '.join(unknown)} does not exist in network namespace {self.name}: the "
                             "kernel lacks that feature or does not keep it per namespace (see "
                             "/proc/sys/net inside it)", sysctl=unknown)

    def _loopback_up(self, record: bool) -> None:
        lo = netlink.get_link(self.ns, "lo")
        if lo is None:
            raise NsboxError(f"network namespace {self.name} has no loopback interface", path=self.path)
        if record:
            self.diff.add("loopback", lo.link_state, "up")
        if not lo.up and not self.check_mode:
            netlink.set_link(self.ns, lo.index, f"lo in netns {self.name}", state="up")

    # -- absent ---------------------------------------------------------------------------------

    def absent(self) -> None:
        self.ns = netlink.open_named(self.name)
        if self.ns is None:
            if os.path.lexists(self.path):
                self._refuse_foreign_file()
                # An empty file left by an interrupted creation: nothing lives in it.
                self.diff.add("netns", {"exists": False, "stale_file": self.path}, {"exists": False})
                if not self.check_mode:
                    os.unlink(self.path)
            self._report(False, {})
            return
        pids = processes_in(self.ns)
        if pids and not self.params["kill"]:
            raise NsboxError(f"network namespace {self.name} still holds processes {describe(pids)}; stop them, or "
                             "set kill: true to SIGKILL them before the namespace is removed", pids=pids,
                             name=self.name, path=self.path)
        self.diff.add("netns", {"exists": True}, {"exists": False})
        killed = pids
        if pids:
            self.diff.add("killed", [], pids)
        if not self.check_mode:
            if pids:
                killed = kill_processes(self.ns)
            self.ns.close()
            self.ns = None
            try:
                remove_named(self.name)
            except OSError as error:
                raise kernel_error(error, f"removing network namespace {self.name}") from None
        self._report(False, {}, killed=killed)

    # -- result ---------------------------------------------------------------------------------

    def _report(self, exists: bool, sysctls: dict[str, Any], **extra: Any) -> None:
        self.result.update(name=self.name, path=self.path, state=self.params["state"], exists=exists,
                           sysctls=sysctls, **extra)
