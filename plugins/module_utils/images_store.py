# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The content-addressed image store: layers unpacked once by diff_id, shared by every image.

    STORE/blobs/sha256/HEX     manifests, indexes and configs (small, verified)
    STORE/layers/HEX           a layer's tree, whiteouts in overlayfs form: an overlay lowerdir
    STORE/layers/HEX.json      the layer's record, written last: a layer without one is incomplete
    STORE/images/KEY.json      one image reference (what rootfs_export was asked for and what it got)
    STORE/flattened/KEY.json   a flattened `dest` directory written from an image
    STORE/tmp/                 layers being unpacked; renamed into layers/ only when complete

Locks: a run that adds takes the store's lock shared, a run that prunes takes it exclusive; a layer is
unpacked under its own lock, so two runs needing it at once unpack it once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo
from ansible_collections.nsbox.primitives.plugins.module_utils.images_extract import (
    OPAQUE_XATTR,
    ExtractResult,
    extract_layer,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.locking import (
    LOCK_DIR,
    LockTimeout,
    lock_path,
    object_lock,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

DIGEST_PREFIX = "sha256:"


def digest_hex(digest: str, what: str = "digest") -> str:
    algorithm, _colon, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise NsboxError(f"{what} {digest!r} is not a sha256 digest (sha256: and 64 lowercase hex digits)")
    return value


def sha256_digest(data: bytes) -> str:
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


@contextmanager
def shared_lock(kind: str, name: str, exclusive: bool, timeout: float = 600.0) -> Iterator[None]:
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    path = lock_path(kind, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"another run holds the lock on {kind} {name} ({path}) for over "
                                      f"{timeout:.0f} s; find it with `fuser {path}`") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


@dataclass
class LayerRecord:
    diff_id: str
    digests: list[str] = field(default_factory=list)  # compressed blobs seen for this layer
    entries: int = 0
    bytes: int = 0
    implicit_parents: dict[str, str] = field(default_factory=dict)
    skipped_devices: list[str] = field(default_factory=list)


def _write_json_atomically(path: str, data: Any) -> None:
    temporary = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, path)


class Store:
    def __init__(self, root: str) -> None:
        self.root = os.path.normpath(root)
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.layers = os.path.join(self.root, "layers")
        self.images = os.path.join(self.root, "images")
        self.flattened = os.path.join(self.root, "flattened")
        self.tmp = os.path.join(self.root, "tmp")

    def create(self) -> None:
        for directory in (self.blobs, self.layers, self.images, self.flattened, self.tmp):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        # Lowerdirs must be reachable by the container's users (overlayfs checks each layer as the mounter,
        # but a user namespace or an unprivileged reader needs search permission on the way down).
        for directory in (self.root, self.layers):
            os.chmod(directory, 0o711)

    def lock(self, exclusive: bool = False):
        return shared_lock("store", self.root, exclusive)

    # -- blobs (manifests, configs) ------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs, digest_hex(digest))

    def read_blob(self, digest: str) -> bytes | None:
        try:
            with open(self.blob_path(digest), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return data if sha256_digest(data) == digest else None

    def write_blob(self, digest: str, data: bytes) -> None:
        if sha256_digest(data) != digest:
            raise NsboxError(f"blob digest mismatch: expected {digest}, got {sha256_digest(data)}",
                             expected=digest, actual=sha256_digest(data))
        path = self.blob_path(digest)
        if not os.path.exists(path):
            temporary = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.rename(temporary, path)

    # -- layers --------------------------------------------------------------------------------

    def layer_dir(self, diff_id: str) -> str:
        return os.path.join(self.layers, digest_hex(diff_id, "diff_id"))

    def layer_record(self, diff_id: str) -> LayerRecord | None:
        directory = self.layer_dir(diff_id)
        try:
            with open(directory + ".json", encoding="utf-8") as handle:
                data = json.load(handle)
        except (FileNotFoundError, ValueError):
            return None
        if not os.path.isdir(directory):
            return None
        return LayerRecord(**data)

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_record(diff_id) is not None

    def unpack_layer(self, opener: Callable[[], IO[bytes]], *, diff_id: str | None, digest: str | None,
                     allow_devices: bool, zstd: str | None,
                     progress: Callable[[int], None] | None = None) -> tuple[LayerRecord, bool]:
        """Make sure the layer is in the store; returns its record and whether this call unpacked it.

        Without a known diff_id (a plain rootfs tarball), the layer is unpacked first and named after.
        """
        if diff_id is None:
            return self._unpack_unknown(opener, digest, allow_devices, zstd, progress)
        with object_lock("layer", f"{self.root}:{diff_id}", timeout=3600):
            record = self.layer_record(diff_id)
            if record is not None:
                return record, False
            self._remove_leftovers(diff_id)
            temporary = self._temporary(diff_id)
            try:
                with opener() as raw:
                    result, blob_digest, _diff_id = extract_layer(
                        raw, temporary, digest=digest, diff_id=diff_id, allow_devices=allow_devices, zstd=zstd,
                        progress=progress)
                record = self._commit(temporary, diff_id, blob_digest, result)
            except BaseException:
                shutil.rmtree(temporary, ignore_errors=True)
                raise
            return record, True

    def _unpack_unknown(self, opener, digest, allow_devices, zstd, progress) -> tuple[LayerRecord, bool]:
        temporary = self._temporary("unnamed")
        try:
            with opener() as raw:
                result, blob_digest, diff_id = extract_layer(raw, temporary, digest=digest,
                                                             allow_devices=allow_devices, zstd=zstd,
                                                             progress=progress)
            with object_lock("layer", f"{self.root}:{diff_id}", timeout=3600):
                record = self.layer_record(diff_id)
                if record is not None:
                    shutil.rmtree(temporary)
                    return record, False
                self._remove_leftovers(diff_id)
                return self._commit(temporary, diff_id, blob_digest, result), True
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise

    def _temporary(self, label: str) -> str:
        name = f"{label.removeprefix(DIGEST_PREFIX)}.{os.getpid()}.{secrets.token_hex(4)}"
        path = os.path.join(self.tmp, name)
        os.mkdir(path, 0o755)
        return path

    def _remove_leftovers(self, diff_id: str) -> None:
        """An interrupted run may have left a half-made layer; holding the layer's lock, none is in progress."""
        hex_id = digest_hex(diff_id)
        for name in os.listdir(self.tmp):
            if name.startswith(hex_id + "."):
                shutil.rmtree(os.path.join(self.tmp, name), ignore_errors=True)
        directory = self.layer_dir(diff_id)
        if os.path.lexists(directory):
            shutil.rmtree(directory)

    def _commit(self, temporary: str, diff_id: str, blob_digest: str, result: ExtractResult) -> LayerRecord:
        record = LayerRecord(diff_id=diff_id, digests=[blob_digest] if blob_digest != diff_id else [],
                             entries=result.entries, bytes=result.bytes,
                             implicit_parents=result.implicit_parents, skipped_devices=result.skipped_devices)
        directory = self.layer_dir(diff_id)
        os.rename(temporary, directory)
        _write_json_atomically(directory + ".json", asdict(record))
        return record

    def remove_layer(self, diff_id: str) -> None:
        with object_lock("layer", f"{self.root}:{diff_id}", timeout=3600):
            directory = self.layer_dir(diff_id)
            # The record goes first: from then on the layer counts as incomplete, whatever happens next.
            for path in (directory + ".json",):
                if os.path.exists(path):
                    os.unlink(path)
            if os.path.lexists(directory):
                shutil.rmtree(directory)

    def layers_in_use_by_mounts(self) -> set[str]:
        """diff_ids of layers that a mounted overlay (a running container, say) has as a lower layer."""
        used = set()
        prefix = self.layers + os.sep
        for mount in mountinfo.read():
            if mount.fstype != "overlay":
                continue
            for lower in mount.overlay_layers().lowerdirs:
                if lower.startswith(prefix):
                    used.add(DIGEST_PREFIX + lower[len(prefix):].split(os.sep)[0])
        return used

    # -- image references ----------------------------------------------------------------------

    def ref_path(self, key: str) -> str:
        return os.path.join(self.images, f"{key}.json")

    def read_ref(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self.ref_path(key), encoding="utf-8") as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return None

    def write_ref(self, key: str, ref: dict[str, Any]) -> None:
        _write_json_atomically(self.ref_path(key), ref)

    def remove_ref(self, key: str) -> None:
        os.unlink(self.ref_path(key))

    def all_refs(self) -> list[dict[str, Any]]:
        refs = []
        if not os.path.isdir(self.images):
            return refs
        for name in sorted(os.listdir(self.images)):
            if name.endswith(".json"):
                ref = self.read_ref(name[:-5])
                if ref:
                    refs.append(ref)
        return refs

    # -- flattened copies ----------------------------------------------------------------------

    def flat_record_path(self, dest: str) -> str:
        return os.path.join(self.flattened, hashlib.sha256(dest.encode()).hexdigest()[:32] + ".json")

    def read_flat_record(self, dest: str) -> dict[str, Any] | None:
        try:
            with open(self.flat_record_path(dest), encoding="utf-8") as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return None


# -- stacking checks and flattening ----------------------------------------------------------------


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def lookup_in_stack(lowerdirs_top_first: list[str], rel: str) -> str | None:
    """What rel is in the merged view of these layers: 'dir', 'symlink', 'other' or None (absent)."""
    parts = rel.split("/")
    for layer in lowerdirs_top_first:
        path = layer
        hidden_below = False
        for index, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break
            if _is_whiteout(st):
                return None
            last = index == len(parts) - 1
            if not stat.S_ISDIR(st.st_mode):
                # A non-directory on the way (or at rel) shadows whatever is below it.
                return "symlink" if stat.S_ISLNK(st.st_mode) else "other"
            if last:
                return "dir"
            hidden_below = hidden_below or _is_opaque(path)
        if hidden_below:
            return None
    return None


def check_stack(store: Store, diff_ids_bottom_first: list[str]) -> None:
    """Refuse an image in which a layer writes below a path that a lower layer made a symlink or a file.

    Such a layer means one thing to overlayfs (its directory shadows the symlink) and another to a tool
    that flattens through the symlink; neither is what the image author can have meant.
    """
    for index, diff_id in enumerate(diff_ids_bottom_first):
        record = store.layer_record(diff_id)
        if record is None or not record.implicit_parents or index == 0:
            continue
        below = [store.layer_dir(d) for d in reversed(diff_ids_bottom_first[:index])]
        for rel, member in sorted(record.implicit_parents.items()):
            kind = lookup_in_stack(below, rel)
            if kind in ("symlink", "other"):
                what = "a symlink" if kind == "symlink" else "a file"
                raise NsboxError(f"layer {diff_id} writes member {member!r} through {rel!r}, which a lower layer "
                                 f"made {what}; the image is refused (it would write through a planted "
                                 "symlink)", member=member, layer=diff_id, path=rel)


def _copy_metadata(source: str, target: str, st: os.stat_result, is_link: bool) -> None:
    os.chown(target, st.st_uid, st.st_gid, follow_symlinks=not is_link)
    if not is_link:
        os.chmod(target, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError:
        names = []
    for name in names:
        if name.startswith("trusted.overlay."):
            continue
        os.setxattr(target, name, os.getxattr(source, name, follow_symlinks=False), follow_symlinks=not is_link)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=not is_link)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def flatten(lowerdirs_top_first: list[str], dest: str) -> None:
    """Apply the stored layers bottom first into dest (a fresh directory), whiteouts applied."""
    for layer in reversed(lowerdirs_top_first):
        links: dict[tuple[int, int], str] = {}
        dirs: list[tuple[str, str, os.stat_result]] = [(layer, dest, os.lstat(layer))]
        _apply_dir(layer, dest, links, dirs)
        for source, target, st in reversed(dirs):
            _copy_metadata(source, target, st, False)


def _apply_dir(source_dir: str, target_dir: str, links: dict, dirs: list) -> None:
    with os.scandir(source_dir) as entries:
        for entry in entries:
            source = entry.path
            target = os.path.join(target_dir, entry.name)
            st = entry.stat(follow_symlinks=False)
            if _is_whiteout(st):
                _remove(target)
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    existing = os.lstat(target)
                except FileNotFoundError:
                    existing = None
                if existing is not None and not stat.S_ISDIR(existing.st_mode):
                    os.unlink(target)
                    existing = None
                if existing is not None and _is_opaque(source):
                    shutil.rmtree(target)
                    existing = None
                if existing is None:
                    os.mkdir(target, 0o700)
                dirs.append((source, target, st))
                _apply_dir(source, target, links, dirs)
                continue
            _remove(target)
            if stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    os.link(links[key], target)
                    continue
                shutil.copyfile(source, target, follow_symlinks=False)
                links[key] = target
                _copy_metadata(source, target, st, False)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(source), target)
                _copy_metadata(source, target, st, True)
            else:
                os.mknod(target, st.st_mode, st.st_rdev)
                _copy_metadata(source, target, st, False)
