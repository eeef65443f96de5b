# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small reader for the tar streams of image layers: ustar, GNU (longname, longlink) and PAX headers.

Python's tarfile spends tens of microseconds on every member (TarInfo objects, generic PAX handling,
buffered copies of every header), which is most of the unpack time of a layer of small files. This
reader parses only what layers hold and hands member data out as views of the chunks it was given, so
the extractor writes them with no copy in Python.

It is strict where tarfile is lenient: a header with a wrong checksum in the middle of the stream is an
error here, not a silent end of the archive. What layers never hold is reported as such: sparse members
(GNU tar --sparse) come back with type SPARSE for the extractor to refuse by name; multi-volume parts and
unknown types come back with their own type letter.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

BLOCK = 512

# Normalised member types (tar typeflags; '\0' and '7' are folded into REGULAR).
REGULAR, HARDLINK, SYMLINK, CHAR_DEVICE, BLOCK_DEVICE, DIRECTORY, FIFO = (b"0", b"1", b"2", b"3", b"4", b"5",
                                                                          b"6")
SPARSE = b"S"
_NO_DATA = (HARDLINK, SYMLINK, CHAR_DEVICE, BLOCK_DEVICE, DIRECTORY, FIFO)
_OLD_REGULAR, _CONTIGUOUS = b"\0", b"7"
_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
_EXTENSIONS = (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK)
# Extension payloads are names and xattrs: a few kilobytes. A bound keeps a corrupt size from allocating
# gigabytes.
MAX_EXTENSION = 16 << 20
POSIX_MAGIC = b"ustar\x00"
ZERO_BLOCK = bytes(BLOCK)
_NUL_SPACE = b"\0 "
XATTR_PREFIX = b"SCHILY.xattr."
# What GNU tar's posix format records for every member, and the extractor does not set (atime is set to
# mtime, as tarfile does) or has no use for (names of owners: layers are extracted by numeric ids).
_IGNORED_PAX = frozenset((b"atime", b"ctime", b"uname", b"gname", b"hdrcharset", b"comment"))


class MalformedTar(ValueError):
    """The stream is not a well-formed tar archive; the message says where."""


class TruncatedTar(MalformedTar):
    """The stream ends inside a header or a member's data."""


@dataclass(slots=True)
class TarMember:
    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    # (name, raw value) as the archive holds them (SCHILY.xattr.* PAX records); filtering is the caller's.
    xattrs: list[tuple[str, bytes]] = field(default_factory=list)
    offset: int = 0  # of the member's (first) header in the stream, for messages


def _decode(raw: bytes) -> str:
    # As tarfile does: UTF-8, with undecodable bytes kept through surrogateescape (os functions
    # encode them back to the very same bytes).
    return raw.decode("utf-8", "surrogateescape")


def _number(raw: bytes, what: str, offset: int) -> int:
    """A numeric header field: octal digits (NUL- or space-terminated) or GNU/star base-256."""
    try:
        # The common case, in one call (int() also takes a sign, which the callers check where it matters).
        return int(raw.rstrip(_NUL_SPACE), 8)
    except ValueError:
        pass
    lead = raw[0]
    if lead & 0x80:
        if lead == 0x80:
            return int.from_bytes(raw[1:], "big")
        if lead == 0xFF:
            return int.from_bytes(raw, "big", signed=True)
        raise MalformedTar(f"tar header at offset {offset}: the {what} field is neither octal nor base-256")
    digits = raw.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        raise MalformedTar(f"tar header at offset {offset}: the {what} field {digits[:20]!r} is not octal") from None


def header_checksum_ok(block: bytes) -> bool:
    """The sum of the header's bytes with the checksum field read as spaces, as the field says.

    Each half of a block sums to at most 256 * 255 < 65521, so the low half of an Adler-32 (1 + the sum
    of the bytes, modulo 65521) is each half's exact sum, computed in C: four times faster than sum().
    """
    view = memoryview(block)
    total = (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2
    total += 8 * 0x20 - sum(block[148:156])
    try:
        stored = _number(block[148:156], "checksum", 0)
    except MalformedTar:
        return False
    if total == stored:
        return True
    # Some old tars summed signed chars; tarfile and GNU tar accept those too.
    return total - 256 * sum(1 for b in block[:148] + block[156:] if b > 127) == stored


def pax_records(payload: bytes, offset: int = 0) -> dict[bytes, bytes]:
    """The records of a PAX extended header: "LENGTH KEY=VALUE\\n", LENGTH counting the whole record."""
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(payload)
    while pos < end and payload[pos] != 0:
        space = payload.find(b" ", pos, pos + 20)
        digits = payload[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise MalformedTar(f"PAX header at offset {offset}: a record does not start with its length")
        stop = pos + int(digits)
        if stop > end or stop <= space + 1 or payload[stop - 1] != 0x0A:
            raise MalformedTar(f"PAX header at offset {offset}: a record's length does not match its contents")
        key, equals, value = payload[space + 1:stop - 1].partition(b"=")
        if not equals or not key:
            raise MalformedTar(f"PAX header at offset {offset}: a record has no KEY=VALUE")
        records[key] = value
        pos = stop
    return records


def _pax_number(value: bytes, key: bytes, offset: int) -> int:
    if not value.isdigit():
        raise MalformedTar(f"PAX header at offset {offset}: {_decode(key)} {value[:20]!r} is not a number")
    return int(value)


def pax_time_ns(value: bytes, offset: int = 0) -> int:
    """A PAX time (decimal seconds, maybe negative, maybe with a fraction) in exact nanoseconds."""
    negative = value.startswith(b"-")
    whole, _dot, fraction = value.lstrip(b"-").partition(b".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise MalformedTar(f"PAX header at offset {offset}: mtime {value[:30]!r} is not a decimal time")
    ns = int(whole) * 1_000_000_000 + int((fraction + b"000000000")[:9])
    return -ns if negative else ns


class TarReader:
    """Tar members, one header at a time, from a function that returns the stream in chunks (b"" at its end).

    After next() returns a member, its data is the next thing in the stream: write_data() or skip_data()
    takes it (and its padding) before the next call of next(). The reader keeps no view of a chunk once it
    asks for the next one (headers and extension payloads are copies), so read_chunk may hand out the same
    buffer again.
    """

    def __init__(self, read_chunk: Callable[[], bytes | memoryview]) -> None:
        self._read_chunk = read_chunk
        self._chunk = memoryview(b"")
        self._pos = 0
        self._base = 0  # stream offset of self._chunk[0]
        self._global: dict[bytes, bytes] = {}
        self._seen_any = False
        # The current member's data not read yet, and the padding to the next block after it.
        self._data_left = 0
        self._padding = 0

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def _fill(self) -> bool:
        chunk = self._read_chunk()
        if not chunk:
            return False
        self._base += len(self._chunk)
        self._chunk = memoryview(chunk)
        self._pos = 0
        return True

    def _take(self, size: int) -> bytes:
        """Exactly size bytes as a copy (headers, extension payloads), or fewer at the end of the stream."""
        pos = self._pos
        if pos + size <= len(self._chunk):
            self._pos = pos + size
            return self._chunk[pos:pos + size].tobytes()
        parts = []
        need = size
        while need:
            available = len(self._chunk) - self._pos
            if not available:
                if not self._fill():
                    break
                continue
            step = min(available, need)
            parts.append(self._chunk[self._pos:self._pos + step].tobytes())
            self._pos += step
            need -= step
        return b"".join(parts)

    def _skip(self, size: int) -> None:
        while size:
            available = len(self._chunk) - self._pos
            if not available:
                if not self._fill():
                    raise TruncatedTar("the tar stream ends inside a member's data (truncated)")
                continue
            step = min(available, size)
            self._pos += step
            size -= step

    def write_data(self, fd: int) -> None:
        """Write the current member's data to fd, straight from the chunks, and step over its padding."""
        size, self._data_left = self._data_left, 0
        while size:
            available = len(self._chunk) - self._pos
            if not available:
                if not self._fill():
                    self._data_left = size
                    raise TruncatedTar("the tar stream ends inside a member's data (truncated)")
                continue
            step = min(available, size)
            view = self._chunk[self._pos:self._pos + step]
            while view:
                view = view[os.write(fd, view):]
            self._pos += step
            size -= step
        padding, self._padding = self._padding, 0
        self._skip(padding)

    def skip_data(self) -> None:
        """Step over the current member's data (next() does it too, when the caller wants none of it)."""
        size = self._data_left + self._padding
        self._data_left = self._padding = 0
        self._skip(size)

    def next(self) -> TarMember | None:
        """The next member, or None at the end of the archive."""
        if self._data_left or self._padding:
            self.skip_data()
        offset = self.offset
        longname = longlink = pax = None
        while True:
            header_offset = self.offset
            # The common case inline (this runs once or twice per member; calls cost here).
            pos = self._pos
            if pos + BLOCK <= len(self._chunk):
                self._pos = pos + BLOCK
                block = self._chunk[pos:pos + BLOCK].tobytes()
            else:
                block = self._take(BLOCK)
                if len(block) < BLOCK:
                    if not block and not self._seen_any:
                        raise MalformedTar("the tar stream is empty")
                    if not block and pax is None and longname is None and longlink is None:
                        return None  # no end-of-archive blocks: tarfile and GNU tar accept that too
                    raise TruncatedTar(f"the tar stream ends inside the header at offset {header_offset} "
                                       "(truncated)")
            if block == ZERO_BLOCK:
                if pax is not None or longname is not None or longlink is not None:
                    raise MalformedTar(f"the archive ends after an extended header (offset {offset}) "
                                       "without its member")
                return None  # end of archive; what follows is padding, read by the caller for the digests
            if not header_checksum_ok(block):
                raise MalformedTar(f"the tar header at offset {header_offset} has a wrong checksum "
                                   "(not a tar stream, or corrupt)")
            self._seen_any = True
            kind = block[156:157]
            size = _number(block[124:136], "size", header_offset)
            if size < 0:
                raise MalformedTar(f"the tar header at offset {header_offset} has a negative size")
            if kind in _EXTENSIONS:
                if size > MAX_EXTENSION:
                    raise MalformedTar(f"the extended header at offset {header_offset} claims {size} bytes")
                padded = size + (-size % BLOCK)
                payload = self._take(padded)
                if len(payload) < padded:
                    raise TruncatedTar(f"the tar stream ends inside the extended header at offset "
                                       f"{header_offset} (truncated)")
                payload = payload[:size]
                if kind == _PAX_LOCAL:
                    records = pax_records(payload, header_offset)
                    pax = records if pax is None else {**pax, **records}
                elif kind == _GNU_LONGNAME:
                    longname = payload.split(b"\0", 1)[0]
                elif kind == _GNU_LONGLINK:
                    longlink = payload.split(b"\0", 1)[0]
                else:
                    self._global.update(pax_records(payload, header_offset))
                continue
            member = self._member(block, kind, size, offset)
            if longname is not None:
                member.name = _decode(longname)
            if longlink is not None:
                member.linkname = _decode(longlink)
            if self._global:
                pax = {**self._global, **(pax or {})}
            if pax is not None:
                self._apply_pax(pax, member)
            if member.type == DIRECTORY and member.name.endswith("/"):
                member.name = member.name.rstrip("/")  # as tarfile reports directories
            # As tarfile reads them: only regular members (and types it does not know) have data; a size
            # in the header of a directory, link or device is ignored.
            if member.type not in _NO_DATA:
                self._data_left, self._padding = member.size, -member.size % BLOCK
            return member

    @staticmethod
    def _member(block: bytes, kind: bytes, size: int, offset: int) -> TarMember:
        name = block[:100].split(b"\0", 1)[0]
        if block[345] and block[257:263] == POSIX_MAGIC:
            # ustar splits long names into prefix/name; GNU headers use the same bytes for other things.
            name = block[345:500].split(b"\0", 1)[0] + b"/" + name
        if kind in (_OLD_REGULAR, _CONTIGUOUS):
            kind = DIRECTORY if name.endswith(b"/") else REGULAR
        try:
            # The common case (octal digits), in line; anything else goes through _number.
            mode = int(block[100:108].rstrip(_NUL_SPACE), 8)
            uid = int(block[108:116].rstrip(_NUL_SPACE), 8)
            gid = int(block[116:124].rstrip(_NUL_SPACE), 8)
            mtime = int(block[136:148].rstrip(_NUL_SPACE), 8)
        except ValueError:
            mode = _number(block[100:108], "mode", offset)
            uid = _number(block[108:116], "uid", offset)
            gid = _number(block[116:124], "gid", offset)
            mtime = _number(block[136:148], "mtime", offset)
        if uid < 0 or gid < 0:
            raise MalformedTar(f"the tar header at offset {offset} has a negative uid or gid")
        member = TarMember(_decode(name), kind, mode, uid, gid, size, mtime * 1_000_000_000)
        member.offset = offset
        if kind in (SYMLINK, HARDLINK):
            member.linkname = _decode(block[157:257].split(b"\0", 1)[0])
        elif kind in (CHAR_DEVICE, BLOCK_DEVICE):
            member.devmajor = _number(block[329:337], "devmajor", offset)
            member.devminor = _number(block[337:345], "devminor", offset)
        return member

    @staticmethod
    def _apply_pax(records: dict[bytes, bytes], member: TarMember) -> None:
        offset = member.offset
        for key, value in records.items():
            if key in _IGNORED_PAX or not value:
                continue  # an empty value unsets a global or earlier value
            if key == b"path":
                member.name = _decode(value)
            elif key == b"linkpath":
                member.linkname = _decode(value)
            elif key == b"mtime":
                member.mtime_ns = pax_time_ns(value, offset)
            elif key in (b"uid", b"gid", b"size"):
                setattr(member, key.decode(), _pax_number(value, key, offset))
            elif key.startswith(XATTR_PREFIX):
                member.xattrs.append((_decode(key[len(XATTR_PREFIX):]), value))
            elif key.startswith(b"GNU.sparse."):
                member.type = SPARSE
