# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shape every module shares: read state once, dispatch on `state`, track differences,
undo what a failed run created, and end with exactly one exit_json or fail_json.

A module's main() builds its AnsibleModule and calls ``SomeManager(module).execute()``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ansible_collections.nsbox.primitives.plugins.module_utils.diff import DifferenceTracker
from ansible_collections.nsbox.primitives.plugins.module_utils.locking import LockTimeout, object_lock
from ansible_collections.nsbox.primitives.plugins.module_utils.syscalls import KernelCallError


class NsboxError(Exception):
    """A failure the user can act on. The message says what is wrong, on which object, and how to
    fix it; details (path, errno, pids, ...) are returned as keys of the failed result."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.details = details


def kernel_error(error: OSError, what: str, hint: str = "") -> NsboxError:
    """Turn an errno from the kernel into an NsboxError that says what was being done."""
    message = f"{what} failed: {error}"
    if hint:
        message += f". {hint}"
    details: dict[str, Any] = {"errno": error.errno}
    if isinstance(error, KernelCallError):
        details["syscall"] = error.call
    if error.filename is not None:
        details["path"] = str(error.filename)
    return NsboxError(message, **details)


@dataclass
class _UndoStep:
    description: str
    action: Callable[[], None]


class UndoStack:
    """What this run created, so that a failure can remove it again in reverse order."""

    def __init__(self) -> None:
        self._steps: list[_UndoStep] = []

    def push(self, description: str, action: Callable[[], None]) -> None:
        self._steps.append(_UndoStep(description, action))

    def unwind(self) -> tuple[list[str], list[str]]:
        """Run every step, newest first; returns (undone, failed) descriptions. Never raises."""
        undone: list[str] = []
        failed: list[str] = []
        while self._steps:
            step = self._steps.pop()
            try:
                step.action()
                undone.append(step.description)
            except Exception as error:
                failed.append(f"{step.description}: {error}")
        return undone, failed

    def clear(self) -> None:
        self._steps.clear()

    def transfer(self, other: UndoStack, prefix: str) -> None:
        """Hand every step over to `other` (newest stays newest), each description prefixed."""
        for step in self._steps:
            other.push(f"{prefix}{step.description}", step.action)
        self._steps.clear()


class Manager:
    """Base of every module's manager. Subclasses implement one method per `state` value."""

    # The kind of object the lock is held on, e.g. "overlay"; None means the module takes no lock.
    lock_kind: ClassVar[str | None] = None

    def __init__(self, module: Any) -> None:
        self.module = module
        self.params: dict[str, Any] = module.params
        self.check_mode: bool = module.check_mode
        self.diff = DifferenceTracker()
        self.undo = UndoStack()
        self.result: dict[str, Any] = {}

    def lock_name(self) -> str:
        """The object the lock is about (a path, a name); override when lock_kind is set."""
        raise NotImplementedError

    def run(self) -> None:
        state = self.params["state"]
        getattr(self, state)()

    def close(self) -> None:
        """Release what the run holds open (namespaces); undoing its work needs them until then."""

    def execute(self, close: bool = True) -> None:
        """close=False keeps what the run holds open: a batch step's undo may still be needed by a later
        step's failure, so the batch closes its steps at its own end."""
        try:
            self._execute()
        finally:
            if close:
                self.close()

    def _execute(self) -> None:
        try:
            if self.lock_kind:
                with object_lock(self.lock_kind, self.lock_name()):
                    self.run()
            else:
                self.run()
        except NsboxError as error:
            self._fail(str(error), **error.details)
        except LockTimeout as error:
            self._fail(str(error))
        except KernelCallError as error:
            self._fail(f"unexpected kernel error: {error}", errno=error.errno, syscall=error.call,
                       path=error.target, exception=traceback.format_exc())
        except BaseException:
            self.undo.unwind()
            raise
        self.module.exit_json(**self._result())

    def _result(self) -> dict[str, Any]:
        result = dict(self.result, changed=self.diff.changed)
        if self.module._diff:
            result["diff"] = self.diff.get_diff()
        return result

    def _fail(self, msg: str, **details: Any) -> None:
        undone, failed = self.undo.unwind()
        if undone:
            # A batch step's own rollback comes first: it undid the newest work.
            details["rolled_back"] = [*details.get("rolled_back", []), *undone]
        if failed:
            details["rollback_failed"] = failed
            msg += "; cleaning up after the failure also failed: " + "; ".join(failed)
        # Failure details win over result keys of the same name (a path in both, say).
        self.module.fail_json(**{**self._result(), **details, "msg": msg})
