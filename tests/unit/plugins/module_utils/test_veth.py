"""How veth turns options into the wanted state of each end, and what it records as a difference."""

from __future__ import annotations

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError
from ansible_collections.nsbox.primitives.plugins.module_utils.veth import VethManager, end_spec


class Module:
    def __init__(self, params, check_mode=False):
        self.params = params
        self.check_mode = check_mode
        self._diff = True


def test_end_spec_manages_only_what_is_given():
    spec = end_spec("peer", {"name": "eth0", "netns": "red", "addresses": ["10.0.0.3/24"],
                             "routes": [{"dst": "default", "gateway": "10.0.0.2"}]})
    assert spec.label == "eth0 in netns red"
    assert spec.wanted() == {"name": "eth0", "netns": "red", "link_state": "up", "addresses": ["10.0.0.3/24"],
                             "routes": [{"dst": "default", "gateway": "10.0.0.2", "metric": 0}]}
    host = end_spec("interface", {"name": "web0", "mtu": "9000", "mac": "02:AA:00:00:00:01"}, bridge="nsbr0")
    assert host.where == "the host"
    assert host.wanted() == {"name": "web0", "netns": None, "link_state": "up", "mtu": 9000,
                             "mac": "02:aa:00:00:00:01", "master": "nsbr0"}


def test_peer_options_are_named_in_errors():
    with pytest.raises(NsboxError, match=r"peer\.addresses: '10\.0\.0\.3' has no prefix"):
        end_spec("peer", {"name": "eth0", "addresses": ["10.0.0.3"]})
    with pytest.raises(NsboxError, match=r"peer\.netns 'a/b'"):
        end_spec("peer", {"name": "eth0", "netns": "a/b"})


def test_record_shows_only_the_attributes_that_differ():
    manager = VethManager(Module({"name": "veth0"}))
    spec = end_spec("interface", {"name": "veth0", "addresses": ["10.0.0.2/24"], "mtu": 1400})
    current = {"name": "veth0", "netns": None, "ifindex": 4, "mtu": 1400, "mac": "02:00:00:00:00:01",
               "addresses": ["10.0.0.9/24"], "routes": [], "link_state": "down", "master": None}
    manager._record("interface", current, spec)
    assert manager.diff.get_diff() == {
        "before": {"interface": {"addresses": ["10.0.0.9/24"], "link_state": "down"}},
        "after": {"interface": {"addresses": ["10.0.0.2/24"], "link_state": "up"}},
    }
    manager._record("peer", None, end_spec("peer", {"name": "eth0", "netns": "red"}))
    expected = {"state": "present", "name": "eth0", "netns": "red", "link_state": "up"}
    assert manager.diff.get_diff()["after"]["peer"] == expected
