#!/usr/bin/python
# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: overlay_mount
short_description: Mount, unmount and remove overlayfs mounts
version_added: 0.1.0
description:
  - Mounts an overlay filesystem of one or more lower directories and an optional upper and work
    directory at O(path), the way container root filesystems are stacked from image layers.
  - Reads C(/proc/self/mountinfo) to decide what to do, so a second run with the same layers changes
    nothing; an overlay of other layers (or another filesystem) already at O(path) is an error unless
    O(recreate=true).
  - Repairs drift of the per-mount flags (O(mount_flags)) and of the mount propagation without remounting.
  - Creates missing directories (the mount point, the upper and the work directory) and, when a run fails,
    removes what it created again.
  - Two runs on the same O(path) never interleave (a per-path lock).
author:
  - nsbox.primitives contributors (@nsbox)
options:
  path:
    description:
      - The mount point where the merged view appears. Absolute; must not contain C(:) or C(,).
      - Created (with its missing parents) when missing.
    type: path
    required: true
  lowerdirs:
    description:
      - The lower layers, B(top layer first), as overlayfs's C(lowerdir=) option lists them.
      - Required for O(state=mounted). Every directory must exist.
      - Without O(upperdir) the overlay is read-only, and the kernel then needs at least two lower layers.
    type: list
    elements: path
    default: []
  upperdir:
    description:
      - The writable upper layer; writes and whiteouts of deletions land here.
      - Must be given together with O(workdir) and be on the same filesystem, which must not itself be an
        overlay. Created when missing.
    type: path
  workdir:
    description:
      - The work directory overlayfs needs beside O(upperdir). Must be empty (apart from what overlayfs
        itself left there on an earlier mount). Created when missing.
    type: path
  options:
    description:
      - Further overlay options, one per item, for example C(index=on), C(metacopy=on), C(redirect_dir=on),
        C(xino=auto), C(volatile), C(userxattr).
      - The kernel validates them; a refusal is reported with the kernel's own reason.
      - When comparing with an existing mount, an option the kernel does not list is taken to be at its
        requested value, because the kernel lists only options that differ from its defaults.
    type: list
    elements: str
    default: []
  mount_flags:
    description:
      - Per-mount flags. Drift (a flag set or cleared by hand) is repaired in place.
    type: list
    elements: str
    choices: [ro, nosuid, nodev, noexec]
    default: []
  propagation:
    description:
      - Mount propagation of the overlay. C(private) keeps mounts made inside a container from leaking
        to the host and back.
      - C(slave) is not offered because below a private parent the kernel turns it into C(private), so it
        could never be reached.
    type: str
    choices: [private, shared, unbindable]
    default: private
  mode:
    description:
      - Permissions of the directories this module creates. The upper directory's mode becomes the mode
        of the merged root.
    type: raw
    default: '0755'
  state:
    description:
      - V(mounted) mounts the overlay (creating directories as needed).
      - V(unmounted) unmounts any overlay at O(path) and keeps the directories.
      - V(absent) unmounts, then removes the mount point directory (which must be empty once unmounted)
        and, with O(remove_upper=true), the upper and work directories.
    type: str
    choices: [mounted, unmounted, absent]
    default: mounted
  recreate:
    description:
      - When O(path) already holds an overlay of other layers or options, or a mount of another filesystem,
        unmount it and mount the requested overlay instead of failing.
    type: bool
    default: false
  remove_upper:
    description:
      - With O(state=absent), also delete the upper and work directories (the container's writes).
      - The directories are taken from O(upperdir) and O(workdir), or from the mount being removed.
    type: bool
    default: false
  lazy_unmount:
    description:
      - Detach a busy mount at once (C(MNT_DETACH)) instead of failing with the processes that hold it.
    type: bool
    default: false
extends_documentation_fragment:
  - nsbox.primitives.attributes
notes:
  - Requires root (C(CAP_SYS_ADMIN)) and a kernel with overlayfs.
  - Uses the kernel's new mount API (fsopen) where available, so refusals carry the kernel's reason.
seealso:
  - name: overlayfs documentation
    description: The kernel's description of overlay filesystems.
    link: https://docs.kernel.org/filesystems/overlayfs.html
"""

EXAMPLES = r"""
- name: Stack a shared tools layer over a shared base layer, with a private writable layer
  nsbox.primitives.overlay_mount:
    path: /var/lib/nsbox/containers/red/rootfs
    lowerdirs:
      - /var/lib/nsbox/layers/tools
      - /var/lib/nsbox/layers/myroot
    upperdir: /var/lib/nsbox/containers/red/upper
    workdir: /var/lib/nsbox/containers/red/work

- name: A read-only view of two image layers, no device files or setuid honoured
  nsbox.primitives.overlay_mount:
    path: /srv/image-view
    lowerdirs: "{{ image.lowerdirs }}"
    mount_flags: [nodev, nosuid]

- name: Replace whatever overlay is mounted there with the new layers
  nsbox.primitives.overlay_mount:
    path: /var/lib/nsbox/containers/red/rootfs
    lowerdirs: "{{ new_image.lowerdirs }}"
    upperdir: /var/lib/nsbox/containers/red/upper
    workdir: /var/lib/nsbox/containers/red/work
    options: [index=on, redirect_dir=on]
    recreate: true

- name: Remove the mount, its mount point and the container's writes
  nsbox.primitives.overlay_mount:
    path: /var/lib/nsbox/containers/red/rootfs
    upperdir: /var/lib/nsbox/containers/red/upper
    workdir: /var/lib/nsbox/containers/red/work
    state: absent
    remove_upper: true
"""

RETURN = r"""
path:
  description: The mount point.
  type: str
  returned: always
  sample: /var/lib/nsbox/containers/red/rootfs
state:
  description: The state that was asked for and reached.
  type: str
  returned: always
  sample: mounted
mounted:
  description: Whether a mount is at O(path) after the run (predicted in check mode).
  type: bool
  returned: always
fstype:
  description: Filesystem type of the mount at O(path), null when nothing is mounted.
  type: str
  returned: always
  sample: overlay
lowerdirs:
  description: The lower layers of the mounted overlay, top first, as the kernel reports them.
  type: list
  elements: str
  returned: always
upperdir:
  description: The upper directory of the mounted overlay, or null.
  type: str
  returned: always
workdir:
  description: The work directory of the mounted overlay, or null.
  type: str
  returned: always
options:
  description: Overlay options the kernel reports for the mount (those not at their defaults), without the layers.
  type: list
  elements: str
  returned: always
  sample: [index=on, uuid=on]
mount_flags:
  description: Per-mount flags in force among C(ro), C(nosuid), C(nodev), C(noexec).
  type: list
  elements: str
  returned: always
propagation:
  description: Propagation of the mount (C(private), C(shared), C(slave) or C(unbindable)), null when unmounted.
  type: str
  returned: always
mount_id:
  description: The kernel's mount ID of the overlay; null in check mode or when unmounted.
  type: int
  returned: always
created_directories:
  description: Directories this run created (would create, in check mode), parents first.
  type: list
  elements: str
  returned: always
removed_directories:
  description: Directories this run removed (would remove, in check mode).
  type: list
  elements: str
  returned: always
rolled_back:
  description: On failure, what the run had created and removed again, newest first.
  type: list
  elements: str
  returned: failure
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nsbox.primitives.plugins.module_utils.argspecs import OVERLAY_MOUNT
from ansible_collections.nsbox.primitives.plugins.module_utils.overlay_mount import OverlayMountManager


def main() -> None:
    module = AnsibleModule(**OVERLAY_MOUNT.module_kwargs(), supports_check_mode=True)
    OverlayMountManager(module).execute()


if __name__ == "__main__":
    main()
