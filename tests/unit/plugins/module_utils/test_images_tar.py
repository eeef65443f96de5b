"""The tar header reader against what tarfile writes (ustar, GNU, PAX) and against broken streams."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils.images_tar import (
    BLOCK,
    DIRECTORY,
    HARDLINK,
    REGULAR,
    SPARSE,
    SYMLINK,
    MalformedTar,
    TarReader,
    TruncatedTar,
    _number,
    header_checksum_ok,
    pax_records,
    pax_time_ns,
)


def make_tar(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes]:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.size = len(data)
    member.mtime = attrs.pop("mtime", 1_700_000_000)
    for key, value in attrs.items():
        setattr(member, key, value)
    return member, data


def chunks(blob: bytes, size: int):
    """A read_chunk function handing out blob in pieces of size bytes."""
    pieces = iter([blob[i:i + size] for i in range(0, len(blob), size)])
    return lambda: next(pieces, b"")


def members(blob: bytes, size: int = 1 << 20) -> list[tuple]:
    """(member, data) for every member; data read through write_data into a pipe-free temp file."""
    reader = TarReader(chunks(blob, size))
    found = []
    while (member := reader.next()) is not None:
        data = b""
        if member.type == REGULAR:
            read_fd, write_fd = os.pipe()
            try:
                reader.write_data(write_fd)
                os.close(write_fd)
                write_fd = -1
                data = os.read(read_fd, 1 << 20)
            finally:
                os.close(read_fd)
                if write_fd >= 0:
                    os.close(write_fd)
        found.append((member, data))
    return found


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("chunk", [1 << 20, 512, 7])
def test_reads_what_tarfile_writes(fmt, chunk):
    blob = make_tar(
        info("etc", tarfile.DIRTYPE, mode=0o755),
        info("etc/passwd", data=b"root:x:0:0\n", mode=0o644, uid=0, gid=0),
        info("bin/ping", data=b"\x7fELF" * 300, mode=0o4755, uid=1000, gid=1001, mtime=1_600_000_000),
        info("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"),
        info("bin/ping6", tarfile.LNKTYPE, linkname="bin/ping"),
        info("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        info("empty", data=b""),
        fmt=fmt,
    )
    found = members(blob, chunk)
    assert [(m.name, m.type) for m, _data in found] == [
        ("etc", DIRECTORY), ("etc/passwd", REGULAR), ("bin/ping", REGULAR), ("bin/sh", SYMLINK),
        ("bin/ping6", HARDLINK), ("dev/null", b"3"), ("empty", REGULAR)]
    ping, data = found[2]
    assert (ping.mode, ping.uid, ping.gid, ping.mtime_ns, ping.size) == (0o4755, 1000, 1001, 1_600_000_000 * 10**9,
                                                                         1200)
    assert data == b"\x7fELF" * 300 and found[1][1] == b"root:x:0:0\n"
    assert found[3][0].linkname == "/bin/busybox" and found[4][0].linkname == "bin/ping"
    assert (found[5][0].devmajor, found[5][0].devminor) == (1, 3)


def test_unread_data_is_skipped():
    blob = make_tar(info("a", data=b"x" * 5000), info("b", data=b"y"))
    reader = TarReader(chunks(blob, 1000))
    assert reader.next().name == "a"
    assert reader.next().name == "b"
    assert reader.next() is None


def test_ustar_prefix_names():
    name = "/".join(["directory"] * 12) + "/file"  # over 100 bytes: ustar splits it into prefix and name
    blob = make_tar(info(name, data=b"x"), fmt=tarfile.USTAR_FORMAT)
    assert members(blob)[0][0].name == name


def test_gnu_longname_and_longlink():
    long_name, long_link = "d/" * 80 + "file", "t/" * 90 + "target"
    blob = make_tar(info(long_name, data=b"x"), info("link", tarfile.SYMTYPE, linkname=long_link),
                    info(long_name + "2", tarfile.LNKTYPE, linkname=long_name), fmt=tarfile.GNU_FORMAT)
    assert b"././@LongLink" in blob
    found = [m for m, _data in members(blob)]
    assert found[0].name == long_name
    assert found[1].linkname == long_link
    assert (found[2].name, found[2].linkname) == (long_name + "2", long_name)


def test_pax_long_names_xattrs_and_times():
    ping = info("p" * 150, data=b"data", uid=3_000_000, gid=4_000_000)  # ids past ustar's 7 octal digits
    ping[0].pax_headers = {
        "SCHILY.xattr.security.capability": bytes.fromhex("0100000200040000").decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.note": "hello",
        "mtime": "1700000000.123456789",
        "atime": "1.5",
    }
    link = info("l", tarfile.SYMTYPE, linkname="t" * 200)
    found = members(make_tar(ping, link))
    member, data = found[0]
    assert member.name == "p" * 150 and data == b"data"
    assert (member.uid, member.gid) == (3_000_000, 4_000_000)
    assert member.mtime_ns == 1_700_000_000_123_456_789
    assert dict(member.xattrs) == {"security.capability": bytes.fromhex("0100000200040000"),
                                   "user.note": b"hello"}
    assert found[1][0].linkname == "t" * 200


def test_pax_global_headers_apply_to_later_members():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"SCHILY.xattr.user.all": "yes"}) as archive:
        archive.addfile(*[info("a", data=b"1")[0], io.BytesIO(b"1")])
        archive.addfile(*[info("b", data=b"2")[0], io.BytesIO(b"2")])
    found = [m for m, _data in members(buffer.getvalue())]
    assert [m.xattrs for m in found] == [[("user.all", b"yes")]] * 2


def test_base256_numbers():
    assert _number(b"\x80" + (10**12).to_bytes(11, "big"), "size", 0) == 10**12
    assert _number(b"\xff" * 11 + b"\xfe", "mtime", 0) == -2
    assert _number(b"0000644\0", "mode", 0) == 0o644
    assert _number(b"  644 \0\0", "mode", 0) == 0o644
    assert _number(b"12\0junk\0", "mode", 0) == 0o12
    assert _number(b"\0" * 8, "mode", 0) == 0
    with pytest.raises(MalformedTar, match="not octal"):
        _number(b"0000899\0", "mode", 0)
    with pytest.raises(MalformedTar, match="neither octal nor base-256"):
        _number(b"\x90" + bytes(7), "uid", 0)
    # tarfile's GNU format writes large ids and negative times in base-256.
    blob = make_tar(info("big", data=b"x", uid=10**10, mtime=-86400), fmt=tarfile.GNU_FORMAT)
    member = members(blob)[0][0]
    assert (member.uid, member.mtime_ns) == (10**10, -86400 * 10**9)


def test_checksums():
    blob = bytearray(make_tar(info("a", data=b"x"), fmt=tarfile.USTAR_FORMAT))
    assert header_checksum_ok(bytes(blob[:BLOCK]))
    blob[20] ^= 0x01  # a byte of the name
    assert not header_checksum_ok(bytes(blob[:BLOCK]))
    with pytest.raises(MalformedTar, match="offset 0 has a wrong checksum"):
        members(bytes(blob))
    # A header with high bytes, its checksum summed over signed chars (old tars), is accepted too.
    header = bytearray(BLOCK)
    header[:4] = "é".encode() + b"x\xff"
    header[156:157] = b"0"
    signed = sum(b - 256 if b > 127 else b for b in header) + 8 * 0x20
    assert signed != sum(header) + 8 * 0x20
    header[148:156] = f"{signed:06o}\0 ".encode()
    assert header_checksum_ok(bytes(header))


def test_a_corrupt_header_in_the_middle_is_an_error():
    first = make_tar(info("a", data=b"x"), fmt=tarfile.USTAR_FORMAT)[:2 * BLOCK]
    second = bytearray(make_tar(info("b", data=b"y"), fmt=tarfile.USTAR_FORMAT))
    second[0] ^= 0x20
    with pytest.raises(MalformedTar, match=f"offset {2 * BLOCK} has a wrong checksum"):
        members(first + bytes(second))


def test_truncation_and_empty_streams():
    blob = make_tar(info("big", data=os.urandom(10_000)), fmt=tarfile.USTAR_FORMAT)
    with pytest.raises(TruncatedTar, match="inside a member's data"):
        members(blob[:5000], 1000)
    with pytest.raises(TruncatedTar, match="inside the header at offset 0"):
        members(blob[:300])
    with pytest.raises(MalformedTar, match="empty"):
        members(b"")
    # Ending at a member boundary, with no end-of-archive blocks, is accepted (as tarfile and GNU tar do).
    assert [m.name for m, _data in members(blob[:BLOCK + 10_240])] == ["big"]
    pax = make_tar(info("p" * 150, data=b"x"))
    with pytest.raises(TruncatedTar, match="extended header"):
        members(pax[:BLOCK + 10])
    with pytest.raises(MalformedTar, match="ends after an extended header"):
        members(pax[:2 * BLOCK] + bytes(2 * BLOCK))


def test_malformed_pax_records():
    assert pax_records(b"12 path=abc\n14 mtime=1.25\n") == {b"path": b"abc", b"mtime": b"1.25"}
    for payload, message in [
        (b"x path=abc\n", "does not start with its length"),
        (b"99 path=abc\n", "length does not match"),
        (b"11 path=abc\n", "length does not match"),
        (b"9 pathab\n", "no KEY=VALUE"),
    ]:
        with pytest.raises(MalformedTar, match=message):
            pax_records(payload)
    assert pax_time_ns(b"-1.5") == -1_500_000_000
    assert pax_time_ns(b"12") == 12 * 10**9
    with pytest.raises(MalformedTar, match="not a decimal time"):
        pax_time_ns(b"1e9")
    member = info("a", data=b"x")
    member[0].pax_headers = {"uid": "12x"}
    with pytest.raises(MalformedTar, match="uid"):
        members(make_tar(member))


def test_types_layers_do_not_hold():
    sparse = info("sparse", data=b"x")
    sparse[0].pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
    assert members(make_tar(sparse))[0][0].type == SPARSE
    # Old-style regular members ('\0'), and such a member whose name ends in / is a directory.
    old = make_tar(info("file", tarfile.AREGTYPE, data=b"x"), info("dir/", tarfile.AREGTYPE),
                   info("contiguous", tarfile.CONTTYPE, data=b"y"), fmt=tarfile.USTAR_FORMAT)
    assert [(m.name, m.type, d) for m, d in members(old)] == [("file", REGULAR, b"x"), ("dir", DIRECTORY, b""),
                                                              ("contiguous", REGULAR, b"y")]
    volume = make_tar(info("label", b"V"), fmt=tarfile.GNU_FORMAT)
    assert members(volume)[0][0].type == b"V"


def test_a_negative_size_is_refused():
    header = bytearray(make_tar(info("a", data=b""), fmt=tarfile.GNU_FORMAT)[:BLOCK])
    header[124:136] = b"\xff" * 12
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    with pytest.raises(MalformedTar, match="negative size"):
        members(bytes(header) + bytes(2 * BLOCK))
