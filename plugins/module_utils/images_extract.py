# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A faithful and safe extractor for image layers (tar streams) into an empty directory of the store.

Faithful: owners, modes including setuid/setgid/sticky, mtimes, xattrs (security.capability too),
hardlinks, symlinks (absolute ones stored as they are), fifos, device nodes when allowed. Python's
`data` filter cannot be used for a root filesystem: it drops setuid bits and refuses absolute symlinks.

Safe: every member is resolved against a table of what this extraction itself created, which mirrors
the (fresh, private) directory exactly; nothing on disk is ever looked up through a symlink. Members
with absolute names, `..`, over-long names, hardlinks to outside or to what this layer did not write,
and writes through a symlink (or a file) planted earlier are refused, naming the member.

Whiteouts are stored in overlayfs form, so that the stored layers stacked as overlay lowers give the
image: `.wh.NAME` becomes a 0/0 character device NAME, `.wh..wh..opq` the trusted.overlay.opaque=y
xattr on its directory. Parents that a layer uses without a directory entry of its own ("implicit
parents") are reported, so the caller can check them against the layers below (a symlink there would
otherwise mean different things to overlayfs and to a flattening tool).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import stat
import subprocess
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from ansible_collections.nsbox.primitives.plugins.module_utils.images_tar import (
    BLOCK_DEVICE,
    CHAR_DEVICE,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SPARSE,
    SYMLINK,
    MalformedTar,
    TarMember,
    TarReader,
    TruncatedTar,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
NAME_MAX = 255
PATH_MAX = 4095
CHUNK = 1 << 20

DIR, FILE, LINK, OTHER = "dir", "file", "symlink", "other"

# xattrs that describe the host rather than the image, or that would let a layer forge overlayfs
# metadata (redirects, metacopy) in the store; the store writes its own opaque markers.
_SKIPPED_XATTR_PREFIXES = ("trusted.overlay.", "security.selinux", "system.")


class UnsafeMember(NsboxError):
    """A member the extractor refuses; the message names it."""


class CorruptLayer(NsboxError):
    """The blob is not a complete, well-formed (compressed) tar stream, or its digest is wrong."""


# -- streams -------------------------------------------------------------------------------------


class HashingReader:
    """Reads a file object and hashes everything read, for digest checks while streaming."""

    def __init__(self, raw: IO[bytes], progress: Callable[[int], None] | None = None) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.sha256.update(data)
            self.size += len(data)
            if self.progress:
                self.progress(len(data))
        return data

    def account(self, data: bytes | memoryview) -> None:
        """Hash and count data that the caller read from raw itself."""
        self.sha256.update(data)
        self.size += len(data)
        if self.progress:
            self.progress(len(data))

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


class _GzipReader:
    """Incremental gzip decompression (multi-member aware) that notices truncation.

    read() returns at most size bytes and may return fewer (callers loop), which saves joining buffers.
    """

    def __init__(self, raw: HashingReader) -> None:
        self.raw = raw
        self.inflater = zlib.decompressobj(wbits=31)
        self.pending = b""
        self.eof = False

    def read(self, size: int = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        while not self.eof:
            compressed = self.inflater.unconsumed_tail or self.pending or self.raw.read(CHUNK)
            self.pending = b""
            if not compressed:
                if not self.inflater.eof:
                    raise CorruptLayer("the gzip stream ends early (truncated download or file)")
                self.eof = True
                break
            try:
                data = self.inflater.decompress(compressed, size)
            except zlib.error as error:
                raise CorruptLayer(f"the gzip stream is corrupt: {error}") from None
            if self.inflater.eof:
                # Another gzip member may follow (pigz and concatenated streams).
                self.pending = self.inflater.unused_data or self.raw.read(CHUNK)
                if self.pending:
                    self.inflater = zlib.decompressobj(wbits=31)
                else:
                    self.eof = True
            if data:
                return data
        return b""


class _ZstdReader:
    """zstd through the zstd program (Python 3.11/3.12 have no zstd in the standard library)."""

    def __init__(self, raw: HashingReader, zstd: str) -> None:
        self.proc = subprocess.Popen([zstd, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.raw = raw
        self.feed_error: BaseException | None = None
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()

    def _feed(self) -> None:
        try:
            while data := self.raw.read(CHUNK):
                self.proc.stdin.write(data)
        except BrokenPipeError:
            pass
        except BaseException as error:  # reported from read() in the main thread
            self.feed_error = error
        finally:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def read(self, size: int = -1) -> bytes:
        data = self.proc.stdout.read(size)
        if not data:
            self.close()
        return data

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdout:
            self.proc.stdout.read()
        self.feeder.join()
        self.proc.wait()
        if self.feed_error:
            raise self.feed_error
        if self.proc.returncode:
            message = self.proc.stderr.read().decode(errors="replace").strip()
            raise CorruptLayer(f"the zstd stream is corrupt or truncated: {message}")


class LayerStream:
    """The uncompressed tar stream of a blob, hashing the blob (digest) and the tar (diff_id)."""

    def __init__(self, raw: IO[bytes], zstd: str | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        self.blob = HashingReader(raw, progress)
        # The first bytes, read (and hashed) to tell the compression; readers of the tar get them again.
        head = self.head = self.blob.read(4)
        if head[:2] == b"\x1f\x8b":
            self.compression = "gzip"
        elif head == b"\x28\xb5\x2f\xfd":
            self.compression = "zstd"
        else:
            self.compression = "none"
        replay = _Replay(head, self.blob)
        if self.compression == "gzip":
            self.inner: Any = _GzipReader(replay)  # type: ignore[arg-type]
        elif self.compression == "zstd":
            if not zstd:
                raise CorruptLayer("the layer is zstd-compressed and the `zstd` program is not installed; "
                                   "install the zstd package")
            self.inner = _ZstdReader(replay, zstd)  # type: ignore[arg-type]
        else:
            self.inner = replay
        # Uncompressed, the tar is the blob: one digest serves both.
        self.tar = self.blob if self.compression == "none" else HashingReader(self.inner)

    def read(self, size: int = -1) -> bytes:
        if self.compression == "none":
            return self.inner.read(size)
        return self.tar.read(size)

    @property
    def plain_file(self) -> bool:
        """Uncompressed, from a file object that can read into the caller's buffers (see HashBehind)."""
        return self.compression == "none" and hasattr(self.blob.raw, "readinto")

    def finish(self) -> None:
        """Read to the end (tar padding after the end-of-archive blocks counts toward both digests)."""
        while self.read(CHUNK):
            pass
        self.blob.drain()


class _Replay:
    def __init__(self, head: bytes, raw: HashingReader) -> None:
        self.head = head
        self.raw = raw

    def read(self, size: int = -1) -> bytes:
        if self.head:
            data, self.head = self.head, b""
            if size is None or size < 0:
                return data + self.raw.read(-1)
            return data if len(data) >= size else data + self.raw.read(size - len(data))
        return self.raw.read(size)


class Prefetcher:
    """Reads, hashes and decompresses the layer in a thread of its own, a few chunks ahead, while the
    caller parses and writes: zlib and hashlib release the GIL, so the two overlap as `tar -z` does."""

    def __init__(self, read: Callable[[int], bytes], depth: int = 8) -> None:
        self._read = read
        self.chunks: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                chunk = self._read(CHUNK)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as error:  # handed to the reading thread
            self.error = error
            self._put(b"")

    def _put(self, chunk: bytes) -> None:
        while not self.stopped.is_set():
            try:
                self.chunks.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, _size: int = CHUNK) -> bytes:
        if self.stopped.is_set():
            return b""
        chunk = self.chunks.get()
        if not chunk:
            self.stopped.set()
            if self.error:
                raise self.error
        return chunk

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()


class HashBehind:
    """An uncompressed blob from a file: the caller reads it, and a thread of its own hashes what was read.

    Nothing is left to decompress, so a thread reading ahead would do the read and the hash, the larger part
    of the work, while the caller only writes. Reading in the caller and hashing behind it splits the work
    more evenly over two cores. The chunks go round a few buffers (fresh memory for every chunk costs a
    page fault per 4 KiB, a third of the time of a read); a buffer comes back for reading only once it was
    hashed, and the caller is done with a chunk when it asks for the next one. What is hashed is what
    was extracted: the very same bytes in memory.
    """

    def __init__(self, stream: LayerStream, depth: int = 8) -> None:
        self._head = stream.head
        self._raw = stream.blob.raw
        self._blob = stream.blob
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._buffers_left = depth  # made when needed: a small layer needs one
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._ended = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buffer, start, count = item
            try:
                if self.error is None:
                    self._blob.account(memoryview(buffer)[start:count])
            except BaseException as error:  # raised by close(), in the caller's thread
                self.error = error
            self._free.put(buffer)

    def read(self, _size: int = CHUNK) -> bytes | memoryview:
        if self._ended:
            return b""
        try:
            buffer = self._free.get_nowait()
        except queue.Empty:
            if self._buffers_left:
                self._buffers_left -= 1
                buffer = bytearray(CHUNK)
            else:
                buffer = self._free.get()  # the hashing thread is behind: wait for it
        view = memoryview(buffer)
        # The first bytes were read (and hashed) already, to tell the compression.
        start = len(self._head)
        if start:
            view[:start] = self._head
            self._head = b""
        count = start + self._raw.readinto(view[start:])  # type: ignore[attr-defined]
        if not count:
            self._ended = True
            self._free.put(buffer)
            return b""
        self._todo.put((buffer, start, count))
        return view[:count]

    def close(self) -> None:
        """Wait until everything read is hashed (idempotent)."""
        if self.thread.is_alive():
            self._todo.put(None)
            self.thread.join()
        if self.error:
            raise self.error


# -- extraction ----------------------------------------------------------------------------------


@dataclass
class ExtractResult:
    entries: int = 0
    bytes: int = 0
    implicit_parents: dict[str, str] = field(default_factory=dict)
    skipped_devices: list[str] = field(default_factory=list)


def member_path(name: str, what: str = "member", member: str | None = None) -> list[str]:
    """The components of a member name inside the layer; refuses absolute, `..` and over-long names."""
    if (name and len(name) <= NAME_MAX // 4 and "/." not in name and "//" not in name
            and not name.startswith((".", "/")) and not name.endswith("/")):
        # Most names: nothing to drop or refuse, and too short to be over-long even in 4-byte characters.
        return name.split("/")
    member = name if member is None else member
    if name.startswith("/"):
        raise UnsafeMember(f"{what} {name!r} has an absolute path; layers hold relative names only",
                           member=member)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeMember(f"{what} {name!r} climbs out of the layer with '..'", member=member)
    if len(os.fsencode("/".join(parts))) > PATH_MAX:
        raise UnsafeMember(f"{what} {name[:80]!r}... is longer than PATH_MAX ({PATH_MAX} bytes)", member=member[:200])
    for part in parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UnsafeMember(f"{what} {name[:80]!r}... has a component longer than NAME_MAX ({NAME_MAX} bytes)",
                               member=member[:200])
    return parts


class LayerExtractor:
    """Extract one layer's tar stream into root, a fresh empty directory only this extractor writes.

    Every path is relative to a descriptor of root, and none of them crosses a symlink: the table says
    what each path is. Regular files get their data and metadata through the descriptor that created
    them (O_EXCL, O_NOFOLLOW), which is also what GNU tar does.
    """

    def __init__(self, root: str, allow_devices: bool = False) -> None:
        self.root = root
        self.allow_devices = allow_devices
        self.types: dict[str, str] = {"": DIR}
        self.result = ExtractResult()
        self._dirs: list[tuple[str, TarMember]] = []
        self._current: str | None = None
        self._root_fd = -1

    # The table of what exists: it mirrors the directory, so no lookup on disk is ever needed.

    def _forget(self, rel: str) -> None:
        kind = self.types.pop(rel, None)
        if kind == DIR:
            prefix = rel + "/"
            for key in [k for k in self.types if k.startswith(prefix)]:
                del self.types[key]

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _parent(self, parts: list[str], member: str) -> None:
        """Make sure every ancestor of parts is a directory this layer holds (creating implicit ones)."""
        if len(parts) == 1 or self.types.get("/".join(parts[:-1])) == DIR:
            return  # its own ancestors were checked when it was made, and replacing one forgets it
        for depth in range(1, len(parts)):
            rel = "/".join(parts[:depth])
            kind = self.types.get(rel)
            if kind == DIR:
                continue
            if kind == LINK:
                raise UnsafeMember(f"member {member!r} would be written through the symlink {rel!r} that an "
                                   "earlier member of the same layer planted", member=member, symlink=rel)
            if kind is not None:
                raise UnsafeMember(f"member {member!r} needs {rel!r} to be a directory, but an earlier member "
                                   "made it a file", member=member)
            os.mkdir(rel, 0o755, dir_fd=self._root_fd)
            self.types[rel] = DIR
            self.result.implicit_parents[rel] = member

    def _clear(self, rel: str, keep_dir: bool = False) -> None:
        """Remove what an earlier member put at rel (a later member replaces it, as tar does)."""
        kind = self.types.get(rel)
        if kind is None or (keep_dir and kind == DIR):
            return
        if kind == DIR:
            shutil.rmtree(rel, dir_fd=self._root_fd)
        else:
            os.unlink(rel, dir_fd=self._root_fd)
        self._forget(rel)

    def extract(self, read_chunk: Callable[[], bytes]) -> ExtractResult:
        """Extract the tar stream that read_chunk returns in chunks (b"" at its end)."""
        reader = TarReader(read_chunk)
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            try:
                while (member := reader.next()) is not None:
                    self._current = member.name
                    self._member(reader, member)
                self._current = None
            except MalformedTar as error:
                where = f" in member {self._current!r}" if self._current else ""
                raise CorruptLayer(f"the tar stream is corrupt or truncated{where}: {error}") from None
            for rel, member in reversed(self._dirs):
                if self.types.get(rel) == DIR:
                    os.utime(rel or ".", ns=(member.mtime_ns, member.mtime_ns), dir_fd=self._root_fd,
                             follow_symlinks=False)
        finally:
            os.close(self._root_fd)
            self._root_fd = -1
        return self.result

    def _member(self, reader: TarReader, member: TarMember) -> None:
        parts = member_path(member.name)
        self.result.entries += 1
        kind = member.type
        if not parts:
            if kind != DIRECTORY:
                raise UnsafeMember(f"member {member.name!r} names the layer root but is not a directory",
                                   member=member.name)
            self._metadata(".", member)
            self._dirs.append(("", member))
            return
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, member)
            return
        self._parent(parts, member.name)
        rel = "/".join(parts)
        if kind == REGULAR:
            self._clear(rel)
            self._regular(reader, member, rel)
        elif kind == DIRECTORY:
            self._clear(rel, keep_dir=True)
            if rel not in self.types:
                os.mkdir(rel, 0o700, dir_fd=self._root_fd)
                self.types[rel] = DIR
            self.result.implicit_parents.pop(rel, None)
            self._metadata(rel, member)
            self._dirs.append((rel, member))
        elif kind == SYMLINK:
            self._clear(rel)
            os.symlink(member.linkname, rel, dir_fd=self._root_fd)
            self.types[rel] = LINK
            self._metadata(rel, member, symlink=True)
        elif kind == HARDLINK:
            self._hardlink(member, rel)
        elif kind == FIFO:
            self._clear(rel)
            os.mkfifo(rel, 0o600, dir_fd=self._root_fd)
            self.types[rel] = OTHER
            self._metadata(rel, member)
        elif kind in (CHAR_DEVICE, BLOCK_DEVICE):
            if not self.allow_devices:
                self.result.skipped_devices.append(rel)
                return
            self._clear(rel)
            node = stat.S_IFCHR if kind == CHAR_DEVICE else stat.S_IFBLK
            os.mknod(rel, node | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=self._root_fd)
            self.types[rel] = OTHER
            self._metadata(rel, member)
        elif kind == SPARSE:
            raise UnsafeMember(f"member {member.name!r} is a sparse file (GNU tar --sparse), which image layers "
                               "do not hold; make the layer without --sparse", member=member.name)
        else:
            raise UnsafeMember(f"member {member.name!r} has tar type {kind.decode(errors='replace')!r}, which a "
                               "layer cannot hold", member=member.name)

    def _regular(self, reader: TarReader, member: TarMember, rel: str) -> None:
        fd = os.open(rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self._root_fd)
        self.types[rel] = FILE
        try:
            try:
                reader.write_data(fd)
            except TruncatedTar:
                raise CorruptLayer(f"the tar stream ends inside member {member.name!r} (truncated)") from None
            self.result.bytes += member.size
            # On the descriptor: no path lookups, and the same order as for paths (see _metadata).
            os.chown(fd, member.uid, member.gid)
            os.chmod(fd, member.mode & 0o7777)
            if member.xattrs:
                self._xattrs(fd, member, follow=True)
            os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))
        finally:
            os.close(fd)

    def _hardlink(self, member: TarMember, rel: str) -> None:
        target_parts = member_path(member.linkname, what=f"hardlink target of member {member.name!r}:",
                                   member=member.name)
        target = "/".join(target_parts)
        kind = self.types.get(target)
        if kind is None or kind == DIR:
            raise UnsafeMember(f"member {member.name!r} is a hardlink to {member.linkname!r}, which is not a file "
                               "written earlier in this layer", member=member.name, target=member.linkname)
        # The target's ancestors are directories of this layer (the table says so), so the link stays inside.
        if target == rel:
            return
        self._clear(rel)
        os.link(target, rel, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd, follow_symlinks=False)
        self.types[rel] = kind

    def _whiteout(self, parts: list[str], member: TarMember) -> None:
        base = parts[-1]
        parent_parts = parts[:-1]
        self._parent(parts, member.name)
        parent = "/".join(parent_parts)
        if base == OPAQUE_MARKER:
            os.setxattr(self._abs(parent), OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk and the like), meaningless elsewhere
        name = base[len(WHITEOUT_PREFIX):]
        rel = "/".join([*parent_parts, name])
        self._clear(rel)
        os.mknod(rel, stat.S_IFCHR | 0o600, 0, dir_fd=self._root_fd)
        self.types[rel] = OTHER

    def _metadata(self, rel: str, member: TarMember, symlink: bool = False) -> None:
        """Owner, mode, xattrs and mtime of what rel names (never followed: the table knows what it is)."""
        # Order matters: chown clears setuid/setgid and file capabilities, so mode and xattrs come after it.
        os.chown(rel, member.uid, member.gid, dir_fd=self._root_fd, follow_symlinks=False)
        if not symlink:
            # Not a symlink, says the table, so following is the same as not following (which Linux's
            # fchmodat does not support).
            os.chmod(rel, stat.S_IMODE(member.mode), dir_fd=self._root_fd)
        if member.xattrs:
            self._xattrs(self._abs(rel), member, follow=False)
        os.utime(rel, ns=(member.mtime_ns, member.mtime_ns), dir_fd=self._root_fd, follow_symlinks=False)

    @staticmethod
    def _xattrs(target: str | int, member: TarMember, follow: bool) -> None:
        for name, value in member.xattrs:
            # xattrs that describe the host, or would forge overlayfs metadata in the store (see above).
            if name.startswith(_SKIPPED_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as error:
                raise NsboxError(f"cannot set xattr {name} on member {member.name!r}: {error}",
                                 member=member.name, errno=error.errno) from None


def extract_layer(raw: IO[bytes], root: str, *, digest: str | None = None, diff_id: str | None = None,
                  allow_devices: bool = False, zstd: str | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[ExtractResult, str, str]:
    """Extract a (compressed) layer blob into root; check its digest and diff_id when given.

    Returns the result and the blob's and the tar's digests. Raises CorruptLayer on a mismatch; the
    caller owns root and removes it on any failure.
    """
    if os.listdir(root):
        raise NsboxError(f"layer directory {root} is not empty; layers are extracted into fresh directories only",
                         path=root)
    stream = LayerStream(raw, zstd=zstd, progress=progress)
    source = HashBehind(stream) if stream.plain_file else Prefetcher(stream.read)
    try:
        result = LayerExtractor(root, allow_devices=allow_devices).extract(source.read)
        while source.read():
            pass  # the rest (tar padding) counts toward both digests
        source.close()  # everything read is hashed
        stream.blob.drain()
    finally:
        source.close()
        if isinstance(stream.inner, _ZstdReader) and stream.inner.proc.poll() is None:
            stream.inner.proc.kill()
            stream.inner.proc.wait()
    if digest and stream.blob.digest != digest:
        raise CorruptLayer(f"blob digest mismatch: expected {digest}, got {stream.blob.digest}",
                           expected=digest, actual=stream.blob.digest)
    if diff_id and stream.tar.digest != diff_id:
        raise CorruptLayer(f"layer diff_id mismatch: the image config says {diff_id}, the uncompressed "
                           f"layer is {stream.tar.digest}", expected=diff_id, actual=stream.tar.digest)
    return result, stream.blob.digest, stream.tar.digest
