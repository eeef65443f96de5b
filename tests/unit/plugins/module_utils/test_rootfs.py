"""Path resolution inside a root directory (openat2 RESOLVE_IN_ROOT): what a symlink in an image can
and cannot reach. Real directories and symlinks; no mounts, so no root needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import rootfs


@pytest.fixture
def root(tmp_path: Path):
    base = tmp_path / "rootfs"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    handle = rootfs.Root(str(base))
    yield handle, base, outside
    handle.close()


def _where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def test_absolute_symlink_to_a_host_path_stays_inside(root):
    handle, base, outside = root
    (base / "data").symlink_to(str(outside))
    created = _where(handle.make("/data/new"))
    assert created == str(base / str(outside).lstrip("/") / "new")
    assert not (outside / "new").exists()


def test_dotdot_symlink_cannot_climb_out(root):
    handle, base, outside = root
    (base / "up").symlink_to("../../../../outside")
    assert _where(handle.make("/up/x")) == str(base / "outside" / "x")
    assert handle.read_text("/up/secret") is None
    assert not (outside / "x").exists()


def test_read_text_resolves_in_root(root):
    handle, base, outside = root
    (base / "etc" / "shadow").symlink_to(str(outside / "secret"))
    assert handle.read_text("/etc/passwd").startswith("root:")
    assert handle.read_text("/etc/shadow") is None
    assert handle.read_text("/missing") is None


def test_files_and_nested_directories(root):
    handle, base, _outside = root
    assert _where(handle.make("/a/b/c")) == str(base / "a" / "b" / "c")
    assert _where(handle.make("/a/file.conf", directory=False)) == str(base / "a" / "file.conf")
    assert (base / "a" / "file.conf").is_file()


def test_dotdot_in_a_destination_is_refused(root):
    handle, _base, _outside = root
    with pytest.raises(rootfs.RootfsError, match=r"'\.\.'"):
        handle.make("/a/../../etc")


def test_symlinked_special_directory_is_refused(root):
    handle, base, outside = root
    (base / "proc").symlink_to(str(outside))
    with pytest.raises(rootfs.RootfsError, match="symlink"):
        handle.refuse_symlinked("/proc")
    (base / "dev").write_text("not a directory")
    with pytest.raises(rootfs.RootfsError, match="not a directory"):
        handle.refuse_symlinked("/dev")
    handle.refuse_symlinked("/sys")  # missing is fine: it is created


def test_symlink_loop_is_refused(root):
    handle, base, _outside = root
    (base / "loop").symlink_to("/loop")
    with pytest.raises(rootfs.RootfsError, match="too many symlinks"):
        handle.make("/loop/x")
