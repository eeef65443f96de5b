# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cgroup2 module's logic: one cgroup, its limits in the v2 vocabulary, on any hierarchy."""

from __future__ import annotations

from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups import (
    Converger,
    desired_from_params,
    open_cgroup,
    validate_path,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, kernel_error


class CgroupManager(Manager):
    lock_kind = "cgroup"

    def lock_name(self) -> str:
        return validate_path(self.params["path"])

    def _converger(self) -> Converger:
        cgroup = open_cgroup(self.params["path"], self.params["hierarchy"], self.params["root"])
        # "path" is set only on success: failure details use that key for the file concerned.
        self.result["hierarchy"] = cgroup.hierarchy
        return Converger(cgroup, self.diff, self.undo, self.check_mode)

    def run(self) -> None:
        try:
            super().run()
        except OSError as error:
            raise kernel_error(error, f"cgroup {self.params['path']}",
                               "Check that the cgroup hierarchy is mounted read-write and that you are root") from None

    def present(self) -> None:
        desired = desired_from_params(self.params)
        converger = self._converger()
        self.result.update(converger.present(desired), notes=converger.notes,
                           processes=converger.cgroup.processes(), path=converger.cgroup.path)

    def absent(self) -> None:
        converger = self._converger()
        self.result.update(converger.absent(self.params["kill"]), notes=[],
                           processes=converger.cgroup.processes(), path=converger.cgroup.path)
