"""Two processes contend for one object lock for real (flock is per open file description)."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils.locking import LockTimeout, lock_path, object_lock


def _hold(lock_dir: str, ready, release) -> None:
    with object_lock("overlay", "/srv/a", lock_dir=lock_dir):
        ready.set()
        release.wait(10)


def test_second_holder_waits_then_times_out_naming_the_object(tmp_path):
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        started = time.monotonic()
        with pytest.raises(LockTimeout, match="overlay /srv/a"), object_lock(
                "overlay", "/srv/a", timeout=0.3, lock_dir=str(tmp_path)):
            pass
        assert time.monotonic() - started >= 0.3
        # Another object is not blocked.
        with object_lock("overlay", "/srv/b", timeout=0.3, lock_dir=str(tmp_path)):
            pass
    finally:
        release.set()
        holder.join(10)
    # Once the holder is gone the lock is free again, with no stale state left.
    with object_lock("overlay", "/srv/a", timeout=1, lock_dir=str(tmp_path)) as path:
        assert path == lock_path("overlay", "/srv/a", str(tmp_path))
