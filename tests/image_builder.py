"""Test images built offline with umoci and skopeo from the host's packages (see rootfs_builder.py).

Two images share a busybox base layer:

- `busybox`: base + a layer that deletes a file of the base (`.wh.hostname`), replaces a directory
  opaquely (`.wh..wh..opq`), and adds a setuid file, a file with a capability, a hardlink, an absolute
  symlink and a sticky directory.
- `nginx`: base + the host's nginx with its libraries and configuration.

Also: the same images as oci-archive, docker-archive, a `docker export`-style tarball, and malicious
layers for the refusal tests.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.nsbox.primitives.plugins.module_utils import syscalls
from rootfs_builder import busybox_rootfs, nginx_rootfs

CAP_NET_BIND = bytes.fromhex("0100000200040000000000000000000000000000")
MTIME = 1_700_000_000


def run(*command: str | os.PathLike, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], check=True, capture_output=True, text=True, **kwargs)


def _tar_tree(root: Path, out: Path, only: list[str] | None = None) -> Path:
    """A layer tar of root (or of the given top-level paths inside it), numeric owners, fixed mtimes."""
    def fix(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""
        info.mtime = MTIME
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in only or sorted(os.listdir(root)):
            archive.add(root / name, arcname=name, filter=fix)
    return out


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = attrs.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.mtime = attrs.pop("mtime", MTIME)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def write_tar(out: Path, *entries: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def changes_layer(out: Path) -> Path:
    ping = _entry("bin/ping6", data=b"#!/bin/sh\necho ping\n", mode=0o755)
    ping[0].pax_headers = {"SCHILY.xattr.security.capability": CAP_NET_BIND.decode("utf-8", "surrogateescape")}
    return write_tar(
        out,
        _entry("etc", tarfile.DIRTYPE),
        _entry("etc/.wh.hostname"),
        _entry("opt", tarfile.DIRTYPE),
        _entry("opt/data", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000),
        _entry("opt/data/.wh..wh..opq"),
        _entry("opt/data/new.txt", data=b"after the opaque replacement\n", uid=1000, gid=1000),
        _entry("bin", tarfile.DIRTYPE),
        ping,
        _entry("bin/su-like", data=b"#!/bin/sh\n", mode=0o4755),
        _entry("bin/su-hard", tarfile.LNKTYPE, linkname="bin/su-like"),
        _entry("etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/UTC"),
        _entry("var", tarfile.DIRTYPE),
        _entry("var/tmp", tarfile.DIRTYPE, mode=0o1777),
    )


@dataclass
class TestImages:
    root: Path
    layout: Path
    base_tar: Path

    def tag(self, name: str) -> str:
        return f"{self.layout}:{name}"


def build_images(root: Path) -> TestImages:
    """An OCI layout with the busybox and nginx images (see the module docstring)."""
    root.mkdir(parents=True, exist_ok=True)
    base = busybox_rootfs(root / "base-tree")
    (base / "opt" / "data").mkdir(parents=True)
    (base / "opt" / "data" / "old-1.txt").write_text("hidden by the opaque directory\n")
    (base / "opt" / "data" / "old-2.txt").write_text("hidden too\n")
    base_tar = _tar_tree(base, root / "base.tar")
    nginx_tree = nginx_rootfs(root / "nginx-tree")
    nginx_paths = ["etc", "usr", "var", "lib"] + [n for n in ("lib64",) if (nginx_tree / n).exists()]
    nginx_tar = _tar_tree(nginx_tree, root / "nginx.tar", only=nginx_paths)
    changes = changes_layer(root / "changes.tar")
    layout = root / "layout"
    run("umoci", "init", "--layout", layout)
    for name, layers, config in (
        ("busybox", [base_tar, changes], ["--config.cmd", "/bin/sh", "--config.env", "PATH=/usr/bin:/bin",
                                          "--config.workingdir", "/root", "--config.label", "purpose=test"]),
        ("nginx", [base_tar, nginx_tar], ["--config.entrypoint", "/usr/sbin/nginx", "--config.cmd", "-g",
                                          "--config.cmd", "daemon off;", "--config.exposedports", "80/tcp",
                                          "--config.stopsignal", "SIGQUIT", "--config.user", "0:0"]),
    ):
        run("umoci", "new", "--image", f"{layout}:{name}")
        for layer in layers:
            run("umoci", "raw", "add-layer", "--image", f"{layout}:{name}", layer)
        run("umoci", "config", "--image", f"{layout}:{name}", *config)
    shutil.rmtree(root / "base-tree")
    shutil.rmtree(root / "nginx-tree")
    return TestImages(root, layout, base_tar)


def skopeo(*args: str | os.PathLike) -> subprocess.CompletedProcess:
    return run("skopeo", "--insecure-policy", *args)


def umoci_unpack(layout_tag: str, bundle: Path) -> Path:
    run("umoci", "unpack", "--image", layout_tag, bundle)
    return bundle / "rootfs"


def tree_listing(root: Path) -> dict[str, tuple]:
    """Names, types, modes, owners, link targets, contents and capabilities of every entry below root."""
    listing = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            kind = st.st_mode & 0o170000
            detail: object = None
            if kind == 0o120000:
                detail = os.readlink(path)
            elif kind == 0o100000:
                detail = path.read_bytes()
            try:
                cap = os.getxattr(path, "security.capability", follow_symlinks=False)
            except OSError:
                cap = None
            listing[rel] = (kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, detail, cap, st.st_nlink
                            if kind == 0o100000 else None)
    return listing


@contextlib.contextmanager
def overlay_of(lowerdirs: list[str], target: Path):
    target.mkdir()
    syscalls.mount("overlay", str(target), "overlay", syscalls.MS_RDONLY, "lowerdir=" + ":".join(lowerdirs))
    try:
        yield target
    finally:
        syscalls.umount2(str(target), syscalls.MNT_DETACH)


def assert_same_tree(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected), set(actual) ^ set(expected)
    different = {name: (actual[name], expected[name]) for name in expected if actual[name] != expected[name]}
    assert not different, different
