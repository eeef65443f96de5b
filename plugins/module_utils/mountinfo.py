# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is mounted where, read from /proc/PID/mountinfo (see proc(5)).

Paths in mountinfo escape space, tab, newline and backslash as octal (``\\040``); superblock
options escape their separators the same way. The kernel lists stacked mounts on one mount point
in mount order, so the last entry for a path is the one a lookup sees.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(value: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), value)


def _split_unescaped(value: str, separator: str) -> list[str]:
    """Split on a separator unless a backslash escapes it (overlayfs writes a ``:`` in a path as ``\\:``).

    Other backslashes start octal escapes and are kept for unescape() to decode.
    """
    parts, current = [], []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and value[index + 1:index + 2] == separator:
            current.append(separator)
            index += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


@dataclass(frozen=True)
class OverlayLayers:
    lowerdirs: list[str]
    upperdir: str | None
    workdir: str | None
    # Data-only lower layers (``lowerdir=a::b`` or ``datadir+=``), kernel 6.5 and newer.
    datadirs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    options: list[str]
    optional_fields: list[str]
    fstype: str
    source: str
    super_options: list[tuple[str, str | None]]

    @property
    def propagation(self) -> str:
        tags = {tag.split(":", 1)[0] for tag in self.optional_fields}
        if "shared" in tags:
            return "shared"
        if "master" in tags:
            return "slave"
        if "unbindable" in tags:
            return "unbindable"
        return "private"

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    def super_option(self, name: str) -> str | None:
        for key, value in self.super_options:
            if key == name:
                return value
        return None

    def overlay_layers(self) -> OverlayLayers:
        """The layers of an overlay mount, top lower first, as the kernel reports them."""
        lowers: list[str] = []
        datadirs: list[str] = []
        upper = work = None
        for key, value in self.super_options:
            if value is None:
                continue
            if key == "lowerdir":
                # "a:b::c" means a and b are merged layers and c is a data-only layer.
                merged, _separator, data_only = value.partition("::")
                lowers.extend(unescape(p) for p in _split_unescaped(merged, ":") if p)
                datadirs.extend(unescape(p) for p in _split_unescaped(data_only, ":") if p)
            elif key == "lowerdir+":
                lowers.append(unescape(value))
            elif key == "datadir+":
                datadirs.append(unescape(value))
            elif key == "upperdir":
                upper = unescape(value)
            elif key == "workdir":
                work = unescape(value)
        return OverlayLayers(lowers, upper, work, datadirs)


def parse_line(line: str) -> Mount:
    before, separator, after = line.rstrip("\n").partition(" - ")
    if not separator:
        raise ValueError(f"mountinfo line without ' - ' separator: {line!r}")
    head = before.split(" ")
    tail = after.split(" ")
    if len(head) < 6 or len(tail) < 3:
        raise ValueError(f"mountinfo line with too few fields: {line!r}")
    super_options: list[tuple[str, str | None]] = []
    for item in tail[2].split(","):
        if not item:
            continue
        key, has_value, value = item.partition("=")
        super_options.append((unescape(key), value if has_value else None))
    return Mount(
        mount_id=int(head[0]),
        parent_id=int(head[1]),
        device=head[2],
        root=unescape(head[3]),
        mount_point=unescape(head[4]),
        options=head[5].split(","),
        optional_fields=[f for f in head[6:] if f],
        fstype=tail[0],
        source=unescape(tail[1]),
        super_options=super_options,
    )


def parse(text: str) -> list[Mount]:
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def read(pid: int | str = "self") -> list[Mount]:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        return parse(handle.read())


def mounts_at(path: str, mounts: list[Mount] | None = None) -> list[Mount]:
    """Every mount stacked on exactly this path, bottom first."""
    target = os.path.realpath(path)
    return [m for m in (read() if mounts is None else mounts) if m.mount_point == target]


def mount_at(path: str, mounts: list[Mount] | None = None) -> Mount | None:
    """The visible (topmost) mount on exactly this path, or None when the path is no mount point."""
    stack = mounts_at(path, mounts)
    return stack[-1] if stack else None


def mounts_below(path: str, mounts: list[Mount] | None = None) -> list[Mount]:
    """Mounts strictly inside path (submounts), deepest last."""
    prefix = os.path.realpath(path).rstrip("/") + "/"
    return [m for m in (read() if mounts is None else mounts) if m.mount_point.startswith(prefix)]


def mount_containing(path: str, mounts: list[Mount] | None = None) -> Mount:
    """The mount a path lives on: the visible mount with the longest mount point above it."""
    target = os.path.realpath(path)
    best: Mount | None = None
    for candidate in read() if mounts is None else mounts:
        point = candidate.mount_point
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = candidate
    if best is None:
        raise LookupError(f"no mount contains {path}")
    return best
