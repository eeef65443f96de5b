#!/usr/bin/python
# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: bridge
short_description: Create, converge and remove Linux bridges in the host or a network namespace
version_added: 0.1.0
description:
  - Manages a Linux bridge (the switch that container veth ends are plugged into, see the
    O(nsbox.primitives.veth#module:bridge) option of M(nsbox.primitives.veth)), its addresses, MTU and
    administrative state, over netlink (pyroute2).
  - Drift (an address changed by hand, the bridge set down, another MTU) is repaired and shown in the diff.
  - O(state=absent) removes the bridge and returns the ports that were attached; the ports themselves stay.
  - A name taken by an interface that is not a bridge is an error; such an interface is never touched.
author:
  - nsbox.primitives contributors (@nsbox)
options:
  name:
    description: Name of the bridge, 1 to 15 bytes, no C(/), C(:) or whitespace.
    type: str
    required: true
  netns:
    description:
      - Named network namespace of the bridge (see M(nsbox.primitives.netns)); omitted means the host.
    type: str
  state:
    description: Whether the bridge should exist.
    type: str
    choices: [present, absent]
    default: present
  addresses:
    description:
      - Addresses of the bridge in CIDR form, for example the gateway of the containers behind it. The list is
        authoritative (IPv6 link-local addresses excepted). Omitted leaves addresses alone.
    type: list
    elements: str
  mtu:
    description:
      - MTU of the bridge (68 to 65535). Setting it pins it; otherwise the kernel follows the ports' MTU.
    type: int
  link_state:
    description: Administrative state of the bridge.
    type: str
    choices: [up, down]
    default: up
extends_documentation_fragment:
  - nsbox.primitives.attributes
notes:
  - Requires root (C(CAP_NET_ADMIN)) and the pyroute2 Python library.
  - Traffic between ports is plain layer 2; on a host with C(br_netfilter) loaded, iptables FORWARD rules apply too.
requirements:
  - pyroute2
"""

EXAMPLES = r"""
- name: The containers' bridge, their default gateway
  nsbox.primitives.bridge:
    name: nsbr0
    addresses: [10.30.0.1/24, fd00:30::1/64]

- name: Remove it (the result lists the ports that were attached)
  nsbox.primitives.bridge:
    name: nsbr0
    state: absent
  register: removed
"""

RETURN = r"""
name:
  description: Name of the bridge.
  type: str
  returned: always
  sample: nsbr0
netns:
  description: Named namespace of the bridge, null for the host.
  type: str
  returned: always
state:
  description: The state that was asked for and reached.
  type: str
  returned: always
  sample: present
ifindex:
  description: Interface index; null when the bridge does not exist (yet, in check mode).
  type: int
  returned: always
  sample: 12
addresses:
  description: Addresses in CIDR form, without IPv6 link-local ones.
  type: list
  elements: str
  returned: always
  sample: [10.30.0.1/24]
mtu:
  description: MTU of the bridge.
  type: int
  returned: always
  sample: 1500
link_state:
  description: C(up) or C(down) (administrative state).
  type: str
  returned: always
ports:
  description: Names of the interfaces attached to the bridge; with O(state=absent), those that were attached.
  type: list
  elements: str
  returned: always
  sample: [app0, web0]
rolled_back:
  description: On failure, what the run had created and removed again, newest first.
  type: list
  elements: str
  returned: failure
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.nsbox.primitives.plugins.module_utils.argspecs import BRIDGE
from ansible_collections.nsbox.primitives.plugins.module_utils.netlink import HAS_PYROUTE2, PYROUTE2_IMPORT_ERROR


def main() -> None:
    module = AnsibleModule(**BRIDGE.module_kwargs(), supports_check_mode=True)
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    from ansible_collections.nsbox.primitives.plugins.module_utils.bridge import BridgeManager

    BridgeManager(module).execute()


if __name__ == "__main__":
    main()
