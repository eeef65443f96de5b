# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rootfs_export module's logic: resolve the image, unpack missing layers into the store (in parallel),
record the image reference, optionally flatten it into `dest`; or drop the reference and prune."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils.images_sources import (
    BlobSource,
    DockerArchiveSource,
    Image,
    Layer,
    OciLayoutSource,
    RootfsTarSource,
    image_config_summary,
    parse_platform,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.images_store import (
    Store,
    _write_json_atomically,
    check_stack,
    flatten,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError, kernel_error
from ansible_collections.nsbox.primitives.plugins.module_utils.syscalls import KernelCallError

LOCAL_SOURCES = ("oci-layout", "oci-archive", "docker-archive", "rootfs-tar")


class RootfsExportManager(Manager):
    lock_kind = "image"

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        p = self.params
        self.source_kind: str = p["source"]
        self.store = Store(p["store"])
        self.path = os.path.normpath(p["path"]) if p["path"] else None
        self.dest = os.path.normpath(p["dest"]) if p["dest"] else None
        self.key = ""
        self.unpacked: list[str] = []
        self.reused: list[str] = []
        self.pruned: list[str] = []
        self.kept: list[str] = []
        self.downloaded = 0
        self._progress_lock = threading.Lock()

    def lock_name(self) -> str:
        # Runs inside execute()'s error handling, so a bad platform is a clean failure.
        self.platform = parse_platform(self.params["platform"])
        self.key = hashlib.sha256(json.dumps(
            [self.source_kind, self.params["image"], self.path, str(self.platform)]).encode()).hexdigest()[:32]
        return f"{self.store.root}:{self.key}"

    def run(self) -> None:
        try:
            super().run()
        except (NsboxError, KernelCallError):
            raise
        except OSError as error:
            # Disk full, permissions, a store on a filesystem without xattrs or device nodes...
            raise kernel_error(error, f"rootfs_export of {self.params['image'] or self.path}",
                               "check the store's filesystem (space, xattr support, mounted nodev?)") from None

    def _validate(self) -> None:
        p = self.params
        if self.source_kind == "registry" and not p["image"]:
            raise NsboxError("source=registry needs image, a reference such as docker.io/library/nginx:1.27")
        if self.source_kind in LOCAL_SOURCES and not self.path:
            raise NsboxError(f"source={self.source_kind} needs path, the image on this host")
        if self.source_kind != "registry" and (p["username"] or p["ca_file"]):
            raise NsboxError("username, password and ca_file apply to source=registry only")
        if not os.path.isabs(self.store.root):
            raise NsboxError(f"store {self.store.root} must be an absolute path")
        if self.dest and (self.dest == "/" or self.dest.startswith(self.store.root + os.sep)
                          or self.dest == self.store.root):
            raise NsboxError(f"dest {self.dest} must be a directory of its own, not / or inside the store")

    def _source(self) -> BlobSource:
        p = self.params
        if self.source_kind == "registry":
            from ansible_collections.nsbox.primitives.plugins.module_utils.images_registry import RegistrySource

            return RegistrySource(p["image"], self.platform, p["username"], p["password"], p["ca_file"],
                                  p["validate_certs"], p["timeout"])
        if self.path and not os.path.exists(self.path):
            raise NsboxError(f"{self.source_kind} {self.path} does not exist", path=self.path)
        if self.source_kind in ("oci-layout", "oci-archive"):
            return OciLayoutSource(self.path, p["image"], self.platform, archive=self.source_kind == "oci-archive")
        if self.source_kind == "docker-archive":
            return DockerArchiveSource(self.path, p["image"])
        return RootfsTarSource(self.path)

    # -- present --------------------------------------------------------------------------------

    def present(self) -> None:
        self._validate()
        if not self.check_mode:
            self.store.create()
        with self.store.lock(exclusive=False):
            old = self.store.read_ref(self.key)
            image = self._resolve()
            diff_ids = self._diff_ids(image, old)
            wanted = self._summary(image)
            before = {"digest": old["digest"], "layers": old.get("blobs")} if old else None
            missing = [layer for layer, diff_id in zip(image.layers, diff_ids, strict=True)
                       if diff_id is None or not self.store.has_layer(diff_id)]
            for layer in missing:
                self.diff.add(f"layer {layer.diff_id or layer.digest}", "absent", "unpacked")
            if self.check_mode:
                self.diff.add("image", before, wanted)
                self._dest(image, diff_ids)
                self._report(image, diff_ids)
                return
            for digest, data in image.blobs.items():
                self.store.write_blob(digest, data)
            diff_ids = self._unpack(image, missing, diff_ids)
            check_stack(self.store, diff_ids)
            self.diff.add("image", before, wanted)
            if before != wanted or not old:
                self.store.write_ref(self.key, {
                    "source": self.source_kind, "image": self.params["image"], "path": self.path,
                    "platform": str(self.platform), "digest": image.digest, "index_digest": image.index_digest,
                    "config_digest": image.config_digest, "layers": diff_ids, "blobs": wanted["layers"],
                })
            self._dest(image, diff_ids)
            self._report(image, diff_ids)

    def _resolve(self) -> Image:
        source = self._source()
        image = source.resolve(self.store)
        self._opened_source = source
        return image

    @staticmethod
    def _summary(image: Image) -> dict[str, Any]:
        """The image as its source describes it (known before anything is unpacked, so check mode agrees)."""
        return {"digest": image.digest, "layers": [layer.digest or layer.diff_id for layer in image.layers]}

    def _diff_ids(self, image: Image, old: dict[str, Any] | None) -> list[str | None]:
        diff_ids = [layer.diff_id for layer in image.layers]
        if None in diff_ids and old and old.get("digest") == image.digest and len(old["layers"]) == len(diff_ids):
            # A plain tarball has no config naming its layer; the reference remembers what it unpacked to.
            diff_ids = list(old["layers"])
        return diff_ids

    def _unpack(self, image: Image, missing: list[Layer], diff_ids: list[str | None]) -> list[str]:
        source = self._opened_source
        zstd = self.module.get_bin_path("zstd")
        allow_devices = self.params["allow_devices"]
        new_layers: set[str] = set()

        def progress(count: int) -> None:
            with self._progress_lock:
                self.downloaded += count

        def one(layer: Layer) -> str:
            record, made = self.store.unpack_layer(lambda: source.open_layer(layer), diff_id=layer.diff_id,
                                                   digest=layer.digest, allow_devices=allow_devices, zstd=zstd,
                                                   progress=progress)
            if made:
                new_layers.add(record.diff_id)
                self.undo.push(f"remove layer {record.diff_id}", lambda d=record.diff_id: self._undo_layer(d))
            return record.diff_id

        results: dict[int, str] = {}
        indexes = {id(layer): index for index, layer in enumerate(image.layers)}
        workers = max(1, min(self.params["parallel"], len(missing)))
        if missing:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [(indexes[id(layer)], pool.submit(one, layer)) for layer in missing]
                error: BaseException | None = None
                for index, future in futures:
                    try:
                        results[index] = future.result()
                    except BaseException as failure:  # the first failure is reported, the others waited for
                        error = error or failure
                if error:
                    raise error
        final = [results.get(index, diff_id) for index, diff_id in enumerate(diff_ids)]
        for diff_id in final:
            (self.unpacked if diff_id in new_layers and diff_id not in self.unpacked else self.reused).append(diff_id)
        return final

    def _undo_layer(self, diff_id: str) -> None:
        # Another image may have come to use the layer meanwhile: only an unreferenced layer goes.
        if not any(diff_id in ref.get("layers", []) for ref in self.store.all_refs()):
            self.store.remove_layer(diff_id)

    # -- dest -----------------------------------------------------------------------------------

    def _dest(self, image: Image, diff_ids: list[str | None]) -> None:
        if not self.dest:
            return
        record = self.store.read_flat_record(self.dest)
        wanted = self._summary(image)
        present = os.path.isdir(self.dest) and not os.path.islink(self.dest)
        before = {"digest": record["digest"], "layers": record.get("blobs")} if record and present else None
        if before == wanted:
            return
        if os.path.lexists(self.dest) and record is None and (
                not os.path.isdir(self.dest) or os.path.islink(self.dest) or os.listdir(self.dest)):
            raise NsboxError(f"dest {self.dest} exists and was not written by rootfs_export; remove it or "
                             "choose another dest", path=self.dest)
        self.diff.add(f"dest {self.dest}", before, wanted)
        if self.check_mode:
            return
        parent = os.path.dirname(self.dest)
        os.makedirs(parent, exist_ok=True)
        temporary = os.path.join(parent, f".{os.path.basename(self.dest)}.nsbox-{secrets.token_hex(4)}")
        os.mkdir(temporary, 0o700)
        try:
            flatten([self.store.layer_dir(d) for d in reversed(diff_ids)], temporary)
            old = None
            if os.path.lexists(self.dest):
                old = f"{temporary}.old"
                os.rename(self.dest, old)
            os.rename(temporary, self.dest)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        if old:
            shutil.rmtree(old)
        _write_json_atomically(self.store.flat_record_path(self.dest),
                               {"dest": self.dest, "digest": image.digest, "layers": diff_ids,
                                "blobs": wanted["layers"], "image_key": self.key})

    # -- absent ---------------------------------------------------------------------------------

    def absent(self) -> None:
        self._validate()
        if not os.path.isdir(self.store.root):
            self._report_absent(None)
            return
        with self.store.lock(exclusive=True):
            ref = self.store.read_ref(self.key)
            if ref:
                self.diff.add("image", {"digest": ref["digest"], "layers": ref.get("blobs")}, None)
                others = [r for r in self.store.all_refs() if self._key_of(r) != self.key]
                used = {d for r in others for d in r.get("layers", [])}
                mounted = self.store.layers_in_use_by_mounts()
                for diff_id in dict.fromkeys(ref["layers"]):
                    if diff_id in used:
                        continue
                    if diff_id in mounted:
                        self.kept.append(diff_id)
                        continue
                    if self.store.has_layer(diff_id):
                        self.diff.add(f"layer {diff_id}", "unpacked", "absent")
                        self.pruned.append(diff_id)
                blobs_used = {r.get(k) for r in others for k in ("digest", "index_digest", "config_digest")}
                if not self.check_mode:
                    self.store.remove_ref(self.key)
                    for diff_id in self.pruned:
                        self.store.remove_layer(diff_id)
                    for k in ("digest", "index_digest", "config_digest"):
                        digest = ref.get(k)
                        if digest and digest not in blobs_used and os.path.exists(self.store.blob_path(digest)):
                            os.unlink(self.store.blob_path(digest))
            if self.dest:
                record = self.store.read_flat_record(self.dest)
                if record:
                    self.diff.add(f"dest {self.dest}", {"digest": record["digest"], "layers": record.get("blobs")},
                                  None)
                    if not self.check_mode:
                        if os.path.isdir(self.dest) and not os.path.islink(self.dest):
                            shutil.rmtree(self.dest)
                        os.unlink(self.store.flat_record_path(self.dest))
            self._report_absent(ref)

    def _key_of(self, ref: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(
            [ref.get("source"), ref.get("image"), ref.get("path"), ref.get("platform")]).encode()).hexdigest()[:32]

    # -- results --------------------------------------------------------------------------------

    def _report(self, image: Image, diff_ids: list[str | None]) -> None:
        self.result.update(
            state="present", source=self.source_kind, image=self.params["image"], store=self.store.root,
            digest=image.digest, index_digest=image.index_digest, config_digest=image.config_digest,
            layers=diff_ids,
            lowerdirs=[self.store.layer_dir(d) if d else None for d in reversed(diff_ids)],
            config=image_config_summary(image.config), flattened_dir=self.dest,
            unpacked_layers=self.unpacked if not self.check_mode else
            [n.split(" ", 1)[1] for n in self.diff.names() if n.startswith("layer ")],
            reused_layers=self.reused, downloaded_bytes=self.downloaded,
            skipped_devices=self._skipped_devices(diff_ids),
        )
        if self.source_kind == "registry":
            self.result["registry_requests"] = self._opened_source.requests

    def _skipped_devices(self, diff_ids: list[str | None]) -> list[str]:
        skipped: list[str] = []
        for diff_id in diff_ids:
            record = self.store.layer_record(diff_id) if diff_id else None
            if record:
                skipped.extend(record.skipped_devices)
        return sorted(set(skipped))

    def _report_absent(self, ref: dict[str, Any] | None) -> None:
        self.result.update(state="absent", source=self.source_kind, image=self.params["image"],
                           store=self.store.root, digest=ref["digest"] if ref else None,
                           layers=ref["layers"] if ref else [], pruned_layers=self.pruned, kept_layers=self.kept,
                           flattened_dir=self.dest)
