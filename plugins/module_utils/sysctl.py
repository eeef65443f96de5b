# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A sysctl of the host's namespaces, set through /proc/sys only when it differs (a batch step)."""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError, kernel_error

_PART = re.compile(r"[A-Za-z0-9_.:@+-]+")


def proc_path(name: str) -> str:
    """net.ipv4.ip_forward, or net/ipv4/conf/eth0.100/forwarding where a part holds a dot."""
    parts = name.split("/") if "/" in name else name.split(".")
    if any(not _PART.fullmatch(part) or part in (".", "..") for part in parts):
        raise NsboxError(f"sysctl {name!r} is not a sysctl name such as net.ipv4.ip_forward")
    return "/proc/sys/" + "/".join(parts)


def normalize(value: Any) -> str:
    """A value as the kernel prints it: booleans as 1 or 0, fields (tab-separated there) as words."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return " ".join(str(value).split())


class SysctlManager(Manager):
    def run(self) -> None:
        self.present()

    def present(self) -> None:
        name = self.params["name"]
        path = proc_path(name)
        wanted = normalize(self.params["value"])
        current: str | None
        try:
            with open(path, encoding="ascii") as handle:
                current = normalize(handle.read())
        except FileNotFoundError:
            if not self.check_mode:
                raise NsboxError(f"sysctl {name} does not exist ({path} is missing): check the name, and that the "
                                 "interface or module it belongs to exists", path=path) from None
            # An interface's sysctl appears with the interface, which an earlier step may be about to make.
            self.module.warn(f"sysctl {name} does not exist; check mode assumes an earlier task creates it")
            current = None
        self.diff.add(name, current, wanted)
        self.result.update(name=name, value=wanted)
        if current == wanted or self.check_mode:
            return
        try:
            self._write(path, wanted)
        except OSError as error:
            raise kernel_error(error, f"setting sysctl {name} to {wanted}",
                               "Check the value and that the sysctl is writable here") from None
        self.undo.push(f"set sysctl {name} back to {current}", lambda: self._write(path, current))

    @staticmethod
    def _write(path: str, value: str) -> None:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(value + "\n")
