#!/usr/bin/python
# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nsbox_container
short_description: Run a supervised container from a root filesystem, isolated as runc isolates it
version_added: 0.1.0
description:
  - Starts, stops, restarts and removes a container made from kernel primitives alone (new mount, pid,
    uts, ipc and cgroup namespaces (network as O(netns) says), the cgroup joined before the payload starts,
    the root made C(rprivate), C(pivot_root) into O(rootfs) with the old root detached, C(/proc),
    a C(/dev) tmpfs with exactly C(null), C(zero), C(full), C(random), C(urandom), C(tty), a new devpts
    instance, C(shm) and C(mqueue), read-only C(/sys) and C(/sys/fs/cgroup), Docker's masked and read-only
    paths, Docker's default capabilities, C(no_new_privs) and a default seccomp profile).
  - Every path inside the rootfs is resolved with C(openat2(RESOLVE_IN_ROOT)), so a symlink in the image never
    redirects a mount onto the host; a rootfs whose C(/proc), C(/sys) or C(/dev) is a symlink is refused.
  - A small supervisor process per container, outside it, outlives the Ansible task, waits for the container's
    PID 1, records its exit and applies O(restart_policy). State is kept in
    C(/run/nsbox/containers/NAME/state.json); stdout and stderr of the payload go to O(log_path).
  - A running container with the same spec is left alone; a changed spec recreates it (the diff names the
    changed keys); a container that died is started again and reported. Errors before the payload runs
    (executable not found in the rootfs, unknown user, a refused mount) are the module's error.
author:
  - nsbox.primitives contributors (@nsbox)
options:
  name:
    description: Name of the container (letters, digits, C(_), C(.), C(-); at most 128).
    type: str
    required: true
  state:
    description:
      - V(started) runs the container (starting or recreating it as needed).
      - V(stopped) stops it (O(stop_signal), then SIGKILL after O(stop_timeout)) and keeps its state; for a
        container that does not exist yet it records the spec with status C(created).
      - V(restarted) stops it when running and starts it again; always a change.
      - V(absent) stops it and removes its state (and the log file when it is at the default place).
    type: str
    choices: [started, stopped, restarted, absent]
    default: started
  rootfs:
    description:
      - The container's root directory, for example the merged directory of M(nsbox.primitives.overlay_mount).
        Required for V(started), V(restarted) and V(stopped) of a new container.
    type: path
  image_config:
    description:
      - The C(config) returned by M(nsbox.primitives.rootfs_export) (C(entrypoint), C(cmd), C(env),
        C(working_dir), C(user), C(stop_signal)), used for what the options here leave out.
    type: dict
  command:
    description:
      - The command (Docker's CMD), a list or a command line split like a shell would. Replaces the image's cmd.
    type: raw
    aliases: [args]
  entrypoint:
    description:
      - The entrypoint (list or command line); O(command) is appended to it. An explicit entrypoint drops the
        image's cmd, as in Docker.
    type: raw
  env:
    description: Environment variables, over the image's. C(PATH), C(HOSTNAME) and C(HOME) get defaults.
    type: dict
  workdir:
    description: Working directory inside the container (created when missing). Default the image's, or C(/).
    type: str
  user:
    description:
      - User of the payload, a name or uid, resolved in the container's own C(/etc/passwd); C(user:group) allowed.
      - Default the image's user, or root. A non-root user gets no capabilities (as in Docker).
    type: str
  group:
    description: Primary group, a name or gid resolved in the container's C(/etc/group).
    type: str
  groups:
    description: Supplementary groups (names or gids) in addition to the user's groups in C(/etc/group).
    type: list
    elements: str
  hostname:
    description: Hostname in the container's UTS namespace. Default the container's name (first 63 bytes).
    type: str
  netns:
    description:
      - V(private) (a new network namespace with only loopback, up), V(host) (the host's network), or the name
        of a namespace made by M(nsbox.primitives.netns) (C(/run/netns/NAME)).
    type: str
    default: private
  cgroup:
    description:
      - Path of an existing cgroup made by M(nsbox.primitives.cgroup2) (same vocabulary, relative to the cgroup
        root). The container's first process joins it before anything else, so the payload never runs outside.
      - Without it the container stays in the cgroup of its supervisor, the one the Ansible task ran in.
    type: str
  cgroup_root:
    description: Where the cgroup hierarchies are mounted (as the cgroup2 module's O(cgroup_root)).
    type: path
  mounts:
    description: Bind mounts and tmpfs mounts, made after the standard ones.
    type: list
    elements: dict
    default: []
    suboptions:
      type:
        description: Kind of mount.
        type: str
        choices: [bind, tmpfs]
        default: bind
      source:
        description: For V(bind), the host path (a directory or file; bound recursively).
        type: path
      destination:
        description: Absolute path inside the container (created when missing, resolved inside the rootfs).
        type: str
        required: true
      options:
        description: Mount flags.
        type: list
        elements: str
        choices: [ro, nosuid, nodev, noexec]
        default: []
      size:
        description: For V(tmpfs), its size (C(64m), C(10%)...).
        type: str
  readonly_rootfs:
    description: Make the container's root mount read-only.
    type: bool
    default: false
  capabilities:
    description:
      - The capability set (names with or without C(CAP_), or C(ALL)). Default Docker's 14 (CHOWN, DAC_OVERRIDE,
        FSETID, FOWNER, MKNOD, NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL,
        AUDIT_WRITE).
      - The others are dropped from the bounding, permitted, effective, inheritable and ambient sets; the kept ones
        are in the bounding set and, for root, permitted and effective. Inheritable and ambient stay empty.
    type: list
    elements: str
  cap_add:
    description: Capabilities added to O(capabilities).
    type: list
    elements: str
    default: []
  cap_drop:
    description: Capabilities removed (C(ALL) removes all, then O(cap_add) applies).
    type: list
    elements: str
    default: []
  no_new_privileges:
    description: Set C(no_new_privs), so setuid binaries and file capabilities grant nothing.
    type: bool
    default: true
  seccomp:
    description:
      - V(default) loads a profile that denies what Docker's default profile denies (mount, umount2, unshare,
        setns, clone with namespace flags, keyctl, bpf, kexec_load, init_module, ptrace of other processes,
        ...), giving back the calls of capabilities the container holds. V(unconfined) loads none.
    type: str
    choices: [default, unconfined]
    default: default
  rlimits:
    description:
      - Resource limits by name (C(nofile), C(nproc), C(core), ...), each a number for soft and hard, C(soft:hard),
        a dict with C(soft) and C(hard), or C(unlimited).
    type: dict
  sysctls:
    description:
      - Namespaced sysctls set inside the container (C(net.*) with its own network namespace, C(kernel.shm*),
        C(kernel.msg*), C(kernel.sem), C(fs.mqueue.*)). Others are refused because they would change the host.
    type: dict
  user_namespace:
    description:
      - A user namespace mapping container ids 0..size-1 to host ids from C(host_uid)/C(host_gid), so that
        container root is an unprivileged user on the host. Keys C(host_uid) (default 100000), C(host_gid)
        (default host_uid), C(size) (default 65536), C(idmap_rootfs) (default true, the rootfs is then seen through an
        idmapped mount, so its files owned by host root appear owned by container root with no chown).
    type: dict
  stop_signal:
    description: Signal that asks the payload to stop. Default the image's, or SIGTERM.
    type: str
  stop_timeout:
    description:
      - Seconds between the stop signal and SIGKILL (default 10). Given with V(stopped), V(restarted) or V(absent),
        it overrides the recorded container's value for this stop.
    type: float
  restart_policy:
    description:
      - V(no), V(always), V(unless-stopped) (as always; a stop by this module is never undone), or
        V(on-failure) optionally with a retry limit (C(on-failure:3)). Restarts back off from 0.1 s to 10 s.
    type: str
    default: 'no'
  log_path:
    description: File that receives the payload's stdout and stderr (appended). Default C(/var/log/nsbox/NAME.log).
    type: path
  signal:
    description:
      - With V(started), a signal sent to the running container's PID 1 (for example C(HUP) to reload nginx);
        a change whenever sent. Not sent when the container is (re)started by this run.
    type: str
extends_documentation_fragment:
  - nsbox.primitives.attributes
notes:
  - Requires root, Linux 5.12 or newer (openat2, mount_setattr, pidfd) and x86_64 or aarch64 for the default
    seccomp profile.
seealso:
  - module: nsbox.primitives.overlay_mount
  - module: nsbox.primitives.cgroup2
"""

EXAMPLES = r"""
- name: nginx from an exported image, in its own cgroup and network namespace
  nsbox.primitives.nsbox_container:
    name: web
    rootfs: /var/lib/nsbox/containers/web/rootfs
    image_config: "{{ image.config }}"
    netns: web
    cgroup: nsbox/web
    restart_policy: always
    stop_timeout: 5

- name: A one-off shell command as nobody, read-only root, no network
  nsbox.primitives.nsbox_container:
    name: probe
    rootfs: /srv/busybox
    command: [/bin/sh, -c, "id; sleep 3600"]
    user: nobody
    readonly_rootfs: true
    mounts:
      - {type: tmpfs, destination: /tmp, size: 16m, options: [nosuid, nodev]}

- name: Reload nginx's configuration
  nsbox.primitives.nsbox_container:
    name: web
    rootfs: /var/lib/nsbox/containers/web/rootfs
    image_config: "{{ image.config }}"
    netns: web
    cgroup: nsbox/web
    restart_policy: always
    stop_timeout: 5
    signal: HUP

- name: Remove it
  nsbox.primitives.nsbox_container:
    name: web
    state: absent
"""

RETURN = r"""
name:
  description: The container's name.
  type: str
  returned: always
status:
  description: C(running), C(restarting), C(stopped), C(exited), C(created), C(dead) or C(absent) after the run.
  type: str
  returned: always
pid:
  description: Host pid of the container's PID 1, null when not running (or in check mode for a new start).
  type: int
  returned: always
log_path:
  description: The file with the payload's stdout and stderr.
  type: str
  returned: always
state:
  description:
    - The recorded state (without the spec) checked against the kernel; keys include C(status), C(pid),
      C(supervisor_pid), C(started_at), C(finished_at), C(exit_code), C(restart_count), C(spec_hash), C(error).
  type: dict
  returned: always
spec:
  description: The normalized spec of the container (resolved argv, env, capabilities, mounts ...).
  type: dict
  returned: always
changed_keys:
  description: The spec keys that differed from the recorded container, which was therefore recreated.
  type: list
  elements: str
  returned: when the spec changed
recreated:
  description: Whether a running container was stopped to be started with a new spec.
  type: bool
  returned: when the spec of a running container changed
was:
  description: The status, exit code and time of a container found dead or exited before it was started again.
  type: dict
  returned: when a container that had ended was started again
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nsbox.primitives.plugins.module_utils.argspecs import NSBOX_CONTAINER
from ansible_collections.nsbox.primitives.plugins.module_utils.container import ContainerManager


def main() -> None:
    module = AnsibleModule(**NSBOX_CONTAINER.module_kwargs(), supports_check_mode=True)
    ContainerManager(module).execute()


if __name__ == "__main__":
    main()
