# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where images come from on disk: an OCI image layout, an oci-archive, a `docker save` archive, a plain
rootfs tarball; and what every source shares: manifests, indexes, platforms and the image config.

A source resolves to an Image (the manifest's digest, the config, the layers with their digests and
diff_ids) and opens layer blobs as streams; the store unpacks and verifies them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform as host
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from ansible_collections.nsbox.primitives.plugins.module_utils.images_store import (
    Store,
    digest_hex,
    sha256_digest,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
REF_NAME = "org.opencontainers.image.ref.name"

_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
                  "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(filter(None, (self.os, self.architecture, self.variant)))

    def matches(self, other: dict[str, Any]) -> bool:
        if other.get("os") != self.os or other.get("architecture") != self.architecture:
            return False
        if self.variant is None:
            return True
        variant = other.get("variant") or ("v8" if self.architecture == "arm64" else None)
        return variant == self.variant


def host_platform() -> Platform:
    machine = host.machine()
    architecture = _ARCHITECTURES.get(machine, machine)
    variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
    return Platform("linux", architecture, variant)


def parse_platform(value: str | None) -> Platform:
    if not value:
        return host_platform()
    parts = value.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise NsboxError(f"platform {value!r} is not OS/ARCHITECTURE[/VARIANT] such as linux/amd64 or linux/arm64/v8")
    return Platform(*parts)


@dataclass
class Layer:
    diff_id: str | None
    digest: str | None
    size: int | None = None
    media_type: str | None = None
    locator: Any = None  # where the source finds the blob (a path, a tar member)


@dataclass
class Image:
    digest: str
    config: dict[str, Any]
    layers: list[Layer]
    config_digest: str | None = None
    index_digest: str | None = None
    blobs: dict[str, bytes] = field(default_factory=dict)  # manifests, index, config: kept in the store


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as error:
        raise NsboxError(f"{what} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise NsboxError(f"{what} is not a JSON object")
    return value


def select_manifest(index: dict[str, Any], wanted: Platform, where: str) -> dict[str, Any]:
    manifests = index.get("manifests") or []
    for descriptor in manifests:
        if wanted.matches(descriptor.get("platform") or {}):
            return descriptor
    offered = sorted({str(Platform(d.get("platform", {}).get("os", "?"), d.get("platform", {}).get("architecture", "?"),
                                   d.get("platform", {}).get("variant"))) for d in manifests})
    raise NsboxError(f"{where} has no image for platform {wanted}; it offers {', '.join(offered) or 'none'}. "
                     "Set platform to one of these", platforms=offered)


def image_config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """What nsbox_container needs from the image config, in the agreed shape."""
    inner = config.get("config") or {}
    return {
        "entrypoint": list(inner.get("Entrypoint") or []),
        "cmd": list(inner.get("Cmd") or []),
        "env": list(inner.get("Env") or []),
        "working_dir": inner.get("WorkingDir") or None,
        "user": inner.get("User") or None,
        "exposed_ports": sorted(inner.get("ExposedPorts") or {}),
        "stop_signal": inner.get("StopSignal") or None,
        "labels": dict(inner.get("Labels") or {}),
    }


class BlobSource:
    """A source that holds blobs by digest (a layout, an archive, a registry)."""

    name = "source"

    def fetch(self, digest: str, media_type: str | None = None) -> bytes:
        raise NotImplementedError

    def open_layer(self, layer: Layer) -> IO[bytes]:
        raise NotImplementedError

    def fetch_verified(self, store: Store | None, digest: str, what: str, media_type: str | None = None) -> bytes:
        """A small blob, from the store's cache when there, else from the source; checked before use."""
        digest_hex(digest, f"{what} digest")
        if store is not None:
            cached = store.read_blob(digest)
            if cached is not None:
                return cached
        data = self.fetch(digest, media_type)
        if sha256_digest(data) != digest:
            raise NsboxError(f"{what} {digest} from {self.name} does not match its digest (got "
                             f"{sha256_digest(data)}); the source is corrupt or was tampered with",
                             expected=digest, actual=sha256_digest(data))
        return data

    def image_from_manifest(self, store: Store | None, data: bytes, digest: str, wanted: Platform,
                            index_digest: str | None = None, depth: int = 0) -> Image:
        manifest = _json(data, f"manifest {digest} in {self.name}")
        media_type = manifest.get("mediaType")
        if media_type in INDEX_TYPES or (media_type is None and "manifests" in manifest):
            if depth > 2:
                raise NsboxError(f"{self.name}: image indexes nested too deeply at {digest}")
            descriptor = select_manifest(manifest, wanted, f"{self.name} index {digest}")
            child = self.fetch_verified(store, descriptor["digest"], "manifest", descriptor.get("mediaType"))
            image = self.image_from_manifest(store, child, descriptor["digest"], wanted, index_digest or digest,
                                             depth + 1)
            image.blobs[digest] = data
            return image
        if manifest.get("schemaVersion") == 1:
            raise NsboxError(f"{self.name}: manifest {digest} is Docker schema 1, which is deprecated and unsigned; "
                             "push the image again with a current tool")
        if media_type not in (*MANIFEST_TYPES, None) or "config" not in manifest:
            raise NsboxError(f"{self.name}: {digest} has media type {media_type!r}, not an image manifest")
        config_digest = manifest["config"]["digest"]
        config_bytes = self.fetch_verified(store, config_digest, "image config")
        config = _json(config_bytes, f"image config {config_digest}")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        descriptors = manifest.get("layers") or []
        if len(diff_ids) != len(descriptors):
            raise NsboxError(f"{self.name}: manifest {digest} lists {len(descriptors)} layers but its config "
                             f"{len(diff_ids)} diff_ids; the image is malformed")
        layers = []
        for descriptor, diff_id in zip(descriptors, diff_ids, strict=True):
            digest_hex(descriptor["digest"], "layer digest")
            digest_hex(diff_id, "diff_id")
            if "foreign" in (descriptor.get("mediaType") or "") or descriptor.get("urls"):
                raise NsboxError(f"{self.name}: layer {descriptor['digest']} is a foreign (non-distributable) "
                                 "layer, which is not supported")
            layers.append(Layer(diff_id, descriptor["digest"], descriptor.get("size"), descriptor.get("mediaType")))
        return Image(digest, config, layers, config_digest, index_digest,
                     {digest: data, config_digest: config_bytes})


# -- OCI image layout (directory) and oci-archive -------------------------------------------------


class _Slice(io.RawIOBase):
    """A byte range of a file, read as its own stream (a member of an uncompressed tar)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self.handle = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.handle.seek(offset)
        self.remaining = size

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        data = self.handle.read(size)
        self.remaining -= len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.handle.close()
        super().close()


class _Files:
    """Read files of a directory, or members of an uncompressed tar archive, by relative name."""

    def __init__(self, path: str, archive: bool) -> None:
        self.path = path
        self.archive = archive
        self.members: dict[str, tuple[int, int]] = {}
        if archive:
            try:
                with tarfile.open(path, "r:") as tar:
                    for member in tar:
                        if member.isreg():
                            name = os.path.normpath(member.name).lstrip("/")
                            self.members[name] = (member.offset_data, member.size)
            except tarfile.ReadError as error:
                raise NsboxError(f"{path} is not an uncompressed tar archive ({error}); decompress it first "
                                 "(for example with gunzip or zstd -d)", path=path) from None
            except OSError as error:
                raise NsboxError(f"cannot read {path}: {error.strerror}", path=path, errno=error.errno) from None

    def exists(self, name: str) -> bool:
        if self.archive:
            return os.path.normpath(name) in self.members
        return os.path.isfile(os.path.join(self.path, name))

    def open(self, name: str) -> IO[bytes]:
        if self.archive:
            try:
                offset, size = self.members[os.path.normpath(name)]
            except KeyError:
                raise NsboxError(f"{self.path} has no member {name}", path=self.path, member=name) from None
            return io.BufferedReader(_Slice(self.path, offset, size), 1 << 20)
        try:
            return open(os.path.join(self.path, name), "rb")
        except OSError as error:
            raise NsboxError(f"cannot read {os.path.join(self.path, name)}: {error.strerror}",
                             path=os.path.join(self.path, name), errno=error.errno) from None

    def read(self, name: str) -> bytes:
        with self.open(name) as handle:
            return handle.read()


class OciLayoutSource(BlobSource):
    def __init__(self, path: str, image: str | None, wanted: Platform, archive: bool) -> None:
        self.name = f"{'oci-archive' if archive else 'OCI layout'} {path}"
        self.files = _Files(path, archive)
        self.image = image
        self.wanted = wanted
        if not self.files.exists("oci-layout") or not self.files.exists("index.json"):
            raise NsboxError(f"{path} is not an OCI image layout: it has no oci-layout and index.json", path=path)

    def fetch(self, digest: str, media_type: str | None = None) -> bytes:
        return self.files.read(f"blobs/sha256/{digest_hex(digest)}")

    def open_layer(self, layer: Layer) -> IO[bytes]:
        return self.files.open(f"blobs/sha256/{digest_hex(layer.digest)}")

    def resolve(self, store: Store | None) -> Image:
        index = _json(self.files.read("index.json"), f"{self.name} index.json")
        manifests = index.get("manifests") or []
        if self.image:
            tag = self.image.rsplit(":", 1)[-1] if "/" not in self.image.rsplit(":", 1)[-1] else self.image
            chosen = [d for d in manifests if (d.get("annotations") or {}).get(REF_NAME) in (self.image, tag)]
            if not chosen:
                names = sorted({(d.get("annotations") or {}).get(REF_NAME, "") for d in manifests} - {""})
                raise NsboxError(f"{self.name} has no image named {self.image!r}; it has "
                                 f"{', '.join(names) or 'no names'}", names=names)
        else:
            chosen = manifests
        if len(chosen) > 1:
            platform_specific = [d for d in chosen if self.wanted.matches(d.get("platform") or {})]
            chosen = platform_specific or chosen
        if len(chosen) != 1:
            names = sorted({(d.get("annotations") or {}).get(REF_NAME, "") for d in manifests} - {""})
            raise NsboxError(f"{self.name} holds {len(chosen)} images; set image to one of: {', '.join(names)}",
                             names=names)
        descriptor = chosen[0]
        data = self.fetch_verified(None, descriptor["digest"], "manifest")
        return self.image_from_manifest(None, data, descriptor["digest"], self.wanted)


def _normal_tag(name: str) -> str:
    """busybox:1, library/busybox:1 and docker.io/library/busybox:1 are one name, as Docker reads them."""
    from ansible_collections.nsbox.primitives.plugins.module_utils.images_registry import parse_reference

    try:
        return str(parse_reference(name))
    except NsboxError:
        return name


# -- docker save archive ---------------------------------------------------------------------------


class DockerArchiveSource(BlobSource):
    def __init__(self, path: str, image: str | None) -> None:
        self.name = f"docker-archive {path}"
        self.files = _Files(path, archive=True)
        self.image = image
        if not self.files.exists("manifest.json"):
            raise NsboxError(f"{path} is not a `docker save` archive: it has no manifest.json", path=path)

    def fetch(self, digest: str, media_type: str | None = None) -> bytes:
        raise NotImplementedError  # configs are found by name, below

    def open_layer(self, layer: Layer) -> IO[bytes]:
        return self.files.open(layer.locator)

    def resolve(self, store: Store | None) -> Image:
        entries = json.loads(self.files.read("manifest.json"))
        if self.image:
            wanted = _normal_tag(self.image)
            chosen = [e for e in entries if wanted in {_normal_tag(t) for t in e.get("RepoTags") or []}]
        else:
            chosen = entries
        if len(chosen) != 1:
            tags = sorted(t for e in entries for t in e.get("RepoTags") or [])
            raise NsboxError(f"{self.name} holds {len(entries)} images and {len(chosen)} match; set image to "
                             f"one of: {', '.join(tags) or '(untagged)'}", tags=tags)
        entry = chosen[0]
        config_bytes = self.files.read(entry["Config"])
        config_digest = sha256_digest(config_bytes)
        named = os.path.basename(entry["Config"]).removesuffix(".json")
        if len(named) == 64 and named != config_digest[7:]:
            raise NsboxError(f"{self.name}: config {entry['Config']} does not match its digest (got {config_digest})",
                             expected="sha256:" + named, actual=config_digest)
        config = _json(config_bytes, f"{self.name} config")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(entry.get("Layers") or []):
            raise NsboxError(f"{self.name}: manifest.json lists {len(entry.get('Layers') or [])} layers but the "
                             f"config {len(diff_ids)} diff_ids; the archive is malformed")
        layers = []
        for member, diff_id in zip(entry["Layers"], diff_ids, strict=True):
            digest_hex(diff_id, "diff_id")
            digest = None
            if member.startswith("blobs/sha256/"):
                digest = "sha256:" + member.rsplit("/", 1)[-1]
            layers.append(Layer(diff_id, digest, locator=member))
        return Image(config_digest, config, layers, config_digest, None, {config_digest: config_bytes})


# -- plain rootfs tarball (docker export) ------------------------------------------------------------


class RootfsTarSource(BlobSource):
    def __init__(self, path: str) -> None:
        self.name = f"rootfs tarball {path}"
        self.path = path
        if not os.path.isfile(path):
            raise NsboxError(f"rootfs tarball {path} does not exist or is not a file", path=path)

    def open_layer(self, layer: Layer) -> IO[bytes]:
        return open(self.path, "rb")

    def resolve(self, store: Store | None) -> Image:
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        value = "sha256:" + digest.hexdigest()
        return Image(value, {}, [Layer(None, value)])


LayerOpener = Callable[[], IO[bytes]]
