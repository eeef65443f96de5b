# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A file with given content (a batch step): what ansible.builtin.copy with `content` does, without a
task and a Python process of its own."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils.manager import (
    Manager,
    NsboxError,
    UndoStack,
    kernel_error,
)


def parse_mode(option: str, mode: str | int) -> int:
    if isinstance(mode, int):
        return mode
    try:
        value = int(str(mode), 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o7777:
        raise NsboxError(f"{option} {mode!r} is not an octal permission such as '0644' or '0755'")
    return value


def make_parents(directory: str, mode: int, undo: UndoStack) -> None:
    """The missing directories up to `directory`, each with `mode` and an undo step that removes it."""
    if os.path.isdir(directory):
        return
    make_parents(os.path.dirname(directory), mode, undo)
    os.mkdir(directory, mode)
    os.chmod(directory, mode)  # mkdir's mode is filtered by the umask
    undo.push(f"remove directory {directory}", lambda: os.rmdir(directory))


def write_atomically(path: str, content: str, mode: int, owner: int = 0, group: int = 0) -> None:
    """Written beside and renamed over: a reader (nginx reloading, nft) never sees half a file."""
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(content)
            os.fchown(handle.fileno(), owner, group)
            os.fchmod(handle.fileno(), mode)
        os.rename(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _observe(path: str) -> dict[str, Any] | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise NsboxError(f"{path} exists and is not a regular file; remove it or choose another path", path=path)
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        content = handle.read()
    return {"content": content, "mode": f"{stat.S_IMODE(info.st_mode):04o}", "owner": info.st_uid,
            "group": info.st_gid}


class FileManager(Manager):
    def run(self) -> None:
        try:
            super().run()
        except OSError as error:
            raise kernel_error(error, f"file {self.params['path']}") from None

    def present(self) -> None:
        p = self.params
        path = p["path"]
        wanted = {"content": p["content"], "mode": f"{parse_mode('mode', p['mode']):04o}", "owner": p["owner"],
                  "group": p["group"]}
        current = _observe(path)
        self.diff.add(path, current, wanted)
        self.result.update(path=path, changed_content=current is None or current["content"] != wanted["content"])
        if p["return_previous"]:
            self.result["previous_content"] = None if current is None else current["content"]
        if current == wanted or self.check_mode:
            return
        self._make_parents(os.path.dirname(path))
        if current is None or current["content"] != wanted["content"]:
            self._write(path, wanted)
        else:
            os.chown(path, wanted["owner"], wanted["group"])
            os.chmod(path, int(wanted["mode"], 8))

    def directory(self) -> None:
        p = self.params
        path = p["path"]
        mode = parse_mode("mode", p["mode"])
        try:
            info: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None and not stat.S_ISDIR(info.st_mode):
            raise NsboxError(f"{path} exists and is not a directory; remove it or choose another path", path=path)
        current = None if info is None else {"mode": f"{stat.S_IMODE(info.st_mode):04o}", "owner": info.st_uid,
                                             "group": info.st_gid}
        wanted = {"mode": f"{mode:04o}", "owner": p["owner"], "group": p["group"]}
        self.diff.add(path, current, wanted)
        self.result.update(path=path, changed_content=False)
        if current == wanted or self.check_mode:
            return
        if info is None:
            self._make_parents(os.path.dirname(path))
            os.mkdir(path, mode)
            self.undo.push(f"remove directory {path}", lambda: os.rmdir(path))
        os.chown(path, wanted["owner"], wanted["group"])
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask

    def absent(self) -> None:
        path = self.params["path"]
        current = _observe(path)
        self.diff.add(path, current, None)
        self.result.update(path=path, changed_content=current is not None)
        if current is not None and not self.check_mode:
            os.unlink(path)

    def _make_parents(self, directory: str) -> None:
        make_parents(directory, parse_mode("directory_mode", self.params["directory_mode"]), self.undo)

    def _write(self, path: str, wanted: dict[str, Any]) -> None:
        existed = os.path.exists(path)
        write_atomically(path, wanted["content"], int(wanted["mode"], 8), wanted["owner"], wanted["group"])
        if not existed:
            self.undo.push(f"remove file {path}", lambda: os.unlink(path))
