#!/usr/bin/env bash
# Installs what `make demo` (runtime) or `make test` (test) needs on a fresh Debian or Ubuntu host.
# Quick and silent when nothing is missing, so every make target can call it.
set -euo pipefail
mode=${1:-runtime}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv}
python=${PYTHON:-/usr/bin/python3}
cd "$root"

lists=(requirements/apt.txt)
pip_requirements=requirements/python.txt
if [ "$mode" = test ]; then
  lists+=(requirements/apt-test.txt)
  pip_requirements=requirements/python-test.txt
fi

mapfile -t wanted < <(grep -hvE '^\s*(#|$)' "${lists[@]}")
# Ubuntu names the generic kernel package differently; the VM tier boots whichever is there.
if grep -qi '^ID=ubuntu' /etc/os-release 2>/dev/null; then
  wanted=("${wanted[@]/#linux-image-amd64/linux-image-generic}")
fi
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}; run as root (or sudo make ...)" >&2
    exit 1
  fi
  echo "install-deps: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The virtualenv is rebuilt only when its pinned requirements change.
stamp="$venv/.requirements.sha256"
want_hash=$(cat requirements/python*.txt "$pip_requirements" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want_hash" ]; then
  echo "install-deps: virtualenv $venv from $pip_requirements"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$pip_requirements"
  echo "$want_hash" > "$stamp"
fi

# Ansible finds the collection through ANSIBLE_COLLECTIONS_PATH=.ansible/collections.
link="$root/.ansible/collections/ansible_collections/nsbox/primitives"
mkdir -p "$(dirname "$link")" "$root/.ansible/tmp"
[ "$(readlink "$link" 2>/dev/null)" = "$root" ] || ln -sfn "$root" "$link"

if [ "$mode" = test ]; then
  "$venv/bin/python" tools/prime-ansible-test-cache.py
fi
