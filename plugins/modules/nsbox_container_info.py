#!/usr/bin/python
# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nsbox_container_info
short_description: List the containers of nsbox_container on a host, with status, pids and exit codes
version_added: 0.1.0
description:
  - Reads the state of each container M(nsbox.primitives.nsbox_container) recorded under
    C(/run/nsbox/containers) and checks it against the kernel, so a container whose processes are gone
    is reported C(dead) rather than C(running).
  - Changes nothing.
author:
  - nsbox.primitives contributors (@nsbox)
options:
  name:
    description: Only this container (an empty list when it does not exist).
    type: str
extends_documentation_fragment:
  - nsbox.primitives.attributes
attributes:
  check_mode:
    support: full
    details: Reads only.
  diff_mode:
    support: none
    details: Reads only.
"""

EXAMPLES = r"""
- name: What runs here
  nsbox.primitives.nsbox_container_info:
  register: containers

- name: Remove every container this play made
  nsbox.primitives.nsbox_container:
    name: "{{ item.name }}"
    state: absent
  loop: "{{ containers.containers | selectattr('name', 'match', 'web-') }}"
"""

RETURN = r"""
containers:
  description: One entry per container, sorted by name.
  type: list
  elements: dict
  returned: always
  contains:
    name:
      description: The container's name.
      type: str
    status:
      description: C(running), C(restarting), C(stopping), C(stopped), C(exited), C(created), C(failed), C(dead)
        (recorded running, processes gone) or C(running-unsupervised) (PID 1 alive, supervisor gone).
      type: str
    pid:
      description: Host pid of PID 1 when running.
      type: int
    supervisor_pid:
      description: Host pid of the supervisor.
      type: int
    exit_code:
      description: Exit code of the last run (128 + signal for a signal), null if it never ended.
      type: int
    restart_count:
      description: Restarts done by the restart policy.
      type: int
    started_at:
      description: When PID 1 last started (UTC, ISO 8601).
      type: str
    finished_at:
      description: When PID 1 last ended.
      type: str
    cgroup:
      description: The cgroup the container runs in, or null.
      type: str
    netns:
      description: C(private), C(host) or the name of the network namespace.
      type: str
    rootfs:
      description: The root directory.
      type: str
    log_path:
      description: The file with stdout and stderr.
      type: str
    spec_hash:
      description: Digest of the spec the container was started with.
      type: str
    spec:
      description: The full normalized spec.
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nsbox.primitives.plugins.module_utils import container_state


def describe(name: str) -> dict | None:
    recorded = container_state.read(name)
    if recorded is None:
        return None
    state = container_state.observed(recorded)
    spec = state.get("spec") or {}
    return {
        "name": name, "status": state.get("status"), "pid": state.get("pid"),
        "supervisor_pid": state.get("supervisor_pid"), "exit_code": state.get("exit_code"),
        "restart_count": state.get("restart_count", 0), "started_at": state.get("started_at"),
        "finished_at": state.get("finished_at"), "cgroup": spec.get("cgroup"), "netns": spec.get("netns"),
        "rootfs": spec.get("rootfs"), "log_path": state.get("log_path") or spec.get("log_path"),
        "spec_hash": state.get("spec_hash"), "error": state.get("error"), "spec": spec,
    }


def main() -> None:
    module = AnsibleModule(argument_spec={"name": {"type": "str"}}, supports_check_mode=True)
    name = module.params["name"]
    names = [name] if name else container_state.names()
    containers = [entry for entry in (describe(n) for n in names if "/" not in n) if entry]
    module.exit_json(changed=False, containers=containers)


if __name__ == "__main__":
    main()
