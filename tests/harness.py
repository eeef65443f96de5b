"""Test helpers shared by unit and integration tests: run a module of this collection the way Ansible does.

A module runs as its own Python process with its arguments in a JSON file (what AnsiballZ does on
a target), so each call sees the kernel fresh, exactly as a task would.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

COLLECTION_ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS_PATH = COLLECTION_ROOT / ".ansible" / "collections"
MODULES_DIR = COLLECTION_ROOT / "plugins" / "modules"


class ModuleFailed(AssertionError):
    pass


def run_module(name: str, params: dict[str, Any], check: bool = False, diff: bool = True,
               expect_failure: bool = False, timeout: float = 300) -> dict[str, Any]:
    """Run plugins/modules/NAME.py with params; returns its result, asserting success (or failure)."""
    args = {"ANSIBLE_MODULE_ARGS": {**params, "_ansible_check_mode": check, "_ansible_diff": diff}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"nsbox-{name}-") as handle:
        json.dump(args, handle)
        handle.flush()
        env = dict(os.environ, PYTHONPATH=str(COLLECTIONS_PATH), LC_ALL="C.UTF-8")
        proc = subprocess.run([sys.executable, str(MODULES_DIR / f"{name}.py"), handle.name],
                              capture_output=True, text=True, env=env, timeout=timeout, check=False)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ModuleFailed(f"{name} printed no JSON result (rc={proc.returncode})\n"
                           f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}") from None
    failed = bool(result.get("failed"))
    if failed != expect_failure:
        state = "failed" if failed else "succeeded"
        raise ModuleFailed(f"{name} {state} unexpectedly (check={check}): {json.dumps(result, indent=2)}\n"
                           f"stderr:\n{proc.stderr}")
    if failed:
        assert "Traceback" not in result.get("msg", ""), f"a traceback reached the user: {result['msg']}"
        assert "exception" not in result or "KernelCallError" in result["exception"], result
    return result


def four_runs(name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The house rule: check, real, check, real must report changed, changed, not changed, not changed."""
    results = [run_module(name, params, check=check) for check in (True, False, True, False)]
    changed = [r["changed"] for r in results]
    assert changed == [True, True, False, False], (
        f"{name} {params}: expected changed [True, True, False, False], got {changed}\n"
        + "\n".join(json.dumps(r.get("diff"), default=str) for r in results)
    )
    # Check mode predicts exactly what the real run does.
    assert results[0].get("diff") == results[1].get("diff"), (results[0].get("diff"), results[1].get("diff"))
    return results


def unique_name_factory(prefix: str = "nsbt") -> str:
    """A short unique name (interface names are limited to 15 bytes): prefix + 6 hex digits."""
    return f"{prefix}{secrets.token_hex(3)}"


def run_playbook(playbook: str | Path, *args: str, check: bool = False,
                 timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ansible-playbook (of this interpreter's virtualenv) against localhost with this collection."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
               str(playbook), *args, *(["--check"] if check else [])]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
