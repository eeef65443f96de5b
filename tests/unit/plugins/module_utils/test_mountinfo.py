"""The mountinfo parser against lines the kernel writes, and against this process's real table."""

from __future__ import annotations

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo

OVERLAY = ("412 27 0:62 / /var/lib/nsbox/c\\040one/rootfs rw,nosuid,relatime shared:180 master:3 - overlay overlay "
           "rw,lowerdir=/l/tools:/l/my\\040root,upperdir=/c/upper,workdir=/c/work,index=on,volatile")


def test_overlay_line_with_escapes_and_optional_fields():
    mount = mountinfo.parse_line(OVERLAY)
    assert mount.mount_point == "/var/lib/nsbox/c one/rootfs"
    assert mount.optional_fields == ["shared:180", "master:3"]
    assert mount.propagation == "shared"
    assert mount.options == ["rw", "nosuid", "relatime"]
    assert mount.super_option("index") == "on"
    assert ("volatile", None) in mount.super_options
    layers = mount.overlay_layers()
    assert layers.lowerdirs == ["/l/tools", "/l/my root"]
    assert (layers.upperdir, layers.workdir) == ("/c/upper", "/c/work")


def test_no_optional_fields_and_data_only_layers():
    line = "30 1 0:5 / /m ro - overlay none ro,lowerdir=/a:/b::/data1:/data2,redirect_dir=on"
    mount = mountinfo.parse_line(line)
    assert mount.optional_fields == [] and mount.propagation == "private" and mount.read_only
    layers = mount.overlay_layers()
    assert layers.lowerdirs == ["/a", "/b"] and layers.datadirs == ["/data1", "/data2"]
    assert layers.upperdir is None


def test_escaped_colon_and_lowerdir_plus():
    mount = mountinfo.parse_line("31 1 0:5 / /m rw master:2 - overlay none rw,lowerdir+=/x,lowerdir+=/z,datadir+=/d")
    assert mount.propagation == "slave"
    assert mount.overlay_layers().lowerdirs == ["/x", "/z"]
    assert mount.overlay_layers().datadirs == ["/d"]
    escaped = mountinfo.parse_line("32 1 0:5 / /m rw - overlay none rw,lowerdir=/x\\:y:/a\\134b")
    assert escaped.overlay_layers().lowerdirs == ["/x:y", "/a\\b"]


def test_stacked_mounts_and_lookups():
    table = mountinfo.parse("\n".join([
        "1 0 8:1 / / rw - ext4 /dev/vda rw",
        "2 1 0:2 / /srv rw - tmpfs tmpfs rw",
        "3 2 0:3 / /srv rw - overlay overlay rw,lowerdir=/a:/b",
        "4 3 0:4 / /srv/inner rw - tmpfs tmpfs rw",
    ]))
    assert [m.mount_id for m in mountinfo.mounts_at("/srv", table)] == [2, 3]
    assert mountinfo.mount_at("/srv", table).fstype == "overlay"
    assert mountinfo.mount_at("/nothing", table) is None
    assert [m.mount_id for m in mountinfo.mounts_below("/srv", table)] == [4]
    assert mountinfo.mount_containing("/srv/inner/x", table).mount_id == 4
    assert mountinfo.mount_containing("/srvx", table).mount_id == 1


@pytest.mark.parametrize("line", ["garbage", "1 2 3 - x", "1 0 8:1 / / rw - ext4"])
def test_malformed_lines_are_reported(line):
    with pytest.raises(ValueError, match="mountinfo line"):
        mountinfo.parse_line(line)


def test_reads_this_process_table():
    mounts = mountinfo.read()
    assert mountinfo.mount_containing("/proc/self", mounts).fstype == "proc"
    assert any(m.mount_point == "/" for m in mounts)
