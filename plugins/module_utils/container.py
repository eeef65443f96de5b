# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nsbox_container module's logic: compare the wanted container with its recorded state and
the kernel, then start, stop, recreate or remove it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import container_spec, container_state, supervisor
from ansible_collections.nsbox.primitives.plugins.module_utils.container_spec import parse_signal, signal_name
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError


def _running(observed: dict[str, Any]) -> bool:
    return observed["status"] in container_state.RUNNING and observed.get("supervisor_running", False)


def changed_keys(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    old = old or {}
    return [key for key in container_spec.SPEC_KEYS if old.get(key) != new.get(key)]


def stop_container(name: str, observed: dict[str, Any], timeout: float | None = None) -> None:
    """Stop the container: the supervisor (told by SIGTERM that this is no crash to restart) sends the
    stop signal to PID 1; after timeout seconds PID 1 gets SIGKILL, which ends its whole pid namespace."""
    spec = observed.get("spec") or {}
    stop_timeout = spec.get("stop_timeout", 10) if timeout is None else timeout
    pid, started = observed.get("pid"), observed.get("pid_starttime")
    supervised = observed.get("supervisor_running")
    if supervised:
        os.kill(observed["supervisor_pid"], signal.SIGTERM)
    elif container_state.alive(pid, started):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, spec.get("stop_signal", signal.SIGTERM))
    if pid and not _wait_gone(pid, started, stop_timeout, "", fail=False):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, started, 15, f"PID 1 ({pid}) of container {name}")
    if supervised:
        _wait_gone(observed["supervisor_pid"], observed["supervisor_starttime"], 15,
                   f"the supervisor of container {name}")
    else:
        container_state.update(name, status="stopped", pid=None, finished_at=container_state.now())


def _wait_gone(pid: int, started: int, timeout: float, what: str, fail: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while container_state.alive(pid, started):
        if time.monotonic() > deadline:
            if fail:
                raise NsboxError(f"{what} (pid {pid}) is still there {timeout:.0f} s after being asked to stop",
                                 pid=pid)
            return False
        time.sleep(0.01)
    return True


class ContainerManager(Manager):
    lock_kind = "container"

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.name = self.params["name"]
        self.observed: dict[str, Any] = {"status": "absent"}

    def lock_name(self) -> str:
        return self.name

    def run(self) -> None:
        # The name becomes a directory under /run/nsbox/containers: check it before anything reads there.
        if not container_spec.NAME_PATTERN.match(self.name):
            raise NsboxError(f"container name {self.name!r}: use letters, digits, '_', '.', '-' (at most 128, "
                             "starting with a letter or digit)", name=self.name)
        self.observed = self._settled()
        super().run()

    def _settled(self) -> dict[str, Any]:
        """The observed state, after waiting out a supervisor caught between states (a run that died
        while it started or stopped the container): acting on it then could leave two containers."""
        deadline = time.monotonic() + 30
        while True:
            observed = container_state.observed(container_state.read(self.name))
            if observed["status"] not in ("starting", "stopping") or not observed.get("supervisor_running"):
                return observed
            if time.monotonic() > deadline:
                raise NsboxError(f"container {self.name} has been {observed['status']} for 30 s (supervisor pid "
                                 f"{observed['supervisor_pid']}); try again, or kill that process", name=self.name)
            time.sleep(0.05)

    # -- states ------------------------------------------------------------------------------------
    def _predict_without_dependencies(self) -> bool:
        """Check mode on a fresh host: the rootfs and network namespace an earlier task would make do not exist
        yet, so the spec cannot be read from them; predict the start (a change) as the other modules do."""
        if not self.check_mode:
            return False
        missing = []
        rootfs = self.params.get("rootfs")
        if rootfs and not os.path.lexists(rootfs):
            missing.append(f"rootfs {rootfs}")
        netns = self.params.get("netns") or "private"
        if "/" not in netns and container_spec.netns_missing(netns):
            missing.append(f"network namespace {netns}")
        if not missing:
            return False
        for what in missing:
            self.module.warn(f"{what} does not exist; check mode assumes an earlier task creates it")
        self.diff.add("status", self.observed["status"], "running")
        self._report({"status": "running", "pid": None, "log_path": self.params.get("log_path")})
        return True

    def started(self) -> None:
        if self._predict_without_dependencies():
            return
        spec = container_spec.build(self.params)
        digest = container_spec.spec_hash(spec)
        observed = self.observed
        if _running(observed) and observed.get("spec_hash") == digest:
            self._signal(observed)
            self._report(observed)
            return
        if observed["status"] != "absent":
            keys = changed_keys(observed.get("spec"), spec)
            if keys:
                self.diff.add("spec", {k: (observed.get("spec") or {}).get(k) for k in keys},
                              {k: spec[k] for k in keys})
                self.result["changed_keys"] = keys
            if _running(observed) or observed["status"] == "running-unsupervised":
                self.result["recreated"] = True
                if not self.check_mode:
                    stop_container(self.name, observed)
            elif observed["status"] in ("dead", "exited", "failed"):
                self.result["was"] = {"status": observed["status"], "exit_code": observed.get("exit_code"),
                                      "finished_at": observed.get("finished_at")}
        self._start(spec, digest)

    def restarted(self) -> None:
        spec = container_spec.build(self.params)
        digest = container_spec.spec_hash(spec)
        if _running(self.observed) or self.observed["status"] == "running-unsupervised":
            self.diff.add("restarted", False, True)
            if not self.check_mode:
                stop_container(self.name, self.observed)
        self._start(spec, digest, force=True)

    def stopped(self) -> None:
        observed = self.observed
        if observed["status"] == "absent":
            # A stopped container that never ran: its spec is recorded, ready for `started`.
            spec = container_spec.build(self.params)
            self.diff.add("status", "absent", "created")
            if not self.check_mode:
                container_state.write(self.name, {"name": self.name, "status": "created", "spec": spec,
                                                  "spec_hash": container_spec.spec_hash(spec),
                                                  "log_path": spec["log_path"], "created_at": container_state.now()})
        elif _running(observed) or observed["status"] == "running-unsupervised":
            self.diff.add("status", observed["status"], "stopped")
            if not self.check_mode:
                stop_container(self.name, observed, self._stop_timeout(observed))
        self._report_fresh()

    def absent(self) -> None:
        observed = self.observed
        if observed["status"] == "absent":
            self._report({"status": "absent"})
            return
        if _running(observed) or observed["status"] == "running-unsupervised":
            self.diff.add("status", observed["status"], "absent")
            if not self.check_mode:
                stop_container(self.name, observed, self._stop_timeout(observed))
        self.diff.add("state", container_state.state_dir(self.name), "absent")
        if not self.check_mode:
            log_path = (observed.get("spec") or {}).get("log_path") or observed.get("log_path")
            if log_path and os.path.dirname(log_path) == container_spec.LOG_ROOT:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(log_path)  # the default log goes with the container, as with `docker rm`
            container_state.remove(self.name)
        self._report({"status": "absent"})

    # -- helpers -----------------------------------------------------------------------------------
    def _stop_timeout(self, observed: dict[str, Any]) -> float | None:
        value = self.params.get("stop_timeout")
        return None if value is None else float(value)

    def _start(self, spec: dict[str, Any], digest: str, force: bool = False) -> None:
        self.diff.add("status", self.observed["status"] if not force else "stopped", "running")
        if self.check_mode:
            self._report({"status": "running", "pid": None, "spec": spec, "spec_hash": digest,
                          "log_path": spec["log_path"]})
            return
        log_existed = os.path.lexists(spec["log_path"])
        report = supervisor.spawn(spec, digest)
        if "error" in report:
            state = container_state.read(self.name)
            container_state.remove(self.name)
            with contextlib.suppress(OSError):
                if not log_existed and os.path.getsize(spec["log_path"]) == 0:
                    os.unlink(spec["log_path"])  # nothing half-made: an empty log this run created goes too
            raise NsboxError(f"container {self.name} did not start: {report['error']}", name=self.name,
                             log_path=spec["log_path"], state=state)
        self._report_fresh()

    def _signal(self, observed: dict[str, Any]) -> None:
        wanted = self.params.get("signal")
        if not wanted:
            return
        number = parse_signal(wanted, "signal")
        self.diff.add("signal", None, signal_name(number))
        if not self.check_mode:
            os.kill(observed["pid"], number)

    def _report_fresh(self) -> None:
        if self.check_mode:
            predicted = dict(self.observed)
            if "status" in self.diff:
                predicted["status"] = self.diff.get_diff()["after"]["status"]
            self._report(predicted)
        else:
            self._report(container_state.observed(container_state.read(self.name)))

    def _report(self, observed: dict[str, Any]) -> None:
        state = {k: v for k, v in observed.items() if k != "spec"}
        self.result.update(name=self.name, status=observed.get("status"), pid=observed.get("pid"),
                           log_path=observed.get("log_path") or (observed.get("spec") or {}).get("log_path"),
                           state=state, spec=observed.get("spec"))
