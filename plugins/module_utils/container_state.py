# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container's recorded state (/run/nsbox/containers/NAME/state.json) and whether its processes
are really the ones recorded (a pid is checked together with its start time, so a reused pid is
never taken for the container)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils.container_spec import STATE_ROOT, state_dir

STATE_FILE = "state.json"
RUNNING = ("running", "restarting")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def start_time(pid: int) -> int | None:
    """The kernel's start time of pid (clock ticks since boot), None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    return bool(pid) and started is not None and start_time(pid) == started


def read(name: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(state_dir(name), STATE_FILE), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:
        return {"name": name, "status": "unknown", "error": "state.json is unreadable"}


def write(name: str, state: dict[str, Any]) -> None:
    """Replace the state atomically: a reader sees the old or the new file, never half of one."""
    directory = state_dir(name)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temporary = os.path.join(directory, f".{STATE_FILE}.{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=1, sort_keys=True)
    os.replace(temporary, os.path.join(directory, STATE_FILE))


def update(name: str, **changes: Any) -> dict[str, Any]:
    state = read(name) or {"name": name}
    state.update(changes)
    write(name, state)
    return state


def remove(name: str) -> None:
    shutil.rmtree(state_dir(name), ignore_errors=True)


def names() -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return sorted(n for n in os.listdir(STATE_ROOT) if os.path.isfile(os.path.join(STATE_ROOT, n, STATE_FILE)))
    return []


def observed(state: dict[str, Any] | None) -> dict[str, Any]:
    """The state with its status checked against the kernel: a recorded 'running' whose supervisor
    and PID 1 are gone is reported 'dead'."""
    if state is None:
        return {"status": "absent"}
    state = dict(state)
    supervisor = alive(state.get("supervisor_pid"), state.get("supervisor_starttime"))
    payload = alive(state.get("pid"), state.get("pid_starttime"))
    state["supervisor_running"] = supervisor
    if state.get("status") in RUNNING and not supervisor:
        state["status"] = "running-unsupervised" if payload else "dead"
    if not payload and state.get("status") not in RUNNING:
        state["pid"] = None
    return state
