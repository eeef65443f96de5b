# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Byte sizes as people write them: ``10M``, ``200MB``, ``1.5GiB``, ``4096``, ``max``.

Units are binary (1K = 1024 bytes) whether written K, KB or KiB, as Docker, cgroup tools and
Ansible's human_to_bytes read them; an operator who writes ``200MB`` for a memory limit means
200 MiB. ``max`` (or ``unlimited``, ``-1``) means no limit and is returned as the string ``max``.
"""

from __future__ import annotations

import re

UNLIMITED = "max"
_UNITS = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)(I?B)?\s*$", re.IGNORECASE)


class SizeError(ValueError):
    pass


def parse_size(value: str | int | float, allow_unlimited: bool = True) -> int | str:
    """Bytes as an int, or ``max``; raises SizeError with the accepted forms on bad input."""
    if isinstance(value, bool):
        raise SizeError(f"invalid size {value!r}: expected a number of bytes or a size such as 10M, 200MB, 1G")
    if isinstance(value, (int, float)):
        if value < 0:
            if value == -1 and allow_unlimited:
                return UNLIMITED
            raise SizeError(f"invalid size {value!r}: a size cannot be negative")
        return int(value)
    text = str(value).strip()
    if text.lower() in ("max", "unlimited", "-1", "infinity"):
        if not allow_unlimited:
            raise SizeError(f"invalid size {value!r}: this setting needs a finite size")
        return UNLIMITED
    if text.startswith("-"):
        raise SizeError(f"invalid size {value!r}: a size cannot be negative")
    match = _SIZE.match(text)
    if not match:
        raise SizeError(
            f"invalid size {value!r}: expected bytes (4096) or a number with a unit K, M, G, T "
            f"(10M, 200MB, 1.5GiB){' or max' if allow_unlimited else ''}"
        )
    number, unit, _suffix = match.groups()
    return int(float(number) * 1024 ** _UNITS[unit.upper()])


def format_size(size: int | str) -> str:
    """The shortest exact binary form: 10485760 -> 10M; 1000 -> 1000."""
    if size == UNLIMITED:
        return UNLIMITED
    size = int(size)
    for unit in ("E", "P", "T", "G", "M", "K"):
        factor = 1024 ** _UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
