# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument specs of the modules, importable without their dependencies (pyroute2): each module
builds its AnsibleModule from one, and nsbox.primitives.batch validates each of its steps against the
same spec, so a step takes exactly the options of the module of the same name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModuleSpec:
    argument_spec: dict[str, Any]
    required_if: list[Any] = field(default_factory=list)
    required_together: list[Any] = field(default_factory=list)
    mutually_exclusive: list[Any] = field(default_factory=list)

    def module_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of AnsibleModule (and of ArgumentSpecValidator)."""
        return {"argument_spec": self.argument_spec, "required_if": self.required_if,
                "required_together": self.required_together, "mutually_exclusive": self.mutually_exclusive}


OVERLAY_MOUNT = ModuleSpec(
    argument_spec=dict(
        path=dict(type="path", required=True),
        lowerdirs=dict(type="list", elements="path", default=[]),
        upperdir=dict(type="path"),
        workdir=dict(type="path"),
        options=dict(type="list", elements="str", default=[]),
        mount_flags=dict(type="list", elements="str", default=[], choices=["ro", "nosuid", "nodev", "noexec"]),
        propagation=dict(type="str", default="private", choices=["private", "shared", "unbindable"]),
        mode=dict(type="raw", default="0755"),
        state=dict(type="str", default="mounted", choices=["mounted", "unmounted", "absent"]),
        recreate=dict(type="bool", default=False),
        remove_upper=dict(type="bool", default=False),
        lazy_unmount=dict(type="bool", default=False),
    ),
    required_together=[("upperdir", "workdir")],
)

_IO_DEVICE = {"device": {"type": "str", "required": True}, "rbps": {"type": "raw"},
              "wbps": {"type": "raw"}, "riops": {"type": "raw"}, "wiops": {"type": "raw"}}

CGROUP2 = ModuleSpec(
    argument_spec={
        "path": {"type": "str", "required": True},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        "hierarchy": {"type": "str", "choices": ["auto", "v2", "v1"], "default": "auto"},
        "root": {"type": "path", "default": "/sys/fs/cgroup"},
        "cpus": {"type": "float"},
        "cpu_max": {"type": "str"},
        "cpu_period": {"type": "int"},
        "cpu_weight": {"type": "int"},
        "memory_max": {"type": "raw"},
        "memory_high": {"type": "raw"},
        "memory_swap_max": {"type": "raw"},
        "pids_max": {"type": "raw"},
        "cpuset_cpus": {"type": "str"},
        "cpuset_mems": {"type": "str"},
        "io_max": {"type": "list", "elements": "dict", "options": _IO_DEVICE},
        "settings": {"type": "dict", "default": {}},
        "controllers": {"type": "list", "elements": "str", "default": []},
        "kill": {"type": "bool", "default": False},
    },
    mutually_exclusive=[("cpus", "cpu_max")],
)

NETNS = ModuleSpec(
    argument_spec=dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        loopback=dict(type="bool", default=True),
        sysctls=dict(type="dict", default={}),
        kill=dict(type="bool", default=False),
    ),
)

_ROUTE = dict(
    type="list",
    elements="dict",
    options=dict(dst=dict(type="str", required=True), gateway=dict(type="str"), metric=dict(type="int")),
)

VETH = ModuleSpec(
    argument_spec=dict(
        name=dict(type="str", required=True),
        netns=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        link_state=dict(type="str", default="up", choices=["up", "down"]),
        mtu=dict(type="int"),
        mac=dict(type="str"),
        addresses=dict(type="list", elements="str"),
        routes=_ROUTE,
        bridge=dict(type="str"),
        peer=dict(
            type="dict",
            options=dict(
                name=dict(type="str", required=True),
                netns=dict(type="str"),
                link_state=dict(type="str", default="up", choices=["up", "down"]),
                mtu=dict(type="int"),
                mac=dict(type="str"),
                addresses=dict(type="list", elements="str"),
                routes=_ROUTE,
            ),
        ),
    ),
    required_if=[("state", "present", ["peer"])],
)

BRIDGE = ModuleSpec(
    argument_spec=dict(
        name=dict(type="str", required=True),
        netns=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        addresses=dict(type="list", elements="str"),
        mtu=dict(type="int"),
        link_state=dict(type="str", default="up", choices=["up", "down"]),
    ),
)

_CONTAINER_MOUNT = dict(
    type=dict(type="str", default="bind", choices=["bind", "tmpfs"]),
    source=dict(type="path"),
    destination=dict(type="str", required=True),
    options=dict(type="list", elements="str", default=[], choices=["ro", "nosuid", "nodev", "noexec"]),
    size=dict(type="str"),
)

NSBOX_CONTAINER = ModuleSpec(
    argument_spec=dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="started", choices=["started", "stopped", "restarted", "absent"]),
        rootfs=dict(type="path"),
        image_config=dict(type="dict"),
        command=dict(type="raw", aliases=["args"]),
        entrypoint=dict(type="raw"),
        env=dict(type="dict"),
        workdir=dict(type="str"),
        user=dict(type="str"),
        group=dict(type="str"),
        groups=dict(type="list", elements="str"),
        hostname=dict(type="str"),
        netns=dict(type="str", default="private"),
        cgroup=dict(type="str"),
        cgroup_root=dict(type="path"),
        mounts=dict(type="list", elements="dict", default=[], options=_CONTAINER_MOUNT),
        readonly_rootfs=dict(type="bool", default=False),
        capabilities=dict(type="list", elements="str"),
        cap_add=dict(type="list", elements="str", default=[]),
        cap_drop=dict(type="list", elements="str", default=[]),
        no_new_privileges=dict(type="bool", default=True),
        seccomp=dict(type="str", default="default", choices=["default", "unconfined"]),
        rlimits=dict(type="dict"),
        sysctls=dict(type="dict"),
        user_namespace=dict(type="dict"),
        stop_signal=dict(type="str"),
        stop_timeout=dict(type="float"),
        restart_policy=dict(type="str", default="no"),
        log_path=dict(type="path"),
        signal=dict(type="str"),
    ),
)

ROOTFS_EXPORT = ModuleSpec(
    argument_spec=dict(
        source=dict(type="str", default="registry",
                    choices=["registry", "oci-layout", "oci-archive", "docker-archive", "rootfs-tar"]),
        image=dict(type="str"),
        path=dict(type="path"),
        username=dict(type="str"),
        password=dict(type="str", no_log=True),
        ca_file=dict(type="path"),
        validate_certs=dict(type="bool", default=True),
        platform=dict(type="str"),
        store=dict(type="path", default="/var/lib/nsbox"),
        dest=dict(type="path"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        allow_devices=dict(type="bool", default=False),
        parallel=dict(type="int", default=4),
        timeout=dict(type="int", default=60),
    ),
    required_if=[("source", "registry", ["image"]), ("source", "oci-layout", ["path"]),
                 ("source", "oci-archive", ["path"]), ("source", "docker-archive", ["path"]),
                 ("source", "rootfs-tar", ["path"])],
    required_together=[("username", "password")],
)

# Steps that only nsbox.primitives.batch offers: what the roles would otherwise need a task (and a
# Python process on the target) each for.
FILE = ModuleSpec(
    argument_spec=dict(
        path=dict(type="path", required=True),
        state=dict(type="str", default="present", choices=["present", "absent", "directory"]),
        content=dict(type="str", default=""),
        mode=dict(type="raw", default="0644"),
        owner=dict(type="int", default=0),
        group=dict(type="int", default=0),
        directory_mode=dict(type="raw", default="0700"),
        return_previous=dict(type="bool", default=False),
    ),
)

SYSCTL = ModuleSpec(
    argument_spec=dict(
        name=dict(type="str", required=True),
        value=dict(type="raw", required=True),
    ),
)

NFTABLES = ModuleSpec(
    argument_spec=dict(
        family=dict(type="str", default="inet"),
        table=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        path=dict(type="path"),
        content=dict(type="str"),
    ),
    required_if=[("state", "present", ["path", "content"])],
)

HOST_CHECK = ModuleSpec(
    argument_spec=dict(
        filesystems=dict(type="list", elements="str", default=[]),
        controllers=dict(type="list", elements="str", default=[]),
        cgroup_root=dict(type="path", default="/sys/fs/cgroup"),
        user_namespaces=dict(type="bool", default=False),
    ),
)
