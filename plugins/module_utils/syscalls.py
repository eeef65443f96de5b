# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The narrow seam between the collection and the kernel: Linux system calls over ctypes.

Every failure raises KernelCallError, an OSError that names the call and the object it acted on,
so a module can report "mount(/srv/merged): [Errno 16] Device or resource busy" instead of a
bare errno. Nothing here spawns a process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform

# Namespace flags (sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

NAMESPACE_FLAGS = {
    "mnt": CLONE_NEWNS,
    "cgroup": CLONE_NEWCGROUP,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
    "time": CLONE_NEWTIME,
}

# mount(2) flags (sys/mount.h).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

PROPAGATION_FLAGS = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

# umount2(2) flags.
MNT_FORCE = 0x1
MNT_DETACH = 0x2
MNT_EXPIRE = 0x4
UMOUNT_NOFOLLOW = 0x8

# mount_setattr(2) (linux/mount.h).
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000

# fsopen(2), fsconfig(2), fsmount(2): the new mount API.
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6

# open_tree(2).
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4

# prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NAME = 15
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT_IS_SET = 1
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1

# openat2(2) resolve flags (linux/openat2.h).
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# close_range(2) flags.
CLOSE_RANGE_CLOEXEC = 0x4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# System calls glibc 2.36 does not wrap, by machine. Newer calls share one number everywhere.
_SYSCALL_NUMBERS = {
    "x86_64": {"pivot_root": 155, "seccomp": 317},
    "aarch64": {"pivot_root": 41, "seccomp": 277},
}
_COMMON_SYSCALL_NUMBERS = {
    "pidfd_send_signal": 424,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "pidfd_open": 434,
    "close_range": 436,
    "openat2": 437,
    "mount_setattr": 442,
}


class KernelCallError(OSError):
    """A failed system call: errno, the call's name and the object it acted on."""

    def __init__(self, err: int, call: str, target: str | None = None) -> None:
        super().__init__(err, os.strerror(err), target)
        self.call = call
        self.target = target

    def __str__(self) -> str:
        where = f"({self.target})" if self.target is not None else ""
        return f"{self.call}{where}: [Errno {self.errno}] {self.strerror} ({errno.errorcode.get(self.errno, '?')})"


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def syscall_number(name: str) -> int:
    if name in _COMMON_SYSCALL_NUMBERS:
        return _COMMON_SYSCALL_NUMBERS[name]
    machine = platform.machine()
    try:
        return _SYSCALL_NUMBERS[machine][name]
    except KeyError:
        raise KernelCallError(errno.ENOSYS, name, f"no syscall number known for {machine}") from None


def _check(result: int, call: str, target: str | None = None) -> int:
    if result < 0:
        raise KernelCallError(ctypes.get_errno(), call, target)
    return result


def _raw_syscall(name: str, *args: object, target: str | None = None) -> int:
    return _check(_libc.syscall(syscall_number(name), *args), name, target)


def _bytes(value: str | os.PathLike | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare", hex(flags))


def setns(fd: int, nstype: int = 0, target: str | None = None) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns", target or f"fd {fd}")


def enter_namespace(path: str, nstype: int = 0) -> None:
    """Join the namespace behind a path such as /run/netns/NAME or /proc/PID/ns/net."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, nstype, path)
    finally:
        os.close(fd)


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    result = _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data))
    _check(result, "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_bytes(target), flags), "umount2", target)


def set_propagation(target: str, propagation: str = "private") -> None:
    mount(None, target, None, PROPAGATION_FLAGS[propagation])


def pivot_root(new_root: str, put_old: str) -> None:
    _raw_syscall("pivot_root", _bytes(new_root), _bytes(put_old), target=new_root)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname", name)


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), "prctl", str(option))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capget(pid: int = 0) -> tuple[int, int, int]:
    """Return (effective, permitted, inheritable) capability masks as 64-bit integers."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget", str(pid))
    low, high = data[0], data[1]
    return (
        low.effective | (high.effective << 32),
        low.permitted | (high.permitted << 32),
        low.inheritable | (high.inheritable << 32),
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for half, shift in ((0, 0), (1, 32)):
        data[half].effective = (effective >> shift) & 0xFFFFFFFF
        data[half].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[half].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    """Close (or mark close-on-exec) every descriptor from first to last; falls back on old kernels."""
    try:
        _raw_syscall("close_range", ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags))
        return
    except KernelCallError as error:
        if error.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
    for fd in _open_descriptors():
        if first <= fd <= last:
            if flags & CLOSE_RANGE_CLOEXEC:
                os.set_inheritable(fd, False)
            else:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _open_descriptors() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc/self/fd"))


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(path: str, attr_set: int = 0, attr_clr: int = 0, propagation: int = 0,
                  userns_fd: int = 0, flags: int = 0, dirfd: int = AT_FDCWD) -> None:
    """Change mount attributes (read-only, idmapping, ...) of a mount; kernel 5.12 and newer."""
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    _raw_syscall("mount_setattr", ctypes.c_int(dirfd), _bytes(path), ctypes.c_uint(flags),
                 ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), target=path)


def has_mount_setattr() -> bool:
    try:
        mount_setattr("/", flags=0, dirfd=-1)
    except KernelCallError as error:
        return error.errno != errno.ENOSYS
    return True


def open_tree(path: str, flags: int = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC, dirfd: int = AT_FDCWD) -> int:
    return _raw_syscall("open_tree", ctypes.c_int(dirfd), _bytes(path), ctypes.c_uint(flags), target=path)


def move_mount(from_fd: int, to_path: str, from_path: str = "", flags: int = MOVE_MOUNT_F_EMPTY_PATH,
               to_dirfd: int = AT_FDCWD) -> None:
    _raw_syscall("move_mount", ctypes.c_int(from_fd), _bytes(from_path), ctypes.c_int(to_dirfd),
                 _bytes(to_path), ctypes.c_uint(flags), target=to_path)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """open relative to dirfd with path-resolution restrictions (RESOLVE_IN_ROOT: dirfd is "/" for
    every component, symlinks included, so nothing resolves outside it); kernel 5.6 and newer."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _raw_syscall("openat2", ctypes.c_int(dirfd), _bytes(path), ctypes.byref(how),
                        ctypes.c_size_t(ctypes.sizeof(how)), target=path)


def seccomp_set_filter(program: bytes, count: int) -> None:
    """Install a classic-BPF seccomp filter of count instructions (8 bytes each) on this thread."""
    buffer = ctypes.create_string_buffer(program, len(program))

    class _SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _SockFprog(count, ctypes.addressof(buffer))
    _raw_syscall("seccomp", ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(0), ctypes.byref(prog),
                 target="filter")


def pidfd_open(pid: int) -> int:
    return _raw_syscall("pidfd_open", ctypes.c_int(pid), ctypes.c_uint(0), target=str(pid))


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    _raw_syscall("pidfd_send_signal", ctypes.c_int(pidfd), ctypes.c_int(sig), None, ctypes.c_uint(0),
                 target=f"pidfd {pidfd}")


def fsopen(fstype: str) -> int:
    return _raw_syscall("fsopen", _bytes(fstype), ctypes.c_uint(FSOPEN_CLOEXEC), target=fstype)


def fsconfig(fs_fd: int, command: int, key: str | None = None, value: str | None = None,
             target: str | None = None) -> None:
    _raw_syscall("fsconfig", ctypes.c_int(fs_fd), ctypes.c_uint(command), _bytes(key), _bytes(value),
                 ctypes.c_int(0), target=target or key)


def fsmount(fs_fd: int, attr_flags: int = 0) -> int:
    return _raw_syscall("fsmount", ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attr_flags))


def fs_context_messages(fs_fd: int) -> list[str]:
    """The messages a filesystem logged into an fsopen() context (why a mount was refused)."""
    messages = []
    while True:
        try:
            raw = os.read(fs_fd, 4096)
        except OSError:
            break  # ENODATA: no more messages
        if not raw:
            break
        messages.append(raw.decode(errors="replace").strip())
    return messages
