"""The layer extractor on real files: faithful metadata, overlayfs whiteouts, and every refused member."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils.images_extract import (
    OPAQUE_XATTR,
    CorruptLayer,
    UnsafeMember,
    extract_layer,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

# A file capability blob (cap_net_bind_service=ep, VFS_CAP_REVISION_2), as setcap writes it.
CAP_NET_BIND = bytes.fromhex("0100000200040000000000000000000000000000")


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = attrs.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.mtime = attrs.pop("mtime", 1_700_000_000)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def make_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def fresh(tmp_path: Path, name: str = "layer") -> Path:
    root = tmp_path / name
    root.mkdir()
    return root


def extract(tmp_path: Path, blob: bytes, **kwargs):
    root = fresh(tmp_path)
    return extract_layer(io.BytesIO(blob), str(root), zstd=shutil.which("zstd"), **kwargs), root


def test_faithful_metadata(tmp_path: Path):
    ping = member("bin/ping", data=b"\x7fELF", mode=0o4755, uid=0, gid=0)
    ping[0].pax_headers = {"SCHILY.xattr.security.capability": CAP_NET_BIND.decode("utf-8", "surrogateescape"),
                           "SCHILY.xattr.user.note": "hello"}
    blob = make_tar(
        member("./", tarfile.DIRTYPE, mode=0o755),
        member("bin", tarfile.DIRTYPE),
        ping,
        member("tmp", tarfile.DIRTYPE, mode=0o1777),
        member("usr/bin/wall", data=b"wall", mode=0o2755, gid=5),
        member("home/app/file", data=b"mine", mode=0o600, uid=1000, gid=1000, mtime=1_600_000_000),
        member("home/app/link", tarfile.LNKTYPE, linkname="home/app/file"),
        member("etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/UTC", uid=7, gid=8),
        member("bin/sh", tarfile.SYMTYPE, linkname="busybox"),
        member("run/fifo", tarfile.FIFOTYPE, mode=0o640),
    )
    (result, digest, diff_id), root = extract(tmp_path, blob)
    assert digest == diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()
    ping_stat = os.lstat(root / "bin/ping")
    assert stat.S_IMODE(ping_stat.st_mode) == 0o4755
    assert os.getxattr(root / "bin/ping", "security.capability") == CAP_NET_BIND
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    wall = os.lstat(root / "usr/bin/wall")
    assert stat.S_IMODE(wall.st_mode) == 0o2755 and wall.st_gid == 5
    home = os.lstat(root / "home/app/file")
    assert (home.st_uid, home.st_gid, home.st_mtime) == (1000, 1000, 1_600_000_000)
    assert os.lstat(root / "home/app/link").st_ino == home.st_ino
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.lstat(root / "etc/localtime").st_uid == 7
    assert os.readlink(root / "bin/sh") == "busybox"
    assert stat.S_ISFIFO(os.lstat(root / "run/fifo").st_mode)
    # Directories get their mtime after their children were written.
    assert os.lstat(root / "bin").st_mtime == 1_700_000_000
    # Parents without an entry of their own are made and reported.
    assert set(result.implicit_parents) == {"usr", "usr/bin", "home", "home/app", "etc", "run"}
    assert result.implicit_parents["usr/bin"] == "usr/bin/wall"
    assert result.bytes == len(b"\x7fELFwallmine")


def test_whiteouts_become_overlayfs_form(tmp_path: Path):
    blob = make_tar(
        member("etc", tarfile.DIRTYPE),
        member("etc/.wh.motd"),
        member("var", tarfile.DIRTYPE),
        member("var/cache", tarfile.DIRTYPE),
        member("var/cache/.wh..wh..opq"),
        member("var/cache/new", data=b"x"),
        member(".wh..wh.plnk"),
    )
    root = extract(tmp_path, blob)[1]
    motd = os.lstat(root / "etc/motd")
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0
    assert os.getxattr(root / "var/cache", OPAQUE_XATTR) == b"y"
    assert (root / "var/cache/new").read_bytes() == b"x"
    assert sorted(os.listdir(root)) == ["etc", "var"]


def test_later_members_replace_earlier_ones(tmp_path: Path):
    blob = make_tar(
        member("a", tarfile.DIRTYPE),
        member("a/inner", data=b"1"),
        member("a", tarfile.SYMTYPE, linkname="elsewhere"),
        member("b", data=b"file first"),
        member("b", tarfile.DIRTYPE, mode=0o700),
        member("c", data=b"old"),
        member("c", data=b"new"),
    )
    root = extract(tmp_path, blob)[1]
    assert os.readlink(root / "a") == "elsewhere"
    assert stat.S_ISDIR(os.lstat(root / "b").st_mode)
    assert (root / "c").read_bytes() == b"new"


def test_devices_only_when_allowed(tmp_path: Path):
    blob = make_tar(member("dev", tarfile.DIRTYPE), member("dev/null", tarfile.CHRTYPE, mode=0o666,
                                                           devmajor=1, devminor=3))
    (result, *_digests), root = extract(tmp_path, blob)
    assert result.skipped_devices == ["dev/null"] and not (root / "dev/null").exists()
    other = fresh(tmp_path, "other")
    extract_layer(io.BytesIO(blob), str(other), allow_devices=True)
    null = os.lstat(other / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3


@pytest.mark.parametrize(("members", "message", "name"), [
    ([member("/etc/passwd", data=b"x")], "absolute path", "/etc/passwd"),
    ([member("../escape", data=b"x")], "climbs out", "../escape"),
    ([member("a/../../escape", data=b"x")], "climbs out", "a/../../escape"),
    ([member("x", tarfile.LNKTYPE, linkname="../../etc/shadow")], "climbs out", "x"),
    ([member("x", tarfile.LNKTYPE, linkname="/etc/shadow")], "absolute path", "x"),
    ([member("x", tarfile.LNKTYPE, linkname="etc/shadow")], "not a file written earlier", "x"),
    ([member("d", tarfile.DIRTYPE), member("x", tarfile.LNKTYPE, linkname="d")], "not a file written earlier", "x"),
    ([member("evil", tarfile.SYMTYPE, linkname="/etc"), member("evil/passwd", data=b"x")],
     "through the symlink 'evil'", "evil/passwd"),
    ([member("evil", tarfile.SYMTYPE, linkname="/"),
      member("evil/etc/passwd", tarfile.LNKTYPE, linkname="evil")],
     "through the symlink 'evil'", "evil/etc/passwd"),
    ([member("up", tarfile.SYMTYPE, linkname=".."), member("up/x", tarfile.SYMTYPE, linkname="y")],
     "through the symlink 'up'", "up/x"),
    ([member("d", tarfile.SYMTYPE, linkname="/tmp"), member("d/.wh.x")], "through the symlink 'd'", "d/.wh.x"),
    ([member("file", data=b"x"), member("file/child", data=b"x")], "made it a file", "file/child"),
    ([member("a" * 256, data=b"x")], "NAME_MAX", "a" * 200),
    ([member("/".join(["abcdefgh"] * 500), data=b"x")], "PATH_MAX", "/".join(["abcdefgh"] * 500)[:200]),
    ([member(".", tarfile.SYMTYPE, linkname="/")], "names the layer root", "."),
])
def test_malicious_members_are_refused_by_name(tmp_path: Path, members, message, name):
    outside = tmp_path / "outside-marker"
    with pytest.raises(UnsafeMember) as caught:
        extract(tmp_path, make_tar(member("ok", data=b"fine"), *members))
    assert message in str(caught.value)
    assert caught.value.details["member"] == name
    # Nothing was written next to the layer directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer"]
    assert not outside.exists()


def test_digest_and_diff_id_are_checked(tmp_path: Path):
    blob = make_tar(member("a", data=b"x"))
    compressed = gzip.compress(blob)
    right = "sha256:" + hashlib.sha256(compressed).hexdigest()
    digest = extract(tmp_path, compressed, digest=right, diff_id="sha256:" + hashlib.sha256(blob).hexdigest())[0][1]
    assert digest == right
    with pytest.raises(CorruptLayer, match="blob digest mismatch: expected sha256:0+, got " + right):
        extract_layer(io.BytesIO(compressed), str(fresh(tmp_path, "a")), digest="sha256:" + "0" * 64)
    with pytest.raises(CorruptLayer, match="diff_id mismatch"):
        extract_layer(io.BytesIO(compressed), str(fresh(tmp_path, "b")), diff_id="sha256:" + "1" * 64)


def test_truncated_and_corrupt_streams(tmp_path: Path):
    blob = make_tar(member("big", data=os.urandom(200_000)))
    compressed = gzip.compress(blob)
    with pytest.raises(CorruptLayer, match="gzip stream ends early"):
        extract(tmp_path, compressed[: len(compressed) // 2])
    corrupt = bytearray(compressed)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(CorruptLayer):
        extract_layer(io.BytesIO(bytes(corrupt)), str(fresh(tmp_path, "a")))
    with pytest.raises(CorruptLayer, match=r"(truncated in member|ends inside member) 'big'"):
        extract_layer(io.BytesIO(blob[:100_000]), str(fresh(tmp_path, "b")))


def test_zstd_and_multi_member_gzip(tmp_path: Path):
    blob = make_tar(member("a", data=b"zstd content" * 1000))
    zstd = subprocess.run(["zstd", "-q", "-c"], input=blob, capture_output=True, check=True).stdout
    (*_rest, diff_id), root = extract(tmp_path, zstd)
    assert diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert (root / "a").read_bytes() == b"zstd content" * 1000
    half = len(blob) // 2
    multi = gzip.compress(blob[:half]) + gzip.compress(blob[half:])
    diff_id = extract_layer(io.BytesIO(multi), str(fresh(tmp_path, "other")))[2]
    assert diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()
    with pytest.raises(CorruptLayer, match="zstd"):
        extract_layer(io.BytesIO(zstd[:-20]), str(fresh(tmp_path, "broken")), zstd=shutil.which("zstd"))
    with pytest.raises(CorruptLayer, match="`zstd` program is not installed"):
        extract_layer(io.BytesIO(zstd), str(fresh(tmp_path, "nozstd")))


def test_refuses_a_directory_that_is_not_empty(tmp_path: Path):
    root = fresh(tmp_path)
    (root / "stale").write_text("x")
    with pytest.raises(NsboxError, match="not empty"):
        extract_layer(io.BytesIO(make_tar(member("a", data=b"x"))), str(root))


def test_uncompressed_files_in_small_chunks(tmp_path: Path, monkeypatch):
    """A plain tar from a file is read into reused buffers; members and headers straddle them."""
    from ansible_collections.nsbox.primitives.plugins.module_utils import images_extract

    monkeypatch.setattr(images_extract, "CHUNK", 1000)
    payloads = {f"d/f{i}": os.urandom(i * 397) for i in range(12)}
    blob = make_tar(*(member(name, data=data) for name, data in payloads.items()))
    path = tmp_path / "layer.tar"
    path.write_bytes(blob)
    root = fresh(tmp_path)
    with open(path, "rb") as raw:
        result, digest, diff_id = extract_layer(raw, str(root), digest="sha256:" + hashlib.sha256(blob).hexdigest())
    assert digest == diff_id
    assert {name: (root / name).read_bytes() for name in payloads} == payloads
    assert result.bytes == sum(len(data) for data in payloads.values())


def test_exact_pax_mtimes(tmp_path: Path):
    precise = member("precise", data=b"x")
    precise[0].pax_headers = {"mtime": "1700000000.123456789"}
    root = extract(tmp_path, make_tar(precise))[1]
    assert os.lstat(root / "precise").st_mtime_ns == 1_700_000_000_123_456_789


def test_corrupt_header_and_sparse_members(tmp_path: Path):
    blob = bytearray(make_tar(member("a", data=b"x"), member("b", data=b"y")))
    second = blob.index(b"b\0\0\0")  # the name field of b's header
    blob[second + 1] = ord("!")
    with pytest.raises(CorruptLayer, match="wrong checksum"):
        extract(tmp_path, bytes(blob))
    sparse = member("holes", data=b"x")
    sparse[0].pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
    with pytest.raises(UnsafeMember, match="sparse") as caught:
        extract_layer(io.BytesIO(make_tar(sparse)), str(fresh(tmp_path, "sparse")))
    assert caught.value.details["member"] == "holes"
