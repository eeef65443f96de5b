#!/usr/bin/env bash
# make demo / make teardown: nginx in nsbox containers on this host, from an image built offline.
#   tools/demo.sh deploy     build the image (OCI layout, no Docker), deploy playbooks/deploy-nginx.yml
#                            on localhost, print the URL and the proof that it answers
#   tools/demo.sh teardown   playbooks/teardown.yml with the images: nothing is left
# Settings (environment): NSBOX_DEMO_PORT (8080), NSBOX_DEMO_REPLICAS (2), NSBOX_STATE_DIR (/var/lib/nsbox).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${VENV:-$root/.venv}
export PATH="$venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH=${ANSIBLE_COLLECTIONS_PATH:-$root/.ansible/collections}
export ANSIBLE_LOCAL_TEMP=${ANSIBLE_LOCAL_TEMP:-$root/.ansible/tmp}
port=${NSBOX_DEMO_PORT:-8080}
replicas=${NSBOX_DEMO_REPLICAS:-2}
state=${NSBOX_STATE_DIR:-/var/lib/nsbox}
layout=$state/demo-image
inventory=inventories/localhost.yml

if [ "$(id -u)" != 0 ]; then
  echo "demo: containers need root; run as root (sudo make demo)" >&2
  exit 1
fi

case "${1:-deploy}" in
  deploy)
    echo "demo: building the nginx image offline into $layout (busybox-static + nginx-light, umoci)"
    "$venv/bin/python" tools/build-nginx-image.py "$layout" >/dev/null
    ansible-playbook -i "$inventory" playbooks/deploy-nginx.yml \
      -e nsbox_state_dir="$state" -e nsbox_image_source=oci-layout -e nsbox_image_path="$layout" \
      -e nsbox_image_name=nginx -e nsbox_nginx_host_port="$port" -e nsbox_nginx_replicas="$replicas"
    "$venv/bin/python" - "$port" "$replicas" <<'PY'
import sys
import urllib.request

port, replicas = sys.argv[1], int(sys.argv[2])
url = f"http://127.0.0.1:{port}/"
print(f"\nnginx in nsbox containers: {url}  (and port {port} on every address of this host)\n")
for _ in range(replicas):
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
        print(f"GET {url} -> HTTP {response.status}, answered by {response.headers['X-Nsbox-Replica']}")
print()
print(body)
if "nginx in nsbox containers" not in body:
    sys.exit("demo: the page does not say 'nginx in nsbox containers'")
print("make teardown removes it all.")
PY
    ;;
  teardown)
    ansible-playbook -i "$inventory" playbooks/teardown.yml \
      -e nsbox_state_dir="$state" -e nsbox_teardown_images=true
    ;;
  *)
    echo "usage: $0 deploy|teardown" >&2
    exit 2
    ;;
esac
