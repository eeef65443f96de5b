# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Several primitives in one task: each step is validated against the spec of the module of the same
name and converged by that module's own manager, in order, in one Python process on the target.

A role that wires a bridge, N namespaces and veth pairs, an nftables table and N containers would
otherwise start a Python process per object (most of a re-run's time); here it is one. A step that
fails undoes what it made, then the steps before it are undone in reverse order, so a failed batch
leaves nothing it created."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.nsbox.primitives.plugins.module_utils import argspecs
from ansible_collections.nsbox.primitives.plugins.module_utils.bridge import BridgeManager
from ansible_collections.nsbox.primitives.plugins.module_utils.cgroup2 import CgroupManager
from ansible_collections.nsbox.primitives.plugins.module_utils.container import ContainerManager
from ansible_collections.nsbox.primitives.plugins.module_utils.files import FileManager
from ansible_collections.nsbox.primitives.plugins.module_utils.host_check import HostCheckManager
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError
from ansible_collections.nsbox.primitives.plugins.module_utils.netlink import HAS_PYROUTE2
from ansible_collections.nsbox.primitives.plugins.module_utils.netns import NetnsManager
from ansible_collections.nsbox.primitives.plugins.module_utils.nftables import NftablesManager
from ansible_collections.nsbox.primitives.plugins.module_utils.overlay_mount import OverlayMountManager
from ansible_collections.nsbox.primitives.plugins.module_utils.rootfs_export import RootfsExportManager
from ansible_collections.nsbox.primitives.plugins.module_utils.sysctl import SysctlManager
from ansible_collections.nsbox.primitives.plugins.module_utils.veth import VethManager


@dataclass(frozen=True)
class StepKind:
    spec: argspecs.ModuleSpec
    manager: type[Manager]
    needs_pyroute2: bool = False


STEP_KINDS: dict[str, StepKind] = {
    "host_check": StepKind(argspecs.HOST_CHECK, HostCheckManager),
    "sysctl": StepKind(argspecs.SYSCTL, SysctlManager),
    "file": StepKind(argspecs.FILE, FileManager),
    "rootfs_export": StepKind(argspecs.ROOTFS_EXPORT, RootfsExportManager),
    "bridge": StepKind(argspecs.BRIDGE, BridgeManager, needs_pyroute2=True),
    "netns": StepKind(argspecs.NETNS, NetnsManager, needs_pyroute2=True),
    "veth": StepKind(argspecs.VETH, VethManager, needs_pyroute2=True),
    "nftables": StepKind(argspecs.NFTABLES, NftablesManager),
    "overlay_mount": StepKind(argspecs.OVERLAY_MOUNT, OverlayMountManager),
    "cgroup2": StepKind(argspecs.CGROUP2, CgroupManager),
    "nsbox_container": StepKind(argspecs.NSBOX_CONTAINER, ContainerManager),
}


class _StepExit(Exception):
    def __init__(self, result: dict[str, Any], failed: bool) -> None:
        super().__init__(result.get("msg", ""))
        self.result = result
        self.failed = failed


class StepModule:
    """What a manager needs of its AnsibleModule, for one step: its own validated params; exit_json and
    fail_json hand the result back to the batch instead of ending the process."""

    def __init__(self, module: Any, label: str, params: dict[str, Any]) -> None:
        self._module = module
        self.label = label
        self.params = params
        self.check_mode: bool = module.check_mode
        self._diff: bool = True

    def warn(self, message: str) -> None:
        self._module.warn(f"{self.label}: {message}")

    def get_bin_path(self, name: str, *args: Any, **kwargs: Any) -> str | None:
        return self._module.get_bin_path(name, *args, **kwargs)

    def run_command(self, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
        return self._module.run_command(*args, **kwargs)

    def exit_json(self, **result: Any) -> None:
        raise _StepExit(result, failed=False)

    def fail_json(self, **result: Any) -> None:
        raise _StepExit(result, failed=True)


def _label(index: int, step: dict[str, Any]) -> str:
    args = step.get("args") or {}
    name = step.get("label") or args.get("name") or args.get("table") or args.get("path") or ""
    return f"step {index} ({step['module']}{' ' + str(name) if name else ''})"


def validate_step(module: Any, index: int, step: dict[str, Any]) -> tuple[StepKind, dict[str, Any]]:
    kind = STEP_KINDS[step["module"]]
    label = _label(index, step)
    result = ArgumentSpecValidator(**kind.spec.module_kwargs()).validate(dict(step.get("args") or {}))
    # A step's secrets (a registry password) are masked in the batch's output as the module would mask them.
    module.no_log_values.update(result._no_log_values)  # pylint: disable=protected-access
    if result.error_messages:
        raise NsboxError(f"{label}: {'; '.join(result.error_messages)}. Give it the options of "
                         f"nsbox.primitives.{step['module']} (see ansible-doc nsbox.primitives.batch)",
                         step=index)
    return kind, result.validated_parameters


def _manager_class(kind: StepKind) -> type[Manager]:
    if kind.needs_pyroute2 and not HAS_PYROUTE2:
        raise NsboxError("the network steps need the Python library pyroute2 on the managed host; install "
                         "python3-pyroute2 (Debian, Ubuntu) or pip install pyroute2")
    return kind.manager


class BatchManager(Manager):
    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.step_managers: list[Manager] = []

    def close(self) -> None:
        for manager in reversed(self.step_managers):
            manager.close()

    def run(self) -> None:
        steps = self.params["steps"]
        # Every step is validated before the first one runs: a typo in the tenth leaves the host as it was.
        validated = [(index, step, *validate_step(self.module, index, step))
                     for index, step in enumerate(steps, start=1)]
        results: list[dict[str, Any]] = []
        diffs: list[dict[str, Any]] = []
        self.result.update(results=results, diffs=diffs)
        for index, step, kind, params in validated:
            label = _label(index, step)
            manager = _manager_class(kind)(StepModule(self.module, label, params))
            self.step_managers.append(manager)
            try:
                manager.execute(close=False)  # closed at the batch's end, after any undo
            except _StepExit as outcome:
                result = outcome.result
                step_diff = result.pop("diff", None)
                entry = {"step": index, "module": step["module"], "label": step.get("label") or "", **result}
                results.append(entry)
                if step_diff and (step_diff.get("before") or step_diff.get("after")):
                    diffs.append({"before_header": label, "after_header": label, **step_diff})
                if outcome.failed:
                    raise NsboxError(f"{label}: {result.get('msg', 'failed')}", step=index,
                                     **{k: v for k, v in result.items() if k not in ("msg", "changed", "failed")}
                                     ) from None
                # A later step's failure undoes this step's creations too.
                manager.undo.transfer(self.undo, f"{label}: ")
                if result.get("changed"):
                    self.diff.add(label, None, "changed")

    def _result(self) -> dict[str, Any]:
        result = dict(self.result, changed=self.diff.changed)
        diffs = result.pop("diffs", [])
        if self.module._diff:
            result["diff"] = diffs
        return result
