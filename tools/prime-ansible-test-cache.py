"""Let `ansible-test sanity --venv` bootstrap pip without reaching its download server.

ansible-test fetches a get-pip.py script from ci-files.testing.ansible.com to seed the
virtualenvs it creates for sanity tests. Only PyPI is reachable from our hosts and CI, so this
writes that cached script itself: it runs the same pip release from its wheel, taken from PyPI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ansible_test._internal.python_requirements import get_venv_packages

SCRIPT = '''"""get-pip.py stand-in written by nsbox.primitives tools/prime-ansible-test-cache.py."""
import sys
sys.path.insert(0, {wheel!r})
from pip._internal.cli.main import main
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", *args]))
'''


class _Python:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"


def main() -> None:
    pip_version = get_venv_packages(_Python())["pip"]
    cache = Path.home() / ".ansible" / "test" / "cache"
    script = cache / f"get_pip_{pip_version.replace('.', '_')}.py"
    wheel = cache / f"pip-{pip_version}-py3-none-any.whl"
    if script.exists() and wheel.exists():
        return
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "-d", str(cache), f"pip=={pip_version}"],
        check=True,
    )
    script.write_text(SCRIPT.format(wheel=str(wheel)))
    print(f"primed ansible-test's pip {pip_version} bootstrap: {script}")


if __name__ == "__main__":
    main()
