#!/usr/bin/python
# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: batch
short_description: Converge several nsbox primitives in one task (one process on the target)
version_added: 0.2.0
description:
  - Runs a list of steps in order, each one what a task of the module of the same name would do
    (C(rootfs_export), C(overlay_mount), C(cgroup2), C(netns), C(veth), C(bridge), C(nsbox_container)),
    with exactly that module's options, validation, idempotence, check mode and diff; plus four steps only
    a batch offers (C(file), C(sysctl), C(nftables), C(host_check)).
  - The point is speed. Every task costs a Python process on the target (and an SSH round trip), which is
    most of a deployment's re-run; a host's whole network, files and containers in one batch cost one.
    The roles of this collection use it.
  - Every step is validated before the first runs, so a wrong option in any step changes nothing.
  - A failing step undoes what it made, then the steps before it are undone newest first, so a failed
    batch leaves nothing it created (RV(rolled_back) lists it); what existed before is left as it was.
  - In check mode each step predicts its own change. A step that depends on an object an earlier step
    would create (a veth in a namespace the batch makes) predicts as the module does in that case, with
    a warning.
author:
  - nsbox.primitives contributors (@nsbox)
options:
  steps:
    description:
      - The steps, run in this order.
    type: list
    elements: dict
    required: true
    suboptions:
      module:
        description:
          - What the step does. The names of this collection's modules take their options in O(steps[].args),
            see their documentation (C(ansible-doc nsbox.primitives.veth)).
          - V(file) writes a file with a given content (what ansible.builtin.copy with C(content) does), atomically.
            Its args are C(path) (required), C(state) (V(present), V(absent), or V(directory) for a directory
            with that mode and owner), C(content) (default empty), C(mode) (octal, default V(0644)), C(owner) and
            C(group) (numeric ids, default 0), C(directory_mode)
            (for missing parent directories, default V(0700)), C(return_previous) (return the content the file had
            before the run as RV(results[].previous_content), default false).
          - V(sysctl) sets a sysctl of the host through C(/proc/sys) when it differs. Its args are C(name)
            (V(net.ipv4.ip_forward), or with slashes where a part holds a dot) and C(value); values compare
            as words, as the kernel prints them. It does not persist the value; add a V(file) step for
            C(/etc/sysctl.d/).
          - V(nftables) keeps a table of the collection's in a file and loads it with C(nft -f) when the
            file's content changes or the kernel does not have the table (after a reboot or a flush). Its args
            are C(table) (required), C(family) (default V(inet)), C(state) (V(present), or V(absent) to delete the
            table and the file), C(path) and C(content) (required when present). The content must replace the
            table as a whole (create it empty, delete it, define it); it is checked with C(nft -c) first.
          - V(host_check) fails, naming what is missing and how to get it, unless the kernel offers the
            filesystems in C(filesystems) (loading their modules with modprobe when missing, a change), the
            cgroup controllers in C(controllers) (cgroup v2 when C(cgroup_root)/cgroup.controllers exists,
            otherwise v1 from /proc/cgroups; C(cgroup_root) defaults to V(/sys/fs/cgroup)), and user
            namespaces when C(user_namespaces) is true.
        type: str
        required: true
        choices: [host_check, sysctl, file, rootfs_export, bridge, netns, veth, nftables, overlay_mount, cgroup2,
                  nsbox_container]
      args:
        description:
          - The step's options, as the module named by O(steps[].module) takes them.
          - Options the module marks secret (the registry password of C(rootfs_export)) are masked in the output as
            the module would mask them; set C(no_log) on the task to keep them out of the task's display too.
        type: dict
        default: {}
      label:
        description:
          - A name for the step in messages, the diff's headers and RV(results[].label).
        type: str
extends_documentation_fragment:
  - nsbox.primitives.attributes
notes:
  - Requires root; network steps need the pyroute2 Python library on the target.
  - The lock each module takes on its object is taken by its step, one step at a time.
seealso:
  - module: nsbox.primitives.veth
  - module: nsbox.primitives.nsbox_container
"""

EXAMPLES = r"""
- name: A namespace wired to a bridge, a published port and a file, in one task
  nsbox.primitives.batch:
    steps:
      - module: bridge
        args: {name: nsbox0, addresses: [10.89.0.1/24]}
      - module: netns
        args: {name: nsbox-web}
      - module: veth
        args:
          name: nsbw-web
          bridge: nsbox0
          peer: {name: eth0, netns: nsbox-web, addresses: [10.89.0.11/24],
                 routes: [{dst: default, gateway: 10.89.0.1}]}
      - module: nftables
        args:
          table: nsbox
          path: /var/lib/nsbox/nftables/nsbox.nft
          content: "{{ lookup('ansible.builtin.template', 'nsbox.nft.j2') }}"
      - module: file
        label: index page
        args: {path: /var/lib/nsbox/html/index.html, content: "<h1>hello</h1>\n", directory_mode: "0755"}

- name: Check the kernel and set a sysctl
  nsbox.primitives.batch:
    steps:
      - module: host_check
        args: {filesystems: [overlay], controllers: [cpu, memory, pids], user_namespaces: true}
      - module: sysctl
        args: {name: net.ipv4.ip_forward, value: "1"}
"""

RETURN = r"""
results:
  description:
    - One entry per step that ran, in order, with what the step's module returns (see its documentation)
      and the keys below. A failed batch has the entries of the steps that ran, the failed one last.
  type: list
  elements: dict
  returned: always
  contains:
    step:
      description: The step's number, from 1.
      type: int
    module:
      description: The step's O(steps[].module).
      type: str
    label:
      description: The step's O(steps[].label), or empty.
      type: str
    changed:
      description: Whether the step changed something (would, in check mode).
      type: bool
    changed_content:
      description: For V(file) steps, whether the file's content changed (a reload is due).
      type: bool
      returned: file steps
    previous_content:
      description: For V(file) steps with C(return_previous), the file's content before the run (null if none).
      type: str
      returned: file steps with C(return_previous)
    reloaded:
      description: For V(nftables) steps, whether the table was loaded.
      type: bool
      returned: nftables steps
  sample: [{"step": 1, "module": "netns", "label": "", "changed": true, "name": "web", "exists": true}]
step:
  description: On failure, the number of the step that failed (or whose options are wrong).
  type: int
  returned: failure
rolled_back:
  description: On failure, what the batch had created and removed again, newest first.
  type: list
  elements: str
  returned: failure
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nsbox.primitives.plugins.module_utils.batch import STEP_KINDS, BatchManager


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            steps=dict(type="list", elements="dict", required=True, options=dict(
                module=dict(type="str", required=True, choices=list(STEP_KINDS)),
                args=dict(type="dict", default={}),
                label=dict(type="str"),
            )),
        ),
        supports_check_mode=True,
    )
    BatchManager(module).execute()


if __name__ == "__main__":
    main()
