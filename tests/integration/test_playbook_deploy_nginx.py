"""playbooks/deploy-nginx.yml on this host as an operator runs it with --check first: check, real, check,
real report changes, changes, none, none; the first check makes nothing; nginx answers on the published
port; playbooks/teardown.yml leaves nothing. Names, subnet, port and nftables table are this test's own."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from harness import COLLECTION_ROOT, run_playbook
from netfixtures import link_exists, netns_exists, subnet

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"), pytest.mark.slow]
RECAP = re.compile(r"^localhost\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", re.M)


def changed_of(proc: subprocess.CompletedProcess) -> int:
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    changed, failed = RECAP.search(proc.stdout).groups()
    assert failed == "0"
    return int(changed)


def test_check_real_check_real_then_teardown(tmp_path):
    layout = tmp_path / "layout"
    subprocess.run([sys.executable, str(COLLECTION_ROOT / "tools" / "build-nginx-image.py"), str(layout)],
                   check=True, capture_output=True)
    tag = secrets.token_hex(2)
    x, y = subnet()
    port = 20000 + secrets.randbelow(10000)
    state = tmp_path / "state"
    bridge, table, prefix = f"nbtdn{tag}", f"nbtdn{tag}", f"nbtdn{tag}"
    extra = {
        "nsbox_become": False, "nsbox_host_install_packages": False, "nsbox_host_sysctls": {},
        "nsbox_host_sysctl_file": "", "nsbox_state_dir": str(state), "nsbox_image_source": "oci-layout",
        "nsbox_image_path": str(layout), "nsbox_image_name": "nginx", "nsbox_nginx_host_port": port,
        "nsbox_nginx_bridge": bridge, "nsbox_nginx_nft_table": table, "nsbox_nginx_name_prefix": prefix,
        "nsbox_nginx_subnet": f"10.{x}.{y}.0/24", "nsbox_nginx_gateway": f"10.{x}.{y}.1",
        "nsbox_nginx_first_address": f"10.{x}.{y}.11", "nsbox_cgroup_parent": f"{prefix}cg",
        "nsbox_nginx_replicas": 2,
    }
    args = ("-e", json.dumps(extra))
    playbook = COLLECTION_ROOT / "playbooks" / "deploy-nginx.yml"
    try:
        assert changed_of(run_playbook(playbook, *args, check=True)) > 0
        # The prediction made nothing.
        assert not state.exists() and not link_exists(None, bridge) and not netns_exists(f"nsbox-{prefix}-1")
        assert changed_of(run_playbook(playbook, *args)) > 0
        assert changed_of(run_playbook(playbook, *args, check=True)) == 0
        assert changed_of(run_playbook(playbook, *args)) == 0
        replicas = set()
        for _attempt in range(6):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert response.status == 200
                replicas.add(response.headers["X-Nsbox-Replica"])
        assert replicas == {f"{prefix}-1", f"{prefix}-2"}, replicas
    finally:
        teardown = run_playbook(COLLECTION_ROOT / "playbooks" / "teardown.yml", "-e", json.dumps(
            {"nsbox_become": False, "nsbox_state_dir": str(state), "nsbox_teardown_images": True}))
    assert teardown.returncode == 0, teardown.stdout[-6000:] + teardown.stderr[-2000:]
    assert "Nothing left of 2 containers" in teardown.stdout
    assert not state.exists() and not link_exists(None, bridge)
    assert not netns_exists(f"nsbox-{prefix}-1") and not netns_exists(f"nsbox-{prefix}-2")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert table not in tables
    cgroups = Path("/sys/fs/cgroup")
    assert not [*cgroups.glob(f"{prefix}cg"), *cgroups.glob(f"*/{prefix}cg")]
