"""The Manager's contract with a stand-in for AnsibleModule that records exit_json/fail_json."""

from __future__ import annotations

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError
from standins import Finished, RecordingModule


class Things(Manager):
    def __init__(self, module, log):
        super().__init__(module)
        self.log = log

    def present(self):
        self.diff.add("thing", "absent", "present")
        self.log.append("create a")
        self.undo.push("remove a", lambda: self.log.append("undo a"))
        self.log.append("create b")
        self.undo.push("remove b", lambda: self.log.append("undo b"))
        raise NsboxError("b is broken; fix it", path="/b")

    def absent(self):
        self.diff.add("thing", "present", "absent")
        self.result["gone"] = True


def run(state: str, log: list) -> Finished:
    with pytest.raises(Finished) as finished:
        Things(RecordingModule(state), log).execute()
    return finished.value


def test_failure_undoes_in_reverse_and_reports_details():
    log: list[str] = []
    finished = run("present", log)
    assert finished.kind == "fail"
    assert log == ["create a", "create b", "undo b", "undo a"]
    assert finished.result["msg"] == "b is broken; fix it"
    assert finished.result["path"] == "/b"
    assert finished.result["rolled_back"] == ["remove b", "remove a"]


def test_success_reports_changed_diff_and_result():
    finished = run("absent", [])
    assert finished.kind == "exit"
    assert finished.result["changed"] is True and finished.result["gone"] is True
    assert finished.result["diff"] == {"before": {"thing": "present"}, "after": {"thing": "absent"}}


class Clashing(Manager):
    def present(self):
        self.result["path"] = "/from/result"
        raise NsboxError("broken", path="/from/error")


def test_failure_details_override_result_keys():
    with pytest.raises(Finished) as finished:
        Clashing(RecordingModule("present")).execute()
    assert finished.value.kind == "fail" and finished.value.result["path"] == "/from/error"
