# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Starting a container the way runc does, in three processes:

* the caller (the supervisor) forks stage 1 and waits;
* stage 1 joins the cgroup, a named network namespace, optionally a new user namespace (whose id maps
  the caller writes), then unshares mount, pid, uts, ipc, cgroup (and net) namespaces and forks
  stage 2, the container's PID 1, reports its pid and exits (the subreaper caller inherits PID 1);
* stage 2 builds the root filesystem, pivots into it, drops to the spec's user and capabilities,
  sets no_new_privs and seccomp last, closes every descriptor but stdio and execs the payload.

Any failure before the exec comes back to the caller as a message on a close-on-exec pipe, so the
module can report "executable not found" instead of leaving a dead container. Nothing of the
runtime runs inside the container's namespaces once the payload runs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import stat
import traceback
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import (
    capabilities,
    cgroups,
    cgroups_v1,
    cgroups_v2,
    devices,
    namespaces,
    passwd,
    rootfs,
    seccomp,
    syscalls,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

VIEW_ROOT = "/run/nsbox/rootfs-views"
# Imported now, not on first use: cgroups loads these lazily, and the supervisor lives on after
# Ansible removed the module's files (a later import would fail).
_PRELOADED = (cgroups_v1, cgroups_v2)


class LaunchError(Exception):
    """The container did not get to exec its payload; the message says why."""


# -- the caller's side ---------------------------------------------------------------------------

def launch(spec: dict[str, Any], log_fd: int) -> int:
    """Start the container of spec with stdout/stderr on log_fd; returns the host pid of its PID 1
    once the payload has been exec'd. The caller must be a child subreaper (it inherits PID 1)."""
    cgroup = None
    if spec.get("cgroup"):
        cgroup = cgroups.open_cgroup(spec["cgroup"], root=spec.get("cgroup_root"))
        if not cgroup.exists():
            raise LaunchError(f"cgroup {spec['cgroup']} does not exist; create it with nsbox.primitives.cgroup2")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    error_read, error_write = os.pipe2(os.O_CLOEXEC)
    stage1 = os.fork()
    if stage1 == 0:
        ours.close()
        os.close(error_read)
        try:
            _stage1(spec, cgroup, theirs, error_write, log_fd)
        except BaseException as error:  # report anything, then die: never return into the caller's code
            _report(error_write, error)
        os._exit(1)
    theirs.close()
    os.close(error_write)
    pid = None
    attached: list[str] = []
    try:
        pid = _talk_to_stage1(spec, ours, stage1, attached)
        _wait(stage1)
        message = _read_all(error_read)
    finally:
        ours.close()
        os.close(error_read)
        for path in attached:
            # The container holds its own copy; the host's goes as soon as the container ran (or failed).
            with contextlib.suppress(OSError):
                syscalls.umount2(path, syscalls.MNT_DETACH)
            with contextlib.suppress(OSError):
                os.rmdir(path)
    if message:
        if pid:
            _wait(pid)
        else:
            with contextlib.suppress(ChildProcessError):
                _wait(stage1)
        raise LaunchError(message)
    if pid is None:
        raise LaunchError("the container's first process ended before it reported its pid")
    return pid


def _talk_to_stage1(spec: dict[str, Any], sock: socket.socket, stage1: int, attached: list[str]) -> int | None:
    reader = sock.makefile("rb")
    userns = spec.get("user_namespace")
    pid = None
    for raw in reader:
        line = raw.decode().strip()
        if line == "userns" and userns:
            try:
                namespaces.write_id_maps(stage1, userns["host_uid"], userns["host_gid"], userns["size"])
            except OSError as error:
                sock.sendall(f"error writing the user namespace id maps: {error}\n".encode())
                continue
            if not userns.get("idmap_rootfs"):
                sock.sendall(b"mapped\n")
                continue
            try:
                view = _idmapped_rootfs(spec, stage1)
            except LaunchError as error:
                sock.sendall(f"{error}\n".encode())
                continue
            attached.append(view)
            sock.sendall(f"mapped {view}\n".encode())
        elif line.startswith("pid "):
            pid = int(line.split()[1])
    reader.close()
    return pid


def _idmapped_rootfs(spec: dict[str, Any], stage1: int) -> str:
    """An idmapped view of the rootfs, in which files owned by host ids 0.. appear to the container's
    user namespace as its ids 0..: the image stays owned by root on disk and needs no chown.

    Only a host-privileged process may make it, and a mount namespace owned by the container's user
    namespace may not attach a tree from outside, so it is attached here, at a private mount point
    under the state directory, before stage 1 copies the mount table; the caller detaches it after."""
    # Container root is an unmapped stranger to host-owned directories: every parent of the view
    # must be searchable by others (0711, nothing listable), unlike the private state directory.
    view = os.path.join(VIEW_ROOT, spec["name"])
    for directory in (os.path.dirname(VIEW_ROOT), VIEW_ROOT, view):
        os.makedirs(directory, mode=0o711, exist_ok=True)
        mode = os.stat(directory).st_mode & 0o7777
        if mode & 0o011 != 0o011:
            os.chmod(directory, mode | 0o011)  # add search for group and others; take nothing away
    try:
        tree = syscalls.open_tree(spec["rootfs"], syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC
                                  | syscalls.AT_RECURSIVE)
        userns = os.open(f"/proc/{stage1}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.mount_setattr("", attr_set=syscalls.MOUNT_ATTR_IDMAP, userns_fd=userns,
                                   flags=syscalls.AT_EMPTY_PATH | syscalls.AT_RECURSIVE, dirfd=tree)
            syscalls.move_mount(tree, view)
        finally:
            os.close(userns)
            os.close(tree)
        syscalls.mount(None, view, None, syscalls.MS_PRIVATE)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.rmdir(view)
        raise LaunchError(f"an idmapped mount of the rootfs {spec['rootfs']} failed ({error}); its filesystem "
                          "may not support idmapped mounts: set user_namespace.idmap_rootfs=false and shift "
                          "the owners of the rootfs files by host_uid instead") from None
    return view


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks).decode(errors="replace").strip()
        chunks.append(chunk)


def _report(fd: int, error: BaseException) -> None:
    if isinstance(error, (LaunchError, rootfs.RootfsError, passwd.UserError, NsboxError)):
        message = str(error)
    elif isinstance(error, OSError):
        message = f"{error}"
    else:
        message = f"unexpected error while starting the container: {error!r}\n{traceback.format_exc()}"
    with contextlib.suppress(OSError):
        os.write(fd, message.encode())


# -- stage 1: namespaces ---------------------------------------------------------------------------

def _stage1(spec: dict[str, Any], cgroup: Any, sock: socket.socket, error_fd: int, log_fd: int) -> None:
    # The cgroup first: every process of the container, PID 1 included, starts inside it, and the
    # cgroup namespace made below has it as its root.
    if cgroup is not None:
        cgroup.add_process(os.getpid())
    # Before a user namespace: joining a network namespace needs privilege over its owner.
    namespaces.join_named_netns(spec["netns"])
    view = None
    if spec.get("user_namespace"):
        syscalls.unshare(syscalls.CLONE_NEWUSER)
        sock.sendall(b"userns\n")
        reply = sock.recv(4096).decode(errors="replace").strip()
        if reply.split(" ", 1)[0] != "mapped":
            raise LaunchError(reply or "the supervisor did not map the ids")
        view = reply.split(" ", 1)[1] if " " in reply else None
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    syscalls.unshare(namespaces.flags_for(spec["netns"]))
    pid = os.fork()
    if pid == 0:
        sock.close()
        try:
            _stage2(spec, error_fd, log_fd, view)
        except BaseException as error:
            _report(error_fd, error)
        os._exit(127)
    sock.sendall(f"pid {pid}\n".encode())
    os._exit(0)


# -- stage 2: the container's PID 1 ----------------------------------------------------------------

def _stage2(spec: dict[str, Any], error_fd: int, log_fd: int, view: str | None) -> None:
    os.setsid()
    _default_signals()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    userns = bool(spec.get("user_namespace"))
    path = view or spec["rootfs"]
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REC)
    root = rootfs.Root(path)
    for special in rootfs.SPECIAL_DIRECTORIES:
        root.refuse_symlinked(special)
    # sysfs belongs to the network namespace: in a user namespace with a network namespace it does not own it cannot
    # be mounted afresh, so the host's is bound read-only (as runc does).
    rootfs.mount_all(root, devices.standard_mounts(sysfs_bind=userns and spec["netns"] != "private"))
    devices.create_devices(root, bind_from_host=userns)
    with contextlib.suppress(rootfs.RootfsError):
        # Without a cgroup2 hierarchy (v1-only hosts) /sys/fs/cgroup stays an empty read-only sysfs dir.
        rootfs.mount_all(root, [devices.cgroup_mount()])
    rootfs.mount_all(root, _user_mounts(spec))
    workdir = root.make(spec["workdir"])
    os.close(workdir)
    root.close()
    if spec["netns"] == "private":
        namespaces.loopback_up()
    syscalls.sethostname(spec["hostname"])
    rootfs.pivot(path)
    null = os.open("/dev/null", os.O_RDONLY)  # the container's own /dev/null from here on
    os.dup2(null, 0)
    os.close(null)
    _write_sysctls(spec["sysctls"])
    rootfs.mask_paths(rootfs.MASKED_PATHS)
    rootfs.readonly_paths(rootfs.READONLY_PATHS)
    if spec["readonly_rootfs"]:
        rootfs.readonly_root()
    for name, (soft, hard) in spec["rlimits"].items():
        try:
            resource.setrlimit(_rlimit_number(name), (soft, hard))
        except (OSError, ValueError) as error:
            raise LaunchError(f"setting rlimit {name} to {soft}:{hard} failed: {error}") from None
    identity = passwd.resolve(spec["user"], spec["group"], spec["groups"], _read("/etc/passwd"), _read("/etc/group"))
    env = dict(item.split("=", 1) for item in spec["env"])
    env.setdefault("HOME", identity.home or "/")
    keep = spec["capabilities"]
    capabilities.drop_bounding(keep)
    confined = spec["seccomp"] == "default"
    if confined and not spec["no_new_privileges"]:
        # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it while root still has it.
        seccomp.install(keep)
    capabilities.switch_user(identity.uid, identity.gid, identity.groups)
    capabilities.apply_final(keep, identity.uid)
    try:
        os.chdir(spec["workdir"])
    except OSError as error:
        raise LaunchError(f"the working directory {spec['workdir']} cannot be entered as uid {identity.uid}: "
                          f"{error.strerror}") from None
    executable = _find_executable(spec["argv"][0], env.get("PATH", ""))
    if spec["no_new_privileges"]:
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    if confined and spec["no_new_privileges"]:
        seccomp.install(keep)
    # Only stdio crosses the exec: everything else (the error pipe included) is close-on-exec.
    syscalls.close_range(3, 0xFFFFFFFF, syscalls.CLOSE_RANGE_CLOEXEC)
    os.set_inheritable(error_fd, False)
    try:
        os.execve(executable, spec["argv"], env)
    except OSError as error:
        raise LaunchError(f"exec of {executable} failed: {error.strerror}") from None


def _default_signals() -> None:
    """The payload starts with every signal at its default and none blocked: an ignored SIGHUP
    inherited from the supervisor would make a shell's `trap ... HUP` impossible."""
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for number in range(1, signal.NSIG):
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(number, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _user_mounts(spec: dict[str, Any]) -> list[rootfs.Mount]:
    mounts = []
    for entry in spec["mounts"]:
        flags = 0
        for option in entry["options"]:
            flags |= rootfs.MOUNT_OPTION_FLAGS[option]
        if entry["type"] == "tmpfs":
            data = f"size={entry['size']}" if entry.get("size") else None
            mounts.append(rootfs.Mount(entry["destination"], "tmpfs", "tmpfs", flags, data))
        else:
            is_file = not stat.S_ISDIR(os.stat(entry["source"]).st_mode)
            mounts.append(rootfs.Mount(entry["destination"], source=entry["source"],
                                       flags=flags | syscalls.MS_BIND | syscalls.MS_REC, bind_file=is_file))
    return mounts


def _rlimit_number(name: str) -> int:
    return getattr(resource, f"RLIMIT_{name.upper()}")


def _write_sysctls(sysctls: dict[str, str]) -> None:
    for key, value in sysctls.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(value)
        except OSError as error:
            raise LaunchError(f"setting sysctl {key}={value} in the container failed: {error.strerror}") from None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _find_executable(command: str, search_path: str) -> str:
    candidates = [command] if "/" in command else [os.path.join(d or ".", command) for d in search_path.split(":")]
    for candidate in candidates:
        try:
            info = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            if os.access(candidate, os.X_OK):
                return candidate
            if "/" in command:
                raise LaunchError(f"{command} in the rootfs is not executable")
    where = "in the rootfs" if "/" in command else f"in the container's PATH ({search_path})"
    raise LaunchError(f"executable {command!r} not found {where}")
