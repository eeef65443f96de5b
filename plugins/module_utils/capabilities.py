# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Linux capabilities: names, Docker's default set, and dropping a process to a set in every
place the kernel keeps capabilities (bounding, permitted, effective, inheritable, ambient)."""

from __future__ import annotations

import contextlib
import os

from ansible_collections.nsbox.primitives.plugins.module_utils import syscalls
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

# capability.h numbering.
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

# What Docker (moby's oci/caps/defaults.go) grants a container unless told otherwise.
DOCKER_DEFAULT = ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
                  "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"]


def normalize(name: str) -> str:
    """'cap_net_admin', 'NET_ADMIN' and 'CAP_NET_ADMIN' are one capability; ALL stands for all."""
    upper = str(name).strip().upper()
    upper = upper.removeprefix("CAP_")
    if upper != "ALL" and upper not in CAPABILITIES:
        raise NsboxError(f"unknown capability {name!r}; known: ALL, {', '.join(sorted(CAPABILITIES))}",
                         capability=name)
    return upper


def last_cap() -> int:
    with contextlib.suppress(OSError, ValueError), open("/proc/sys/kernel/cap_last_cap", encoding="utf-8") as handle:
        return int(handle.read())
    return max(CAPABILITIES.values())


def resolve(capabilities: list[str] | None, cap_add: list[str], cap_drop: list[str]) -> list[str]:
    """The effective set, as sorted names: the base (Docker's default unless given), plus cap_add,
    minus cap_drop; ALL in cap_add adds every capability, ALL in cap_drop starts from none."""
    base = DOCKER_DEFAULT if capabilities is None else [normalize(c) for c in capabilities]
    known = [name for name, number in CAPABILITIES.items() if number <= last_cap()]
    wanted = set(known) if "ALL" in base else set(base)
    added = {normalize(c) for c in cap_add}
    dropped = {normalize(c) for c in cap_drop}
    if "ALL" in dropped:
        wanted = set()
    wanted |= set(known) if "ALL" in added else added
    wanted -= dropped - {"ALL"}
    return sorted(wanted, key=lambda n: CAPABILITIES[n])


def mask(names: list[str]) -> int:
    value = 0
    for name in names:
        value |= 1 << CAPABILITIES[name]
    return value


def drop_bounding(keep: list[str]) -> None:
    """Remove every capability not kept from the bounding set (needs CAP_SETPCAP, so do it first)."""
    kept = mask(keep)
    for number in range(last_cap() + 1):
        if not kept & (1 << number):
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, number)


def apply_final(keep: list[str], uid: int) -> None:
    """The sets the payload starts with, as Docker does: root keeps the set permitted and effective,
    another user keeps nothing (execve would clear it anyway); inheritable and ambient stay empty so
    no file capability or later exec can regain a capability."""
    kept = mask(keep) if uid == 0 else 0
    syscalls.capset(kept, kept, 0)
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)


def switch_user(uid: int, gid: int, groups: list[int]) -> None:
    """setgroups, setgid, setuid, keeping the permitted set across setuid so apply_final decides."""
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 0)


def status_masks(pid: int | str = "self") -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, from /proc/PID/status."""
    masks = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            key, _sep, value = line.partition(":")
            if key.startswith("Cap"):
                masks[key] = int(value.strip(), 16)
    return masks
