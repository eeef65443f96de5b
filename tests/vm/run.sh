#!/usr/bin/env bash
# VM test tier: boot the cached Debian 12 image (pure cgroup v2 + systemd) on a copy-on-write overlay,
# run every playbook in tests/vm/playbooks over SSH on 127.0.0.1, then power off and remove the run's files.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${VENV:-$PWD/.venv}
start=$SECONDS
image=$(tests/vm/build-image.sh)
built=$SECONDS
run=$(mktemp -d /tmp/nsbox-vm.XXXXXX)
qemu_pid=
ssh_opts=()
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -f "$run/console.log" ]; then echo "--- VM console (last 40 lines)"; tail -n 40 "$run/console.log"; fi
  if [ -n "$qemu_pid" ]; then
    # A clean power-off first; qemu exits with the guest (-no-reboot). Killed if the guest hangs.
    ssh "${ssh_opts[@]}" nsbox@127.0.0.1 sudo systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 1 20); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 1; done
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  rm -rf "$run"
}
trap cleanup EXIT
qemu-img create -q -f qcow2 -b "$image/disk.raw" -F raw "$run/overlay.qcow2"
# Two free ports of 127.0.0.1 (both sockets open at once, so they differ): SSH, and the deployment's nginx
# (published on the VM's port 8080), which this machine reaches on 127.0.0.1:$http_port.
read -r port http_port < <("$venv"/bin/python -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
ssh_opts=(-i "$image/id_ed25519" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -o BatchMode=yes)
qemu-system-x86_64 -machine q35,accel=tcg -m 2048 -smp 2 -nographic -no-reboot \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 net.ifnames=1" \
  -drive "file=$run/overlay.qcow2,if=virtio,format=qcow2" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:22,hostfwd=tcp:127.0.0.1:${http_port}-:8080" -device virtio-net-pci,netdev=n0 \
  >"$run/console.log" 2>&1 &
qemu_pid=$!
for _ in $(seq 1 120); do
  if ssh "${ssh_opts[@]}" nsbox@127.0.0.1 true 2>/dev/null; then break; fi
  kill -0 "$qemu_pid" || { tail -n 50 "$run/console.log"; exit 1; }
  sleep 3
done
ssh "${ssh_opts[@]}" nsbox@127.0.0.1 cat /sys/fs/cgroup/cgroup.controllers
booted=$SECONDS
cat >"$run/inventory.ini" <<INV
[vm]
nsbox-vm ansible_host=127.0.0.1 ansible_port=${port} ansible_user=nsbox ansible_become=true ansible_ssh_private_key_file=${image}/id_ed25519 ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' ansible_python_interpreter=auto
INV
export ANSIBLE_COLLECTIONS_PATH=${ANSIBLE_COLLECTIONS_PATH:-$PWD/.ansible/collections}
# One SSH round trip per task instead of several: the VM is emulated, every round trip costs.
export ANSIBLE_PIPELINING=true
# NSBOX_VM_SKIP_PLAYBOOKS=1 goes straight to the molecule scenario (for working on the roles).
for playbook in tests/vm/playbooks/*.yml; do
  [ -z "${NSBOX_VM_SKIP_PLAYBOOKS:-}" ] || break
  echo "--- VM playbook ${playbook}"
  "$venv"/bin/ansible-playbook -i "$run/inventory.ini" "$playbook"
done
if [ -f extensions/molecule/vm/molecule.yml ]; then
  if [ -f playbooks/deploy-nginx.yml ]; then
    (cd extensions && NSBOX_VM_INVENTORY="$run/inventory.ini" NSBOX_VM_HTTP_PORT=$http_port "$venv"/bin/molecule test -s vm)
  else
    echo "--- molecule vm scenario SKIPPED: playbooks/deploy-nginx.yml does not exist yet"
  fi
fi
echo "VM tier: image $((built - start)) s, boot $((booted - built)) s, tests $((SECONDS - booted)) s, total $((SECONDS - start)) s"
