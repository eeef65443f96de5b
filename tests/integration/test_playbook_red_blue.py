"""playbooks/red-blue.yml through the roles: the image built offline by tools/build-nginx-image.py (its
busybox tag), two containers in their own namespaces and cgroups pinging each other, then the role
nsbox_teardown, which proves nothing is left; checked here once more from outside."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from harness import COLLECTION_ROOT, run_playbook
from netfixtures import netns_exists, subnet

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"), pytest.mark.slow]


def test_red_blue_roles(tmp_path):
    layout = tmp_path / "layout"
    subprocess.run([sys.executable, str(COLLECTION_ROOT / "tools" / "build-nginx-image.py"), str(layout)],
                   check=True, capture_output=True)
    prefix = f"nbtrb{secrets.token_hex(2)}-"
    x, y = subnet()
    state = tmp_path / "state"
    extra = {
        "nsbox_become": False, "nsbox_host_install_packages": False, "nsbox_host_sysctls": {},
        "nsbox_host_sysctl_file": "", "nsbox_state_dir": str(state), "nsbox_image_source": "oci-layout",
        "nsbox_image_path": str(layout), "nsbox_image_name": "busybox", "nsbox_red_blue_prefix": prefix,
        "nsbox_red_blue_cgroup_parent": prefix + "cg", "nsbox_red_blue_subnet": f"10.{x}.{y}",
    }
    proc = run_playbook(COLLECTION_ROOT / "playbooks" / "red-blue.yml", "-e", json.dumps(extra))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    assert "Both pings answered" in proc.stdout
    assert "Nothing left of 2 containers" in proc.stdout
    for name in ("red", "blue"):
        assert not netns_exists(f"nsbox-{prefix}{name}")
        assert not Path(f"/run/nsbox/containers/{prefix}{name}").exists()
    assert not state.exists()
    cgroups = Path("/sys/fs/cgroup")
    assert not [*cgroups.glob(f"{prefix}cg"), *cgroups.glob(f"*/{prefix}cg")]
