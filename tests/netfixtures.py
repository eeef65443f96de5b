"""Fixtures of the network tests: names unique to each test, and removal of exactly what a test made.

Only namespaces and links whose names a test registered are removed, never by wildcard: other
helpers run tests on this machine at the same time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo, syscalls

NETNS_DIR = "/run/netns"


def in_netns(name: str):
    """A preexec_fn that moves the child into /run/netns/NAME before it execs."""
    path = os.path.join(NETNS_DIR, name)

    def enter() -> None:
        syscalls.enter_namespace(path, syscalls.CLONE_NEWNET)
    return enter


def run_in(name: str | None, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False,
                          preexec_fn=in_netns(name) if name else None)


def ip_json(name: str | None, *args: str) -> list[dict]:
    """`ip -j` output, to check the module's work with another tool than the module itself."""
    import json
    command = ["ip", "-j", *(["-n", name] if name else []), *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def link_exists(netns: str | None, ifname: str) -> bool:
    command = ["ip", *(["-n", netns] if netns else []), "link", "show", "dev", ifname]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def ping(source_ns: str | None, address: str) -> subprocess.CompletedProcess:
    return run_in(source_ns, "/bin/busybox", "ping", "-c", "2", "-W", "2", address)


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


@dataclass
class Registry:
    """What one test made, removed in reverse order afterwards."""

    netns: list[str] = field(default_factory=list)
    links: list[tuple[str | None, str]] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def name(self, prefix: str = "nbt") -> str:
        return f"{prefix}{secrets.token_hex(3)}"

    def new_netns(self, prefix: str = "nbt") -> str:
        name = self.name(prefix)
        self.netns.append(name)
        return name

    def new_link(self, netns: str | None = None, prefix: str = "nbt") -> str:
        name = self.name(prefix)
        self.links.append((netns, name))
        return name

    def spawn(self, netns: str | None, *command: str) -> subprocess.Popen:
        proc = subprocess.Popen(list(command), preexec_fn=in_netns(netns) if netns else None,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.processes.append(proc)
        return proc

    def python_in(self, netns: str | None, code: str) -> subprocess.Popen:
        return self.spawn(netns, sys.executable, "-c", code)

    def cleanup(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        for netns, link in reversed(self.links):
            if netns is None or netns_exists(netns):
                command = ["ip", *(["-n", netns] if netns else []), "link", "del", "dev", link]
                subprocess.run(command, capture_output=True, check=False)
        for name in reversed(self.netns):
            path = os.path.join(NETNS_DIR, name)
            if mountinfo.mount_at(path) is not None:
                syscalls.umount2(path, syscalls.MNT_DETACH)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


_LISTENER = """
import socket, sys
server = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(8)
print('ready', flush=True)
while True:
    conn, peer = server.accept()
    conn.sendall(sys.argv[3].encode())
    conn.close()
"""

_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as conn:
    print(conn.recv(100).decode())
"""


def listen(registry: Registry, netns: str | None, address: str, port: int, reply: str) -> subprocess.Popen:
    """A TCP server in netns that answers every connection with reply; returns once it listens."""
    proc = registry.spawn(netns, sys.executable, "-c", _LISTENER, address, str(port), reply)
    line = proc.stdout.readline().strip()
    assert line == "ready", f"listener in {netns} did not start: {line} {proc.stderr.read() if proc.poll() else ''}"
    return proc


def connect(netns: str | None, address: str, port: int) -> str:
    """Connect from netns to address:port over TCP and return what the server said."""
    proc = run_in(netns, sys.executable, "-c", _CLIENT, address, str(port))
    assert proc.returncode == 0, f"TCP from {netns or 'the host'} to {address}:{port} failed: {proc.stderr}"
    return proc.stdout.strip()


def subnet() -> tuple[int, int]:
    """x, y of a 10.x.y.0/24 for one test (inside namespaces the test made, so nothing leaves the machine)."""
    raw = secrets.randbelow(150 * 250)
    return 100 + raw // 250, raw % 250


def ip(*args: str) -> None:
    """Change something by hand with another tool, as an operator would (drift)."""
    subprocess.run(["ip", *args], check=True, capture_output=True)
