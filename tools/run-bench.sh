#!/usr/bin/env bash
# Runs every benchmark in bench/ (or those named), each comparing nsbox with its anchors in one run.
# Benchmarks are not tests: they print measurements and ratios, and write them under bench/output/.
# bench/deploy_nginx.py (playbooks/deploy-nginx.yml against containers.podman on 1, 3 and 6 fleet hosts)
# takes about ten minutes; the first run installs the PyPI `ansible` package into bench/output/venv-podman
# for its containers.podman collection.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
venv=${VENV:-$root/.venv}
export ANSIBLE_COLLECTIONS_PATH="$root/.ansible/collections"
export PYTHONPATH="$root/.ansible/collections${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p bench/output
status=0
if [ $# -gt 0 ]; then benches=("$@"); else benches=(bench/*.py); fi
for bench in "${benches[@]}"; do
  [ -e "$bench" ] || continue
  echo "=== $bench ==="
  "$venv/bin/python" "$bench" | tee "bench/output/$(basename "$bench" .py).txt" || status=1
done
exit $status
