# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cgroup v2 backend: a group is one directory; keys are the files of the same name.

Controllers reach a group only through ``cgroup.subtree_control`` of each ancestor, and the kernel
refuses to enable them below a non-root cgroup that holds processes (the no-internal-process rule):
:meth:`V2Backend.subtree_plan` finds that before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups import (
    Backend,
    describe_processes,
    read_text,
    write_text,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError


@dataclass
class SubtreeChange:
    directory: str          # the ancestor whose cgroup.subtree_control changes
    before: list[str]
    enable: list[str]

    @property
    def after(self) -> list[str]:
        return sorted({*self.before, *self.enable})


class V2Backend(Backend):
    kind = "v2"

    def __init__(self, mount: str, path: str) -> None:
        self.mount = mount
        self.path = path
        self.directory = os.path.join(mount, path)

    def controllers(self) -> set[str]:
        return set(read_text(os.path.join(self.mount, "cgroup.controllers")).split())

    def directories_for(self, controllers: set[str]) -> list[str]:
        return [self.directory]

    def all_directories(self) -> list[str]:
        return [self.directory]

    def ancestors(self) -> list[str]:
        """The mount root and every directory between it and the group, top first."""
        parts = self.path.split("/")
        return [os.path.join(self.mount, *parts[:depth]) if depth else self.mount for depth in range(len(parts))]

    def read(self, key: str) -> str | None:
        try:
            return read_text(os.path.join(self.directory, key))
        except FileNotFoundError:
            return None

    def write(self, key: str, value: str) -> None:
        write_text(os.path.join(self.directory, key), value)

    def subtree_plan(self, controllers: set[str]) -> list[SubtreeChange]:
        """Which ancestors must enable which controllers for the group to get them. Raises when an
        ancestor holds processes and so cannot delegate controllers (no-internal-process rule)."""
        wanted = sorted(c for c in controllers if c)
        changes: list[SubtreeChange] = []
        if not wanted:
            return changes
        for ancestor in self.ancestors():
            control = os.path.join(ancestor, "cgroup.subtree_control")
            enabled = read_text(control).split() if os.path.exists(control) else []
            missing = [c for c in wanted if c not in enabled]
            if not missing:
                continue
            if ancestor != self.mount:
                check_no_internal_processes(ancestor, missing, self.mount)
            changes.append(SubtreeChange(ancestor, enabled, missing))
        return changes

    def apply_subtree_change(self, change: SubtreeChange, enable: bool = True) -> None:
        control = os.path.join(change.directory, "cgroup.subtree_control")
        sign = "+" if enable else "-"
        try:
            write_text(control, " ".join(f"{sign}{c}" for c in change.enable))
        except OSError as error:
            if enable:
                check_no_internal_processes(change.directory, change.enable, self.mount)
            raise NsboxError(f"{'enabling' if enable else 'disabling'} controllers {', '.join(change.enable)} "
                             f"in {control} failed: {error}", path=control, errno=error.errno) from None


def check_no_internal_processes(directory: str, controllers: list[str], mount: str) -> None:
    try:
        pids = [int(p) for p in read_text(os.path.join(directory, "cgroup.procs")).split()]
    except FileNotFoundError:
        return
    if pids:
        relative = os.path.relpath(directory, mount)
        raise NsboxError(
            f"cannot enable controllers {', '.join(controllers)} for the children of cgroup {relative} "
            f"({directory}): it holds processes {describe_processes(pids)}, and cgroup v2 lets only "
            "cgroups without processes of their own hand controllers to children (no-internal-process "
            f"rule). Move those processes into a leaf cgroup first (e.g. write each pid into "
            f"{directory}/leaf/cgroup.procs), or choose a path whose ancestors hold no processes",
            path=directory, pids=pids, controllers=controllers)
