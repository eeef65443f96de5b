# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nsbox_container options turned into one normalized, hashable spec: what runs, how it is
isolated, how it is supervised. Two runs with the same options give the same spec hash."""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shlex
import signal
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import capabilities
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

STATE_ROOT = "/run/nsbox/containers"
LOG_ROOT = "/var/log/nsbox"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Keys that change what runs: a change recreates the container. (state, signal and the like do not.)
SPEC_KEYS = ("rootfs", "argv", "env", "workdir", "user", "group", "groups", "hostname", "netns", "cgroup",
             "cgroup_root", "mounts", "readonly_rootfs", "capabilities", "no_new_privileges", "seccomp",
             "rlimits", "sysctls", "user_namespace", "stop_signal", "stop_timeout", "restart_policy",
             "log_path")

# Sysctls that belong to a namespace the container owns (the rest are host-wide).
_IPC_SYSCTLS = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"}
RLIMITS = {name[len("RLIMIT_"):].lower(): getattr(resource, name) for name in dir(resource)
           if name.startswith("RLIMIT_")}


def _command(value: Any, option: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [str(v) for v in value]
    raise NsboxError(f"{option} must be a list of strings or a command line, not {type(value).__name__}")


def resolve_argv(params: dict[str, Any], image: dict[str, Any]) -> list[str]:
    """Docker's rule: entrypoint + cmd; an explicit entrypoint drops the image's cmd."""
    entrypoint = _command(params.get("entrypoint"), "entrypoint")
    command = _command(params.get("command"), "command")
    if entrypoint is None:
        entrypoint = list(image.get("entrypoint") or [])
        if command is None:
            command = list(image.get("cmd") or [])
    argv = entrypoint + (command or [])
    if not argv:
        raise NsboxError("nothing to run: give command (or entrypoint), or an image_config with a cmd or "
                         "entrypoint")
    return argv


def parse_signal(value: Any, option: str) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        number = int(value)
        if 1 <= number < signal.NSIG:
            return number
    else:
        name = str(value).upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if hasattr(signal.Signals, name):
            return int(signal.Signals[name])
    raise NsboxError(f"{option}={value!r} is not a signal: give a name such as SIGTERM or HUP, or a number")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def parse_restart_policy(value: str) -> dict[str, Any]:
    name, _sep, count = str(value).partition(":")
    if name not in ("no", "always", "on-failure", "unless-stopped") or (count and name != "on-failure"):
        raise NsboxError(f"restart_policy={value!r}: choose no, always, unless-stopped or on-failure[:N]")
    if count and not count.isdigit():
        raise NsboxError(f"restart_policy={value!r}: the retry count after on-failure: must be a number")
    return {"name": "always" if name == "unless-stopped" else name, "max_retries": int(count) if count else 0}


def _rlimit(name: str, value: Any) -> list[int]:
    key = name.lower().removeprefix("rlimit_")
    if key not in RLIMITS:
        raise NsboxError(f"rlimits: unknown limit {name!r}; known: {', '.join(sorted(RLIMITS))}")

    def number(v: Any) -> int:
        if str(v).lower() in ("unlimited", "infinity", "-1"):
            return resource.RLIM_INFINITY
        try:
            return int(v)
        except (TypeError, ValueError):
            raise NsboxError(f"rlimits.{name}: {v!r} is not a number or 'unlimited'") from None

    if isinstance(value, dict):
        soft, hard = number(value.get("soft", value.get("hard"))), number(value.get("hard", value.get("soft")))
    elif isinstance(value, str) and ":" in value:
        soft, hard = (number(v) for v in value.split(":", 1))
    else:
        soft = hard = number(value)
    infinite = resource.RLIM_INFINITY
    if hard != infinite and (soft == infinite or soft > hard):
        raise NsboxError(f"rlimits.{name}: the soft limit {soft} is above the hard limit {hard}")
    return [soft, hard]


def _sysctls(values: dict[str, Any], netns: str) -> dict[str, str]:
    result = {}
    for key, value in sorted(values.items()):
        dotted = key.replace("/", ".")
        if dotted.startswith("net."):
            if netns == "host":
                raise NsboxError(f"sysctl {key}: net.* sysctls need the container's own network namespace; "
                                 "with netns=host they would change the host", sysctl=key)
        elif not (dotted in _IPC_SYSCTLS or dotted.startswith("fs.mqueue.")):
            raise NsboxError(f"sysctl {key} is not namespaced: setting it inside the container would change the "
                             "host. Only kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.* and net.* are allowed",
                             sysctl=key)
        result[dotted] = str(value).lower() if isinstance(value, bool) else str(value)
    return result


def _mounts(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    seen = set()
    for entry in entries:
        kind = entry.get("type") or "bind"
        destination = os.path.normpath(str(entry.get("destination") or ""))
        if not destination.startswith("/") or ".." in destination.split("/"):
            raise NsboxError(f"mount destination {entry.get('destination')!r} must be an absolute path "
                             "without '..'", mount=entry)
        if destination in seen:
            raise NsboxError(f"two mounts share the destination {destination}", mount=entry)
        seen.add(destination)
        options = sorted(set(entry.get("options") or []))
        source = entry.get("source")
        if kind == "bind":
            if not source or not os.path.isabs(source):
                raise NsboxError(f"bind mount on {destination} needs an absolute source path on the host",
                                 mount=entry)
            if not os.path.exists(source):
                raise NsboxError(f"bind mount source {source} does not exist on the host", path=source)
            source = os.path.normpath(source)
        else:
            source = None
        result.append({"type": kind, "source": source, "destination": destination, "options": options,
                       "size": entry.get("size")})
    return result


def _user_namespace(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if not value or not value.get("enabled", True):
        return None
    host_uid = int(value.get("host_uid", 100000))
    host_gid = int(value.get("host_gid", host_uid))
    size = int(value.get("size", 65536))
    if host_uid <= 0 or host_gid <= 0 or not 1 <= size <= 2**32 - 1 - max(host_uid, host_gid):
        raise NsboxError("user_namespace: host_uid and host_gid must be above 0 (container root must not be "
                         "host root) and size at least 1", user_namespace=value)
    return {"host_uid": host_uid, "host_gid": host_gid, "size": size,
            "idmap_rootfs": bool(value.get("idmap_rootfs", True))}


def netns_missing(netns: str) -> bool:
    """A named network namespace (not host or private) that /run/netns does not have."""
    return netns not in ("host", "private") and ("/" in netns or not os.path.exists(f"/run/netns/{netns}"))


def build(params: dict[str, Any]) -> dict[str, Any]:
    """The normalized spec of a container from the module's parameters."""
    name = params["name"]
    if not NAME_PATTERN.match(name):
        raise NsboxError(f"container name {name!r}: use letters, digits, '_', '.', '-' (at most 128, not "
                         "starting with a punctuation mark)")
    image = params.get("image_config") or {}
    rootfs = params.get("rootfs")
    if not rootfs:
        raise NsboxError(f"container {name}: state={params['state']} needs rootfs (the container's root directory)")
    rootfs = os.path.realpath(rootfs)
    if not os.path.isdir(rootfs):
        raise NsboxError(f"rootfs {rootfs} of container {name} is not a directory", path=rootfs)
    env = {"PATH": DEFAULT_PATH}
    for item in image.get("env") or []:
        key, _sep, value = str(item).partition("=")
        env[key] = value
    env.update({str(k): str(v) for k, v in (params.get("env") or {}).items()})
    hostname = params.get("hostname") or name[:63]
    env.setdefault("HOSTNAME", hostname)
    netns = params.get("netns") or "private"
    if netns_missing(netns):
        raise NsboxError(f"network namespace {netns!r} does not exist (/run/netns/{netns}); create it with "
                         "nsbox.primitives.netns, or use netns=private or host", netns=netns)
    user = params.get("user") or image.get("user") or "0"
    group = params.get("group")
    if ":" in str(user) and group is None:
        user, group = str(user).split(":", 1)
    caps = capabilities.resolve(params.get("capabilities"), params.get("cap_add") or [], params.get("cap_drop") or [])
    stop_signal = parse_signal(params.get("stop_signal") or image.get("stop_signal") or "SIGTERM", "stop_signal")
    log_path = params.get("log_path") or os.path.join(LOG_ROOT, f"{name}.log")
    spec = {
        "name": name,
        "rootfs": rootfs,
        "argv": resolve_argv(params, image),
        "env": [f"{k}={v}" for k, v in env.items()],
        "workdir": params.get("workdir") or image.get("working_dir") or "/",
        "user": str(user),
        "group": None if group is None else str(group),
        "groups": [str(g) for g in params.get("groups") or []],
        "hostname": hostname,
        "netns": netns,
        "cgroup": params.get("cgroup"),
        "cgroup_root": params.get("cgroup_root"),
        "mounts": _mounts(params.get("mounts") or []),
        "readonly_rootfs": bool(params.get("readonly_rootfs")),
        "capabilities": caps,
        "no_new_privileges": bool(params.get("no_new_privileges", True)),
        "seccomp": params.get("seccomp") or "default",
        "rlimits": {k.lower().removeprefix("rlimit_"): _rlimit(k, v)
                    for k, v in sorted((params.get("rlimits") or {}).items())},
        "sysctls": _sysctls(params.get("sysctls") or {}, netns),
        "user_namespace": _user_namespace(params.get("user_namespace")),
        "stop_signal": stop_signal,
        "stop_timeout": float(10 if params.get("stop_timeout") is None else params["stop_timeout"]),
        "restart_policy": parse_restart_policy(params.get("restart_policy") or "no"),
        "log_path": os.path.abspath(log_path),
    }
    if not spec["workdir"].startswith("/"):
        raise NsboxError(f"workdir {spec['workdir']!r} must be an absolute path inside the container")
    if spec["stop_timeout"] < 0:
        raise NsboxError("stop_timeout must not be negative")
    return spec


def spec_hash(spec: dict[str, Any]) -> str:
    relevant = {key: spec.get(key) for key in SPEC_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def state_dir(name: str) -> str:
    return os.path.join(STATE_ROOT, name)
