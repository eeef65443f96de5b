"""Wall time of deploying nginx on a fleet with Ansible: playbooks/deploy-nginx.yml (nsbox) against the
containers.podman collection with Debian's podman (bench/playbooks/podman-nginx.yml), on 1, 3 and 6
fleet hosts (tests/fleet/fleet_host.py: separate machines on this one, reached over SSH).

    tools/run-bench.sh bench/deploy_nginx.py      (NSBOX_BENCH_FLEET=1,3,6 sizes)

For each size, on the same freshly started hosts: nsbox first deploy, nsbox unchanged re-run (every
host must report changed=0), teardown.yml; then podman first deploy and unchanged re-run. Both
deploy the same image (the OCI layout of tools/build-nginx-image.py; podman pulls it through its
`oci:` transport), one container per host, the host port 8080 published to its port 80, and both
wait until it answers. Both run with the same ansible-core, forks, SSH settings and pipelining.
The hosts, with everything podman and nsbox made in them, are stopped at the end of each size.

containers.podman is not on this machine: the PyPI `ansible` package bundles it; it is installed
once into bench/output/venv-podman (never into the project's virtualenv) and only its collection
is used.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "output"
FLEET = ROOT / "tests" / "fleet" / "fleet_host.py"
IMAGE_DIR = OUT / "nginx-oci"  # on this machine's root filesystem, which the fleet hosts see
PODMAN_VENV = OUT / "venv-podman"
PODMAN_COLLECTIONS = PODMAN_VENV / "lib" / "python3.11" / "site-packages"
SIZES = [int(n) for n in os.environ.get("NSBOX_BENCH_FLEET", "1,3,6").split(",")]
PREFIX = "nbtfleet-b"
PORT = 8080
PYTHON = sys.executable
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def fleet(*args: str) -> str:
    return subprocess.run(["/usr/bin/python3", str(FLEET), *args], check=True, capture_output=True,
                          text=True).stdout


def prepare() -> None:
    if not (IMAGE_DIR / "index.json").exists():
        subprocess.run([PYTHON, str(ROOT / "tools" / "build-nginx-image.py"), str(IMAGE_DIR)], check=True)
    if not (PODMAN_COLLECTIONS / "ansible_collections" / "containers" / "podman").is_dir():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(PODMAN_VENV)], check=True)
        subprocess.run([str(PODMAN_VENV / "bin" / "pip"), "install", "-q", "ansible"], check=True)


def write_inventory(directory: Path) -> None:
    (directory / "group_vars").mkdir(parents=True, exist_ok=True)
    (directory / "hosts.yml").write_text(fleet("inventory", PREFIX, "--python", PYTHON))
    (directory / "group_vars" / "all.yml").write_text(f"""---
nsbox_host_install_packages: false
nsbox_become: false
nsbox_image_source: oci-layout
nsbox_image_path: {IMAGE_DIR}
nsbox_image_name: nginx
nsbox_nginx_host_port: {PORT}
bench_image_ref: "oci:{IMAGE_DIR}:nginx"
bench_image_name: "localhost{IMAGE_DIR}:latest"
""")


def run_playbook(inventory: Path, playbook: Path) -> tuple[float, dict[str, tuple[int, int, int]], str]:
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_PIPELINING="1",
               ANSIBLE_FORKS="10", ANSIBLE_HOST_KEY_CHECKING="1",
               ANSIBLE_COLLECTIONS_PATH=f"{ROOT / '.ansible' / 'collections'}:{PODMAN_COLLECTIONS}")
    start = time.monotonic()
    proc = subprocess.run([PLAYBOOK, "-i", str(inventory), str(playbook)], capture_output=True, text=True,
                          env=env, check=False)
    elapsed = time.monotonic() - start
    recap = {m[0]: (int(m[1]), int(m[2]), int(m[3])) for m in RECAP.findall(proc.stdout)}
    if proc.returncode != 0:
        raise RuntimeError(f"{playbook.name} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr}")
    return elapsed, recap, proc.stdout


def check_serving(names: list[str]) -> None:
    for name in names:
        index = int((Path("/run/nbtfleet") / name / "index").read_text())
        with urllib.request.urlopen(f"http://10.251.{index}.2:{PORT}/", timeout=5) as response:
            assert response.status == 200, (name, response.status)


def measure(size: int) -> dict[str, float]:
    names = [f"{PREFIX}{i}" for i in range(1, size + 1)]
    inventory = OUT / f"nbtfleet-inventory-{size}"
    results: dict[str, float] = {}
    try:
        for i, name in enumerate(names, start=1):
            fleet("start", name, str(100 + i))
        write_inventory(inventory)
        for tool, playbook in (("nsbox", ROOT / "playbooks" / "deploy-nginx.yml"),
                               ("podman", ROOT / "bench" / "playbooks" / "podman-nginx.yml")):
            first, recap = run_playbook(inventory, playbook)[:2]
            assert all(recap[name][0] > 0 for name in names), (tool, "first run changed nothing", recap)
            check_serving(names)
            rerun, recap, out = run_playbook(inventory, playbook)
            assert all(recap[name] == (0, 0, 0) for name in names), (tool, "re-run changed", recap, out[-3000:])
            check_serving(names)
            results[f"{tool}_first"], results[f"{tool}_rerun"] = first, rerun
            if tool == "nsbox":
                run_playbook(inventory, ROOT / "playbooks" / "teardown.yml")
    finally:
        fleet("stop-all", PREFIX)
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(inventory.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            inventory.rmdir()
    return results


def main() -> int:
    prepare()
    rows = []
    try:
        for size in SIZES:
            rows.append((size, measure(size)))
    finally:
        fleet("stop-all", PREFIX)
    left = subprocess.run(["/usr/bin/python3", str(FLEET), "residue", PREFIX], capture_output=True, text=True,
                          check=False)
    print("deploy nginx on N fleet hosts over SSH, wall time in seconds (ratio = podman / nsbox)")
    print(f"{'hosts':>5} | {'nsbox first':>11} {'podman first':>12} {'ratio':>6} | "
          f"{'nsbox re-run':>12} {'podman re-run':>13} {'ratio':>6} | {'nsbox re-run/host':>17}")
    for size, r in rows:
        print(f"{size:>5} | {r['nsbox_first']:>11.1f} {r['podman_first']:>12.1f} "
              f"{r['podman_first'] / r['nsbox_first']:>6.2f} | {r['nsbox_rerun']:>12.1f} "
              f"{r['podman_rerun']:>13.1f} {r['podman_rerun'] / r['nsbox_rerun']:>6.2f} | "
              f"{r['nsbox_rerun'] / size:>17.1f}")
    print(f"harness left on this machine: {left.stdout.strip()}")
    return 0 if left.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
