# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An nftables table the collection owns (a batch step): its ruleset kept in a file and loaded with
`nft -f` when the file changes or the kernel lost the table (a reboot, `nft flush ruleset`).

The file must replace the table as a whole when loaded (create it empty, delete it, define it), so
loading it twice gives the same table."""

from __future__ import annotations

import os
import tempfile

from ansible_collections.nsbox.primitives.plugins.module_utils.files import make_parents, write_atomically
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError, kernel_error


class NftablesManager(Manager):
    lock_kind = "nftables"

    def lock_name(self) -> str:
        return f"{self.params['family']}-{self.params['table']}"

    def run(self) -> None:
        self.nft = self.module.get_bin_path("nft")
        if self.nft is None:
            raise NsboxError("nft is not installed; install the nftables package")
        try:
            super().run()
        except OSError as error:
            raise kernel_error(error, f"nftables table {self.params['family']} {self.params['table']}") from None

    def _table_loaded(self) -> bool:
        command = [self.nft, "list", "table", self.params["family"], self.params["table"]]
        rc, _out, _err = self.module.run_command(command)
        return rc == 0

    def _nft(self, *args: str, what: str) -> None:
        rc, out, err = self.module.run_command([self.nft, *args])
        if rc != 0:
            raise NsboxError(f"{what} failed: {(err or out).strip()}", rc=rc)

    def present(self) -> None:
        p = self.params
        label = f"{p['family']} {p['table']}"
        current = self._read(p["path"])
        loaded = self._table_loaded()
        content_changed = current != p["content"]
        self.diff.add(p["path"], current, p["content"])
        self.diff.add(f"table {label}", "loaded" if loaded else "absent", "loaded")
        if content_changed or not loaded:
            # Refused rules fail here, in check mode too, before anything is written.
            self._check(p["content"], label)
        self.result.update(table=p["table"], family=p["family"], path=p["path"],
                           reloaded=content_changed or not loaded)
        if self.check_mode or not (content_changed or not loaded):
            return
        if content_changed:
            self._write(p["path"], p["content"], previous=current)
        self._nft("-f", p["path"], what=f"loading {p['path']} (table {label})")
        if not loaded:
            self.undo.push(f"delete table {label}",
                           lambda: self._nft("delete", "table", p["family"], p["table"], what="delete"))

    def absent(self) -> None:
        p = self.params
        label = f"{p['family']} {p['table']}"
        loaded = self._table_loaded()
        current = self._read(p["path"]) if p["path"] else None
        self.diff.add(f"table {label}", "loaded" if loaded else "absent", "absent")
        if current is not None:
            self.diff.add(p["path"], current, None)
        self.result.update(table=p["table"], family=p["family"], path=p["path"], reloaded=False)
        if self.check_mode:
            return
        if loaded:
            self._nft("delete", "table", p["family"], p["table"], what=f"deleting table {label}")
        if current is not None:
            os.unlink(p["path"])

    @staticmethod
    def _read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def _check(self, content: str, label: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".nft", prefix="nsbox-check-") as handle:
            handle.write(content)
            handle.flush()
            self._nft("-c", "-f", handle.name, what=f"checking the ruleset of table {label} (nft -c)")

    def _write(self, path: str, content: str, previous: str | None) -> None:
        make_parents(os.path.dirname(path), 0o700, self.undo)
        write_atomically(path, content, 0o600)
        if previous is None:
            self.undo.push(f"remove file {path}", lambda: os.unlink(path))
        else:
            self.undo.push(f"restore file {path}", lambda: write_atomically(path, previous, 0o600))
