# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container's root filesystem, as runc lays it out: every path resolved inside the rootfs
(openat2 RESOLVE_IN_ROOT, so a symlink such as /dev -> /host/dev resolves to rootfs/host/dev and never
out), mounts made on the resolved descriptor (/proc/self/fd/N) instead of a path the container could
swap, pivot_root with the old root detached, Docker's masked and read-only paths.

Runs in the container's first process, in its new mount namespace, before the payload is exec'd.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

from ansible_collections.nsbox.primitives.plugins.module_utils import syscalls
from ansible_collections.nsbox.primitives.plugins.module_utils.syscalls import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
)

MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/proc/interrupts", "/sys/firmware", "/sys/devices/virtual/powercap"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# The mount points the runtime itself mounts on: they must be real directories of the rootfs.
SPECIAL_DIRECTORIES = ["/proc", "/sys", "/dev"]

MOUNT_OPTION_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
_RESOLVE = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS


class RootfsError(Exception):
    """A problem with the container's root filesystem or one of its mounts (message for the user)."""


@dataclass
class Mount:
    """One mount of the container: what, where (inside the rootfs), which filesystem, flags and data."""

    destination: str
    fstype: str | None = None
    source: str | None = None
    flags: int = 0
    data: str | None = None
    bind_file: bool = False


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class Root:
    """The rootfs directory, opened once; every lookup below it stays below it."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise RootfsError(f"rootfs {path} cannot be opened: {error.strerror}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def open(self, inner: str, flags: int = os.O_PATH) -> int:
        """Open a path of the container (e.g. /etc/passwd), symlinks resolved inside the root."""
        return syscalls.openat2(self.fd, inner.lstrip("/") or ".", flags, _RESOLVE)

    def read_text(self, inner: str) -> str | None:
        """The contents of a file of the container, or None when it is missing."""
        try:
            fd = self.open(inner, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def refuse_symlinked(self, inner: str) -> None:
        """runc's rule for /proc, /sys and /dev: a symlink there is refused, not followed."""
        try:
            info = os.lstat(inner.lstrip("/"), dir_fd=self.fd)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            target = os.readlink(inner.lstrip("/"), dir_fd=self.fd)
            raise RootfsError(f"the rootfs {self.path} has {inner} as a symlink (to {target}); the runtime mounts "
                              f"there and refuses to follow it. Make {inner} a plain directory in the image")
        if not stat.S_ISDIR(info.st_mode):
            raise RootfsError(f"the rootfs {self.path} has {inner} but it is not a directory; make it one")

    def make(self, inner: str, directory: bool = True, mode: int = 0o755, open_flags: int = os.O_PATH) -> int:
        """Create inner (and missing parents) inside the root; returns a descriptor of it (O_PATH unless
        open_flags say otherwise). Each component is resolved inside the root; a dangling symlink on the
        way is followed inside the root too (its target created there), as runc's securejoin does."""
        if ".." in inner.split("/"):
            raise RootfsError(f"mount destination {inner} contains '..'; give a plain absolute path")
        parts = [p for p in inner.split("/") if p not in ("", ".")]
        done: list[str] = []
        links = 0
        while parts:
            part = parts.pop(0)
            walked = "/".join([*done, part])
            try:
                fd = syscalls.openat2(self.fd, walked, os.O_PATH, _RESOLVE)
                os.close(fd)
                done.append(part)
                continue
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise RootfsError(f"too many symlinks resolving {inner} in the rootfs {self.path}") from None
                if error.errno != errno.ENOENT:
                    raise RootfsError(f"resolving {inner} in the rootfs {self.path} failed: {error}") from None
            parent = syscalls.openat2(self.fd, "/".join(done) or ".", os.O_PATH | os.O_DIRECTORY, _RESOLVE)
            try:
                try:
                    info = os.lstat(part, dir_fd=parent)
                except FileNotFoundError:
                    info = None
                if info is not None and stat.S_ISLNK(info.st_mode):
                    links += 1
                    if links > 40:
                        raise RootfsError(f"too many symlinks resolving {inner} in the rootfs {self.path}")
                    target = os.readlink(part, dir_fd=parent)
                    base = [] if target.startswith("/") else list(done)
                    # Re-resolve from the root: ".." never climbs above it.
                    resolved: list[str] = []
                    for piece in [*base, *target.split("/"), *parts]:
                        if piece == "..":
                            if resolved:
                                resolved.pop()
                        elif piece not in ("", "."):
                            resolved.append(piece)
                    done, parts = [], resolved
                    continue
                if not parts and not directory:
                    os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o644, dir_fd=parent))
                else:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, mode, dir_fd=parent)
            finally:
                os.close(parent)
            done.append(part)
        return syscalls.openat2(self.fd, "/".join(done) or ".", open_flags, _RESOLVE)


def _mount_on(root: Root, fd: int, mount: Mount) -> None:
    target = fd_path(fd)
    try:
        if mount.flags & MS_BIND:
            syscalls.mount(mount.source, target, None, MS_BIND | (mount.flags & MS_REC))
            extra = mount.flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
            if extra:
                # The descriptor still names the directory below the new mount: resolve again to reach it.
                fresh = root.open(mount.destination)
                try:
                    _remount_bind(fd_path(fresh), extra, recursive=bool(mount.flags & MS_REC))
                finally:
                    os.close(fresh)
        else:
            syscalls.mount(mount.source or mount.fstype, target, mount.fstype, mount.flags, mount.data)
    except OSError as error:
        raise RootfsError(f"mounting {mount.fstype or 'bind ' + str(mount.source)} on {mount.destination} "
                          f"failed: {error.strerror} (errno {error.errno})") from None


def _remount_bind(target: str, flags: int, recursive: bool) -> None:
    attrs = 0
    for flag, attr in ((MS_RDONLY, syscalls.MOUNT_ATTR_RDONLY), (MS_NOSUID, syscalls.MOUNT_ATTR_NOSUID),
                       (MS_NODEV, syscalls.MOUNT_ATTR_NODEV), (MS_NOEXEC, syscalls.MOUNT_ATTR_NOEXEC)):
        if flags & flag:
            attrs |= attr
    # mount_setattr keeps the flags already locked on the mount (a plain MS_REMOUNT would have to
    # restate them) and applies to the whole subtree of a recursive bind.
    syscalls.mount_setattr(target, attr_set=attrs, flags=syscalls.AT_RECURSIVE if recursive else 0)


def mount_all(root: Root, mounts: list[Mount]) -> None:
    for mount in mounts:
        fd = root.make(mount.destination, directory=not mount.bind_file)
        try:
            _mount_on(root, fd, mount)
        finally:
            os.close(fd)


def prepare_root(path: str) -> None:
    """Make the whole tree private (nothing propagates back to the host) and the rootfs a mount
    point of its own, as pivot_root needs."""
    syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)
    syscalls.mount(path, path, None, MS_BIND | MS_REC)


def pivot(path: str) -> None:
    """pivot_root into path and detach the old root: nothing of the host stays reachable."""
    os.chdir(path)
    # runc's trick: new and old root the same directory, so no put_old directory is needed inside.
    syscalls.pivot_root(".", ".")
    # The old root must not propagate the detach back to the host's mounts.
    syscalls.mount(None, ".", None, MS_SLAVE | MS_REC)
    syscalls.umount2(".", syscalls.MNT_DETACH)
    os.chdir("/")


def mask_paths(paths: list[str]) -> None:
    """Docker's masked paths: directories get an empty read-only tmpfs, files /dev/null."""
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue
        try:
            if stat.S_ISDIR(info.st_mode):
                syscalls.mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0k")
            else:
                syscalls.mount("/dev/null", path, None, MS_BIND)
        except OSError as error:
            raise RootfsError(f"masking {path} failed: {error.strerror}") from None


def readonly_paths(paths: list[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            continue
        try:
            syscalls.mount(path, path, None, MS_BIND | MS_REC)
            syscalls.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError as error:
            raise RootfsError(f"making {path} read-only failed: {error.strerror}") from None


def readonly_root() -> None:
    try:
        syscalls.mount_setattr("/", attr_set=syscalls.MOUNT_ATTR_RDONLY)
    except OSError as error:
        raise RootfsError(f"making the root filesystem read-only failed: {error.strerror}") from None
