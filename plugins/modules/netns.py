#!/usr/bin/python
# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: netns
short_description: Create and remove named network namespaces, with loopback and sysctls inside
version_added: 0.1.0
description:
  - Manages a named network namespace the way C(ip netns add) keeps it, so that C(ip netns list) and
    C(ip netns exec NAME ...) see it; the namespace is bind-mounted on C(/run/netns/NAME).
  - Names match exactly (unlike community.general.ip_netns, which matches substrings).
  - Brings the loopback interface up inside the namespace and applies network sysctls inside it, idempotently.
  - C(/run/netns) is made a mount point of its own with private propagation when it is not one yet, and each
    namespace mount is private, so that mount namespaces made later do not receive them as propagating peers.
    Removal detaches the mount lazily, so it never fails with EBUSY.
  - O(state=absent) refuses while processes still live in the namespace and names them; O(kill=true) kills them.
  - Never creates a namespace by accident; lookups open C(/run/netns/NAME) without creating it.
author:
  - nsbox.primitives contributors (@nsbox)
options:
  name:
    description:
      - Name of the namespace; it becomes the file C(/run/netns/NAME). 1 to 255 bytes, no C(/).
    type: str
    required: true
  state:
    description:
      - V(present) creates the namespace when it is missing and converges loopback and sysctls.
      - V(absent) removes the name (the namespace itself ends when nothing else holds it).
    type: str
    choices: [present, absent]
    default: present
  loopback:
    description:
      - Bring the loopback interface C(lo) up inside the namespace (a new namespace starts with it down).
      - V(false) leaves C(lo) as it is.
    type: bool
    default: true
  sysctls:
    description:
      - Network sysctls to set inside the namespace, for example C(net.ipv4.ip_forward=1) or
        C(net.ipv4.ip_unprivileged_port_start=80). Keys start with C(net.); dots or slashes separate the parts.
      - Values are compared as the kernel prints them (fields separated by single spaces); booleans become 1 or 0.
      - A key the namespace does not have is an error, before anything is changed.
      - Only the keys given are managed.
    type: dict
    default: {}
  kill:
    description:
      - With O(state=absent), SIGKILL the processes in the namespace (and wait for them) instead of failing.
    type: bool
    default: false
extends_documentation_fragment:
  - nsbox.primitives.attributes
notes:
  - Requires root (C(CAP_SYS_ADMIN)) and the pyroute2 Python library on the target.
  - Processes are found by their C(/proc/PID/ns/net); a namespace held open only by a file descriptor or a
    mount elsewhere does not stop removal of the name.
requirements:
  - pyroute2
seealso:
  - name: ip-netns(8)
    description: The conventions of named network namespaces this module follows.
    link: https://man7.org/linux/man-pages/man8/ip-netns.8.html
"""

EXAMPLES = r"""
- name: A namespace for the RED container
  nsbox.primitives.netns:
    name: red

- name: A router namespace that forwards and lets nginx bind port 80 without privileges
  nsbox.primitives.netns:
    name: edge
    sysctls:
      net.ipv4.ip_forward: 1
      net.ipv4.ip_unprivileged_port_start: 80

- name: Remove it, killing whatever still runs inside
  nsbox.primitives.netns:
    name: edge
    state: absent
    kill: true
"""

RETURN = r"""
name:
  description: Name of the namespace.
  type: str
  returned: always
  sample: red
path:
  description: The file the namespace is mounted on.
  type: str
  returned: always
  sample: /run/netns/red
state:
  description: The state that was asked for and reached.
  type: str
  returned: always
  sample: present
exists:
  description: Whether the namespace exists after the run (predicted in check mode).
  type: bool
  returned: always
sysctls:
  description: The effective values of the sysctls given, as the kernel prints them (predicted in check mode).
  type: dict
  returned: always
  sample: {"net.ipv4.ip_forward": "1"}
killed:
  description: Processes killed (to be killed, in check mode) because O(kill=true).
  type: list
  elements: int
  returned: when O(state=absent) and the namespace existed
pids:
  description: The processes still in the namespace when O(state=absent) was refused.
  type: list
  elements: int
  returned: failure
rolled_back:
  description: On failure, what the run had created and removed again, newest first.
  type: list
  elements: str
  returned: failure
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.nsbox.primitives.plugins.module_utils.argspecs import NETNS
from ansible_collections.nsbox.primitives.plugins.module_utils.netlink import HAS_PYROUTE2, PYROUTE2_IMPORT_ERROR


def main() -> None:
    module = AnsibleModule(**NETNS.module_kwargs(), supports_check_mode=True)
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    from ansible_collections.nsbox.primitives.plugins.module_utils.netns import NetnsManager

    NetnsManager(module).execute()


if __name__ == "__main__":
    main()
