# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One lock per managed object, so that two runs on one host never interleave on it.

flock(2) locks die with their process, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_DIR = os.environ.get("NSBOX_LOCK_DIR", "/run/lock/nsbox")


class LockTimeout(TimeoutError):
    pass


def lock_path(kind: str, name: str, lock_dir: str = LOCK_DIR) -> str:
    # Object names may be paths; a digest keeps the lock file name flat and bounded.
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return os.path.join(lock_dir, f"{kind}-{digest}.lock")


@contextmanager
def object_lock(kind: str, name: str, timeout: float = 300.0, lock_dir: str = LOCK_DIR) -> Iterator[str]:
    """Hold an exclusive lock on (kind, name); raise LockTimeout naming the object after timeout seconds."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    path = lock_path(kind, name, lock_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"another run holds the lock on {kind} {name} ({path}) for over {timeout:.0f} s; "
                        "wait for it to finish or find it with `fuser " + path + "`"
                    ) from None
                time.sleep(0.05)
        yield path
    finally:
        os.close(fd)
