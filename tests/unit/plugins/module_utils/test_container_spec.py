"""Normalizing nsbox_container options: argv rules, capabilities, rlimits, sysctls, users, hashing."""

from __future__ import annotations

import resource

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import capabilities, container_spec, passwd
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError


def params(tmp_path, **extra):
    return {"name": "web", "state": "started", "rootfs": str(tmp_path), "command": ["true"], **extra}


def test_argv_follows_docker_rules():
    image = {"entrypoint": ["/docker-entrypoint.sh"], "cmd": ["nginx", "-g", "daemon off;"]}
    assert container_spec.resolve_argv({}, image) == ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
    assert container_spec.resolve_argv({"command": "nginx -T"}, image) == ["/docker-entrypoint.sh", "nginx", "-T"]
    assert container_spec.resolve_argv({"entrypoint": ["/bin/sh"]}, image) == ["/bin/sh"]
    with pytest.raises(NsboxError, match="nothing to run"):
        container_spec.resolve_argv({}, {})


def test_capabilities_resolution():
    assert capabilities.resolve(None, [], []) == sorted(capabilities.DOCKER_DEFAULT, key=capabilities.CAPABILITIES.get)
    assert capabilities.resolve(None, ["cap_net_admin"], ["NET_RAW"]) == sorted(
        set(capabilities.DOCKER_DEFAULT) - {"NET_RAW"} | {"NET_ADMIN"}, key=capabilities.CAPABILITIES.get)
    assert capabilities.resolve(None, ["CHOWN"], ["ALL"]) == ["CHOWN"]
    with pytest.raises(NsboxError, match="unknown capability"):
        capabilities.resolve(["BOGUS"], [], [])


def test_build_defaults_and_hash_stability(tmp_path):
    spec = container_spec.build(params(tmp_path))
    assert spec["hostname"] == "web" and spec["netns"] == "private" and spec["seccomp"] == "default"
    assert spec["no_new_privileges"] and spec["restart_policy"] == {"name": "no", "max_retries": 0}
    assert spec["log_path"] == "/var/log/nsbox/web.log" and spec["stop_timeout"] == 10.0
    same = container_spec.build(params(tmp_path, signal="HUP"))
    assert container_spec.spec_hash(spec) == container_spec.spec_hash(same)
    other = container_spec.build(params(tmp_path, env={"A": "1"}))
    assert container_spec.spec_hash(spec) != container_spec.spec_hash(other)


def test_rlimits_sysctls_restart_policy(tmp_path):
    spec = container_spec.build(params(tmp_path, rlimits={"NOFILE": "512:1024", "core": "unlimited"},
                                       sysctls={"net.ipv4.ip_forward": 1, "kernel.shmmax": 1024},
                                       restart_policy="on-failure:3"))
    assert spec["rlimits"] == {"core": [resource.RLIM_INFINITY] * 2, "nofile": [512, 1024]}
    assert spec["sysctls"] == {"kernel.shmmax": "1024", "net.ipv4.ip_forward": "1"}
    assert spec["restart_policy"] == {"name": "on-failure", "max_retries": 3}
    with pytest.raises(NsboxError, match="soft limit"):
        container_spec.build(params(tmp_path, rlimits={"nofile": "2048:1024"}))
    with pytest.raises(NsboxError, match="not namespaced"):
        container_spec.build(params(tmp_path, sysctls={"kernel.panic": 1}))
    with pytest.raises(NsboxError, match="netns=host"):
        container_spec.build(params(tmp_path, netns="host", sysctls={"net.core.somaxconn": 1}))
    with pytest.raises(NsboxError, match="restart_policy"):
        container_spec.build(params(tmp_path, restart_policy="sometimes"))


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(NsboxError, match="container name"):
        container_spec.build(params(tmp_path, name="../etc"))
    with pytest.raises(NsboxError, match="does not exist"):
        container_spec.build(params(tmp_path, netns="nbt-missing-netns"))
    with pytest.raises(NsboxError, match="absolute"):
        container_spec.build(params(tmp_path, mounts=[{"type": "tmpfs", "destination": "rel"}]))
    with pytest.raises(NsboxError, match="host_uid"):
        container_spec.build(params(tmp_path, user_namespace={"host_uid": 0}))


PASSWD = "root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nadm:x:4:nginx\nnginx:x:101:\n"


def test_users_resolved_in_the_container_files():
    who = passwd.resolve("nginx", None, [], PASSWD, GROUP)
    assert (who.uid, who.gid, who.groups, who.home) == (101, 101, [4, 101], "/nonexistent")
    assert passwd.resolve("1234", None, [], PASSWD, GROUP).gid == 0
    assert passwd.resolve("root", "nginx", ["adm"], PASSWD, GROUP).groups == [4, 101]
    with pytest.raises(passwd.UserError, match="/etc/passwd"):
        passwd.resolve("www", None, [], PASSWD, GROUP)
    with pytest.raises(passwd.UserError, match="/etc/group"):
        passwd.resolve("root", "wheel", [], PASSWD, GROUP)
