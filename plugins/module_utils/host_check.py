# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the kernel must offer before containers can run (a batch step): filesystems (loading their
modules when missing), cgroup controllers, user namespaces. Fails naming what is missing and how to
get it."""

from __future__ import annotations

import os

from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError


def _filesystems() -> set[str]:
    with open("/proc/filesystems", encoding="ascii") as handle:
        return {line.split()[-1] for line in handle if line.strip()}


def available_controllers(cgroup_root: str) -> tuple[str, list[str]]:
    """("v2", controllers of the unified root) or ("v1", the controllers /proc/cgroups has enabled)."""
    unified = os.path.join(cgroup_root, "cgroup.controllers")
    if os.path.exists(unified):
        with open(unified, encoding="ascii") as handle:
            return "v2", handle.read().split()
    with open("/proc/cgroups", encoding="ascii") as handle:
        rows = [line.split() for line in handle if not line.startswith("#")]
    return "v1", [row[0] for row in rows if len(row) >= 4 and row[3] == "1"]


class HostCheckManager(Manager):
    def run(self) -> None:
        self.present()

    def present(self) -> None:
        p = self.params
        have = _filesystems()
        missing = [name for name in p["filesystems"] if name not in have]
        # overlay is often a module the kernel loads on the first mount only: load it, then look again.
        if missing:
            self.diff.add("loaded_filesystems", [], missing)
            if not self.check_mode:
                modprobe = self.module.get_bin_path("modprobe") or "/sbin/modprobe"
                for name in missing:
                    self.module.run_command([modprobe, name])
                have = _filesystems()
                still = [name for name in missing if name not in have]
                if still:
                    raise NsboxError(f"the kernel does not offer the filesystem(s) {', '.join(still)} (not in "
                                     "/proc/filesystems, and modprobe did not load them); use a kernel built "
                                     "with them", missing=still)
        hierarchy, controllers = available_controllers(p["cgroup_root"])
        absent = [name for name in p["controllers"] if name not in controllers]
        if absent:
            where = (f"{p['cgroup_root']}/cgroup.controllers (cgroup v2)" if hierarchy == "v2"
                     else "/proc/cgroups (cgroup v1)")
            raise NsboxError(f"the cgroup controller(s) {', '.join(absent)} are not available in {where}; "
                             f"available: {', '.join(controllers) or 'none'}. Boot with them enabled (for example "
                             f"cgroup_enable={absent[0]} on the kernel command line)", missing=absent)
        if p["user_namespaces"]:
            try:
                with open("/proc/sys/user/max_user_namespaces", encoding="ascii") as handle:
                    limit = int(handle.read())
            except (FileNotFoundError, ValueError):
                limit = 0
            if limit <= 0:
                raise NsboxError("the kernel offers no user namespaces (/proc/sys/user/max_user_namespaces is "
                                 "missing or 0); use a kernel built with CONFIG_USER_NS and set "
                                 "user.max_user_namespaces above 0")
        self.result.update(cgroup_hierarchy=hierarchy, controllers=controllers,
                           filesystems=p["filesystems"])  # each is there now (or would be loaded, in check mode)
