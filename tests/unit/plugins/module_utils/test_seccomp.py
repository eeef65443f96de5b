"""The default seccomp program, run through a small classic-BPF interpreter: the verdict for each call."""

from __future__ import annotations

import errno
import struct

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import capabilities, seccomp

X86_64 = 0xC000003E
I386 = 0x40000003
NR = {"read": 0, "mount": 165, "unshare": 272, "setns": 308, "keyctl": 250, "bpf": 321, "kexec_load": 246,
      "init_module": 175, "ptrace": 101, "clone": 56, "clone3": 435, "mknod": 133, "mknodat": 259,
      "chroot": 161, "sethostname": 170, "personality": 135, "reboot": 169, "io_uring_setup": 425, "fsopen": 430}
ALLOW = seccomp.RET_ALLOW
EPERM = seccomp.RET_ERRNO | errno.EPERM
ENOSYS = seccomp.RET_ERRNO | errno.ENOSYS


def run(program: bytes, nr: int, args: tuple[int, ...] = (), arch: int = X86_64) -> int:
    """Interpret the filter over a seccomp_data of (nr, arch, ip=0, args)."""
    values = list(args) + [0] * (6 - len(args))
    data = struct.pack("<iIQ6Q", nr, arch, 0, *values)
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:
            acc &= k
        elif code == 0x06:
            return k
        elif code in (0x15, 0x35, 0x45):
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        pc += 1


@pytest.fixture(scope="module")
def default():
    return seccomp.build_filter(capabilities.DOCKER_DEFAULT, "x86_64")[0]


@pytest.mark.parametrize("call", ["mount", "unshare", "setns", "keyctl", "bpf", "kexec_load", "init_module",
                                  "reboot", "io_uring_setup", "fsopen"])
def test_denied_calls(default, call):
    assert run(default, NR[call]) == EPERM


@pytest.mark.parametrize("call", ["read", "chroot", "sethostname"])
def test_allowed_calls(default, call):
    assert run(default, NR[call]) == ALLOW


def test_clone_with_namespace_flags_is_denied(default):
    assert run(default, NR["clone"], (0x11,)) == ALLOW  # SIGCHLD: a plain fork
    assert run(default, NR["clone"], (0x003D0F00,)) == ALLOW  # threads
    assert run(default, NR["clone"], (0x20000000 | 0x11,)) == EPERM  # CLONE_NEWPID
    assert run(default, NR["clone3"]) == ENOSYS


def test_ptrace_only_traceme(default):
    assert run(default, NR["ptrace"], (0,)) == ALLOW
    assert run(default, NR["ptrace"], (16, 1)) == EPERM  # PTRACE_ATTACH
    assert run(default, NR["ptrace"], (1 << 32,)) == EPERM


def test_mknod_devices(default):
    def dev(major, minor):
        return (major << 8) | minor
    assert run(default, NR["mknodat"], (0, 0, 0o020666, dev(1, 3))) == ALLOW
    assert run(default, NR["mknodat"], (0, 0, 0o020666, dev(4, 0))) == EPERM
    assert run(default, NR["mknodat"], (0, 0, 0o060660, dev(8, 0))) == EPERM
    assert run(default, NR["mknod"], (0, 0o060660, dev(8, 0))) == EPERM
    assert run(default, NR["mknodat"], (0, 0, 0o010644, 0)) == ALLOW  # a FIFO
    assert run(default, NR["mknodat"], (0, 0, 0o100644, 0)) == ALLOW  # a regular file


def test_personality_only_docker_values(default):
    assert run(default, NR["personality"], (0xFFFFFFFF,)) == ALLOW  # the query
    assert run(default, NR["personality"], (0x8,)) == ALLOW
    assert run(default, NR["personality"], (0x0040000,)) == EPERM  # ADDR_NO_RANDOMIZE


def test_foreign_abis_are_refused(default):
    assert run(default, NR["read"], arch=I386) == ENOSYS
    assert run(default, 0x40000000 | NR["read"]) == ENOSYS  # x32


def test_capabilities_give_calls_back():
    program = seccomp.build_filter([*capabilities.DOCKER_DEFAULT, "SYS_ADMIN", "SYS_PTRACE"], "x86_64")[0]
    assert run(program, NR["mount"]) == ALLOW
    assert run(program, NR["clone"], (0x20000000,)) == ALLOW
    assert run(program, NR["ptrace"], (16,)) == ALLOW
    assert run(program, NR["keyctl"]) == EPERM  # never given back
    without_chroot = seccomp.build_filter(["CHOWN"], "x86_64")[0]
    assert run(without_chroot, NR["chroot"]) == EPERM


def test_aarch64_builds_and_unknown_machine_fails():
    program, count = seccomp.build_filter(capabilities.DOCKER_DEFAULT, "aarch64")
    assert count == len(program) // 8 and count < 255
    with pytest.raises(Exception, match="unconfined"):
        seccomp.build_filter([], "riscv64")
