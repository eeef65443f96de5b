from __future__ import annotations

from ansible_collections.nsbox.primitives.plugins.module_utils.diff import DifferenceTracker


def test_records_only_real_changes():
    tracker = DifferenceTracker()
    assert not tracker.add("same", 1, 1)
    assert not tracker.changed
    assert tracker.add("mtu", 1500, 9000)
    assert tracker.changed and "mtu" in tracker
    assert tracker.get_diff() == {"before": {"mtu": 1500}, "after": {"mtu": 9000}}


def test_change_and_restore_cancels_out():
    tracker = DifferenceTracker()
    tracker.add("state", "up", "down")
    assert not tracker.add("state", "down", "up")
    assert not tracker.changed and tracker.names() == []


def test_first_before_last_after():
    tracker = DifferenceTracker()
    tracker.add("x", 1, 2)
    tracker.add("x", 2, 3)
    assert tracker.get_diff() == {"before": {"x": 1}, "after": {"x": 3}}
