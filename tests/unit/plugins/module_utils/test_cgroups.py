"""Validation and translation of the cgroup v2 vocabulary (no kernel needed), and the v2
no-internal-process check against a fake cgroup2 tree: this host's cgroup2 tree has no controllers to
delegate, so the rule cannot be triggered for real here (the VM tier does that on pure v2)."""

from __future__ import annotations

import os

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups import (
    PAGE_SIZE,
    cpus_to_cpu_max,
    desired_from_params,
    detect_hierarchy,
    normalize_cpu_list,
    normalize_setting,
    normalize_size,
    open_cgroup,
    validate_path,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups_v1 import shares_from_weight, weight_from_shares
from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups_v2 import V2Backend
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError
from harness import run_module


@pytest.mark.parametrize("value, expected", [
    ("200M", str(200 << 20)), ("200MB", str(200 << 20)), (10485760, "10485760"), ("max", "max"),
    (-1, "max"), ("1000", "0"), (PAGE_SIZE + 1, str(PAGE_SIZE)), ("1.5G", str(3 << 29)),
])
def test_sizes_are_normalised_to_what_the_kernel_prints(value, expected):
    assert normalize_size("memory_max", value) == expected


@pytest.mark.parametrize("value", ["-5M", "ten", "5 apples", "", True])
def test_bad_sizes_name_the_option(value):
    with pytest.raises(NsboxError, match="memory_max="):
        normalize_size("memory_max", value)


def test_cpus_become_quota_and_period_and_are_bounded_by_the_host():
    assert cpus_to_cpu_max(0.4, None, 2) == "40000 100000"
    assert cpus_to_cpu_max(1.5, 200000, 2) == "300000 200000"
    with pytest.raises(NsboxError, match="above the period times the 2 CPUs"):
        cpus_to_cpu_max(2.5, None, 2)
    with pytest.raises(NsboxError, match="positive"):
        cpus_to_cpu_max(0, None, 2)
    with pytest.raises(NsboxError, match="at least 1000"):
        cpus_to_cpu_max(0.005, None, 2)


def test_desired_state_from_options():
    desired = desired_from_params({"cpus": 0.4, "memory_max": "200M", "memory_swap_max": 0, "pids_max": 16,
                                   "cpuset_cpus": "1,0", "settings": {"memory.low": "10M"},
                                   "io_max": [{"device": "8:0", "wbps": "1M", "riops": "max"}]}, cpu_count=2)
    assert desired.values == {"cpu.max": "40000 100000", "memory.max": str(200 << 20), "memory.swap.max": "0",
                              "pids.max": "16", "cpuset.cpus": "0-1", "memory.low": str(10 << 20)}
    assert desired.io_max == {"8:0": f"wbps={1 << 20} riops=max"}
    assert desired.needed_controllers() == {"cpu", "memory", "pids", "cpuset", "io"}


@pytest.mark.parametrize("params, message", [
    ({"cpus": 0.5, "cpu_max": "max"}, "either cpus or cpu_max"),
    ({"cpu_period": 50000}, "cpu_period goes with"),
    ({"memory_max": "1G", "settings": {"memory.max": "2G"}}, "give it once"),
    ({"settings": {"cgroup.kill": 1}}, "unknown cgroup v2 key"),
    ({"settings": {"io.max": "8:0 rbps=1"}}, "use the io_max option"),
    ({"cpu_weight": 0}, "from 1 to 10000"),
    ({"io_max": [{"device": "8:0"}]}, "at least one of"),
    ({"io_max": [{"device": "/etc/passwd", "rbps": "1M"}]}, "not a block device"),
    ({"io_max": [{"device": "8:0", "rbps": 0}]}, "stop all I/O"),
])
def test_invalid_options(params, message):
    with pytest.raises(NsboxError, match=message):
        desired_from_params(params, cpu_count=2)


def test_cpu_lists_and_raw_keys():
    assert normalize_cpu_list("x", "0,1,2,5,7-8") == "0-2,5,7-8"
    assert normalize_setting("cgroup.max.descendants", 5) == "5"
    assert normalize_setting("hugetlb.2MB.max", "max") == "max"
    assert normalize_setting("cpu.max", "max") == "max"


@pytest.mark.parametrize("path", ["", "/abs", "../x", "a/../b", "a//b", "a/./b", "a/cgroup.procs"])
def test_paths_must_be_plain_and_relative(path):
    with pytest.raises(NsboxError, match="cgroup path"):
        validate_path(path)


def test_weight_and_shares_round_trip_exactly():
    assert shares_from_weight(100) == 1024
    assert all(weight_from_shares(shares_from_weight(w)) == w for w in range(1, 10001))


def _fake_v2_tree(root, procs_in_parent: str = "") -> None:
    """Only the files the planner reads; a stand-in for a pure-v2 kernel."""
    (root / "nsbox").mkdir()
    for directory, controllers, enabled in ((root, "cpu memory pids", "pids"), (root / "nsbox", "pids", "")):
        (directory / "cgroup.controllers").write_text(controllers + "\n")
        (directory / "cgroup.subtree_control").write_text(enabled + "\n")
        (directory / "cgroup.procs").write_text("")
    (root / "nsbox" / "cgroup.procs").write_text(procs_in_parent)


def test_subtree_plan_enables_what_each_ancestor_lacks(tmp_path):
    _fake_v2_tree(tmp_path)
    plan = V2Backend(str(tmp_path), "nsbox/web").subtree_plan({"memory", "pids"})
    assert [(os.path.relpath(c.directory, tmp_path), c.enable, c.after) for c in plan] == [
        (".", ["memory"], ["memory", "pids"]), ("nsbox", ["memory", "pids"], ["memory", "pids"])]


def test_no_internal_process_rule_names_the_cgroup_and_its_processes(tmp_path):
    _fake_v2_tree(tmp_path, procs_in_parent=f"{os.getpid()}\n")
    result = run_module("cgroup2", {"path": "nsbox/web", "memory_max": "10M", "hierarchy": "v2",
                                    "root": str(tmp_path)}, expect_failure=True)
    assert "cgroup nsbox" in result["msg"] and str(os.getpid()) in result["msg"]
    assert "no-internal-process" in result["msg"] and "leaf" in result["msg"]
    assert not (tmp_path / "nsbox" / "web").exists(), "nothing may be created when the rule blocks"


def test_hierarchy_detection_on_this_host():
    layout = detect_hierarchy()
    assert layout.hierarchy in ("v2", "v1", "hybrid")
    if layout.hierarchy == "hybrid":
        assert layout.unified == "/sys/fs/cgroup/unified" and "memory" in layout.v1
        assert detect_hierarchy("v1").unified is None
        with pytest.raises(NsboxError, match="pass root=/sys/fs/cgroup/unified"):
            detect_hierarchy("v2")
    with pytest.raises(NsboxError, match="does not exist"):
        detect_hierarchy(root="/nonexistent-cgroup-root")
    assert open_cgroup("nsbox-unit-never-created").exists() is False


def test_v1_without_swap_accounting_only_offers_swap_0_as_swappiness(tmp_path):
    """A fake v1 memory hierarchy without memory.memsw.* files: this host's kernel has swap
    accounting, so the fallback cannot be reached for real here."""
    from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups import DesiredState
    from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups_v1 import V1Backend

    (tmp_path / "g").mkdir()
    (tmp_path / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "g" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    # One digit: write_text, like the kernel interface, does not truncate (a regular file keeps the rest).
    (tmp_path / "g" / "memory.swappiness").write_text("1\n")
    backend = V1Backend({"memory": str(tmp_path)}, "g")
    assert "swapaccount=1" in backend.unsupported("memory.swap.max", str(10 << 20))
    assert backend.unsupported("memory.swap.max", "0") is None
    assert backend.read("memory.swap.max") == "max" and backend.read("memory.max") == "max"
    backend.write("memory.swap.max", "0")
    assert (tmp_path / "g" / "memory.swappiness").read_text().strip() == "0"
    assert backend.read("memory.swap.max") == "0"
    notes = backend.notes(DesiredState(values={"memory.swap.max": "0"}))
    assert notes == ["memory.swap.max 0 is enforced as memory.swappiness=0 (no swap accounting on this kernel)"]


def test_v1_mounts_with_co_mounted_controllers():
    """Ubuntu 18.04/20.04 hybrid layout: cpu and cpuacct share one hierarchy (text, not this host)."""
    from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo
    from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups import v1_mounts
    from ansible_collections.nsbox.primitives.plugins.module_utils.cgroups_v1 import V1Backend

    text = (
        "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        "27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd\n"
        "30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
        "31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
        "32 25 0:29 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid - cgroup cgroup rw,net_cls,net_prio\n"
        "40 23 0:40 / /mnt/other/cgroup/pids rw - cgroup cgroup rw,pids\n"
    )
    mounts = v1_mounts("/sys/fs/cgroup", mountinfo.parse(text))
    assert mounts == {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                      "memory": "/sys/fs/cgroup/memory", "net_cls": "/sys/fs/cgroup/net_cls,net_prio",
                      "net_prio": "/sys/fs/cgroup/net_cls,net_prio"}
    backend = V1Backend(mounts, "nsbox/web")
    assert backend.directories_for({"cpu", "memory"}) == ["/sys/fs/cgroup/cpu,cpuacct/nsbox/web",
                                                          "/sys/fs/cgroup/memory/nsbox/web"]
    assert "pids" not in backend.controllers()
