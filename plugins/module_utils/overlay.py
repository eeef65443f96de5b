# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""overlayfs mounts: validate layers, mount with the kernel's own error text, unmount, find holders.

Mounting goes through the new mount API (fsopen/fsconfig/fsmount/move_mount) where the kernel has
it, because overlayfs then explains a refusal ("workdir and upperdir must reside under the same
mount") through the filesystem context instead of a bare EINVAL; mount(2) is the fallback.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo, syscalls
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError, kernel_error

OVERLAYFS_MAGIC = 0x794C7630
# Entries overlayfs itself keeps in a workdir between mounts; anything else means the directory
# belongs to someone else.
_WORKDIR_OWN_ENTRIES = {"work", "index", "incompat"}
# Per-mount flags this module manages, as mountinfo spells them.
MOUNT_FLAGS = {
    "ro": (syscalls.MS_RDONLY, syscalls.MOUNT_ATTR_RDONLY),
    "nosuid": (syscalls.MS_NOSUID, syscalls.MOUNT_ATTR_NOSUID),
    "nodev": (syscalls.MS_NODEV, syscalls.MOUNT_ATTR_NODEV),
    "noexec": (syscalls.MS_NOEXEC, syscalls.MOUNT_ATTR_NOEXEC),
}
# The mount(2) data string must fit in one page.
_MAX_MOUNT_DATA = 4095


@dataclass(frozen=True)
class OverlaySpec:
    path: str
    lowerdirs: list[str]
    upperdir: str | None = None
    workdir: str | None = None
    options: list[str] = field(default_factory=list)
    mount_flags: list[str] = field(default_factory=list)

    @property
    def layer_options(self) -> list[tuple[str, str]]:
        layers = [("lowerdir", ":".join(self.lowerdirs))]
        if self.upperdir:
            layers += [("upperdir", self.upperdir), ("workdir", self.workdir or "")]
        return layers

    def mount_data(self) -> str:
        return ",".join([f"{key}={value}" for key, value in self.layer_options] + self.options)


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    uses: str

    def __str__(self) -> str:
        return f"{self.pid} ({self.command}: {self.uses})"


def check_path_syntax(label: str, path: str) -> None:
    if not os.path.isabs(path):
        raise NsboxError(f"{label} {path!r} is not an absolute path; give the full path", path=path)
    bad = [c for c in (":", ",", "\n") if c in path]
    if bad:
        raise NsboxError(
            f"{label} {path!r} contains {' and '.join(repr(c) for c in bad)}, which overlayfs uses to separate "
            "its options; rename the directory or bind-mount it at a path without these characters", path=path)


def check_lowerdirs(lowerdirs: list[str], has_upper: bool, missing_ok: bool = False) -> list[str]:
    """Refuse lowerdirs overlayfs would refuse; with missing_ok (check mode, where an earlier task may be
    about to make them) return the missing ones instead of failing on them."""
    if not lowerdirs:
        raise NsboxError("lowerdirs is empty: an overlay needs at least one lower directory")
    if not has_upper and len(lowerdirs) < 2:
        raise NsboxError(
            f"a read-only overlay (no upperdir) needs at least two lowerdirs, got {lowerdirs}; add an upperdir "
            "and workdir for a writable overlay, or bind-mount the single directory instead")
    seen = set()
    missing: list[str] = []
    for lower in lowerdirs:
        if lower in seen:
            raise NsboxError(f"lowerdir {lower} is listed twice; each layer may appear once", path=lower)
        seen.add(lower)
        if not os.path.isdir(lower):
            if missing_ok and not os.path.lexists(lower):
                missing.append(lower)
                continue
            what = "does not exist" if not os.path.lexists(lower) else "is not a directory"
            raise NsboxError(f"lowerdir {lower} {what}; create it or fix the path", path=lower)
    return missing


def check_upper_and_work(upperdir: str, workdir: str) -> None:
    """Refuse what overlayfs would refuse, with the reason and the fix, before anything is created."""
    if upperdir == workdir or upperdir.startswith(workdir + "/") or workdir.startswith(upperdir + "/"):
        raise NsboxError(f"upperdir {upperdir} and workdir {workdir} must be separate, non-nested directories "
                         "side by side on one filesystem (e.g. .../upper and .../work)", path=workdir)
    upper_fs = _filesystem_of(upperdir)
    work_fs = _filesystem_of(workdir)
    if upper_fs.fstype == "overlay":
        raise NsboxError(f"upperdir {upperdir} lies on an overlayfs mount ({upper_fs.mount_point}); overlayfs cannot "
                         "use another overlay as its upper layer: put upperdir on a regular filesystem such as "
                         "ext4 or xfs", path=upperdir)
    if upper_fs.mount_id != work_fs.mount_id or _device_of(upperdir) != _device_of(workdir):
        raise NsboxError(f"upperdir {upperdir} (on {upper_fs.mount_point}) and workdir {workdir} (on "
                         f"{work_fs.mount_point}) are on different mounts; overlayfs needs both on the same "
                         "filesystem mount: put them side by side, e.g. .../upper and .../work", path=workdir)
    if os.path.isdir(workdir):
        foreign = sorted(set(os.listdir(workdir)) - _WORKDIR_OWN_ENTRIES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise NsboxError(f"workdir {workdir} is not empty (it holds {shown}); overlayfs needs an empty directory "
                             "of its own: give an empty or new directory", path=workdir)
    for path in (upperdir, workdir):
        if os.path.lexists(path) and not os.path.isdir(path):
            raise NsboxError(f"{path} exists and is not a directory", path=path)


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _filesystem_of(path: str) -> mountinfo.Mount:
    return mountinfo.mount_containing(_nearest_existing(path))


def _device_of(path: str) -> int:
    return os.stat(_nearest_existing(path)).st_dev


class KernelLog:
    """Kernel log records written from now on: overlayfs explains most refusals only there."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._fd = None  # no /dev/kmsg (e.g. inside a container): errors lose their detail only

    def read_new(self, tag: str) -> list[str]:
        messages = []
        while self._fd is not None:
            try:
                record = os.read(self._fd, 8192).decode(errors="replace")
            except OSError:
                break  # EAGAIN: nothing more; EPIPE: records were overwritten
            message = record.partition(";")[2].split("\n", 1)[0].strip()
            if tag in message:
                messages.append(message)
        return messages

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# fsconfig(2) copies at most 256 bytes of a string value (EINVAL beyond): a few image layers in a store
# already need more, so long layer lists go one `lowerdir+` per layer (Linux 6.8+).
FSCONFIG_VALUE_MAX = 255


def _layers_fit_one_value(spec: OverlaySpec) -> bool:
    return len(os.fsencode(spec.layer_options[0][1])) <= FSCONFIG_VALUE_MAX


def _kernel_has_lowerdir_plus(release: str | None = None) -> bool:
    numbers = (release or os.uname().release).split("-")[0].split(".")
    try:
        return (int(numbers[0]), int(numbers[1])) >= (6, 8)
    except (IndexError, ValueError):
        return False


def _fsconfig_layers(spec: OverlaySpec) -> list[tuple[str, str]]:
    layers = spec.layer_options
    if _layers_fit_one_value(spec):
        return layers
    return [("lowerdir+", lower) for lower in spec.lowerdirs] + layers[1:]


def mount_overlay(spec: OverlaySpec) -> None:
    """Mount the overlay at spec.path; raise NsboxError with the kernel's reason on refusal."""
    attr_flags = 0
    legacy_flags = 0
    for flag in spec.mount_flags:
        legacy_flags |= MOUNT_FLAGS[flag][0]
        attr_flags |= MOUNT_FLAGS[flag][1]
    kernel_log = KernelLog()
    if not _layers_fit_one_value(spec) and not _kernel_has_lowerdir_plus():
        # Before 6.8 (Debian 12's 6.1) there is no lowerdir+; mount(2) takes a whole page of options.
        _mount_legacy(spec, legacy_flags, kernel_log)
        return
    try:
        fs_fd = syscalls.fsopen("overlay")
    except syscalls.KernelCallError as error:
        if error.errno != errno.ENOSYS:
            raise kernel_error(error, f"opening an overlay filesystem context for {spec.path}",
                               "check that the overlay module is loaded (modprobe overlay)") from error
        _mount_legacy(spec, legacy_flags, kernel_log)
        return
    try:
        try:
            for key, value in _fsconfig_layers(spec):
                syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, key, value)
            for option in spec.options:
                key, has_value, value = option.partition("=")
                if has_value:
                    syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, key, value)
                else:
                    syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_FLAG, key)
            syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_CMD_CREATE, target=spec.path)
        except syscalls.KernelCallError as error:
            messages = syscalls.fs_context_messages(fs_fd) + kernel_log.read_new("overlayfs")
            reasons = "; ".join(messages) or error.strerror
            raise NsboxError(f"the kernel refused the overlay at {spec.path}: {reasons} "
                             f"(errno {error.errno}, {errno.errorcode.get(error.errno, '?')}); "
                             f"layers: {spec.mount_data()}", path=spec.path, errno=error.errno) from error
        mount_fd = syscalls.fsmount(fs_fd, attr_flags)
        try:
            syscalls.move_mount(mount_fd, spec.path)
        finally:
            os.close(mount_fd)
    except syscalls.KernelCallError as error:
        raise kernel_error(error, f"mounting the overlay at {spec.path}") from error
    finally:
        os.close(fs_fd)
        kernel_log.close()


def _mount_legacy(spec: OverlaySpec, flags: int, kernel_log: KernelLog) -> None:
    data = spec.mount_data()
    if len(data) > _MAX_MOUNT_DATA:
        raise NsboxError(f"the overlay options for {spec.path} are {len(data)} bytes, over the {_MAX_MOUNT_DATA} "
                         "bytes mount(2) takes on this kernel; use fewer or shorter lowerdir paths", path=spec.path)
    try:
        syscalls.mount("overlay", spec.path, "overlay", flags, data)
    except syscalls.KernelCallError as error:
        reasons = "; ".join(kernel_log.read_new("overlayfs")) or "see dmesg | grep overlayfs"
        raise kernel_error(error, f"mounting the overlay at {spec.path} ({data})", f"Kernel: {reasons}") from error
    finally:
        kernel_log.close()


def set_mount_flags(path: str, wanted: list[str]) -> None:
    attr_set = 0
    attr_clr = 0
    for name, (_legacy, attr) in MOUNT_FLAGS.items():
        if name in wanted:
            attr_set |= attr
        else:
            attr_clr |= attr
    try:
        syscalls.mount_setattr(path, attr_set=attr_set, attr_clr=attr_clr)
    except syscalls.KernelCallError as error:
        raise kernel_error(error, f"changing the mount flags of {path} to {wanted or ['rw']}") from error


def set_propagation(path: str, propagation: str) -> None:
    try:
        syscalls.set_propagation(path, propagation)
    except syscalls.KernelCallError as error:
        raise kernel_error(error, f"making the mount at {path} {propagation}") from error


def unmount(path: str, lazy: bool = False) -> None:
    """Unmount the visible mount at path; when busy, name the submounts and the processes holding it."""
    try:
        syscalls.umount2(path, syscalls.UMOUNT_NOFOLLOW | (syscalls.MNT_DETACH if lazy else 0))
    except syscalls.KernelCallError as error:
        if error.errno != errno.EBUSY:
            raise kernel_error(error, f"unmounting {path}") from error
        raise busy_error(path) from error


def is_busy(path: str) -> bool:
    return bool(mountinfo.mounts_below(path) or find_holders(path))


def busy_error(path: str) -> NsboxError:
    submounts = [m.mount_point for m in mountinfo.mounts_below(path)]
    holders = find_holders(path)
    reasons = []
    if submounts:
        reasons.append(f"mounts inside it: {', '.join(submounts)}")
    if holders:
        reasons.append(f"processes using it: {', '.join(str(h) for h in holders)}")
    return NsboxError(
        f"cannot unmount {path}: it is busy ({'; '.join(reasons) or 'held by a process in another mount namespace'})."
        " Stop those processes or unmount the inner mounts first, or set lazy_unmount: true to detach it now "
        "and let the kernel finish when the last user goes",
        path=path, errno=errno.EBUSY, pids=[h.pid for h in holders], submounts=submounts)


def find_holders(path: str) -> list[Holder]:
    """Processes whose root, cwd, executable, open files or mapped files lie under path."""
    prefix = os.path.realpath(path).rstrip("/") + "/"

    def inside(target: str) -> bool:
        return target == prefix[:-1] or target.startswith(prefix)

    holders: list[Holder] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        uses = _process_uses(f"/proc/{entry}", inside)
        if uses:
            holders.append(Holder(int(entry), _command_of(entry), uses))
    return holders


def _process_uses(proc: str, inside) -> str:
    try:
        for link in ("root", "cwd", "exe"):
            if inside(os.readlink(f"{proc}/{link}")):
                return link
        for fd in os.listdir(f"{proc}/fd"):
            try:
                if inside(os.readlink(f"{proc}/fd/{fd}")):
                    return f"open file {os.readlink(f'{proc}/fd/{fd}')}"
            except OSError:
                continue
        with open(f"{proc}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and inside(fields[5].strip()):
                    return f"mapped file {fields[5].strip()}"
    except OSError:
        pass  # the process ended or hides its details; it cannot be holding the mount then
    return ""


def _command_of(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip()
    except OSError:
        return "?"
