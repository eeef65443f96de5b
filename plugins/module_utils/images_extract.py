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
import tarfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
NAME_MAX = 255
PATH_MAX = 4095
CHUNK = 1 << 20

DIR, FILE, SYMLINK, OTHER = "dir", "file", "symlink", "other"

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
        head = self.blob.read(4)
        self._head = head
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


class ForwardReader:
    """A stream as a file object with tell() and forward seek(), so that tarfile can read it in its
    random-access mode: its stream mode copies its whole buffer for every 512-byte header it reads."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.buffer = b""
        self.index = 0
        self.pos = 0

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self.buffer[self.index:]]
            while chunk := self._read(CHUNK):
                parts.append(chunk)
            self.buffer, self.index = b"", 0
            data = b"".join(parts)
            self.pos += len(data)
            return data
        available = len(self.buffer) - self.index
        if available >= size:
            data = self.buffer[self.index:self.index + size]
            self.index += size
            self.pos += size
            return data
        parts = [self.buffer[self.index:]] if available else []
        got = available
        self.buffer, self.index = b"", 0
        while got < size:
            chunk = self._read(CHUNK)
            if not chunk:
                break
            need = size - got
            if len(chunk) > need:
                parts.append(chunk[:need])
                self.buffer, self.index = chunk, need
                got = size
                break
            parts.append(chunk)
            got += len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        return data

    def seek(self, target: int, whence: int = 0) -> int:
        if whence == 1:
            target += self.pos
        elif whence != 0:
            raise OSError("a layer stream can only seek from its start or its position")
        delta = target - self.pos
        if delta < 0:
            if -delta > self.index:
                raise OSError("cannot seek backwards in a layer stream")
            self.index += delta
            self.pos = target
            return target
        while delta > 0:
            skipped = self.read(min(delta, CHUNK))
            if not skipped:
                break
            delta -= len(skipped)
        return self.pos


# -- extraction ----------------------------------------------------------------------------------


@dataclass
class ExtractResult:
    entries: int = 0
    bytes: int = 0
    implicit_parents: dict[str, str] = field(default_factory=dict)
    skipped_devices: list[str] = field(default_factory=list)


def member_path(name: str, what: str = "member", member: str | None = None) -> list[str]:
    """The components of a member name inside the layer; refuses absolute, `..` and over-long names."""
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


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    found = []
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        if name.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        found.append((name, value.encode("utf-8", "surrogateescape")))
    return found


class LayerExtractor:
    """Extract one layer's tar stream into root, a fresh empty directory only this extractor writes."""

    def __init__(self, root: str, allow_devices: bool = False) -> None:
        self.root = root
        self.allow_devices = allow_devices
        self.types: dict[str, str] = {"": DIR}
        self.result = ExtractResult()
        self._dirs: list[tuple[str, tarfile.TarInfo]] = []
        self._current: str | None = None

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
        parent = "/".join(parts[:-1])
        if self.types.get(parent) == DIR:
            return  # its own ancestors were checked when it was made, and replacing one forgets it
        for depth in range(1, len(parts)):
            rel = "/".join(parts[:depth])
            kind = self.types.get(rel)
            if kind == DIR:
                continue
            if kind == SYMLINK:
                raise UnsafeMember(f"member {member!r} would be written through the symlink {rel!r} that an "
                                   "earlier member of the same layer planted", member=member, symlink=rel)
            if kind is not None:
                raise UnsafeMember(f"member {member!r} needs {rel!r} to be a directory, but an earlier member "
                                   "made it a file", member=member)
            os.mkdir(self._abs(rel), 0o755)
            self.types[rel] = DIR
            self.result.implicit_parents[rel] = member

    def _clear(self, rel: str, keep_dir: bool = False) -> None:
        """Remove what an earlier member put at rel (a later member replaces it, as tar does)."""
        kind = self.types.get(rel)
        if kind is None or (keep_dir and kind == DIR):
            return
        path = self._abs(rel)
        if kind == DIR:
            shutil.rmtree(path)
        else:
            os.unlink(path)
        self._forget(rel)

    def extract(self, stream: IO[bytes]) -> ExtractResult:
        try:
            with tarfile.open(fileobj=ForwardReader(stream.read), mode="r:") as archive:
                for member in archive:
                    self._current = member.name
                    self._member(archive, member)
                self._current = None
        except tarfile.TarError as error:
            where = f" in member {self._current!r}" if self._current else ""
            raise CorruptLayer(f"the tar stream is corrupt or truncated{where}: {error}") from None
        except EOFError:
            raise CorruptLayer("the tar stream ends early (truncated)") from None
        for rel, member in reversed(self._dirs):
            if self.types.get(rel) == DIR:
                os.utime(self._abs(rel), ns=(_ns(member.mtime), _ns(member.mtime)), follow_symlinks=False)
        return self.result

    def _member(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = member_path(member.name)
        self.result.entries += 1
        if not parts:
            if not member.isdir():
                raise UnsafeMember(f"member {member.name!r} names the layer root but is not a directory",
                                   member=member.name)
            self._metadata(self.root, member)
            self._dirs.append(("", member))
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, member)
            return
        self._parent(parts, member.name)
        rel = "/".join(parts)
        path = self._abs(rel)
        if member.isdir():
            self._clear(rel, keep_dir=True)
            if rel not in self.types:
                os.mkdir(path, 0o700)
                self.types[rel] = DIR
            self.result.implicit_parents.pop(rel, None)
            self._metadata(path, member)
            self._dirs.append((rel, member))
        elif member.isreg():
            self._clear(rel)
            self._regular(archive, member, rel, path)
        elif member.issym():
            self._clear(rel)
            os.symlink(member.linkname, path)
            self.types[rel] = SYMLINK
            self._metadata(path, member, symlink=True)
        elif member.islnk():
            self._hardlink(member, rel, path)
        elif member.isfifo():
            self._clear(rel)
            os.mkfifo(path, 0o600)
            self.types[rel] = OTHER
            self._metadata(path, member)
        elif member.ischr() or member.isblk():
            if not self.allow_devices:
                self.result.skipped_devices.append(rel)
                return
            self._clear(rel)
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            self.types[rel] = OTHER
            self._metadata(path, member)
        else:
            raise UnsafeMember(f"member {member.name!r} has tar type {member.type!r}, which a layer cannot hold",
                               member=member.name)

    def _regular(self, archive: tarfile.TarFile, member: tarfile.TarInfo, rel: str, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.types[rel] = FILE
        try:
            # Straight from the tar stream (positioned at the member's data after its header), skipping the
            # buffered file object layers of extractfile; sparse members need its map, so they use it.
            source = archive.extractfile(member) if member.sparse is not None else archive.fileobj
            remaining = member.size
            while remaining > 0:
                data = source.read(min(CHUNK, remaining))
                if not data:
                    raise CorruptLayer(f"the tar stream ends inside member {member.name!r} (truncated)")
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                remaining -= len(data)
            self.result.bytes += member.size
            self._metadata(fd, member)
        finally:
            os.close(fd)

    def _hardlink(self, member: tarfile.TarInfo, rel: str, path: str) -> None:
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
        os.link(self._abs(target), path, follow_symlinks=False)
        self.types[rel] = kind

    def _whiteout(self, parts: list[str], member: tarfile.TarInfo) -> None:
        base = parts[-1]
        parent_parts = parts[:-1]
        self._parent(parts, member.name)
        parent = "/".join(parent_parts)
        if base == OPAQUE_MARKER:
            os.setxattr(self._abs(parent), OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk and the like), meaningless elsewhere
        name = base[len(WHITEOUT_PREFIX):]
        rel = "/".join([*parent_parts, name])
        self._clear(rel)
        os.mknod(self._abs(rel), stat.S_IFCHR | 0o600, 0)
        self.types[rel] = OTHER

    def _metadata(self, target: str | int, member: tarfile.TarInfo, symlink: bool = False) -> None:
        follow = not symlink
        # Order matters: chown clears setuid/setgid and file capabilities, so mode and xattrs come after it.
        os.chown(target, member.uid, member.gid, follow_symlinks=follow)
        if not symlink:
            os.chmod(target, stat.S_IMODE(member.mode))
        for name, value in _xattrs(member):
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as error:
                raise NsboxError(f"cannot set xattr {name} on member {member.name!r}: {error}",
                                 member=member.name, errno=error.errno) from None
        mtime = _ns(member.mtime)
        os.utime(target, ns=(mtime, mtime), follow_symlinks=follow)


def _ns(mtime: float) -> int:
    return int(mtime * 1_000_000_000)


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
    prefetcher = Prefetcher(stream.read)
    try:
        result = LayerExtractor(root, allow_devices=allow_devices).extract(prefetcher)
        while prefetcher.read():
            pass  # the rest (tar padding) counts toward both digests
        stream.blob.drain()
    finally:
        prefetcher.close()
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
