#!/usr/bin/python
# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: veth
short_description: Create, converge and remove veth pairs between the host and network namespaces
version_added: 0.1.0
description:
  - Manages a virtual ethernet pair whose ends live in the host or in named network namespaces (made with
    M(nsbox.primitives.netns)), such as two containers wired to each other, or a container to the host or to a bridge.
  - The end called O(name) in O(netns) identifies the pair. Its peer is found through the kernel's own link
    between the ends, so a peer that was renamed or moved to another named namespace is moved back, renamed and
    configured again; an address that drifted or a link set down by hand is repaired. The diff shows each change.
  - Converges on both ends the link state, MTU, MAC address, addresses (IPv4 and IPv6, CIDR) and routes;
    optionally makes the O(name) end a port of a bridge.
  - Everything goes through netlink (pyroute2); no C(ip) commands run, and no namespace is ever created by a lookup.
  - When a run fails after it created the pair (an address the kernel refuses, say), the pair is removed again.
author:
  - nsbox.primitives contributors (@nsbox)
options:
  name:
    description:
      - Name of this end of the pair (for a container link, usually the host-side end). 1 to 15 bytes, no C(/),
        C(:) or whitespace.
    type: str
    required: true
  netns:
    description:
      - Named network namespace of this end; omitted means the host (the namespace the module runs in).
      - Must exist (see M(nsbox.primitives.netns)). In check mode a missing one is assumed to be made by an
        earlier task.
    type: str
  state:
    description:
      - V(present) creates the pair when O(name) is missing and converges both ends.
      - V(absent) removes the pair (deleting one end deletes both); only veth interfaces are removed.
    type: str
    choices: [present, absent]
    default: present
  link_state:
    description: Administrative state of this end.
    type: str
    choices: [up, down]
    default: up
  mtu:
    description: MTU of this end (68 to 65535). Omitted leaves it as it is (1500 on a new pair).
    type: int
  mac:
    description: MAC address of this end, unicast, like C(02:42:0a:00:00:02). Omitted leaves the kernel's random one.
    type: str
  addresses:
    description:
      - Addresses of this end in CIDR form (C(10.0.0.1/24), C(fd00::1/64)). The list is authoritative; other
        addresses are removed, except IPv6 link-local ones the kernel adds itself. Omitted leaves addresses alone.
    type: list
    elements: str
  routes:
    description:
      - Routes through this end, in its namespace's main table. The list is authoritative for routes added by hand
        or by this module (protocols boot and static); routes the kernel makes for addresses are never touched.
        Omitted leaves routes alone.
      - A gateway must lie inside the subnet of one of O(addresses) (when they are given).
    type: list
    elements: dict
    suboptions:
      dst:
        description: V(default) or a destination network in CIDR form.
        type: str
        required: true
      gateway:
        description: Next hop; omitted makes a route to a directly connected network.
        type: str
      metric:
        description: Route metric (priority). Default 0 for IPv4 and 1024 for IPv6, as the kernel uses.
        type: int
  bridge:
    description:
      - Make this end a port of this bridge (which must exist in the same namespace, see M(nsbox.primitives.bridge)).
      - Omitted leaves the end's master alone.
    type: str
  peer:
    description:
      - The other end. Required for O(state=present).
    type: dict
    suboptions:
      name:
        description: Name of the other end, for example C(eth0) inside a container's namespace.
        type: str
        required: true
      netns:
        description: Named network namespace of the other end; omitted means the host.
        type: str
      link_state:
        description: Administrative state of the other end.
        type: str
        choices: [up, down]
        default: up
      mtu:
        description: MTU of the other end.
        type: int
      mac:
        description: MAC address of the other end.
        type: str
      addresses:
        description: Addresses of the other end in CIDR form; authoritative like O(addresses).
        type: list
        elements: str
      routes:
        description: Routes through the other end, in its namespace, for example a default route to the host end.
        type: list
        elements: dict
        suboptions:
          dst:
            description: V(default) or a destination network in CIDR form.
            type: str
            required: true
          gateway:
            description: Next hop; omitted makes a route to a directly connected network.
            type: str
          metric:
            description: Route metric (priority). Default 0 for IPv4 and 1024 for IPv6.
            type: int
extends_documentation_fragment:
  - nsbox.primitives.attributes
notes:
  - Requires root (C(CAP_NET_ADMIN) and C(CAP_SYS_ADMIN) for setns) and the pyroute2 Python library.
  - A peer that was moved into a namespace without a name under C(/run/netns) (a process's own) cannot be found;
    the module then fails and says so.
requirements:
  - pyroute2
"""

EXAMPLES = r"""
- name: Wire RED and BLUE directly to each other (the seed's two containers)
  nsbox.primitives.veth:
    name: veth0
    netns: red
    addresses: [10.11.11.2/24]
    peer:
      name: veth1
      netns: blue
      addresses: [10.11.11.3/24]

- name: A container's eth0 linked to the host, with a default route to the host end
  nsbox.primitives.veth:
    name: web0
    addresses: [10.20.0.1/30]
    peer:
      name: eth0
      netns: web
      addresses: [10.20.0.2/30, fd00:20::2/64]
      routes:
        - dst: default
          gateway: 10.20.0.1

- name: The host end as a port of bridge nsbr0
  nsbox.primitives.veth:
    name: app0
    bridge: nsbr0
    peer:
      name: eth0
      netns: app
      addresses: [10.30.0.10/24]
      routes: [{dst: default, gateway: 10.30.0.1}]

- name: Remove the pair
  nsbox.primitives.veth:
    name: web0
    state: absent
"""

RETURN = r"""
state:
  description: The state that was asked for and reached.
  type: str
  returned: always
  sample: present
interface:
  description:
    - The O(name) end after the run (predicted in check mode), or as it was before removal; null when it did not exist.
  type: dict
  returned: always
  contains:
    name:
      description: Interface name.
      type: str
    netns:
      description: Named namespace of the end, null for the host.
      type: str
    ifindex:
      description: Interface index in its namespace; null for a pair not created yet (check mode).
      type: int
    mtu:
      description: MTU.
      type: int
    mac:
      description: MAC address; null when not known yet (check mode).
      type: str
    addresses:
      description: Addresses in CIDR form, without IPv6 link-local ones.
      type: list
      elements: str
    routes:
      description: Routes through the end added by hand or by this module (dst, gateway, metric).
      type: list
      elements: dict
    link_state:
      description: C(up) or C(down) (administrative state).
      type: str
    master:
      description: Name of the bridge the end is a port of, or null.
      type: str
  sample:
    name: web0
    netns: null
    ifindex: 17
    mtu: 1500
    mac: 7e:1c:4b:02:9a:10
    addresses: [10.20.0.1/30]
    routes: []
    link_state: up
    master: null
peer:
  description: The other end, with the same keys as RV(interface).
  type: dict
  returned: always
rolled_back:
  description: On failure, what the run had created and removed again, newest first.
  type: list
  elements: str
  returned: failure
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.nsbox.primitives.plugins.module_utils.argspecs import VETH
from ansible_collections.nsbox.primitives.plugins.module_utils.netlink import HAS_PYROUTE2, PYROUTE2_IMPORT_ERROR


def main() -> None:
    module = AnsibleModule(**VETH.module_kwargs(), supports_check_mode=True)
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    from ansible_collections.nsbox.primitives.plugins.module_utils.veth import VethManager

    VethManager(module).execute()


if __name__ == "__main__":
    main()
