"""Shared fixtures' logic for the nsbox_container tests: names, waiting on logs, cleanup checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from harness import run_module

STATE_ROOT = Path("/run/nsbox/containers")


def state_of(name: str) -> dict | None:
    with contextlib.suppress(FileNotFoundError):
        return json.loads((STATE_ROOT / name / "state.json").read_text())
    return None


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for_log(path: str, marker: str, timeout: float = 20.0) -> str:
    def ready():
        with contextlib.suppress(FileNotFoundError):
            text = Path(path).read_text()
            if marker in text:
                return text
        return None
    return wait_for(ready, timeout, what=f"{marker!r} in {path}")


def processes_of(state: dict | None) -> list[int]:
    pids = []
    for key in ("pid", "supervisor_pid"):
        pid = (state or {}).get(key)
        if pid and Path(f"/proc/{pid}").exists():
            status = Path(f"/proc/{pid}/stat").read_text()
            if status[status.rindex(")") + 2] != "Z":
                pids.append(pid)
    return pids


def remove_container(name: str) -> None:
    """Finalizer: absent through the module; kill by recorded pid if that failed; assert nothing is left."""
    before = state_of(name)
    try:
        run_module("nsbox_container", {"name": name, "state": "absent", "stop_timeout": 0})
    finally:
        for pid in processes_of(before):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not (STATE_ROOT / name).exists(), f"state of {name} left behind"
    wait_for(lambda: not processes_of(before), 10, what=f"processes of {name} to end")
