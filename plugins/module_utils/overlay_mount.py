# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The overlay_mount module's logic: compare the wanted overlay with mountinfo, then converge."""

from __future__ import annotations

import os
import shutil
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo, overlay
from ansible_collections.nsbox.primitives.plugins.module_utils.files import parse_mode
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError

_LAYER_KEYS = {"lowerdir", "upperdir", "workdir", "lowerdir+", "datadir+"}


def _normalize(path: str | None) -> str | None:
    return None if path is None else os.path.normpath(path)


def observed_state(mount: mountinfo.Mount | None) -> dict[str, Any]:
    """The part of a mount this module manages, as the kernel reports it."""
    if mount is None:
        return {"mounted": False}
    state: dict[str, Any] = {
        "mounted": True,
        "fstype": mount.fstype,
        "mount_flags": [flag for flag in overlay.MOUNT_FLAGS if flag in mount.options],
        "propagation": mount.propagation,
    }
    if mount.fstype == "overlay":
        layers = mount.overlay_layers()
        state.update(lowerdirs=layers.lowerdirs, upperdir=layers.upperdir, workdir=layers.workdir,
                     options=[key if value is None else f"{key}={value}" for key, value in mount.super_options
                              if key not in _LAYER_KEYS and key not in ("ro", "rw")])
    else:
        state["source"] = mount.source
    return state


class OverlayMountManager(Manager):
    lock_kind = "overlay"

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        p = self.params
        self.path = _normalize(p["path"])
        self.upperdir = _normalize(p["upperdir"])
        self.workdir = _normalize(p["workdir"])
        self.lowerdirs = [_normalize(d) for d in p["lowerdirs"] or []]
        self.created: list[str] = []
        self.removed: list[str] = []

    def lock_name(self) -> str:
        return self.path

    # -- states ---------------------------------------------------------------------------------

    def mounted(self) -> None:
        spec = self._spec()
        current = mountinfo.mount_at(self.path)
        if current is not None:
            mismatch = self._mismatch(current, spec)
            if mismatch and not self.params["recreate"]:
                raise NsboxError(f"{mismatch}. Set recreate: true to unmount it and mount the requested overlay "
                                 "instead, or choose another path", path=self.path,
                                 current=observed_state(current))
            if mismatch:
                self._unmount(current)
                current = None
        if current is None:
            self._mount(spec)
        else:
            self._repair(current)
        self._report("mounted")

    def unmounted(self) -> None:
        self._check_syntax_of_given_paths()
        self._unmount_all()
        self._report("unmounted")

    def absent(self) -> None:
        self._check_syntax_of_given_paths()
        layers = self._unmount_all()
        if os.path.isdir(self.path):
            self._remove_mount_point()
        if self.params["remove_upper"]:
            for directory in (self.upperdir or layers.get("upperdir"), self.workdir or layers.get("workdir")):
                if directory:
                    self._remove_tree(directory)
        self._report("absent")

    # -- mounted --------------------------------------------------------------------------------

    def _spec(self) -> overlay.OverlaySpec:
        self._check_syntax_of_given_paths()
        self.mode = parse_mode("mode", self.params["mode"])
        if not self.lowerdirs:
            raise NsboxError(f"state=mounted needs lowerdirs for {self.path}: list the lower layers, top first")
        if bool(self.upperdir) != bool(self.workdir):
            raise NsboxError("upperdir and workdir go together: give both for a writable overlay, or neither "
                             f"for a read-only one (path {self.path})")
        return overlay.OverlaySpec(self.path, self.lowerdirs, self.upperdir, self.workdir,
                                   list(self.params["options"]), self._wanted_flags())

    def _wanted_flags(self) -> list[str]:
        # mountinfo's order, so that what was asked compares equal to what the kernel reports.
        return [flag for flag in overlay.MOUNT_FLAGS if flag in self.params["mount_flags"]]

    def _check_syntax_of_given_paths(self) -> None:
        overlay.check_path_syntax("path", self.path)
        for label, value in (("upperdir", self.upperdir), ("workdir", self.workdir)):
            if value:
                overlay.check_path_syntax(label, value)
        for lower in self.lowerdirs:
            overlay.check_path_syntax("lowerdir", lower)
        for option in self.params["options"]:
            key = option.partition("=")[0]
            if key in _LAYER_KEYS:
                raise NsboxError(f"option {option!r} sets a layer; use the lowerdirs, upperdir and workdir options")
            if "," in option:
                raise NsboxError(f"option {option!r} contains ','; give each overlay option as its own list item")

    def _mismatch(self, current: mountinfo.Mount, spec: overlay.OverlaySpec) -> str:
        if current.fstype != "overlay":
            return f"{self.path} is already a mount of {current.fstype} ({current.source}), not an overlay"
        layers = current.overlay_layers()
        have = (layers.lowerdirs, layers.upperdir, layers.workdir)
        want = (spec.lowerdirs, spec.upperdir, spec.workdir)
        if have != want:
            return (f"{self.path} is already an overlay of other layers (lowerdirs {layers.lowerdirs}, upperdir "
                    f"{layers.upperdir}, workdir {layers.workdir})")
        # The kernel lists only options that differ from its defaults, so an option it does not list is
        # taken to be at the requested value unless the option is a plain flag such as `volatile`.
        for option in spec.options:
            key, has_value, value = option.partition("=")
            shown = dict(current.super_options)
            if (has_value and key in shown and shown[key] != value) or (not has_value and key not in shown):
                return f"{self.path} is mounted with {key}={shown.get(key, 'off')}, not {option}"
        return ""

    def _mount(self, spec: overlay.OverlaySpec) -> None:
        for lower in overlay.check_lowerdirs(spec.lowerdirs, bool(spec.upperdir), missing_ok=self.check_mode):
            self.module.warn(f"lowerdir {lower} does not exist; check mode assumes an earlier task creates it")
        if spec.upperdir:
            overlay.check_upper_and_work(spec.upperdir, spec.workdir)
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            raise NsboxError(f"mount point {self.path} exists and is not a directory", path=self.path)
        for directory in (self.path, spec.upperdir, spec.workdir):
            if directory:
                self._make_directory(directory)
        wanted = {
            "mounted": True, "fstype": "overlay", "lowerdirs": spec.lowerdirs, "upperdir": spec.upperdir,
            "workdir": spec.workdir, "options": spec.options, "mount_flags": spec.mount_flags,
            "propagation": self.params["propagation"],
        }
        self.diff.add("mount", {"mounted": False}, wanted)
        if self.check_mode:
            return
        overlay.mount_overlay(spec)
        self.undo.push(f"unmount {self.path}", lambda: overlay.unmount(self.path, lazy=True))
        overlay.set_propagation(self.path, self.params["propagation"])

    def _repair(self, current: mountinfo.Mount) -> None:
        """Same layers: bring per-mount flags and propagation back to what was asked."""
        flags = observed_state(current)["mount_flags"]
        wanted_flags = self._wanted_flags()
        if self.diff.add("mount_flags", flags, wanted_flags) and not self.check_mode:
            overlay.set_mount_flags(self.path, wanted_flags)
        propagation = self.params["propagation"]
        if self.diff.add("propagation", current.propagation, propagation) and not self.check_mode:
            overlay.set_propagation(self.path, propagation)

    def _make_directory(self, directory: str) -> None:
        missing = []
        probe = directory
        while not os.path.lexists(probe):
            missing.append(probe)
            probe = os.path.dirname(probe)
        for new in reversed(missing):
            self.diff.add(f"directory {new}", "absent", "directory")
            self.created.append(new)
            if not self.check_mode:
                os.mkdir(new, self.mode)
                os.chmod(new, self.mode)  # mkdir's mode is filtered by the umask
                self.undo.push(f"remove directory {new}", lambda d=new: os.rmdir(d))

    # -- unmounted / absent ---------------------------------------------------------------------

    def _unmount_all(self) -> dict[str, Any]:
        """Unmount every overlay stacked on path; returns the layers of the lowest one (for remove_upper)."""
        layers: dict[str, Any] = {}
        stack = mountinfo.mounts_at(self.path)
        for mount in reversed(stack):
            if mount.fstype != "overlay":
                raise NsboxError(f"{self.path} is a mount of {mount.fstype} ({mount.source}), not an overlay; "
                                 "this module unmounts only overlays: unmount it yourself if it should go",
                                 path=self.path)
            layers = observed_state(mount)
            self._unmount(mount)
        return layers

    def _unmount(self, mount: mountinfo.Mount) -> None:
        self.diff.add("mount", observed_state(mount), {"mounted": False})
        if self.check_mode:
            # Predict what the real run meets: submounts or processes keep the mount busy.
            if not self.params["lazy_unmount"] and overlay.is_busy(self.path):
                raise overlay.busy_error(self.path)
            return
        overlay.unmount(self.path, lazy=self.params["lazy_unmount"])

    def _remove_mount_point(self) -> None:
        if not self.check_mode and os.listdir(self.path):
            raise NsboxError(f"mount point {self.path} is not empty once unmounted, so it is not removed: its "
                             "contents were written while nothing was mounted there. Remove them, or use "
                             "state=unmounted to keep the directory", path=self.path)
        self.diff.add(f"directory {self.path}", "directory", "absent")
        self.removed.append(self.path)
        if not self.check_mode:
            os.rmdir(self.path)

    def _remove_tree(self, directory: str) -> None:
        if not os.path.lexists(directory):
            return
        users = [m.mount_point for m in mountinfo.read() if m.fstype == "overlay"
                 and directory in (m.overlay_layers().upperdir, m.overlay_layers().workdir)]
        if users:
            raise NsboxError(f"{directory} is still the upper or work directory of the overlay at "
                             f"{', '.join(users)}; unmount that first", path=directory)
        self.diff.add(f"directory {directory}", "directory", "absent")
        self.removed.append(directory)
        if not self.check_mode:
            shutil.rmtree(directory)

    # -- result ---------------------------------------------------------------------------------

    def _report(self, state: str) -> None:
        if self.check_mode:
            predicted = self.diff.get_diff()["after"]
            after = predicted.get("mount") or observed_state(mountinfo.mount_at(self.path))
            after = {**after, **{k: predicted[k] for k in ("mount_flags", "propagation") if k in predicted}}
            mount_id = None
        else:
            current = mountinfo.mount_at(self.path)
            after = observed_state(current)
            mount_id = current.mount_id if current else None
        self.result.update(
            path=self.path, state=state, mounted=after.get("mounted", False), fstype=after.get("fstype"),
            lowerdirs=after.get("lowerdirs", []), upperdir=after.get("upperdir"), workdir=after.get("workdir"),
            options=after.get("options", []), mount_flags=after.get("mount_flags", []),
            propagation=after.get("propagation"), mount_id=mount_id,
            created_directories=self.created, removed_directories=self.removed,
        )
