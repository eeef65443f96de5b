"""The syscall seam against the real kernel, each test in a forked child so the test process stays put."""

from __future__ import annotations

import errno
import os

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo, syscalls


def in_child(function) -> int:
    """Run function in a forked child; its return value (0 = fine) is the child's exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(function())
        except BaseException as error:
            os.write(2, f"{error!r}\n".encode())
            os._exit(99)
    status = os.waitpid(pid, 0)[1]
    return os.waitstatus_to_exitcode(status)


def test_errors_name_the_call_and_the_path(tmp_path):
    with pytest.raises(syscalls.KernelCallError) as raised:
        syscalls.umount2(str(tmp_path / "not-mounted"))
    error = raised.value
    assert error.errno in (errno.EINVAL, errno.ENOENT) and error.call == "umount2"
    assert str(tmp_path / "not-mounted") in str(error) and "Errno" in str(error)


def test_unshare_mount_pivot_root_in_private_namespace(tmp_path):
    new_root = tmp_path / "root"
    new_root.mkdir()

    def child() -> int:
        syscalls.unshare(syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS)
        syscalls.set_propagation("/", "rprivate")
        syscalls.mount("tmpfs", str(new_root), "tmpfs", syscalls.MS_NOSUID, "size=1m,mode=0755")
        mount = mountinfo.mount_at(str(new_root))
        assert mount.fstype == "tmpfs" and "nosuid" in mount.options
        os.mkdir(f"{new_root}/old")
        with open(f"{new_root}/marker", "w") as marker:
            marker.write("inside")
        syscalls.sethostname("nsbox-unit")
        syscalls.pivot_root(str(new_root), f"{new_root}/old")
        os.chdir("/")
        syscalls.umount2("/old", syscalls.MNT_DETACH)
        with open("/marker") as marker:
            assert marker.read() == "inside"
        assert os.listdir("/old") == []
        assert os.uname().nodename == "nsbox-unit"
        return 0

    assert in_child(child) == 0
    # Nothing leaked into the test's own mount namespace.
    assert mountinfo.mount_at(str(new_root)) is None
    assert os.uname().nodename != "nsbox-unit"


def test_capabilities_and_no_new_privs():
    def child() -> int:
        effective, permitted = syscalls.capget()[:2]
        assert effective & (1 << 21)  # CAP_SYS_ADMIN: the tests run as root
        syscalls.prctl(syscalls.PR_CAPBSET_DROP, 21)
        assert syscalls.prctl(syscalls.PR_CAPBSET_READ, 21) == 0
        syscalls.capset(effective & ~(1 << 21), permitted & ~(1 << 21), 0)
        assert not syscalls.capget()[0] & (1 << 21)
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        assert syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS) == 1
        return 0

    assert in_child(child) == 0


def test_close_range_closes_everything_above_stdio():
    def child() -> int:
        extra = [os.open("/dev/null", os.O_RDONLY) for _attempt in range(3)]
        syscalls.close_range(3)
        return 0 if not any(_is_open(fd) for fd in extra) else 1

    assert in_child(child) == 0


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_new_mount_api_reports_the_filesystem_reason(tmp_path):
    fs_fd = syscalls.fsopen("overlay")
    try:
        syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, "index", "maybe")
    except syscalls.KernelCallError as error:
        assert error.errno == errno.EINVAL
        assert syscalls.fs_context_messages(fs_fd) == ["e overlay: Bad value for 'index'"]
    else:
        pytest.fail("fsconfig accepted a bad value")
    finally:
        os.close(fs_fd)


def test_mount_setattr_is_available():
    assert syscalls.has_mount_setattr()
