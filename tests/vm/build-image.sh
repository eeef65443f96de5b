#!/usr/bin/env bash
# Build (once) the Debian 12 base image of the VM test tier; print its directory.
# Cached in $NSBOX_VM_CACHE keyed by a hash of this script, built in a temp dir and renamed into place.
set -euo pipefail
cache=${NSBOX_VM_CACHE:-/var/cache/nsbox-vm}
root=$(cd "$(dirname "$0")/../.." && pwd)
# The VM's own needs, then what the roles install on a target (the one list: nsbox_host_packages), so
# that the deployment's apt task finds it all there, as on a prepared EC2 host.
packages=systemd,systemd-sysv,openssh-server,python3,python3-apt,kmod,udev,sudo,nginx-light,stress-ng
defaults=$root/roles/nsbox_host/defaults/main.yml
if [ -f "$defaults" ]; then
  packages+=,$(awk '/^nsbox_host_packages:/ {on = 1; next} on && /^  - / {print $2; next} on {exit}' "$defaults" | paste -sd, -)
else
  packages+=,python3-pyroute2,nftables,iproute2,busybox-static
fi
kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)
key=$( (cat "$0"; echo "$packages"; basename "$kernel") | sha256sum | cut -c1-16)
out=$cache/$key
if [ -f "$out/disk.raw" ]; then echo "$out"; exit 0; fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
debootstrap --variant=minbase --include="$packages" bookworm "$tmp/root" http://deb.debian.org/debian >&2
release=${kernel#/boot/vmlinuz-}
mkdir -p "$tmp/root/lib/modules"
cp -a "/lib/modules/$release" "$tmp/root/lib/modules/"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/id_ed25519"
# Like an EC2 host: Ansible logs in as an unprivileged user and becomes root through sudo.
chroot "$tmp/root" useradd --create-home --shell /bin/bash nsbox
install -d -m 700 -o 1000 -g 1000 "$tmp/root/home/nsbox/.ssh"
install -m 600 -o 1000 -g 1000 "$tmp/id_ed25519.pub" "$tmp/root/home/nsbox/.ssh/authorized_keys"
printf 'nsbox ALL=(ALL) NOPASSWD:ALL\n' > "$tmp/root/etc/sudoers.d/nsbox"
chmod 440 "$tmp/root/etc/sudoers.d/nsbox"
echo nsbox-vm > "$tmp/root/etc/hostname"
printf '/dev/vda / ext4 defaults 0 1\n' > "$tmp/root/etc/fstab"
printf 'auto lo\niface lo inet loopback\nallow-hotplug enp0s2\niface enp0s2 inet dhcp\nallow-hotplug ens2\niface ens2 inet dhcp\n' \
  > "$tmp/root/etc/network/interfaces" 2>/dev/null || true
mkdir -p "$tmp/root/etc/systemd/network"
printf '[Match]\nName=en*\n[Network]\nDHCP=yes\n' > "$tmp/root/etc/systemd/network/10-dhcp.network"
chroot "$tmp/root" systemctl enable systemd-networkd ssh >&2
printf 'PermitRootLogin no\nPasswordAuthentication no\n' > "$tmp/root/etc/ssh/sshd_config.d/nsbox.conf"
cp "$kernel" "$tmp/vmlinuz"
cp "/boot/initrd.img-$release" "$tmp/initrd.img"
mkfs.ext4 -q -d "$tmp/root" "$tmp/disk.raw" 4G >&2
rm -rf "$tmp/root"
echo "image built in $((SECONDS - start)) s" >&2
mv "$tmp" "$out"
trap - EXIT
echo "$out"
