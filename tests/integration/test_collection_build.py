"""The built collection artifact carries the collection and nothing of the build machine."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from harness import COLLECTION_ROOT


def test_build_leaves_out_local_state(tmp_path: Path):
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    (COLLECTION_ROOT / "tests" / "output").mkdir(exist_ok=True)
    command = [str(galaxy), "collection", "build", "--force", "--output-path", str(tmp_path), str(COLLECTION_ROOT)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    [artifact] = tmp_path.glob("nsbox-primitives-*.tar.gz")
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
    assert "plugins/modules/overlay_mount.py" in names
    assert "MANIFEST.json" in names
    for unwanted in (".ansible", ".venv", "tests/output", ".git", "build", ".pytest_cache", ".ruff_cache"):
        leaked = [n for n in names if n == unwanted or n.startswith(unwanted + "/")]
        assert not leaked, f"{unwanted} leaked into the artifact: {leaked[:5]}"
    assert not [n for n in names if "__pycache__" in n]
