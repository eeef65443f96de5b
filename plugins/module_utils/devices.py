# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The container's /proc, /sys and /dev: the standard mounts and exactly the standard devices."""

from __future__ import annotations

import os
import stat

from ansible_collections.nsbox.primitives.plugins.module_utils import syscalls
from ansible_collections.nsbox.primitives.plugins.module_utils.rootfs import Mount, Root, RootfsError, fd_path
from ansible_collections.nsbox.primitives.plugins.module_utils.syscalls import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_STRICTATIME,
)

# name -> (major, minor); mode 0666 as in runc's default spec.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
SYMLINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
            "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}

_SECURE = MS_NOSUID | MS_NODEV | MS_NOEXEC


def standard_mounts(sysfs_bind: bool = False) -> list[Mount]:
    """runc's default mounts (its spec for `runc spec`), in order."""
    sysfs = (Mount("/sys", source="/sys", flags=MS_BIND | MS_REC | MS_RDONLY | _SECURE) if sysfs_bind
             else Mount("/sys", "sysfs", "sysfs", MS_RDONLY | _SECURE))
    return [
        Mount("/proc", "proc", "proc", _SECURE),
        Mount("/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k"),
        Mount("/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        Mount("/dev/shm", "tmpfs", "shm", _SECURE, "mode=1777,size=65536k"),
        Mount("/dev/mqueue", "mqueue", "mqueue", _SECURE),
        sysfs,
    ]


def cgroup_mount() -> Mount:
    # Inside the container's cgroup namespace a fresh cgroup2 mount shows its own group as the root.
    return Mount("/sys/fs/cgroup", "cgroup2", "cgroup", MS_RDONLY | _SECURE)


def create_devices(root: Root, bind_from_host: bool) -> None:
    """mknod the standard devices in the container's /dev tmpfs; inside a user namespace, where mknod
    is not allowed, bind the host's nodes instead (as runc does)."""
    dev = root.make("/dev", open_flags=os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, (major, minor) in DEVICES.items():
            if bind_from_host:
                target = root.make(f"/dev/{name}", directory=False)
                try:
                    syscalls.mount(f"/dev/{name}", fd_path(target), None, MS_BIND)
                finally:
                    os.close(target)
            else:
                os.mknod(name, stat.S_IFCHR | 0o666, os.makedev(major, minor), dir_fd=dev)
                os.chmod(name, 0o666, dir_fd=dev)  # mknod's mode goes through the umask
        for name, target in SYMLINKS.items():
            os.symlink(target, name, dir_fd=dev)
    except OSError as error:
        raise RootfsError(f"creating the container's /dev failed: {error}") from None
    finally:
        os.close(dev)
