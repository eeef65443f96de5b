"""tools/build-nginx-image.py: the demo's offline image. Building twice gives the same image (so a
redeployment of a rebuilt image changes nothing), with both tags, and the oci-archive holds the layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

import pytest
from harness import COLLECTION_ROOT

BUILDER = COLLECTION_ROOT / "tools" / "build-nginx-image.py"
pytestmark = pytest.mark.skipif(not (shutil.which("umoci") and shutil.which("nginx")),
                                reason="needs umoci and nginx-light")


def build(*args) -> None:
    subprocess.run([sys.executable, str(BUILDER), *map(str, args)], check=True, capture_output=True)


def test_same_image_twice_and_an_archive(tmp_path):
    layout = tmp_path / "layout"
    build(layout)
    first = (layout / "index.json").read_text()
    build(layout, tmp_path / "image.tar")
    assert (layout / "index.json").read_text() == first
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
            for m in json.loads(first)["manifests"]}
    assert sorted(tags) == ["busybox", "nginx"]
    nginx = json.loads((layout / "blobs" / "sha256" / tags["nginx"].split(":")[1]).read_text())
    config = json.loads((layout / "blobs" / "sha256" / nginx["config"]["digest"].split(":")[1]).read_text())
    assert config["config"]["Entrypoint"] == ["/usr/sbin/nginx"]
    assert len(nginx["layers"]) == 2
    with tarfile.open(tmp_path / "image.tar") as archive:
        names = archive.getnames()
    assert "index.json" in names and "oci-layout" in names
    assert f"blobs/sha256/{tags['nginx'].split(':')[1]}" in names
