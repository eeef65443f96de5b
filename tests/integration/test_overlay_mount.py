"""overlay_mount against the real kernel: layers, whiteouts, idempotence, drift, bad input, cleanup."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo, syscalls
from harness import COLLECTION_ROOT, four_runs, run_module, run_playbook


@pytest.fixture
def layers(tmp_path: Path):
    """Two lower layers in a private directory; every mount made below it is removed afterwards."""
    root = tmp_path / "ovl"
    (root / "myroot" / "etc").mkdir(parents=True)
    (root / "myroot" / "etc" / "os-release").write_text("base\n")
    (root / "myroot" / "shared.txt").write_text("from myroot\n")
    (root / "myroot" / "doomed.txt").write_text("delete me\n")
    (root / "tools" / "bin").mkdir(parents=True)
    (root / "tools" / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "tools" / "shared.txt").write_text("from tools\n")
    yield root
    for mount in sorted(mountinfo.mounts_below(str(tmp_path)), key=lambda m: -len(m.mount_point)):
        syscalls.umount2(mount.mount_point, syscalls.MNT_DETACH)


def params(root: Path, **extra):
    return {
        "path": str(root / "merged"),
        "lowerdirs": [str(root / "tools"), str(root / "myroot")],
        "upperdir": str(root / "upper"),
        "workdir": str(root / "work"),
        **extra,
    }


def test_mount_two_lowers_and_upper_then_absent(layers: Path):
    args = params(layers)
    results = four_runs("overlay_mount", args)
    assert results[1]["created_directories"] == [args["path"], args["upperdir"], args["workdir"]]
    mount = mountinfo.mount_at(args["path"])
    assert mount.fstype == "overlay"
    assert mount.overlay_layers().lowerdirs == args["lowerdirs"]
    assert mount.propagation == "private"
    assert results[3]["mount_id"] == mount.mount_id

    merged = Path(args["path"])
    # A file from each lower is visible, the top layer wins on conflicts.
    assert (merged / "etc" / "os-release").read_text() == "base\n"
    assert (merged / "bin" / "tool").exists()
    assert (merged / "shared.txt").read_text() == "from tools\n"
    # A write lands in the upper layer, never in a lower one.
    (merged / "new.txt").write_text("written\n")
    assert (layers / "upper" / "new.txt").read_text() == "written\n"
    assert not (layers / "myroot" / "new.txt").exists()
    # A deletion leaves a whiteout (a 0/0 character device) in the upper layer.
    (merged / "doomed.txt").unlink()
    whiteout = os.lstat(layers / "upper" / "doomed.txt")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert (layers / "myroot" / "doomed.txt").exists()

    absent = four_runs("overlay_mount", {"path": args["path"], "state": "absent"})
    assert absent[1]["removed_directories"] == [args["path"]]
    assert mountinfo.mount_at(args["path"]) is None
    assert not merged.exists()
    # Without remove_upper the container's writes stay.
    assert (layers / "upper" / "new.txt").exists()
    four_runs("overlay_mount", {**args, "state": "absent", "remove_upper": True})
    assert not (layers / "upper").exists() and not (layers / "work").exists()


def test_read_only_overlay_with_flags_and_options(layers: Path):
    args = {"path": str(layers / "ro"), "lowerdirs": [str(layers / "tools"), str(layers / "myroot")],
            "mount_flags": ["nodev", "nosuid"], "propagation": "unbindable"}
    results = four_runs("overlay_mount", args)
    assert results[3]["mount_flags"] == ["nosuid", "nodev"]
    with pytest.raises(OSError):
        (layers / "ro" / "x").write_text("no")
    writable = params(layers, path=str(layers / "rw"), options=["index=on", "redirect_dir=on"])
    result = four_runs("overlay_mount", writable)[3]
    assert "index=on" in result["options"]
    four_runs("overlay_mount", {"path": args["path"], "state": "unmounted"})
    assert (layers / "ro").is_dir(), "state=unmounted keeps the mount point"


def test_drift_of_flags_and_propagation_is_repaired(layers: Path):
    args = params(layers, mount_flags=["nodev"])
    four_runs("overlay_mount", args)
    syscalls.mount_setattr(args["path"], attr_set=syscalls.MOUNT_ATTR_NOEXEC, attr_clr=syscalls.MOUNT_ATTR_NODEV)
    syscalls.set_propagation(args["path"], "shared")
    predicted = run_module("overlay_mount", args, check=True)
    repaired = run_module("overlay_mount", args)
    assert predicted["diff"] == repaired["diff"] == {
        "before": {"mount_flags": ["noexec"], "propagation": "shared"},
        "after": {"mount_flags": ["nodev"], "propagation": "private"},
    }
    mount = mountinfo.mount_at(args["path"])
    assert "nodev" in mount.options and "noexec" not in mount.options and mount.propagation == "private"
    assert not run_module("overlay_mount", args)["changed"]


def test_other_layers_fail_unless_recreate(layers: Path):
    args = params(layers)
    run_module("overlay_mount", args)
    swapped = {**args, "lowerdirs": list(reversed(args["lowerdirs"]))}
    failed = run_module("overlay_mount", swapped, expect_failure=True)
    assert "already an overlay of other layers" in failed["msg"] and "recreate: true" in failed["msg"]
    result = four_runs("overlay_mount", {**swapped, "recreate": True})[1]
    assert result["lowerdirs"] == swapped["lowerdirs"]
    assert (Path(args["path"]) / "shared.txt").read_text() == "from myroot\n"


def _assert_nothing_left(layers: Path, *paths: str):
    overlays = [m for m in mountinfo.mounts_below(str(layers)) if m.fstype == "overlay"]
    assert not overlays, f"a failed run left a mount behind: {overlays}"
    for path in paths:
        assert not os.path.exists(path), f"a failed run left {path} behind"


def test_bad_input_fails_clearly_and_leaves_nothing(layers: Path):
    base = params(layers)
    cases = [
        ({"lowerdirs": [str(layers / "missing"), str(layers / "myroot")]}, "lowerdir", "does not exist"),
        ({"path": str(layers / "a:b")}, "a:b", "rename the directory"),
        ({"upperdir": str(layers / "up,per")}, "up,per", "','"),
        ({"upperdir": None, "workdir": None, "lowerdirs": [str(layers / "myroot")]}, "at least two lowerdirs",
         "upperdir"),
        ({"path": "relative/merged"}, "relative/merged", "absolute"),
        ({"options": ["lowerdir=/x"]}, "lowerdir=/x", "lowerdirs"),
        ({"options": ["no_such_option=1"]}, "kernel refused", "no_such_option"),
    ]
    for extra, names, fix in cases:
        failed = run_module("overlay_mount", {**base, **extra}, expect_failure=True)
        assert names in failed["msg"] and fix in failed["msg"], failed["msg"]
        _assert_nothing_left(layers, base["path"], base["upperdir"], base["workdir"])


def test_workdir_problems(layers: Path):
    base = params(layers)
    work = layers / "work"
    work.mkdir()
    (work / "stray").write_text("x")
    failed = run_module("overlay_mount", base, expect_failure=True)
    assert "workdir" in failed["msg"] and "not empty" in failed["msg"] and "stray" in failed["msg"]
    _assert_nothing_left(layers, base["path"], base["upperdir"])

    # Upper and work on different filesystems: a tmpfs of the test's own under the work path.
    (work / "stray").unlink()
    syscalls.mount("tmpfs", str(work), "tmpfs", 0, "size=1m")
    try:
        failed = run_module("overlay_mount", base, expect_failure=True)
        assert "different mounts" in failed["msg"] and str(work) in failed["msg"], failed["msg"]
        _assert_nothing_left(layers, base["path"], base["upperdir"])
    finally:
        syscalls.umount2(str(work))


def test_upper_on_overlay_and_path_on_other_mount(layers: Path):
    outer = params(layers)
    run_module("overlay_mount", outer)
    inner = params(layers, path=str(layers / "inner"), upperdir=f"{outer['path']}/up", workdir=f"{outer['path']}/wk")
    failed = run_module("overlay_mount", inner, expect_failure=True)
    assert "lies on an overlayfs mount" in failed["msg"]
    assert not (layers / "inner").exists() and not Path(outer["path"], "up").exists()

    tmpfs = layers / "tmpfs"
    tmpfs.mkdir()
    syscalls.mount("tmpfs", str(tmpfs), "tmpfs", 0, "size=1m")
    other = params(layers, path=str(tmpfs), upperdir=str(layers / "u2"), workdir=str(layers / "w2"))
    failed = run_module("overlay_mount", other, expect_failure=True)
    assert "already a mount of tmpfs" in failed["msg"] and "recreate" in failed["msg"]
    failed = run_module("overlay_mount", {"path": str(tmpfs), "state": "absent"}, expect_failure=True)
    assert "not an overlay" in failed["msg"]
    assert mountinfo.mount_at(str(tmpfs)).fstype == "tmpfs", "a mount the module did not make stays untouched"


def test_busy_mount_names_the_process(layers: Path):
    args = params(layers)
    run_module("overlay_mount", args)
    holder = subprocess.Popen(["sleep", "60"], cwd=args["path"])
    try:
        time.sleep(0.1)
        for check in (True, False):
            failed = run_module("overlay_mount", {"path": args["path"], "state": "absent"}, check=check,
                                expect_failure=True)
            assert f"{holder.pid} (sleep: cwd)" in failed["msg"] and "lazy_unmount" in failed["msg"]
            assert holder.pid in failed["pids"]
        assert mountinfo.mount_at(args["path"]) is not None
    finally:
        holder.kill()
        holder.wait()
    four_runs("overlay_mount", {"path": args["path"], "state": "absent"})


def test_through_ansible_playbook(layers: Path):
    """The real Ansible path (AnsiballZ, check mode, diff) in a playbook that asserts each step."""
    playbook = COLLECTION_ROOT / "tests" / "integration" / "playbooks" / "overlay_mount.yml"
    proc = run_playbook(playbook, "-e", f"base={layers}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    assert not mountinfo.mounts_below(str(layers))
