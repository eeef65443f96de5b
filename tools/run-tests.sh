#!/usr/bin/env bash
# Runs the test steps (all of them by default, or those named) and ends with one summary line.
# Expects tools/install-deps.sh test to have run (make test does that).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
venv=${VENV:-$root/.venv}
case ":$PATH:" in *":$venv/bin:"*) ;; *) export PATH="$venv/bin:$PATH" ;; esac
export ANSIBLE_COLLECTIONS_PATH="$root/.ansible/collections"
export ANSIBLE_LOCAL_TEMP="$root/.ansible/tmp"
export NSBOX_PYTHON="$venv/bin/python"
mkdir -p tests/output

step_lint() {
  local dirs=()
  for dir in plugins tests tools bench roles extensions; do [ -d "$dir" ] && dirs+=("$dir"); done
  ruff check "${dirs[@]}"
}

step_sanity() {
  # ansible-test insists on running from inside ansible_collections/NAMESPACE/NAME.
  local dest="$root/build/sanity/ansible_collections/nsbox/primitives"
  rm -rf "$dest" && mkdir -p "$dest"
  git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ "$dest/"
  # A repository of its own: inside ours, git would report the (ignored) copy as empty.
  (cd "$dest" && git init -q && git add -A && ansible-test sanity --venv --python 3.11 --color no)
}

step_unit() {
  pytest -q tests/unit
}

step_integration() {
  pytest -q tests/integration
}

step_ansible_lint() {
  ansible-lint -q
}

step_molecule() {
  # The vm scenario needs the VM that step_vm boots; it runs there.
  local scenarios=() rc=0
  for scenario in extensions/molecule/*/molecule.yml; do
    [ -e "$scenario" ] || continue
    scenario=$(basename "$(dirname "$scenario")")
    [ "$scenario" = vm ] || scenarios+=("$scenario")
  done
  [ ${#scenarios[@]} -gt 0 ] || { echo "no molecule scenarios yet"; return 0; }
  for scenario in "${scenarios[@]}"; do
    echo "--- molecule scenario ${scenario}"
    (cd extensions && molecule test -s "$scenario") || rc=1
  done
  return $rc
}

step_vm() {
  if [ -x tests/vm/run.sh ]; then tests/vm/run.sh; else echo "no VM tier yet"; fi
}

all_steps=(lint sanity unit integration ansible_lint molecule vm)
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=("${all_steps[@]}")
passed=0 failed=0 failed_names=()
for step in "${steps[@]}"; do
  step=${step//-/_}
  echo "=== ${step} ==="
  start=$SECONDS
  if "step_${step}"; then
    passed=$((passed + 1)); result=ok
  else
    failed=$((failed + 1)); failed_names+=("$step"); result=FAILED
  fi
  echo "=== ${step}: ${result} in $((SECONDS - start)) s ==="
done
[ $failed = 0 ] || echo "failed steps: ${failed_names[*]}"
echo "steps: ${passed} passed, ${failed} failed"
[ $failed = 0 ]
