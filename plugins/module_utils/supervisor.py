# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-container supervisor: a small process outside the container that outlives the Ansible
task. It starts the container, waits for its PID 1, records exit code and time, applies the restart
policy, and on SIGTERM stops the container (stop signal, stop_timeout, then SIGKILL; the kernel
ends the whole pid namespace with PID 1).

It is forked (twice, in a new session) from the module's process, so it runs the code the module
already loaded and needs no file of the collection once it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import time
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import container_state, launcher, syscalls

BACKOFF_START = 0.1
BACKOFF_MAX = 10.0
# A container that ran this long before exiting starts over with the shortest restart delay.
BACKOFF_RESET_AFTER = 10.0


def spawn(spec: dict[str, Any], spec_hash: str, timeout: float = 60.0) -> dict[str, Any]:
    """Start the supervisor of spec; returns its first report ({"pid": ...} or {"error": ...})."""
    os.makedirs(container_state.state_dir(spec["name"]), mode=0o700, exist_ok=True)
    os.makedirs(os.path.dirname(spec["log_path"]), mode=0o755, exist_ok=True)
    ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(ready_read)
            os.setsid()
            if os.fork() == 0:
                _daemonize(ready_write)
                status = _Supervisor(spec, spec_hash, 3).run()
            else:
                status = 0
        finally:
            os._exit(status)
    os.close(ready_write)
    os.waitpid(child, 0)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _w, _x = select.select([ready_read], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(ready_read, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(ready_read)
    raw = b"".join(chunks).decode(errors="replace").strip()
    if not raw:
        return {"error": f"the supervisor of {spec['name']} gave no report within {timeout:.0f} s"}
    return json.loads(raw.splitlines()[0])


def _daemonize(ready_write: int) -> None:
    """Leave nothing of the Ansible task attached: stdio to /dev/null, only the report pipe kept (as fd 3)."""
    os.chdir("/")
    os.umask(0o022)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.dup2(ready_write, 3)
    os.set_inheritable(3, False)
    syscalls.close_range(4)
    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGALRM):
        signal.signal(number, signal.SIG_IGN if number != signal.SIGALRM else signal.SIG_DFL)


class _Supervisor:
    def __init__(self, spec: dict[str, Any], spec_hash: str, ready_fd: int | None) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.hash = spec_hash
        self.ready_fd = ready_fd
        self.stopping = False
        self.restart_count = 0
        self.pid: int | None = None

    # -- reporting ---------------------------------------------------------------------------------
    def _ready(self, message: dict[str, Any]) -> None:
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, (json.dumps(message) + "\n").encode())
                os.close(self.ready_fd)
            self.ready_fd = None

    def _state(self, **changes: Any) -> None:
        container_state.update(self.name, **changes)

    # -- main loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        syscalls.prctl(syscalls.PR_SET_NAME, _comm(f"nsbox:{self.name}"))
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        container_state.write(self.name, {
            "name": self.name, "status": "starting", "spec_hash": self.hash, "spec": self.spec,
            "supervisor_pid": os.getpid(), "supervisor_starttime": container_state.start_time(os.getpid()),
            "log_path": self.spec["log_path"], "restart_count": 0, "created_at": container_state.now(),
            "exit_code": None, "finished_at": None, "error": None, "pid": None,
        })
        if not self._start(first=True):
            return 1
        backoff = BACKOFF_START
        while True:
            exit_code, ran_for = self._wait_for_exit(wake_read)
            if self.stopping:
                self._state(status="stopped", pid=None, exit_code=exit_code, finished_at=container_state.now())
                return 0
            if not self._should_restart(exit_code):
                self._state(status="exited", pid=None, exit_code=exit_code, finished_at=container_state.now())
                return 0
            if ran_for >= BACKOFF_RESET_AFTER:
                backoff = BACKOFF_START
            self.restart_count += 1
            self._state(status="restarting", pid=None, exit_code=exit_code, finished_at=container_state.now(),
                        restart_count=self.restart_count)
            while True:
                if self._sleep(backoff, wake_read):
                    self._state(status="stopped")
                    return 0
                backoff = min(backoff * 2, BACKOFF_MAX)
                if self._start(first=False):
                    break

    def _start(self, first: bool) -> bool:
        try:
            log_fd = os.open(self.spec["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as error:
            return self._start_failed(first, f"opening the log file {self.spec['log_path']} failed: {error}")
        userns = self.spec.get("user_namespace")
        if userns:
            # Payloads reopen /dev/stderr by name: the log must belong to the container's root.
            with contextlib.suppress(OSError):
                os.fchown(log_fd, userns["host_uid"], userns["host_gid"])
        try:
            self.pid = launcher.launch(self.spec, log_fd)
        except (launcher.LaunchError, OSError, Exception) as error:
            return self._start_failed(first, str(error))
        finally:
            os.close(log_fd)
        self.started = time.monotonic()
        self._state(status="running", pid=self.pid, pid_starttime=container_state.start_time(self.pid),
                    started_at=container_state.now(), error=None, restart_count=self.restart_count)
        self._ready({"pid": self.pid})
        return True

    def _start_failed(self, first: bool, message: str) -> bool:
        self._state(status="failed" if first else "restarting", error=message, pid=None)
        if first:
            self._ready({"error": message})
        return False

    def _should_restart(self, exit_code: int) -> bool:
        policy = self.spec["restart_policy"]
        if policy["name"] == "always":
            return True
        if policy["name"] == "on-failure" and exit_code != 0:
            return not policy["max_retries"] or self.restart_count < policy["max_retries"]
        return False

    def _sleep(self, seconds: float, wake_read: int) -> bool:
        """Wait seconds; True when a stop request (SIGTERM) came meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _w, _x = select.select([wake_read], [], [], left)
            if readable and signal.SIGTERM in _drain(wake_read):
                self.stopping = True
                return True
        return False

    def _wait_for_exit(self, wake_read: int) -> tuple[int, float]:
        """Wait for PID 1 to end, handling stop requests; returns (exit code, seconds it ran)."""
        pid = self.pid or 0
        pidfd = syscalls.pidfd_open(pid)
        kill_at = None
        try:
            while True:
                timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
                readable, _w, _x = select.select([pidfd, wake_read], [], [], timeout)
                if wake_read in readable and signal.SIGTERM in _drain(wake_read) and not self.stopping:
                    self.stopping = True
                    self._state(status="stopping")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, self.spec["stop_signal"])
                    kill_at = time.monotonic() + self.spec["stop_timeout"]
                if pidfd in readable:
                    break
                if kill_at is not None and time.monotonic() >= kill_at:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    kill_at = time.monotonic() + 3600
        finally:
            os.close(pidfd)
        status = launcher._wait(pid)
        _reap_orphans()
        code = os.waitstatus_to_exitcode(status)
        return (128 - code if code < 0 else code), time.monotonic() - self.started


def _drain(fd: int) -> set[int]:
    received: set[int] = set()
    with contextlib.suppress(BlockingIOError):
        while data := os.read(fd, 64):
            received.update(data)
    return received


def _reap_orphans() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _comm(name: str) -> int:
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _comm.keep = buffer  # type: ignore[attr-defined]
    return ctypes.addressof(buffer)
