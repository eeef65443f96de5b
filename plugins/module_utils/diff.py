# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record each value a run changes (or would change) once; derive `changed` and `diff` from that."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Difference:
    before: Any
    after: Any


@dataclass
class DifferenceTracker:
    _differences: dict[str, _Difference] = field(default_factory=dict)

    def add(self, name: str, before: Any, after: Any) -> bool:
        """Record that `name` goes from before to after; returns whether that is a change.

        Recording the same name twice keeps the first `before` and the last `after`, so a value that
        a run changes and then restores shows no difference.
        """
        if name in self._differences:
            self._differences[name].after = after
        elif before != after:
            self._differences[name] = _Difference(before, after)
        else:
            return False
        if self._differences[name].before == after:
            del self._differences[name]
            return False
        return True

    @property
    def changed(self) -> bool:
        return bool(self._differences)

    def __contains__(self, name: str) -> bool:
        return name in self._differences

    def names(self) -> list[str]:
        return list(self._differences)

    def get_diff(self) -> dict[str, dict[str, Any]]:
        """Ansible's diff: two dicts that hold only what differs."""
        return {
            "before": {name: d.before for name, d in self._differences.items()},
            "after": {name: d.after for name, d in self._differences.items()},
        }
