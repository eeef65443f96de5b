#!/usr/bin/python
# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rootfs_export
short_description: Container root filesystems from images, as shared overlay layers, without Docker
version_added: 0.1.0
description:
  - Gets an image from a registry (OCI distribution API, Docker Registry HTTP API v2), an OCI image layout,
    an C(oci-archive), a C(docker save) archive or a plain rootfs tarball as C(docker export) writes it.
  - Unpacks each layer once into a content-addressed store (O(store)), keyed by the layer's uncompressed
    digest (diff_id), shared by every image that has it. Returns the layer directories top first, ready for
    the P(nsbox.primitives.overlay_mount#module) option O(nsbox.primitives.overlay_mount#module:lowerdirs),
    and the image config for P(nsbox.primitives.nsbox_container#module).
  - Whiteouts (C(.wh.NAME), C(.wh..wh..opq)) are stored in overlayfs form (a 0/0 character device, the
    C(trusted.overlay.opaque) xattr), so the layers stacked as lowers give exactly the image. With O(dest)
    the image is also written as one flattened directory, whiteouts applied.
  - Every blob is checked against its sha256 digest and every layer against the diff_id of the image
    config; a mismatch fails and keeps nothing. A layer appears in the store only when complete.
  - The extractor keeps owners, modes (setuid, setgid, sticky), mtimes, xattrs (C(security.capability) too),
    hardlinks and symlinks (absolute ones as they are). It refuses, naming the member, absolute member
    names, C(..), over-long names, hardlinks to anything but a file of the same layer, and writes through
    a symlink planted earlier in the same layer or in a lower one.
  - Two runs pulling the same image at once do the work once (locks per image and per layer).
  - An image pinned by digest that is already present costs no network request; a tag costs one
    manifest request.
author:
  - nsbox.primitives contributors (@nsbox)
options:
  source:
    description:
      - Where the image comes from.
      - V(registry) reads O(image) from a registry. V(oci-layout) an OCI image layout directory at O(path);
        V(oci-archive) a tar of such a layout; V(docker-archive) a C(docker save) archive; V(rootfs-tar)
        a tarball of a root filesystem (as C(docker export) writes it), which becomes a single layer.
      - Archives must be uncompressed tar files (layers inside may be compressed); a compressed
        V(rootfs-tar) (gzip, zstd) is fine.
    type: str
    choices: [registry, oci-layout, oci-archive, docker-archive, rootfs-tar]
    default: registry
  image:
    description:
      - For V(registry), the reference, as Docker reads it, for example C(docker.io/library/nginx:1.27),
        C(nginx), C(registry.example.com:5000/team/app@sha256:...). C(docker.io) means Docker Hub.
      - For V(oci-layout) and V(oci-archive), the name of the image in the layout (the
        C(org.opencontainers.image.ref.name) annotation, usually the tag); for V(docker-archive), a tag
        of C(RepoTags). May be omitted when the layout or archive holds one image.
    type: str
  path:
    description:
      - The image file or directory on the managed host, for the local sources. Required for them.
    type: path
  username:
    description:
      - User name for the registry (basic auth, or the credentials for the bearer-token service).
      - For Amazon ECR, C(AWS), with O(password) from C(aws ecr get-login-password).
    type: str
  password:
    description:
      - Password or token for the registry.
    type: str
  ca_file:
    description:
      - A PEM file of CA certificates to verify the registry's TLS certificate with, instead of the system's.
    type: path
  validate_certs:
    description:
      - Verify the registry's TLS certificate. V(false) is insecure and meant for throwaway test registries.
      - A registry on the loopback address that speaks plain HTTP is used over HTTP, as Docker does.
    type: bool
    default: true
  platform:
    description:
      - The platform to pick from a multi-platform image (manifest list or OCI index), as OS/ARCH[/VARIANT],
        for example C(linux/amd64) or C(linux/arm64/v8). Defaults to this host's.
    type: str
  store:
    description:
      - The directory of the layer store. Layers are at C(STORE/layers/DIFFID_HEX).
    type: path
    default: /var/lib/nsbox
  dest:
    description:
      - Also write the image as one flattened directory here (what C(docker export | tar -x) gave).
      - Written beside and renamed into place, so it is complete or absent. An existing directory not
        written by this module must be empty. With O(state=absent), removed again.
      - Rewritten when the image changes or O(dest) has gone; changes made inside it by hand are not
        detected.
    type: path
  state:
    description:
      - V(present) makes sure the image is in the store (and in O(dest)).
      - V(absent) drops this image reference and prunes its layers that no other image reference uses and
        that no mounted overlay has as a lower layer (those are kept and reported in RV(kept_layers)).
    type: str
    choices: [present, absent]
    default: present
  allow_devices:
    description:
      - Create device nodes that layers contain. Off by default, so an image cannot bring a device (such as
        a disk) into a container; skipped devices are listed in RV(skipped_devices).
    type: bool
    default: false
  parallel:
    description:
      - How many layers to download and unpack at once.
    type: int
    default: 4
  timeout:
    description:
      - Seconds to wait for the registry on each request.
    type: int
    default: 60
extends_documentation_fragment:
  - nsbox.primitives.attributes
notes:
  - Requires root (owners, setuid bits, C(trusted.*) xattrs and whiteout devices need it).
  - zstd-compressed layers need the C(zstd) program.
  - Long pulls report what they moved in RV(downloaded_bytes); run them with C(async) and C(poll) to keep
    the connection free.
seealso:
  - module: nsbox.primitives.overlay_mount
  - name: OCI image specification
    description: Layers, whiteouts, manifests and indexes.
    link: https://github.com/opencontainers/image-spec
"""

EXAMPLES = r"""
- name: Pull nginx from Docker Hub into the layer store
  nsbox.primitives.rootfs_export:
    image: docker.io/library/nginx:1.27
  register: nginx_image

- name: Stack its layers under a private writable layer
  nsbox.primitives.overlay_mount:
    path: /var/lib/nsbox/containers/web/rootfs
    lowerdirs: "{{ nginx_image.lowerdirs }}"
    upperdir: /var/lib/nsbox/containers/web/upper
    workdir: /var/lib/nsbox/containers/web/work

- name: An image from a private ECR registry
  nsbox.primitives.rootfs_export:
    image: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1.4
    username: AWS
    password: "{{ lookup('pipe', 'aws ecr get-login-password') }}"

- name: From a registry with a private CA
  nsbox.primitives.rootfs_export:
    image: registry.internal:5000/team/app:2.1
    ca_file: /etc/ssl/internal-ca.pem

- name: A docker save archive, flattened into one directory as well
  nsbox.primitives.rootfs_export:
    source: docker-archive
    path: /srv/images/app.tar
    image: app:latest
    dest: /srv/rootfs/app

- name: Drop the image; layers no other image uses are pruned
  nsbox.primitives.rootfs_export:
    image: docker.io/library/nginx:1.27
    state: absent
"""

RETURN = r"""
state:
  description: The state reached.
  type: str
  returned: always
  sample: present
digest:
  description:
    - The digest of the image manifest (for a multi-platform image, the manifest of the chosen platform).
    - For V(docker-archive), which has no manifest, the image ID (the config's digest); for V(rootfs-tar)
      the tarball's digest. Null with O(state=absent) when there was no such image.
  type: str
  returned: always
  sample: sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac
index_digest:
  description: The digest of the manifest list or OCI index the image was chosen from, if any.
  type: str
  returned: success and state is present
config_digest:
  description: The digest of the image config, null for V(rootfs-tar).
  type: str
  returned: success and state is present
layers:
  description:
    - The layers of the image, bottom first, by their uncompressed digest (diff_id), which names them in
      the store. In check mode, null for a V(rootfs-tar) layer not yet unpacked.
  type: list
  elements: str
  returned: always
lowerdirs:
  description: The store directories of the layers, B(top first), for overlay_mount's lowerdirs.
  type: list
  elements: str
  returned: success and state is present
  sample: [/var/lib/nsbox/layers/5f70bf18a0860070, /var/lib/nsbox/layers/a0b1c2]
config:
  description: What the image config says about running it.
  type: dict
  returned: success and state is present
  contains:
    entrypoint:
      description: The entrypoint, a list (empty when unset).
      type: list
      elements: str
    cmd:
      description: The command (arguments of the entrypoint), a list.
      type: list
      elements: str
    env:
      description: The environment as a list of C(K=V).
      type: list
      elements: str
    working_dir:
      description: The working directory, null when unset.
      type: str
    user:
      description: The user (name, uid or uid:gid), null when unset.
      type: str
    exposed_ports:
      description: Ports the image declares, like C(80/tcp).
      type: list
      elements: str
    stop_signal:
      description: The signal that stops the payload, null when unset.
      type: str
    labels:
      description: The image's labels.
      type: dict
store:
  description: The store directory.
  type: str
  returned: always
flattened_dir:
  description: The flattened directory (O(dest)), null when not asked for.
  type: str
  returned: always
unpacked_layers:
  description: Layers this run unpacked (would unpack, in check mode).
  type: list
  elements: str
  returned: success and state is present
reused_layers:
  description: Layers that were already in the store.
  type: list
  elements: str
  returned: success and state is present
downloaded_bytes:
  description: Bytes of layer blobs this run read from the source.
  type: int
  returned: success and state is present
registry_requests:
  description: HTTP requests this run made to the registry (and its token service). A tag already present costs
    one; an image pinned by digest and present costs none.
  type: int
  returned: success, state is present and source is registry
skipped_devices:
  description: Device nodes in the layers that were not created (see O(allow_devices)).
  type: list
  elements: str
  returned: success and state is present
pruned_layers:
  description: Layers removed from the store (would be removed, in check mode).
  type: list
  elements: str
  returned: success and state is absent
kept_layers:
  description: Layers of the image kept because a mounted overlay uses them.
  type: list
  elements: str
  returned: success and state is absent
member:
  description: On a refused layer, the tar member that was refused.
  type: str
  returned: failure
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nsbox.primitives.plugins.module_utils.argspecs import ROOTFS_EXPORT
from ansible_collections.nsbox.primitives.plugins.module_utils.rootfs_export import RootfsExportManager


def main() -> None:
    module = AnsibleModule(**ROOTFS_EXPORT.module_kwargs(), supports_check_mode=True)
    RootfsExportManager(module).execute()


if __name__ == "__main__":
    main()
