"""A stand-in for AnsibleModule that records exit_json/fail_json, for unit tests of managers (AnsibleModule
itself is exercised by every integration test)."""

from __future__ import annotations


class Finished(Exception):
    def __init__(self, kind: str, result: dict) -> None:
        super().__init__(kind)
        self.kind = kind
        self.result = result


class RecordingModule:
    """Only what Manager touches; AnsibleModule itself is exercised by every integration test."""

    def __init__(self, state: str, check_mode: bool = False) -> None:
        self.params = {"state": state}
        self.check_mode = check_mode
        self._diff = True

    def exit_json(self, **result):
        raise Finished("exit", result)

    def fail_json(self, **result):
        raise Finished("fail", result)
