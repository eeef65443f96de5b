"""batch against the real kernel: a namespace wired to a bridge, a sysctl, files and an nftables table in
one task; four runs; drift; a failing step undoes the whole batch; bad options change nothing."""

from __future__ import annotations

import os
import subprocess

import pytest
from harness import four_runs, run_module
from netfixtures import link_exists, netns_exists, run_in


def nft_table_exists(family: str, table: str) -> bool:
    return subprocess.run(["nft", "list", "table", family, table], capture_output=True, check=False).returncode == 0


@pytest.fixture
def nft_table(unique_name):
    name = unique_name("nbt")
    yield name
    if nft_table_exists("ip", name):
        subprocess.run(["nft", "delete", "table", "ip", name], check=True)


def ruleset(table: str, port: int) -> str:
    return (f"table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n"
            f"  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n"
            f"    tcp dport {port} dnat to 10.250.9.11:80\n  }}\n}}\n")


def network_steps(bridge: str, netns: str, host_if: str, table: str, state_dir: str, port: int = 18080) -> list:
    return [
        {"module": "file", "label": "record",
         "args": {"path": f"{state_dir}/manifest/net.json", "content": f'{{"bridge": "{bridge}"}}\n',
                  "mode": "0600"}},
        {"module": "bridge", "args": {"name": bridge, "addresses": ["10.250.9.1/24"]}},
        {"module": "netns", "args": {"name": netns}},
        {"module": "veth", "args": {"name": host_if, "bridge": bridge,
                                    "peer": {"name": "eth0", "netns": netns, "addresses": ["10.250.9.11/24"],
                                             "routes": [{"dst": "default", "gateway": "10.250.9.1"}]}}},
        {"module": "nftables", "args": {"family": "ip", "table": table, "path": f"{state_dir}/nft/{table}.nft",
                                        "content": ruleset(table, port)}},
    ]


def test_network_and_files_in_one_task(made, nft_table, tmp_path):
    bridge, netns, host_if = made.new_link(), made.new_netns(), made.new_link()
    state_dir = str(tmp_path / "state")
    steps = network_steps(bridge, netns, host_if, nft_table, state_dir)
    results = four_runs("batch", {"steps": steps})
    first = results[1]
    assert [r["module"] for r in first["results"]] == ["file", "bridge", "netns", "veth", "nftables"]
    assert all(r["changed"] for r in first["results"])
    assert not any(r["changed"] for r in results[3]["results"])
    # The diff is one entry per step, headed by the step.
    assert [d["before_header"] for d in first["diff"]][:2] == ["step 1 (file record)", f"step 2 (bridge {bridge})"]
    assert first["results"][4]["reloaded"] is True

    # What the kernel and the filesystem have now.
    assert link_exists(None, bridge) and link_exists(None, host_if) and netns_exists(netns)
    assert run_in(netns, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout.count("10.250.9.11/24") == 1
    assert nft_table_exists("ip", nft_table)
    record = os.stat(f"{state_dir}/manifest/net.json")
    assert oct(record.st_mode & 0o7777) == "0o600"
    assert oct(os.stat(f"{state_dir}/manifest").st_mode & 0o7777) == "0o700"

    # Drift: the table flushed away (as after `nft flush ruleset`), the record edited, the link down.
    subprocess.run(["nft", "delete", "table", "ip", nft_table], check=True)
    with open(f"{state_dir}/manifest/net.json", "w", encoding="utf-8") as handle:
        handle.write("edited\n")
    subprocess.run(["ip", "link", "set", host_if, "down"], check=True)
    repaired = run_module("batch", {"steps": steps})
    assert [r["changed"] for r in repaired["results"]] == [True, False, False, True, True]
    assert nft_table_exists("ip", nft_table)
    with open(f"{state_dir}/manifest/net.json", encoding="utf-8") as handle:
        assert handle.read() == f'{{"bridge": "{bridge}"}}\n'

    # A changed port: only the table's step changes, and the file follows.
    moved = run_module("batch", {"steps": network_steps(bridge, netns, host_if, nft_table, state_dir, port=18081)})
    assert [r["changed"] for r in moved["results"]] == [False, False, False, False, True]
    listing = subprocess.run(["nft", "list", "table", "ip", nft_table], capture_output=True, text=True,
                             check=True).stdout
    assert "dport 18081" in listing and "dport 18080" not in listing

    down = [
        {"module": "nftables", "args": {"family": "ip", "table": nft_table, "path": f"{state_dir}/nft/{nft_table}.nft",
                                        "state": "absent"}},
        {"module": "veth", "args": {"name": host_if, "state": "absent"}},
        {"module": "netns", "args": {"name": netns, "state": "absent"}},
        {"module": "bridge", "args": {"name": bridge, "state": "absent"}},
        {"module": "file", "args": {"path": f"{state_dir}/manifest/net.json", "state": "absent"}},
    ]
    run_module("batch", {"steps": down}, check=True)
    assert nft_table_exists("ip", nft_table) and netns_exists(netns)
    removed = run_module("batch", {"steps": down})
    assert all(r["changed"] for r in removed["results"])
    assert not run_module("batch", {"steps": down})["changed"]
    assert not nft_table_exists("ip", nft_table) and not netns_exists(netns)
    assert not link_exists(None, bridge) and not link_exists(None, host_if)
    assert not os.path.exists(f"{state_dir}/manifest/net.json")
    assert not os.path.exists(f"{state_dir}/nft/{nft_table}.nft")


def test_a_failing_step_undoes_the_steps_before_it(made, tmp_path):
    bridge, netns, host_if = made.new_link(), made.new_netns(), made.new_link()
    missing = made.name("nbtmiss")  # never created: the veth's peer namespace
    steps = [
        {"module": "file", "args": {"path": str(tmp_path / "new" / "deeper" / "file.txt"), "content": "x\n"}},
        {"module": "bridge", "args": {"name": bridge}},
        {"module": "netns", "args": {"name": netns}},
        {"module": "veth", "args": {"name": host_if, "peer": {"name": "eth0", "netns": missing}}},
    ]
    failed = run_module("batch", {"steps": steps}, expect_failure=True)
    assert failed["step"] == 4
    assert failed["msg"].startswith(f"step 4 (veth {host_if}): ") and missing in failed["msg"]
    # Newest first: the namespace, the bridge, then the file and the directories made for it.
    undone = failed["rolled_back"]
    assert list(dict.fromkeys(u.split(":")[0] for u in undone)) == [
        f"step 3 (netns {netns})", f"step 2 (bridge {bridge})",
        f"step 1 (file {tmp_path / 'new' / 'deeper' / 'file.txt'})"]
    assert not netns_exists(netns) and not link_exists(None, bridge) and not link_exists(None, host_if)
    assert not (tmp_path / "new").exists()


def test_bad_options_of_any_step_change_nothing(made, tmp_path):
    netns = made.new_netns()
    steps = [
        {"module": "netns", "args": {"name": netns}},
        {"module": "file", "args": {"path": str(tmp_path / "f"), "content": "x"}},
        {"module": "cgroup2", "args": {"path": "nbt/x", "memory_maxx": "10M"}},
    ]
    failed = run_module("batch", {"steps": steps}, expect_failure=True)
    assert failed["step"] == 3
    assert "step 3 (cgroup2 nbt/x)" in failed["msg"] and "memory_maxx" in failed["msg"]
    assert not netns_exists(netns) and not (tmp_path / "f").exists()
    wrong_kind = run_module("batch", {"steps": [{"module": "ip_netns", "args": {}}]}, expect_failure=True)
    assert "ip_netns" in wrong_kind["msg"]


def test_files_directories_and_previous_content(tmp_path):
    path = str(tmp_path / "conf" / "app.conf")
    directory = str(tmp_path / "data")
    steps = [
        {"module": "file", "args": {"path": directory, "state": "directory", "mode": "0750"}},
        {"module": "file", "args": {"path": path, "content": "one\n", "mode": "0640", "directory_mode": "0755",
                                    "return_previous": True}},
    ]
    results = four_runs("batch", {"steps": steps})
    assert results[1]["results"][1]["previous_content"] is None
    assert results[3]["results"][1]["previous_content"] == "one\n"
    assert oct(os.stat(directory).st_mode & 0o7777) == "0o750"
    assert oct(os.stat(path).st_mode & 0o7777) == "0o640"
    assert oct(os.stat(os.path.dirname(path)).st_mode & 0o7777) == "0o755"
    steps[1]["args"]["content"] = "two\n"
    changed = run_module("batch", {"steps": steps})
    assert changed["results"][1]["changed_content"] and changed["results"][1]["previous_content"] == "one\n"
    os.chmod(path, 0o666)
    mode_only = run_module("batch", {"steps": steps})
    assert mode_only["changed"] and not mode_only["results"][1]["changed_content"]
    assert oct(os.stat(path).st_mode & 0o7777) == "0o640"
    # No stray temporary files beside it.
    assert os.listdir(os.path.dirname(path)) == ["app.conf"]
    not_a_file = run_module("batch", {"steps": [{"module": "file", "args": {"path": directory}}]},
                            expect_failure=True)
    assert "is not a regular file" in not_a_file["msg"] and directory in not_a_file["msg"]


def test_sysctl_of_an_own_bridge(made):
    bridge = made.new_link()
    run_module("bridge", {"name": bridge})
    steps = [{"module": "sysctl", "args": {"name": f"net/ipv4/conf/{bridge}/route_localnet", "value": "1"}}]
    results = four_runs("batch", {"steps": steps})
    assert results[1]["diff"][0]["before"] == {f"net/ipv4/conf/{bridge}/route_localnet": "0"}
    with open(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet", encoding="ascii") as handle:
        assert handle.read().strip() == "1"
    missing = run_module("batch", {"steps": [{"module": "sysctl", "args": {"name": "net.ipv4.nbt_nothing",
                                                                           "value": "1"}}]}, expect_failure=True)
    assert "/proc/sys/net/ipv4/nbt_nothing is missing" in missing["msg"]
    bad = run_module("batch", {"steps": [{"module": "sysctl", "args": {"name": "net/../../etc", "value": "1"}}]},
                     expect_failure=True)
    assert "is not a sysctl name" in bad["msg"]
    run_module("bridge", {"name": bridge, "state": "absent"})


def test_host_check_names_what_is_missing():
    ok = run_module("batch", {"steps": [{"module": "host_check", "args": {
        "filesystems": ["overlay", "proc"], "controllers": ["cpu", "memory", "pids"], "user_namespaces": True}}]})
    assert not ok["changed"]
    assert ok["results"][0]["cgroup_hierarchy"] in ("v1", "v2")
    no_fs = run_module("batch", {"steps": [{"module": "host_check", "args": {"filesystems": ["nbtfs"]}}]},
                       check=True)
    assert no_fs["changed"]  # check mode: modprobe would be tried
    failed = run_module("batch", {"steps": [{"module": "host_check", "args": {"filesystems": ["nbtfs"]}}]},
                        expect_failure=True)
    assert "nbtfs" in failed["msg"] and "modprobe" in failed["msg"]
    no_controller = run_module("batch", {"steps": [{"module": "host_check", "args": {"controllers": ["nbtctl"]}}]},
                               expect_failure=True)
    assert "nbtctl" in no_controller["msg"] and "cgroup_enable=nbtctl" in no_controller["msg"]


def test_nftables_refuses_a_bad_ruleset_before_writing(nft_table, tmp_path):
    path = str(tmp_path / "t.nft")
    bad = f"table ip {nft_table} {{\n  chain c {{\n    tcp dport 99999 accept\n  }}\n}}\n"
    for check in (True, False):
        failed = run_module("batch", {"steps": [{"module": "nftables", "args": {
            "family": "ip", "table": nft_table, "path": path, "content": bad}}]}, check=check, expect_failure=True)
        assert f"checking the ruleset of table ip {nft_table}" in failed["msg"]
    assert not os.path.exists(path) and not nft_table_exists("ip", nft_table)


def test_check_mode_predicts_what_earlier_steps_would_make(made, tmp_path):
    """On a fresh host the image's layers, the rootfs and the namespace do not exist yet when --check runs."""
    netns = made.new_netns()
    lower, base = str(tmp_path / "layers" / "a"), tmp_path / "c"
    steps = [
        {"module": "netns", "args": {"name": netns}},
        {"module": "overlay_mount", "args": {"path": str(base / "rootfs"), "lowerdirs": [lower],
                                             "upperdir": str(base / "upper"), "workdir": str(base / "work")}},
        {"module": "nsbox_container", "args": {"name": made.name("nbtc"), "rootfs": str(base / "rootfs"),
                                               "netns": netns, "command": ["/bin/true"]}},
    ]
    predicted = run_module("batch", {"steps": steps}, check=True)
    assert [r["changed"] for r in predicted["results"]] == [True, True, True]
    assert predicted["results"][2]["status"] == "running"
    warnings = " ".join(str(w) for w in predicted.get("warnings", []))
    assert f"lowerdir {lower} does not exist" in warnings and f"network namespace {netns} does not exist" in warnings
    assert not netns_exists(netns) and not base.exists()
    # A real run still refuses the missing layer, and undoes the namespace it made first.
    failed = run_module("batch", {"steps": steps}, expect_failure=True)
    assert failed["step"] == 2 and f"lowerdir {lower} does not exist" in failed["msg"]
    assert not netns_exists(netns) and not (base / "rootfs").exists()
