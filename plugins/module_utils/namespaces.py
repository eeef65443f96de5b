# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The namespaces of a container: which to create, user namespace id maps, the loopback of a new
network namespace, joining a named one."""

from __future__ import annotations

import fcntl
import socket
import struct

from ansible_collections.nsbox.primitives.plugins.module_utils import syscalls
from ansible_collections.nsbox.primitives.plugins.module_utils.syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
)

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def flags_for(netns: str) -> int:
    """mount, pid, uts, ipc and cgroup always; a fresh network namespace for netns=private."""
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP
    if netns == "private":
        flags |= CLONE_NEWNET
    return flags


def join_named_netns(netns: str) -> None:
    if netns not in ("host", "private"):
        syscalls.enter_namespace(f"/run/netns/{netns}", CLONE_NEWNET)


def write_id_maps(pid: int, host_uid: int, host_gid: int, size: int) -> None:
    """Container ids 0..size-1 are host ids host_uid.. (written by a root process outside)."""
    with open(f"/proc/{pid}/uid_map", "w", encoding="utf-8") as handle:
        handle.write(f"0 {host_uid} {size}\n")
    with open(f"/proc/{pid}/gid_map", "w", encoding="utf-8") as handle:
        handle.write(f"0 {host_gid} {size}\n")


def loopback_up() -> None:
    """A new network namespace starts with lo down; bring it up (SIOCSIFFLAGS, no netlink needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
