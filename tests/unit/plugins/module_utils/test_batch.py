"""The batch's own logic: step validation, labels, order, and undo across steps. The steps here are small
managers of this test (the real ones run against the kernel in tests/integration/test_batch.py)."""

from __future__ import annotations

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import argspecs, batch
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError
from ansible_collections.nsbox.primitives.plugins.module_utils.sysctl import normalize, proc_path
from standins import Finished
from standins import RecordingModule as ManagerRecordingModule


class RecordingModule(ManagerRecordingModule):
    """The stand-in, with what a batch reads of its module too."""

    def __init__(self, steps: list, check_mode: bool = False) -> None:
        super().__init__("present", check_mode)
        self.params = {"steps": steps}
        self.no_log_values: set = set()
        self.warnings: list = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


LOG: list[str] = []


class Thing(Manager):
    """Makes the object `name` (logged), undoably; fails when asked to."""

    def present(self) -> None:
        name = self.params["name"]
        self.diff.add(name, "absent", "present")
        if self.params["fail"]:
            raise NsboxError(f"{name} cannot be made", path=f"/things/{name}")
        if not self.check_mode:
            LOG.append(f"make {name}")
            self.undo.push(f"unmake {name}", lambda: LOG.append(f"unmake {name}"))
        self.result["name"] = name


THING = argspecs.ModuleSpec(argument_spec={"name": {"type": "str", "required": True},
                                           "state": {"type": "str", "default": "present"},
                                           "fail": {"type": "bool", "default": False}})


@pytest.fixture(autouse=True)
def thing_kind(monkeypatch):
    LOG.clear()
    monkeypatch.setitem(batch.STEP_KINDS, "thing", batch.StepKind(THING, Thing))


def run(steps: list, check_mode: bool = False) -> Finished:
    with pytest.raises(Finished) as finished:
        batch.BatchManager(RecordingModule(steps, check_mode)).execute()
    return finished.value


def test_steps_run_in_order_with_their_results_and_diffs():
    done = run([{"module": "thing", "args": {"name": "a"}}, {"module": "thing", "label": "B", "args": {"name": "b"}}])
    assert done.kind == "exit" and done.result["changed"]
    assert LOG == ["make a", "make b"]
    assert [(r["step"], r["label"], r["name"], r["changed"]) for r in done.result["results"]] == [
        (1, "", "a", True), (2, "B", "b", True)]
    assert [d["before_header"] for d in done.result["diff"]] == ["step 1 (thing a)", "step 2 (thing B)"]
    assert done.result["diff"][0]["after"] == {"a": "present"}


def test_a_failing_step_undoes_every_earlier_step_newest_first():
    failed = run([{"module": "thing", "args": {"name": "a"}}, {"module": "thing", "args": {"name": "b"}},
                  {"module": "thing", "args": {"name": "c", "fail": True}}])
    assert failed.kind == "fail"
    assert LOG == ["make a", "make b", "unmake b", "unmake a"]
    assert failed.result["msg"] == "step 3 (thing c): c cannot be made"
    assert failed.result["step"] == 3 and failed.result["path"] == "/things/c"
    assert failed.result["rolled_back"] == ["step 2 (thing b): unmake b", "step 1 (thing a): unmake a"]
    assert len(failed.result["results"]) == 3


def test_every_step_is_validated_before_any_runs():
    failed = run([{"module": "thing", "args": {"name": "a"}}, {"module": "thing", "args": {"nmae": "b"}}])
    assert failed.kind == "fail" and LOG == []
    assert failed.result["step"] == 2
    assert failed.result["msg"].startswith("step 2 (thing): ")
    assert "nmae" in failed.result["msg"] and "name" in failed.result["msg"]


def test_check_mode_runs_each_step_in_check_mode():
    done = run([{"module": "thing", "args": {"name": "a"}}], check_mode=True)
    assert done.result["changed"] and LOG == []


def test_secrets_of_a_step_are_masked():
    module = RecordingModule([{"module": "rootfs_export", "args": {"image": "r/x", "username": "u",
                                                                   "password": "s3cret"}}])
    batch.validate_step(module, 1, module.params["steps"][0])
    assert "s3cret" in module.no_log_values


def test_every_module_of_the_collection_is_a_step():
    assert {"overlay_mount", "cgroup2", "netns", "veth", "bridge", "nsbox_container", "rootfs_export"} <= set(
        batch.STEP_KINDS)


@pytest.mark.parametrize(("name", "path"), [
    ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    ("net/ipv4/conf/eth0.100/forwarding", "/proc/sys/net/ipv4/conf/eth0.100/forwarding"),
])
def test_sysctl_paths(name, path):
    assert proc_path(name) == path


@pytest.mark.parametrize("name", ["net/../../etc/passwd", "net..ipv4", "/net/ipv4", "net ipv4", ""])
def test_sysctl_names_that_are_refused(name):
    with pytest.raises(NsboxError, match="is not a sysctl name"):
        proc_path(name)


@pytest.mark.parametrize(("value", "text"), [
    (True, "1"), (False, "0"), (1, "1"), ("0\t  2147483647\n", "0 2147483647")])
def test_sysctl_values_as_the_kernel_prints_them(value, text):
    assert normalize(value) == text
