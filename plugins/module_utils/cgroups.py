# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One cgroup v2 vocabulary for v2, hybrid and v1 hosts.

Users (and the other modules) speak cgroup v2: ``cpu.max``, ``memory.max``, ``pids.max``... This
file turns module options into canonical v2 values (the exact strings a v2 kernel prints back),
finds out which hierarchy a host has (:func:`detect_hierarchy`), and gives a :class:`Cgroup` whose
backend reads and writes those v2 keys, on v1 hosts by translation (``cgroups_v1``).

Hybrid hosts (v1 controllers plus a cgroup2 tree at ``<root>/unified``): each controller is driven
where it is bound (v1 when it is mounted as v1, otherwise in the unified tree if that offers it), and
the group is also created in the unified tree, so that it has one place for process tracking and
``cgroup.kill``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError
from ansible_collections.nsbox.primitives.plugins.module_utils.sizes import SizeError, parse_size

DEFAULT_ROOT = "/sys/fs/cgroup"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
DEFAULT_CPU_PERIOD = 100000
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer",
                  "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc")

# v2 interface files a user may set through `settings`, by kind of value. Write-only triggers
# (cgroup.kill, memory.reclaim) are left out: they are actions, not state.
SIZE_KEYS = ("memory.min", "memory.low", "memory.high", "memory.max", "memory.swap.high",
             "memory.swap.max", "memory.zswap.max")
NUMBER_OR_MAX_KEYS = ("pids.max", "cgroup.max.depth", "cgroup.max.descendants")
INTEGER_KEYS = {"cpu.weight": (1, 10000), "cpu.weight.nice": (-20, 19), "cpu.idle": (0, 1),
                "cpu.max.burst": (0, 10**12), "memory.oom.group": (0, 1), "cgroup.freeze": (0, 1),
                "memory.zswap.writeback": (0, 1)}
CPU_LIST_KEYS = ("cpuset.cpus", "cpuset.mems", "cpuset.cpus.exclusive")
OTHER_KEYS = ("cpu.max", "cpu.uclamp.min", "cpu.uclamp.max", "cpuset.cpus.partition", "io.max",
              "io.weight", "io.bfq.weight", "io.latency", "rdma.max", "misc.max", "cgroup.type")
_HUGETLB_KEY = re.compile(r"^hugetlb\.[0-9]+[KMG]B\.(max|rsvd\.max)$")
KNOWN_KEYS = frozenset((*SIZE_KEYS, *NUMBER_OR_MAX_KEYS, *INTEGER_KEYS, *CPU_LIST_KEYS, *OTHER_KEYS))

# The v2 key each typed module option sets.
OPTION_KEYS = {"cpu_weight": "cpu.weight", "memory_max": "memory.max", "memory_high": "memory.high",
               "memory_swap_max": "memory.swap.max", "pids_max": "pids.max", "cpuset_cpus": "cpuset.cpus",
               "cpuset_mems": "cpuset.mems"}
IO_MAX_FIELDS = ("rbps", "wbps", "riops", "wiops")


def key_controller(key: str) -> str | None:
    """The v2 controller behind a key (``memory.max`` -> memory); None for core ``cgroup.*`` files."""
    prefix = key.split(".", 1)[0]
    return None if prefix == "cgroup" else prefix


def is_known_key(key: str) -> bool:
    return key in KNOWN_KEYS or bool(_HUGETLB_KEY.match(key))


# ---------------------------------------------------------------------------------------------
# Validation: module options -> canonical v2 values
# ---------------------------------------------------------------------------------------------

def validate_path(path: str) -> str:
    """A cgroup path relative to the cgroup root, normalised (``nsbox/web``)."""
    text = str(path or "").strip()
    if not text or text.startswith("/"):
        raise NsboxError(f"cgroup path {path!r} must be relative to the cgroup root, e.g. nsbox/web; "
                         "the root option says where the hierarchy is mounted", path=path)
    parts = text.rstrip("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise NsboxError(f"cgroup path {path!r} may not contain empty, '.' or '..' components: "
                             "give a plain relative path such as nsbox/web", path=path)
        if part.startswith("cgroup.") or "\n" in part:
            raise NsboxError(f"cgroup path {path!r}: component {part!r} is not a valid cgroup name "
                             "(names starting with 'cgroup.' are the kernel's interface files)", path=path)
    return "/".join(parts)


def _bad(option: str, value: Any, why: str) -> NsboxError:
    return NsboxError(f"{option}={value!r}: {why}", option=option)


def normalize_size(option: str, value: Any) -> str:
    """A size as the kernel prints it back: bytes rounded down to whole pages, or ``max``."""
    try:
        size = parse_size(value)
    except SizeError as error:
        raise _bad(option, value, str(error)) from None
    if size == "max":
        return "max"
    return str(int(size) // PAGE_SIZE * PAGE_SIZE)


def normalize_number_or_max(option: str, value: Any) -> str:
    text = str(value).strip().lower()
    if text in ("max", "-1", "unlimited"):
        return "max"
    if not re.fullmatch(r"\d+", text):
        raise _bad(option, value, "expected a non-negative whole number or max")
    return str(int(text))


def normalize_integer(option: str, value: Any, low: int, high: int) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"-?\d+", text) or not low <= int(text) <= high:
        raise _bad(option, value, f"expected a whole number from {low} to {high}")
    return str(int(text))


def normalize_cpu_list(option: str, value: Any) -> str:
    """``0,1,2,5`` -> ``0-2,5``, the form the kernel prints."""
    text = str(value).strip()
    if text == "":
        return ""
    numbers: set[int] = set()
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise _bad(option, value, "expected a list such as 0-1,3")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        numbers.update(range(first, last + 1))
    ranges: list[str] = []
    ordered = sorted(numbers)
    start = previous = ordered[0]
    for number in [*ordered[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ",".join(ranges)


def parse_cpu_max(option: str, value: Any) -> tuple[str, int | None]:
    """``"40000 100000"``, ``"40000"``, ``"max"``, ``"max 100000"`` -> (quota, period or None)."""
    fields = str(value).split()
    if not 1 <= len(fields) <= 2:
        raise _bad(option, value, "expected QUOTA PERIOD in microseconds (40000 100000), QUOTA, or max")
    quota = fields[0].lower()
    if quota != "max" and (not quota.isdigit() or int(quota) < 1000):
        raise _bad(option, value, "the quota must be max or at least 1000 microseconds")
    period = None
    if len(fields) == 2:
        if not fields[1].isdigit() or not 1000 <= int(fields[1]) <= 1000000:
            raise _bad(option, value, "the period must be 1000 to 1000000 microseconds")
        period = int(fields[1])
    return quota, period


def format_cpu_max(quota: str, period: int | None) -> str:
    return quota if period is None else f"{quota} {period}"


def cpus_to_cpu_max(cpus: float, period: int | None, cpu_count: int) -> str:
    """``cpus: 0.4`` -> ``40000 100000``; refuses more CPUs than the host has."""
    period = period or DEFAULT_CPU_PERIOD
    if not 1000 <= period <= 1000000:
        raise _bad("cpu_period", period, "the period must be 1000 to 1000000 microseconds")
    if cpus <= 0:
        raise _bad("cpus", cpus, "give a positive number of CPUs such as 0.4, or leave cpus out for no limit")
    if cpus > cpu_count:
        raise _bad("cpus", cpus, f"a quota of {cpus} CPUs ({round(cpus * period)} us per {period} us) is above "
                                 f"the period times the {cpu_count} CPUs of this host; use at most {cpu_count}")
    quota = round(cpus * period)
    if quota < 1000:
        raise _bad("cpus", cpus, f"{cpus} CPUs is a quota of {quota} us; the kernel needs at least 1000 us "
                                 "(raise cpus or cpu_period)")
    return f"{quota} {period}"


def normalize_io_line(entry: dict[str, Any]) -> tuple[str, str]:
    """One io_max entry -> (``MAJ:MIN``, ``rbps=... wbps=...``) with only the fields given."""
    device = str(entry.get("device") or "").strip()
    if re.fullmatch(r"\d+:\d+", device):
        number = device
    else:
        try:
            info = os.stat(device)
        except OSError as error:
            raise _bad("io_max.device", device, f"cannot stat the device ({error.strerror}); give a block "
                                                "device path such as /dev/vda or MAJOR:MINOR") from None
        if not stat.S_ISBLK(info.st_mode):
            raise _bad("io_max.device", device, "not a block device; give e.g. /dev/vda or MAJOR:MINOR")
        number = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    limits = []
    for name in IO_MAX_FIELDS:
        if entry.get(name) is not None:
            if name.endswith("bps"):
                # Bytes per second, not memory: no rounding to pages.
                try:
                    size = str(parse_size(entry[name]))
                except SizeError as error:
                    raise _bad(f"io_max.{name}", entry[name], str(error)) from None
            else:
                size = normalize_number_or_max(f"io_max.{name}", entry[name])
            if size == "0":
                raise _bad(f"io_max.{name}", entry[name], "0 would stop all I/O; use max for no limit")
            limits.append(f"{name}={size}")
    if not limits:
        raise _bad("io_max", entry, f"give at least one of {', '.join(IO_MAX_FIELDS)} for device {device}")
    return number, " ".join(limits)


def normalize_setting(key: str, value: Any) -> str:
    """A raw v2 key's value in the form the kernel prints back."""
    if not is_known_key(key):
        raise NsboxError(
            f"settings: unknown cgroup v2 key {key!r}. Give a v2 interface file such as memory.low, "
            f"cpu.weight.nice, io.weight or hugetlb.2MB.max (known: {', '.join(sorted(KNOWN_KEYS))})", key=key)
    option = f"settings[{key}]"
    if key in SIZE_KEYS:
        return normalize_size(option, value)
    if key in NUMBER_OR_MAX_KEYS or _HUGETLB_KEY.match(key):
        return normalize_number_or_max(option, value)
    if key in INTEGER_KEYS:
        return normalize_integer(option, value, *INTEGER_KEYS[key])
    if key in CPU_LIST_KEYS:
        return normalize_cpu_list(option, value)
    if key == "cpu.max":
        return format_cpu_max(*parse_cpu_max(option, value))
    if key == "io.max":
        raise _bad(option, value, "use the io_max option (a list of devices with rbps/wbps/riops/wiops)")
    return str(value).strip()


@dataclass
class DesiredState:
    """What the user asked for, in canonical v2 form."""

    values: dict[str, str] = field(default_factory=dict)      # v2 key -> value
    io_max: dict[str, str] = field(default_factory=dict)      # MAJ:MIN -> "rbps=.. wbps=.."
    controllers: set[str] = field(default_factory=set)       # extra controllers to join

    def needed_controllers(self) -> set[str]:
        needed = {c for c in map(key_controller, self.values) if c}
        if self.io_max:
            needed.add("io")
        return needed | self.controllers


def desired_from_params(params: dict[str, Any], cpu_count: int | None = None) -> DesiredState:
    """Validate every limit option and return canonical v2 values; raises NsboxError on bad input."""
    cpu_count = cpu_count or os.cpu_count() or 1
    desired = DesiredState()
    if params.get("cpus") is not None:
        if params.get("cpu_max") is not None:
            raise NsboxError("give either cpus or cpu_max, not both")
        desired.values["cpu.max"] = cpus_to_cpu_max(float(params["cpus"]), params.get("cpu_period"), cpu_count)
    elif params.get("cpu_max") is not None:
        quota, period = parse_cpu_max("cpu_max", params["cpu_max"])
        desired.values["cpu.max"] = format_cpu_max(quota, period or params.get("cpu_period"))
    elif params.get("cpu_period") is not None:
        raise NsboxError("cpu_period goes with cpus or cpu_max; give one of them too")
    for option, key in OPTION_KEYS.items():
        if params.get(option) is not None:
            desired.values[key] = normalize_setting(key, params[option])
    for key, value in (params.get("settings") or {}).items():
        if key in desired.values:
            raise NsboxError(f"settings[{key}] sets what another option already sets; give it once", key=key)
        desired.values[key] = normalize_setting(key, value)
    for entry in params.get("io_max") or []:
        device, line = normalize_io_line(entry)
        if device in desired.io_max:
            raise _bad("io_max", entry, f"device {device} is listed twice")
        desired.io_max[device] = line
    for controller in params.get("controllers") or []:
        desired.controllers.add(str(controller))
    return desired


# ---------------------------------------------------------------------------------------------
# Hierarchy detection
# ---------------------------------------------------------------------------------------------

@dataclass
class Layout:
    """Where the hierarchies of a host are mounted."""

    hierarchy: str                      # "v2", "v1" or "hybrid"
    root: str
    unified: str | None = None          # the cgroup2 mount (the root itself on pure v2)
    v1: dict[str, str] = field(default_factory=dict)  # v1 controller -> its mount point

    def v2_controllers(self) -> set[str]:
        if not self.unified:
            return set()
        return set(read_text(os.path.join(self.unified, "cgroup.controllers")).split())

    def available_controllers(self) -> set[str]:
        return set(self.v1) | self.v2_controllers()


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def write_text(path: str, value: str) -> None:
    # One write() per value: cgroup files take one value per write call.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _is_cgroup2(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "cgroup.controllers"))


def v1_mounts(root: str, mounts: list[mountinfo.Mount] | None = None) -> dict[str, str]:
    """v1 controller -> mount point, for the v1 hierarchies mounted below root (co-mounted
    controllers such as ``cpu,cpuacct`` share one mount point)."""
    controllers: dict[str, str] = {}
    prefix = os.path.realpath(root).rstrip("/") + "/"
    for mount in mountinfo.read() if mounts is None else mounts:
        if mount.fstype != "cgroup" or not mount.mount_point.startswith(prefix):
            continue
        for name, _value in mount.super_options:
            if name in V1_CONTROLLERS and name not in controllers:
                controllers[name] = mount.mount_point
    return controllers


def detect_hierarchy(hierarchy: str = "auto", root: str | None = None) -> Layout:
    """The layout below root: pure ``v2``, ``v1`` controllers only, or ``hybrid`` (v1 controllers
    plus a cgroup2 tree at root/unified). ``hierarchy`` forces v2 or v1 (v1 ignores the unified tree)."""
    root = os.path.realpath(root or DEFAULT_ROOT)
    if hierarchy not in ("auto", "v1", "v2"):
        raise NsboxError(f"hierarchy={hierarchy!r}: choose auto, v2 or v1")
    if not os.path.isdir(root):
        raise NsboxError(f"cgroup root {root} does not exist; point root at the mounted cgroup hierarchy",
                         path=root)
    if hierarchy in ("auto", "v2") and _is_cgroup2(root):
        return Layout("v2", root, unified=root)
    if hierarchy == "v2":
        unified = os.path.join(root, "unified")
        hint = f" (this host has one at {unified}: pass root={unified})" if _is_cgroup2(unified) else ""
        raise NsboxError(f"{root} is not a cgroup v2 hierarchy{hint}; use hierarchy=auto or v1", path=root)
    controllers = v1_mounts(root)
    if not controllers:
        raise NsboxError(f"no cgroup v1 controllers are mounted below {root} and it is no cgroup2 mount; "
                         "mount a cgroup hierarchy or point root at one", path=root)
    unified = os.path.join(root, "unified")
    if hierarchy == "auto" and _is_cgroup2(unified):
        return Layout("hybrid", root, unified=unified, v1=controllers)
    return Layout("v1", root, v1=controllers)


# ---------------------------------------------------------------------------------------------
# The group
# ---------------------------------------------------------------------------------------------

class Backend:
    """Reads and writes v2 keys of one group in one hierarchy. Implemented per hierarchy."""

    kind = ""

    def controllers(self) -> set[str]:
        """The v2 controllers this backend can drive."""
        raise NotImplementedError

    def directories_for(self, controllers: set[str]) -> list[str]:
        """The directories the group needs so that these controllers apply to it."""
        raise NotImplementedError

    def all_directories(self) -> list[str]:
        """Every directory the group could live in with this backend."""
        raise NotImplementedError

    def read(self, key: str) -> str | None:
        raise NotImplementedError

    def write(self, key: str, value: str) -> None:
        raise NotImplementedError

    def unsupported(self, key: str, value: str, desired: DesiredState | None = None) -> str | None:
        """Why this backend cannot express key=value, or None."""
        return None

    def notes(self, desired: DesiredState) -> list[str]:
        return []


def read_pids(directory: str) -> list[int]:
    """Processes in a cgroup directory and all its descendants."""
    pids: set[int] = set()
    for current, _dirs, _files in os.walk(directory):
        try:
            pids.update(int(p) for p in read_text(os.path.join(current, "cgroup.procs")).split())
        except FileNotFoundError:
            continue
    return sorted(pids)


def process_name(pid: int) -> str:
    try:
        return read_text(f"/proc/{pid}/comm")
    except OSError:
        return "?"


def describe_processes(pids: list[int]) -> str:
    shown = ", ".join(f"{pid} ({process_name(pid)})" for pid in pids[:20])
    return shown + (f" and {len(pids) - 20} more" if len(pids) > 20 else "")


class Cgroup:
    """One group, in every hierarchy it lives in. The public API other modules use."""

    def __init__(self, path: str, layout: Layout) -> None:
        from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups_v1 import V1Backend
        from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups_v2 import V2Backend

        self.path = validate_path(path)
        self.layout = layout
        self.hierarchy = layout.hierarchy
        self.v2 = V2Backend(layout.unified, self.path) if layout.unified else None
        self.v1 = V1Backend(layout.v1, self.path) if layout.v1 else None

    # -- where keys go ---------------------------------------------------------------------
    def backend_for(self, controller: str | None) -> Backend:
        """v1 for controllers bound to a v1 hierarchy; the unified tree for the rest."""
        if controller is None:
            return self.v2 or self.v1  # type: ignore[return-value]
        if self.v1 and controller in self.v1.controllers():
            return self.v1
        if self.v2 and controller in self.v2.controllers():
            return self.v2
        have = sorted(self.layout.available_controllers())
        raise NsboxError(
            f"this host has no {controller} cgroup controller in the {self.hierarchy} hierarchy at "
            f"{self.layout.root}; it has: {', '.join(have) or 'none'}. Leave out the options that need "
            f"{controller}, or point root/hierarchy at a hierarchy that has it", controller=controller,
            available=have)

    def required_directories(self, desired: DesiredState) -> list[str]:
        directories: list[str] = []
        by_backend: dict[int, tuple[Backend, set[str]]] = {}
        for controller in desired.needed_controllers():
            backend = self.backend_for(controller)
            by_backend.setdefault(id(backend), (backend, set()))[1].add(controller)
        if self.v2:
            by_backend.setdefault(id(self.v2), (self.v2, set()))
        elif self.v1 and not by_backend:
            # A pure-v1 group with no limits still needs a home for its processes.
            home = "pids" if "pids" in self.v1.controllers() else sorted(self.v1.controllers())[0]
            by_backend[id(self.v1)] = (self.v1, {home})
        for backend, controllers in by_backend.values():
            for directory in backend.directories_for(controllers):
                if directory not in directories:
                    directories.append(directory)
        return directories

    # -- public API ------------------------------------------------------------------------
    def directories(self) -> list[str]:
        """The directories of this group that exist now (the v2 dir and/or one per v1 hierarchy)."""
        found: list[str] = []
        for backend in (self.v1, self.v2):
            if backend:
                found.extend(d for d in backend.all_directories() if os.path.isdir(d) and d not in found)
        return found

    def exists(self) -> bool:
        return bool(self.directories())

    def processes(self) -> list[int]:
        """Every process in the group or its descendants, in any hierarchy."""
        pids: set[int] = set()
        for directory in self.directories():
            pids.update(read_pids(directory))
        return sorted(pids)

    def add_process(self, pid: int) -> None:
        """Move pid into the group in every hierarchy it lives in."""
        directories = self.directories()
        if not directories:
            raise NsboxError(f"cgroup {self.path} does not exist (looked in {self.layout.root}); create it "
                             "with nsbox.primitives.cgroup2 first", path=self.path)
        for directory in directories:
            target = os.path.join(directory, "cgroup.procs")
            try:
                write_text(target, str(pid))
            except OSError as error:
                raise NsboxError(f"moving process {pid} into {directory} failed: {error}", path=target,
                                 errno=error.errno) from None

    def kill(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process of the group (cgroup.kill where the kernel has it) and wait until
        the group is empty; returns the pids that were in it."""
        victims = self.processes()
        if self.v2:
            kill_file = os.path.join(self.v2.directory, "cgroup.kill")
            if os.path.exists(kill_file):
                write_text(kill_file, "1")
        deadline = time.monotonic() + timeout
        while True:
            remaining = self.processes()
            if not remaining:
                return victims
            if time.monotonic() > deadline:
                raise NsboxError(f"cgroup {self.path}: processes {describe_processes(remaining)} are still "
                                 f"there {timeout:.0f} s after SIGKILL (uninterruptible sleep?); try again",
                                 pids=remaining)
            # Processes that are only in v1 hierarchies escape cgroup.kill, and without it a forking
            # process races us: signal until nothing is left.
            for pid in remaining:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            victims = sorted(set(victims) | set(remaining))
            time.sleep(0.02)

    def remove(self, timeout: float = 5.0) -> list[str]:
        """rmdir the group and its descendants bottom-up in every hierarchy; returns what was removed."""
        removed: list[str] = []
        for directory in self.directories():
            for current, _dirs, _files in sorted(os.walk(directory), key=lambda e: -e[0].count("/")):
                _rmdir_retrying(current, timeout)
                removed.append(current)
        return removed


def _rmdir_retrying(directory: str, timeout: float) -> None:
    # A killed task leaves the cgroup a moment after it is gone from cgroup.procs: EBUSY until then.
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                pids = read_pids(directory) if os.path.isdir(directory) else []
                busy = f"; it still holds processes {describe_processes(pids)}" if pids else ""
                raise NsboxError(f"removing cgroup directory {directory} failed: {error}{busy}",
                                 path=directory, errno=error.errno) from None
            time.sleep(0.05)


def open_cgroup(path: str, hierarchy: str = "auto", root: str | None = None) -> Cgroup:
    """The group at path (relative to the cgroup root) on this host, whether or not it exists yet."""
    return Cgroup(path, detect_hierarchy(hierarchy, root))


# ---------------------------------------------------------------------------------------------
# Converging a group: what the module does
# ---------------------------------------------------------------------------------------------

# Order of writes: a cpuset before tasks need it, memory.max before the swap that is derived from it.
_WRITE_ORDER = ("cpuset.cpus", "cpuset.mems", "cpu.max", "memory.max", "memory.swap.max")


def _ordered(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: (_WRITE_ORDER.index(k) if k in _WRITE_ORDER else len(_WRITE_ORDER), k))


def _io_fields(text: str | None) -> dict[str, dict[str, str]]:
    devices: dict[str, dict[str, str]] = {}
    for line in (text or "").splitlines():
        device, *items = line.split()
        devices[device] = dict(item.partition("=")[::2] for item in items)
    return devices


def _io_target(current: dict[str, str] | None, wanted: str) -> str:
    fields = dict(item.partition("=")[::2] for item in wanted.split())
    return " ".join(f"{name}={fields[name]}" for name in IO_MAX_FIELDS if name in fields)


def _io_current(current: dict[str, str] | None, wanted: str) -> str | None:
    if current is None:
        return None
    names = [item.partition("=")[0] for item in wanted.split()]
    return " ".join(f"{name}={current.get(name, 'max')}" for name in IO_MAX_FIELDS if name in names)


@dataclass
class Converger:
    """Brings one group to the desired state, recording each difference and how to undo it."""

    cgroup: Cgroup
    diff: Any            # DifferenceTracker
    undo: Any            # UndoStack
    check_mode: bool
    notes: list[str] = field(default_factory=list)

    def present(self, desired: DesiredState) -> dict[str, Any]:
        cgroup = self.cgroup
        # Validate everything before touching anything: nothing half-made on bad input.
        routes = {key: cgroup.backend_for(key_controller(key)) for key in desired.values}
        io_backend = cgroup.backend_for("io") if desired.io_max else None
        for key, value in desired.values.items():
            why = routes[key].unsupported(key, value, desired)
            if why:
                raise NsboxError(f"cannot set {key}={value} on this {cgroup.hierarchy} host: {why}", key=key)
        required = cgroup.required_directories(desired)
        for backend in {id(b): b for b in routes.values()}.values():
            self.notes.extend(backend.notes(desired))
        subtree = []
        if cgroup.v2:
            v2_controllers = {c for c in desired.needed_controllers() if cgroup.backend_for(c) is cgroup.v2}
            subtree = cgroup.v2.subtree_plan(v2_controllers)

        existing = cgroup.directories()
        missing = [d for d in required if d not in existing]
        self.diff.add("state", "present" if existing else "absent", "present")
        self.diff.add("directories", existing, existing + missing)
        for change in subtree:
            name = os.path.relpath(change.directory, cgroup.v2.mount) if cgroup.v2 else change.directory
            self.diff.add(f"subtree_control {name}", " ".join(change.before), " ".join(change.after))
        if not self.check_mode:
            # Directories first: ancestors that do not exist yet have no subtree_control to write.
            # Enabling controllers above existing children is fine while none of them holds processes.
            for directory in missing:
                self._make_directory(directory)
            for change in subtree:
                cgroup.v2.apply_subtree_change(change)  # type: ignore[union-attr]
                self.undo.push(f"disable {change.enable} in {change.directory}",
                               lambda c=change: cgroup.v2.apply_subtree_change(c, enable=False))

        values: dict[str, str | None] = {}
        for key in _ordered(list(desired.values)):
            values[key] = self._converge(key, routes[key], desired.values[key], existing)
        if io_backend is not None:
            values["io.max"] = self._converge_io(io_backend, desired.io_max, existing)
        return {"values": values, "directories": existing + missing if self.check_mode else cgroup.directories()}

    def _make_directory(self, directory: str) -> None:
        levels = []
        current = directory
        while not os.path.isdir(current):
            levels.append(current)
            current = os.path.dirname(current)
        for level in reversed(levels):
            try:
                os.mkdir(level)
            except FileExistsError:
                continue
            except OSError as error:
                raise NsboxError(f"creating cgroup directory {level} failed: {error}", path=level,
                                 errno=error.errno) from None
            self.undo.push(f"remove {level}", lambda d=level: _rmdir_retrying(d, 5.0))
            if self.cgroup.v1 and hasattr(self.cgroup.v1, "prepare_directory"):
                self.cgroup.v1.prepare_directory(level)

    def _backend_dir_existed(self, backend: Backend, key: str, existing: list[str]) -> bool:
        directories = backend.directories_for({key_controller(key) or ""}) if key_controller(key) else \
            backend.all_directories()[:1]
        return all(d in existing for d in directories)

    def _converge(self, key: str, backend: Backend, wanted: str, existing: list[str]) -> str | None:
        before = backend.read(key) if self._backend_dir_existed(backend, key, existing) else None
        target = wanted
        if key == "cpu.max" and len(wanted.split()) == 1:
            # A quota without a period keeps the group's period.
            period = before.split()[1] if before else str(DEFAULT_CPU_PERIOD)
            target = f"{wanted} {period}"
        self.diff.add(key, before, target)
        if self.check_mode:
            return target
        actual = backend.read(key)
        if actual is None:
            raise NsboxError(
                f"cgroup {self.cgroup.path} has no {key} file ({backend.kind}): this kernel does not offer it "
                f"(for memory.swap.max: no swap accounting; boot with swapaccount=1). Leave that option out",
                key=key)
        if actual != target:
            try:
                backend.write(key, target)
            except OSError as error:
                raise NsboxError(f"setting {key}={target} on cgroup {self.cgroup.path} failed: {error}. "
                                 f"{_write_hint(key, error)}", key=key, errno=error.errno) from None
            if before is not None and actual is not None:
                self.undo.push(f"restore {key}={actual}", lambda: backend.write(key, actual))
        return backend.read(key)

    def _converge_io(self, backend: Backend, wanted: dict[str, str], existing: list[str]) -> str | None:
        existed = self._backend_dir_existed(backend, "io.max", existing)
        current = _io_fields(backend.read("io.max")) if existed else {}
        for device, line in sorted(wanted.items()):
            before = _io_current(current.get(device, {}), line) if existed else None
            target = _io_target(None, line)
            self.diff.add(f"io.max {device}", before, target)
            if not self.check_mode and _io_current(_io_fields(backend.read("io.max")).get(device, {}), line) != target:
                try:
                    backend.write("io.max", f"{device} {target}")
                except OSError as error:
                    raise NsboxError(f"setting io.max for device {device} on cgroup {self.cgroup.path} failed: "
                                     f"{error}. Check that {device} is a whole disk (not a partition)",
                                     key="io.max", errno=error.errno) from None
        if self.check_mode:
            return "\n".join(f"{d} {_io_target(None, line)}" for d, line in sorted(wanted.items()))
        return backend.read("io.max")

    def absent(self, kill: bool) -> dict[str, Any]:
        cgroup = self.cgroup
        existing = cgroup.directories()
        if not existing:
            return {"values": {}, "directories": []}
        pids = cgroup.processes()
        if pids and not kill:
            raise NsboxError(
                f"cgroup {cgroup.path} still holds processes {describe_processes(pids)}; stop them first, "
                "or set kill: true to SIGKILL them (cgroup.kill on v2) before removing the group",
                pids=pids, cgroup=cgroup.path)
        self.diff.add("state", "present", "absent")
        self.diff.add("directories", existing, [])
        if pids:
            self.diff.add("killed", [], pids)
        if not self.check_mode:
            if pids:
                cgroup.kill()
            cgroup.remove()
        return {"values": {}, "directories": [] if not self.check_mode else existing, "killed": pids}


def _write_hint(key: str, error: OSError) -> str:
    if error.errno == errno.EBUSY and key.startswith("memory"):
        return "The group uses more memory than the new limit and the kernel could not reclaim it; raise the limit"
    if error.errno == errno.EINVAL and key.startswith("cpuset"):
        return "The CPUs or memory nodes must be within the parent cgroup's cpuset"
    if error.errno == errno.EINVAL and key == "cpu.max":
        return "The quota must fit within the parent cgroup's cpu.max"
    return "Check the value against the kernel's cgroup documentation"
