# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""User and group names resolved in the container's own /etc/passwd and /etc/group (never the host's)."""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    pass


@dataclass
class Identity:
    uid: int
    gid: int
    groups: list[int]
    home: str


def _entries(text: str | None) -> list[list[str]]:
    return [line.split(":") for line in (text or "").splitlines() if line and not line.startswith("#")]


def resolve(user: str, group: str | None, extra: list[str], passwd: str | None, groups: str | None) -> Identity:
    """Docker's rules: a user name must exist in /etc/passwd; a numeric uid may be missing there (its
    group is then 0); supplementary groups are the user's groups in /etc/group plus those asked for."""
    users = _entries(passwd)
    group_entries = _entries(groups)
    by_user = {e[0]: e for e in users if len(e) >= 7}
    if user.isdigit():
        uid = int(user)
        entry = next((e for e in users if len(e) >= 7 and e[2] == user), None)
    else:
        entry = by_user.get(user)
        if entry is None:
            raise UserError(f"user {user!r} is not in the container's /etc/passwd")
        uid = int(entry[2])
    gid = int(entry[3]) if entry else 0
    home = entry[5] if entry else "/"
    if group is not None:
        gid = _group_id(group, group_entries)
    supplementary = []
    if entry:
        supplementary = [int(g[2]) for g in group_entries if len(g) >= 4 and entry[0] in g[3].split(",")]
    supplementary += [_group_id(g, group_entries) for g in extra]
    return Identity(uid, gid, sorted(set(supplementary) | ({gid} if extra or supplementary else set())), home)


def _group_id(name: str, entries: list[list[str]]) -> int:
    if name.isdigit():
        return int(name)
    for entry in entries:
        if len(entry) >= 3 and entry[0] == name:
            return int(entry[2])
    raise UserError(f"group {name!r} is not in the container's /etc/group")
