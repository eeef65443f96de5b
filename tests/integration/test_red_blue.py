"""The seeds' RED/BLUE scenario through ansible-playbook: build, ping both ways, run again, tear down."""

from __future__ import annotations

from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo
from harness import COLLECTION_ROOT, run_playbook
from netfixtures import NETNS_DIR, netns_exists, subnet


def test_red_blue_playbook(made):
    red, blue = made.new_netns("nbtred"), made.new_netns("nbtblu")
    x, y = subnet()
    playbook = COLLECTION_ROOT / "tests" / "integration" / "playbooks" / "red_blue.yml"
    proc = run_playbook(playbook, "-e", f"red={red}", "-e", f"blue={blue}", "-e", f"net=10.{x}.{y}")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    assert "Both pings answered" in proc.stdout
    for name in (red, blue):
        assert not netns_exists(name)
        assert mountinfo.mount_at(f"{NETNS_DIR}/{name}") is None
