# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The default seccomp profile as a classic-BPF program, assembled here (no libseccomp).

It denies (EPERM) what Docker's default profile denies a container: mounting and the new mount API,
namespaces (unshare, setns, clone with CLONE_NEW*; clone3 answers ENOSYS so libc falls back to
clone), kernel modules, kexec, keyrings, bpf, perf, ptrace of other processes, clock setting,
reboot, swap, io_uring, NUMA policy and the obsolete calls. A call comes back when the container
holds the capability that Docker ties it to (CAP_SYS_ADMIN gives mount back, and so on). Foreign
system call ABIs (i386, x32) are refused as a whole, so no second syscall table bypasses the list.
"""

from __future__ import annotations

import errno
import platform
import struct

from ansible_collections.nsbox.primitives.plugins.module_utils import syscalls
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000

_ARCHES = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000

# seccomp_data offsets.
_NR = 0
_ARCH = 4


def _arg_low(index: int) -> int:
    return 16 + 8 * index


def _arg_high(index: int) -> int:
    return 20 + 8 * index


# name -> (x86_64 number, aarch64 number or None where the call does not exist there).
_NUMBERS = {
    "acct": (163, 89), "add_key": (248, 217), "bpf": (321, 280), "clock_adjtime": (305, 266),
    "clock_settime": (227, 112), "create_module": (174, None), "delete_module": (176, 106),
    "finit_module": (313, 273), "get_kernel_syms": (177, None), "get_mempolicy": (239, 236),
    "init_module": (175, 105), "ioperm": (173, None), "iopl": (172, None), "kcmp": (312, 272),
    "kexec_file_load": (320, 294), "kexec_load": (246, 104), "keyctl": (250, 219),
    "lookup_dcookie": (212, 18), "mbind": (237, 235), "mount": (165, 40), "move_pages": (279, 239),
    "name_to_handle_at": (303, 264), "nfsservctl": (180, 42), "open_by_handle_at": (304, 265),
    "perf_event_open": (298, 241), "pivot_root": (155, 41), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271), "process_madvise": (440, 440), "pidfd_getfd": (438, 438),
    "query_module": (178, None), "quotactl": (179, 60), "quotactl_fd": (443, 443), "reboot": (169, 142),
    "request_key": (249, 218), "set_mempolicy": (238, 237), "set_mempolicy_home_node": (450, 450),
    "setns": (308, 268), "settimeofday": (164, 170), "swapon": (167, 224), "swapoff": (168, 225),
    "sysfs": (139, None), "_sysctl": (156, None), "umount2": (166, 39), "unshare": (272, 97),
    "uselib": (134, None), "userfaultfd": (323, 282), "ustat": (136, None), "vhangup": (153, 58),
    "syslog": (103, 116), "chroot": (161, 51), "sethostname": (170, 161), "setdomainname": (171, 162),
    "fanotify_init": (300, 262), "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "open_tree_attr": (467, 467), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "clone": (56, 220), "clone3": (435, 435), "ptrace": (101, 117),
    "mknod": (133, None), "mknodat": (259, 33), "personality": (135, 92),
}

# Denied unless the container holds the capability (as in Docker's profile).
_BY_CAPABILITY = {
    "SYS_ADMIN": ["mount", "umount2", "unshare", "setns", "pivot_root", "open_tree", "open_tree_attr",
                  "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "quotactl",
                  "quotactl_fd", "name_to_handle_at", "lookup_dcookie", "fanotify_init", "sethostname",
                  "setdomainname", "clone", "clone3", "bpf", "perf_event_open", "syslog"],
    "SYS_BOOT": ["reboot"],
    "SYS_CHROOT": ["chroot"],
    "SYS_MODULE": ["init_module", "finit_module", "delete_module"],
    "SYS_PACCT": ["acct"],
    "SYS_PTRACE": ["ptrace", "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev"],
    "SYS_RAWIO": ["iopl", "ioperm"],
    "SYS_TIME": ["settimeofday", "clock_settime", "clock_adjtime"],
    "SYS_TTY_CONFIG": ["vhangup"],
    "SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node", "move_pages"],
    "SYSLOG": ["syslog"],
    "BPF": ["bpf"],
    "PERFMON": ["perf_event_open"],
    "DAC_READ_SEARCH": ["open_by_handle_at"],
}

# Denied whatever the capabilities.
_ALWAYS = ["add_key", "keyctl", "request_key", "kexec_load", "kexec_file_load", "userfaultfd", "ustat",
           "sysfs", "_sysctl", "uselib", "nfsservctl", "create_module", "get_kernel_syms", "query_module",
           "swapon", "swapoff", "io_uring_setup", "io_uring_enter", "io_uring_register"]

# Hostname changes belong to the UTS namespace the container owns; Docker allows them.
_ALLOWED_ANYWAY = {"sethostname", "setdomainname"}

_NAMESPACE_FLAGS = (syscalls.CLONE_NEWNS | syscalls.CLONE_NEWCGROUP | syscalls.CLONE_NEWUTS
                    | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWPID
                    | syscalls.CLONE_NEWNET | syscalls.CLONE_NEWTIME)
_PTRACE_TRACEME = 0
_ALU_AND_K = 0x54
_S_IFMT, _S_IFCHR, _S_IFBLK = 0o170000, 0o020000, 0o060000
# The character devices a container may create (its standard /dev, and 0:0 for overlay whiteouts),
# as the kernel's old dev_t encoding (major << 8 | minor) that mknod takes. Block devices never: with
# CAP_MKNOD and no device cgroup, a node of the host's disk would be the whole host.
ALLOWED_CHAR_DEVICES = [(0, 0), (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)]


def denied_calls(capabilities: list[str]) -> list[str]:
    """The system calls the default profile refuses a container with these capabilities."""
    held = set(capabilities)
    denied = set(_ALWAYS)
    for capability, calls in _BY_CAPABILITY.items():
        if capability not in held:
            denied.update(calls)
    # A call any held capability unlocks is allowed (bpf: SYS_ADMIN or BPF).
    for capability in held:
        denied.difference_update(_BY_CAPABILITY.get(capability, []))
    return sorted(denied - _ALLOWED_ANYWAY)


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def build_filter(capabilities: list[str], machine: str | None = None) -> tuple[bytes, int]:
    """The BPF program (bytes, instruction count) of the default profile for this machine."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise NsboxError(f"the default seccomp profile has no system call table for {machine}; "
                         "use seccomp: unconfined on this machine", machine=machine)
    column = 0 if machine == "x86_64" else 1
    eperm = RET_ERRNO | errno.EPERM
    enosys = RET_ERRNO | errno.ENOSYS
    program = [
        _insn(_LD_W_ABS, 0, 0, _ARCH),
        _insn(_JEQ_K, 1, 0, _ARCHES[machine]),
        _insn(_RET_K, 0, 0, enosys),  # i386 on x86_64, arm32 on aarch64
        _insn(_LD_W_ABS, 0, 0, _NR),
    ]
    if machine == "x86_64":
        program += [_insn(_JGE_K, 0, 1, _X32_BIT), _insn(_RET_K, 0, 0, enosys)]
    denied = denied_calls(capabilities)
    for name in denied:
        number = _NUMBERS[name][column]
        if number is None:
            continue
        if name == "clone":
            # Plain clone (fork, threads) stays; clone with a namespace flag is refused.
            program += [_insn(_JEQ_K, 0, 4, number), _insn(_LD_W_ABS, 0, 0, _arg_low(0)),
                        _insn(_JSET_K, 0, 1, _NAMESPACE_FLAGS), _insn(_RET_K, 0, 0, eperm),
                        _insn(_RET_K, 0, 0, RET_ALLOW)]
        elif name == "clone3":
            # Its flags are behind a pointer BPF cannot follow: ENOSYS makes libc use clone.
            program += [_insn(_JEQ_K, 0, 1, number), _insn(_RET_K, 0, 0, enosys)]
        elif name == "ptrace":
            # PTRACE_TRACEME (a debugger started inside) only; tracing another process is refused.
            program += [_insn(_JEQ_K, 0, 6, number), _insn(_LD_W_ABS, 0, 0, _arg_high(0)),
                        _insn(_JEQ_K, 0, 3, 0), _insn(_LD_W_ABS, 0, 0, _arg_low(0)),
                        _insn(_JEQ_K, 0, 1, _PTRACE_TRACEME), _insn(_RET_K, 0, 0, RET_ALLOW),
                        _insn(_RET_K, 0, 0, eperm)]
        else:
            program += [_insn(_JEQ_K, 0, 1, number), _insn(_RET_K, 0, 0, eperm)]
    program += _personality_rule(_NUMBERS["personality"][column], eperm)
    for name, mode_arg in (("mknod", 1), ("mknodat", 2)):
        number = _NUMBERS[name][column]
        if number is not None:
            program += _device_rule(number, mode_arg, eperm)
    program.append(_insn(_RET_K, 0, 0, RET_ALLOW))
    return b"".join(program), len(program)


# Docker allows only these personalities: Linux, PER_LINUX32, UNAME26 and their mix, and the query.
ALLOWED_PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]


def _personality_rule(number: int, deny: int) -> list[bytes]:
    """personality() only with an allowed value: others turn off ASLR (ADDR_NO_RANDOMIZE) and the like."""
    checks = [_insn(_JEQ_K, len(ALLOWED_PERSONALITIES) - index, 0, value)
              for index, value in enumerate(ALLOWED_PERSONALITIES)]
    body = [_insn(_LD_W_ABS, 0, 0, _arg_low(0)), *checks, _insn(_RET_K, 0, 0, deny), _insn(_RET_K, 0, 0, RET_ALLOW)]
    return [_insn(_JEQ_K, 0, len(body), number), *body]


def _device_rule(number: int, mode_arg: int, deny: int) -> list[bytes]:
    """mknod of a block device, or of a character device outside the allowed list, is refused."""
    allowed = [(major << 8) | minor for major, minor in ALLOWED_CHAR_DEVICES]
    checks = []
    for index, value in enumerate(allowed):
        # Equal: jump to the final ALLOW (past the remaining checks and the deny).
        checks.append(_insn(_JEQ_K, len(allowed) - index, 0, value))
    body = [
        _insn(_LD_W_ABS, 0, 0, _arg_low(mode_arg)),
        _insn(_ALU_AND_K, 0, 0, _S_IFMT),
        _insn(_JEQ_K, len(checks) + 2, 0, _S_IFBLK),   # -> deny
        _insn(_JEQ_K, 0, len(checks) + 2, _S_IFCHR),   # not a device: -> allow
        _insn(_LD_W_ABS, 0, 0, _arg_low(mode_arg + 1)),
        *checks,
        _insn(_RET_K, 0, 0, deny),
        _insn(_RET_K, 0, 0, RET_ALLOW),
    ]
    return [_insn(_JEQ_K, 0, len(body), number), *body]


def install(capabilities: list[str]) -> None:
    """Load the default profile into this process; needs no_new_privs or CAP_SYS_ADMIN."""
    program, count = build_filter(capabilities)
    syscalls.seccomp_set_filter(program, count)
