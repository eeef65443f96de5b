#!/usr/bin/python
# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: cgroup2
short_description: Create, limit and remove control groups in the cgroup v2 vocabulary on any host
version_added: 0.1.0
description:
  - Manages a control group at O(path) and its resource limits, written in the cgroup v2 vocabulary
    (C(cpu.max), C(memory.max), C(pids.max), ...), on pure cgroup v2, hybrid and cgroup v1 hosts.
  - On cgroup v2 it creates the group and enables the controllers the limits need in the
    C(cgroup.subtree_control) of every ancestor. If an ancestor holds processes, the kernel's
    no-internal-process rule forbids that; the module then fails before changing anything and names the
    cgroup and its processes.
  - On cgroup v1 and hybrid hosts the same options are translated (C(cpu.cfs_quota_us)/C(cpu.cfs_period_us),
    C(cpu.shares), C(memory.limit_in_bytes), C(memory.memsw.limit_in_bytes) or C(memory.swappiness),
    C(pids.max), C(cpuset.*), C(blkio.throttle.*)) and the group gets one directory per controller
    hierarchy it needs (C(cpu) also joins C(cpuacct) for the usage counters). A limit that has no
    equivalent on the host fails instead of being dropped.
  - On hybrid hosts (v1 controllers plus a cgroup2 tree at C(<root>/unified)) each controller is driven
    where the host binds it (v1 when mounted as v1, otherwise in the unified tree if that offers it), and
    the group is always created in the unified tree too, for process tracking and C(cgroup.kill).
  - Reads every value back from the kernel, so a second run changes nothing and a value changed by hand
    is repaired (and shown in the diff). Values are compared in the form the kernel prints them (memory
    sizes rounded down to whole pages, CPU lists as ranges).
  - O(state=absent) refuses while the group or its descendants hold processes (and lists them) unless
    O(kill=true), then removes the group's directories bottom-up in every hierarchy.
  - A failed run removes the directories it created and restores values it changed.
author:
  - nsbox.primitives contributors (@nsbox)
options:
  path:
    description:
      - The group, relative to the cgroup root, for example C(nsbox/web). Missing parents are created.
      - Must not be absolute or contain C(..), C(.) or empty components.
    type: str
    required: true
  state:
    description:
      - C(present) creates the group and sets the limits given; limits not given are left as they are.
      - C(absent) removes the group and every group below it.
    type: str
    choices: [present, absent]
    default: present
  hierarchy:
    description:
      - C(auto) uses pure v2 when O(root) is a cgroup2 mount, otherwise the v1 controllers mounted below
        O(root) plus the cgroup2 tree at C(<root>/unified) when there is one (hybrid).
      - C(v2) requires O(root) to be a cgroup2 mount. C(v1) uses only the v1 controller hierarchies.
    type: str
    choices: [auto, v2, v1]
    default: auto
  root:
    description:
      - Where the cgroup hierarchy is mounted. Tests and nested hosts point it at another mount, for
        example C(/sys/fs/cgroup/unified) with O(hierarchy=v2).
    type: path
    default: /sys/fs/cgroup
  cpus:
    description:
      - CPU limit as a number of CPUs, for example C(0.4) for 40% of one CPU; becomes C(cpu.max) with
        O(cpu_period). Must be more than 0 and at most the number of CPUs of the host.
      - Mutually exclusive with O(cpu_max).
    type: float
  cpu_max:
    description:
      - C(cpu.max) as the kernel writes it, quota and period in microseconds, for example C(40000 100000);
        C(40000) keeps the current period; C(max) removes the limit.
    type: str
  cpu_period:
    description:
      - Period in microseconds (1000 to 1000000) used with O(cpus), or with an O(cpu_max) that gives only a
        quota. Defaults to 100000 for O(cpus).
    type: int
  cpu_weight:
    description:
      - C(cpu.weight), 1 to 10000 (default of the kernel 100). On v1 it becomes C(cpu.shares) =
        weight * 1024 / 100 (systemd's mapping), reported in RV(notes).
    type: int
  memory_max:
    description:
      - C(memory.max), the hard memory limit; over it the group is reclaimed and then OOM-killed.
      - A size in bytes or with a binary unit (C(10M), C(200MB), C(1.5G)), or C(max).
    type: raw
  memory_high:
    description:
      - C(memory.high), the throttling limit. cgroup v2 only (v1 has no equivalent; the module fails there).
    type: raw
  memory_swap_max:
    description:
      - C(memory.swap.max), how much swap the group may use; C(0) for none, or C(max).
      - On v1 it becomes C(memory.memsw.limit_in_bytes) = memory limit + swap, so it needs a finite
        O(memory_max). On a v1 kernel without swap accounting only C(0) is possible, enforced as
        C(memory.swappiness=0) and said so in RV(notes).
    type: raw
  pids_max:
    description:
      - C(pids.max), the most processes and threads the group may hold; a number or C(max).
    type: raw
  cpuset_cpus:
    description:
      - C(cpuset.cpus), the CPUs the group may run on, for example C(0-1,3).
    type: str
  cpuset_mems:
    description:
      - C(cpuset.mems), the memory nodes the group may allocate from, for example C(0).
    type: str
  io_max:
    description:
      - C(io.max) limits per block device; fields not given are left as they are; C(max) removes a limit.
      - On v1 they become C(blkio.throttle.read_bps_device), C(write_bps_device), C(read_iops_device)
        and C(write_iops_device).
    type: list
    elements: dict
    suboptions:
      device:
        description: A whole-disk block device (C(/dev/vda)) or its C(MAJOR:MINOR).
        type: str
        required: true
      rbps:
        description: Read bytes per second (a size such as C(10M), or C(max)).
        type: raw
      wbps:
        description: Write bytes per second (a size such as C(10M), or C(max)).
        type: raw
      riops:
        description: Read operations per second, or C(max).
        type: raw
      wiops:
        description: Write operations per second, or C(max).
        type: raw
  settings:
    description:
      - Any other cgroup v2 interface file and its value, for example C(memory.low), C(cpu.weight.nice),
        C(io.weight), C(cgroup.max.descendants). Unknown keys are refused, as are keys that another option
        sets.
      - On v1 only keys with a faithful translation are accepted (C(cpu.max), C(cpu.weight), C(cpu.idle),
        C(cpu.max.burst), C(memory.max), C(memory.swap.max), C(pids.max), C(cpuset.cpus), C(cpuset.mems)).
    type: dict
    default: {}
  controllers:
    description:
      - Controllers to place the group under even without a limit, for example C(memory) to read its
        usage. v2 names; on v1 also raw hierarchy names such as C(freezer).
    type: list
    elements: str
    default: []
  kill:
    description:
      - With O(state=absent), SIGKILL the processes of the group and its descendants first (through
        C(cgroup.kill) where the kernel has it, otherwise signal by signal until none is left). Without
        it, a group that holds processes is not removed and the task fails listing them.
    type: bool
    default: false
extends_documentation_fragment:
  - nsbox.primitives.attributes
notes:
  - Never changes cgroups other than O(path), its descendants, and the C(cgroup.subtree_control) of its
    ancestors (v2), and nothing outside O(root).
"""

EXAMPLES = r"""
- name: A group for a web server, 40% of one CPU, 200 MiB and no swap, at most 64 tasks
  nsbox.primitives.cgroup2:
    path: nsbox/web
    cpus: 0.4
    memory_max: 200M
    memory_swap_max: 0
    pids_max: 64

- name: Throttle writes to the root disk and protect some memory (v2)
  nsbox.primitives.cgroup2:
    path: nsbox/db
    io_max:
      - device: /dev/vda
        wbps: 10M
    settings:
      memory.low: 64M

- name: Remove the group, killing what still runs in it
  nsbox.primitives.cgroup2:
    path: nsbox/web
    state: absent
    kill: true
"""

RETURN = r"""
hierarchy:
  description: The hierarchy used, C(v2), C(v1) or C(hybrid).
  returned: always
  type: str
  sample: hybrid
path:
  description: The group's path relative to the cgroup root.
  returned: always
  type: str
  sample: nsbox/web
directories:
  description: The group's directories after the run (in check mode, those it would have).
  returned: always
  type: list
  elements: str
  sample: [/sys/fs/cgroup/cpu/nsbox/web, /sys/fs/cgroup/cpuacct/nsbox/web, /sys/fs/cgroup/unified/nsbox/web]
values:
  description:
    - The effective value of every limit given, read back from the kernel after the run, in the cgroup v2
      form (keys such as C(cpu.max), C(memory.max); on v1 translated back). In check mode the values the
      run would set.
  returned: state is present
  type: dict
  sample: {"cpu.max": "40000 100000", "memory.max": "209715200", "memory.swap.max": "0", "pids.max": "16"}
notes:
  description: How options were translated on this host, for example C(cpu.shares) for C(cpu.weight) on v1.
  returned: always
  type: list
  elements: str
processes:
  description: Processes in the group and its descendants after the run.
  returned: always
  type: list
  elements: int
killed:
  description: Processes killed before removing the group.
  returned: state is absent
  type: list
  elements: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nsbox.primitives.plugins.module_utils.argspecs import CGROUP2
from ansible_collections.nsbox.primitives.plugins.module_utils.cgroup2 import CgroupManager


def main() -> None:
    module = AnsibleModule(**CGROUP2.module_kwargs(), supports_check_mode=True)
    CgroupManager(module).execute()


if __name__ == "__main__":
    main()
