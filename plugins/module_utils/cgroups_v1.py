# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cgroup v1 backend: the v2 vocabulary translated, one directory per controller hierarchy.

| v2 key            | v1 file(s)                                                              |
|-------------------|-------------------------------------------------------------------------|
| cpu.max           | cpu.cfs_quota_us (-1 = max), cpu.cfs_period_us                          |
| cpu.weight        | cpu.shares = weight * 1024 / 100 (systemd's mapping: 100 <-> 1024)      |
| cpu.max.burst     | cpu.cfs_burst_us                                                        |
| cpu.idle          | cpu.idle                                                                |
| memory.max        | memory.limit_in_bytes                                                   |
| memory.swap.max   | memory.memsw.limit_in_bytes = memory + swap (with swap accounting);     |
|                   | without it only 0 is possible, as memory.swappiness = 0                 |
| pids.max          | pids.max                                                                |
| cpuset.cpus/.mems | cpuset.cpus / cpuset.mems                                               |
| io.max            | blkio.throttle.{read,write}_{bps,iops}_device                           |

Anything else (memory.high, memory.low, io.weight, ...) has no faithful v1 equivalent and is refused.
"""

from __future__ import annotations

import os

from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups import (
    IO_MAX_FIELDS,
    Backend,
    DesiredState,
    read_text,
    write_text,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

# v2 controller -> the v1 hierarchies the group joins for it (cpuacct gives the usage counters).
V1_NAMES = {"cpu": ("cpu", "cpuacct"), "io": ("blkio",), "memory": ("memory",), "pids": ("pids",),
            "cpuset": ("cpuset",), "hugetlb": ("hugetlb",), "rdma": ("rdma",), "misc": ("misc",)}
SAME_FILE = {"pids.max": "pids", "cpuset.cpus": "cpuset", "cpuset.mems": "cpuset", "cpu.idle": "cpu"}
TRANSLATED = ("cpu.max", "cpu.weight", "cpu.max.burst", "memory.max", "memory.swap.max", "io.max")
IO_FILES = {"rbps": "blkio.throttle.read_bps_device", "wbps": "blkio.throttle.write_bps_device",
            "riops": "blkio.throttle.read_iops_device", "wiops": "blkio.throttle.write_iops_device"}
# memory.limit_in_bytes reads back as PAGE_COUNTER_MAX pages when unlimited.
V1_UNLIMITED = 1 << 62
NO_V1_EQUIVALENT = {
    "memory.high": "memory.soft_limit_in_bytes only acts under host-wide memory pressure and does not "
                   "throttle; use memory_max",
    "memory.low": "v1 has no memory protection; leave it out",
    "memory.min": "v1 has no memory protection; leave it out",
    "io.weight": "blkio.weight needs the CFQ/BFQ scheduler and has a different range; leave it out",
}


def shares_from_weight(weight: int) -> int:
    return max(2, weight * 1024 // 100)


def weight_from_shares(shares: int) -> int:
    return max(1, min(10000, round(shares * 100 / 1024)))


class V1Backend(Backend):
    kind = "v1"

    def __init__(self, mounts: dict[str, str], path: str) -> None:
        self.mounts = mounts
        self.path = path

    # -- layout ----------------------------------------------------------------------------
    def controllers(self) -> set[str]:
        """v2 controller names this host can drive through v1, plus the raw v1 hierarchy names."""
        names = {v2 for v2, v1 in V1_NAMES.items() if v1[0] in self.mounts}
        return names | set(self.mounts)

    def dir(self, v1_controller: str) -> str:
        if v1_controller not in self.mounts:
            raise NsboxError(f"the v1 {v1_controller} controller is not mounted; this host has: "
                             f"{', '.join(sorted(self.mounts))}", controller=v1_controller)
        return os.path.join(self.mounts[v1_controller], self.path)

    def directories_for(self, controllers: set[str]) -> list[str]:
        directories: list[str] = []
        for controller in sorted(controllers):
            for name in V1_NAMES.get(controller, (controller,)):
                if name in self.mounts and self.dir(name) not in directories:
                    directories.append(self.dir(name))
        return directories

    def all_directories(self) -> list[str]:
        directories: list[str] = []
        for name in sorted(self.mounts):
            if self.dir(name) not in directories:
                directories.append(self.dir(name))
        return directories

    def prepare_directory(self, directory: str) -> None:
        """A new v1 cpuset group starts with no CPUs and no memory nodes and then refuses tasks: give
        it its parent's, as runc and systemd do."""
        cpuset = self.mounts.get("cpuset")
        if cpuset and directory.startswith(cpuset.rstrip("/") + "/"):
            parent = os.path.dirname(directory)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not read_text(os.path.join(directory, name)):
                    write_text(os.path.join(directory, name), read_text(os.path.join(parent, name)))

    # -- values ----------------------------------------------------------------------------
    def unsupported(self, key: str, value: str, desired: DesiredState | None = None) -> str | None:
        if key in NO_V1_EQUIVALENT:
            return f"{key} has no cgroup v1 equivalent: {NO_V1_EQUIVALENT[key]}"
        if key not in SAME_FILE and key not in TRANSLATED:
            return f"{key} has no cgroup v1 equivalent on this host"
        if key == "memory.swap.max" and not self._has_memsw() and value != "0":
            return ("memory.swap.max other than 0 needs swap accounting (memory.memsw.limit_in_bytes), "
                    "which this kernel lacks (boot with swapaccount=1); use memory_swap_max: 0 or leave it out")
        if key == "memory.swap.max" and self._has_memsw() and value != "max":
            memory = (desired.values.get("memory.max") if desired else None) or self.read("memory.max") or "max"
            if memory == "max":
                return ("memory.swap.max needs a finite memory_max on cgroup v1, where swap is limited as "
                        "memory.memsw.limit_in_bytes = memory + swap; set memory_max too")
        return None

    def notes(self, desired: DesiredState) -> list[str]:
        notes = []
        if "memory.swap.max" in desired.values and not self._has_memsw():
            notes.append("memory.swap.max 0 is enforced as memory.swappiness=0 (no swap accounting on this kernel)")
        if "cpu.weight" in desired.values:
            weight = int(desired.values["cpu.weight"])
            notes.append(f"cpu.weight {weight} is cpu.shares {shares_from_weight(weight)} on cgroup v1")
        return notes

    def _has_memsw(self) -> bool:
        return "memory" in self.mounts and os.path.exists(
            os.path.join(self.mounts["memory"], "memory.memsw.limit_in_bytes"))

    def _file(self, controller: str, name: str) -> str:
        return os.path.join(self.dir(controller), name)

    def _read(self, controller: str, name: str) -> str | None:
        try:
            return read_text(self._file(controller, name))
        except FileNotFoundError:
            return None

    def _read_bytes(self, name: str) -> int | str | None:
        text = self._read("memory", name)
        if text is None:
            return None
        return "max" if int(text) >= V1_UNLIMITED else int(text)

    def read(self, key: str) -> str | None:
        if key in SAME_FILE:
            return self._read(SAME_FILE[key], key)
        if key == "cpu.max":
            quota, period = self._read("cpu", "cpu.cfs_quota_us"), self._read("cpu", "cpu.cfs_period_us")
            if quota is None or period is None:
                return None
            return f"{'max' if int(quota) < 0 else quota} {period}"
        if key == "cpu.weight":
            shares = self._read("cpu", "cpu.shares")
            return None if shares is None else str(weight_from_shares(int(shares)))
        if key == "cpu.max.burst":
            return self._read("cpu", "cpu.cfs_burst_us")
        if key == "memory.max":
            limit = self._read_bytes("memory.limit_in_bytes")
            return None if limit is None else str(limit)
        if key == "memory.swap.max":
            return self._read_swap()
        if key == "io.max":
            return self._read_io()
        return None

    def _read_swap(self) -> str | None:
        if not self._has_memsw():
            swappiness = self._read("memory", "memory.swappiness")
            return None if swappiness is None else ("0" if swappiness == "0" else "max")
        memsw, limit = self._read_bytes("memory.memsw.limit_in_bytes"), self._read_bytes("memory.limit_in_bytes")
        if memsw is None or limit is None:
            return None
        if memsw == "max":
            return "max"
        return str(int(memsw) - int(limit)) if limit != "max" else "max"

    def _read_io(self) -> str | None:
        devices: dict[str, dict[str, str]] = {}
        for field, name in IO_FILES.items():
            text = self._read("blkio", name)
            if text is None:
                return None
            for line in text.splitlines():
                device, _, value = line.partition(" ")
                if value.strip() and value.strip() != "0":
                    devices.setdefault(device, {})[field] = value.strip()
        lines = []
        for device in sorted(devices):
            values = devices[device]
            lines.append(device + " " + " ".join(f"{f}={values.get(f, 'max')}" for f in IO_MAX_FIELDS))
        return "\n".join(lines)

    def write(self, key: str, value: str) -> None:
        if key in SAME_FILE:
            write_text(self._file(SAME_FILE[key], key), value)
        elif key == "cpu.max":
            quota, _, period = value.partition(" ")
            if period:
                write_text(self._file("cpu", "cpu.cfs_period_us"), period)
            write_text(self._file("cpu", "cpu.cfs_quota_us"), "-1" if quota == "max" else quota)
        elif key == "cpu.weight":
            write_text(self._file("cpu", "cpu.shares"), str(shares_from_weight(int(value))))
        elif key == "cpu.max.burst":
            write_text(self._file("cpu", "cpu.cfs_burst_us"), value)
        elif key == "memory.max":
            self._write_memory(value)
        elif key == "memory.swap.max":
            self._write_swap(value)
        elif key == "io.max":
            device, _, fields = value.partition(" ")
            for item in fields.split():
                field, _, amount = item.partition("=")
                write_text(self._file("blkio", IO_FILES[field]), f"{device} {0 if amount == 'max' else amount}")
        else:
            raise NsboxError(f"{key} has no cgroup v1 equivalent", key=key)

    def _write_memory(self, value: str) -> None:
        limit_file = self._file("memory", "memory.limit_in_bytes")
        swap = self._read_swap() if self._has_memsw() else "max"
        if swap in (None, "max"):
            write_text(limit_file, "-1" if value == "max" else value)
            return
        # v2 keeps memory.max and memory.swap.max apart; v1 limits memory+swap together, so keep
        # the swap allowance and move memsw with the memory limit, raising the larger one first.
        if value == "max":
            raise NsboxError("memory_max: max with a finite memory_swap_max cannot be expressed on cgroup v1 "
                             "(memsw limits memory and swap together); set memory_swap_max: max too")
        memsw_file = self._file("memory", "memory.memsw.limit_in_bytes")
        new_memsw = str(int(value) + int(swap))
        if int(new_memsw) > int(read_text(memsw_file)):
            write_text(memsw_file, new_memsw)
            write_text(limit_file, value)
        else:
            write_text(limit_file, value)
            write_text(memsw_file, new_memsw)

    def _write_swap(self, value: str) -> None:
        if not self._has_memsw():
            write_text(self._file("memory", "memory.swappiness"), "0" if value == "0" else "60")
            return
        memsw_file = self._file("memory", "memory.memsw.limit_in_bytes")
        if value == "max":
            write_text(memsw_file, "-1")
            return
        limit = self._read_bytes("memory.limit_in_bytes")
        if limit == "max":
            raise NsboxError("memory_swap_max needs a finite memory_max on cgroup v1, where swap is limited as "
                             "memory.memsw.limit_in_bytes = memory + swap; set memory_max too")
        write_text(memsw_file, str(int(limit) + int(value)))
