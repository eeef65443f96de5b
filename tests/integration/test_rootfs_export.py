"""rootfs_export from local sources against the real kernel: the overlay of the returned lowers and the
flattened dest equal `umoci unpack` of the same image; shared layers; refusals leave nothing behind."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils import mountinfo
from harness import COLLECTION_ROOT, four_runs, run_module, run_playbook
from image_builder import (
    CAP_NET_BIND,
    _entry,
    assert_same_tree,
    build_images,
    overlay_of,
    run,
    skopeo,
    tree_listing,
    umoci_unpack,
    write_tar,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    built = build_images(tmp_path_factory.mktemp("images"))
    built.reference = {name: tree_listing(umoci_unpack(built.tag(name), built.root / f"umoci-{name}"))
                       for name in ("busybox", "nginx")}
    skopeo("copy", f"oci:{built.layout}:busybox", f"oci-archive:{built.root / 'busybox-oci.tar'}")
    skopeo("copy", f"oci:{built.layout}:busybox", f"docker-archive:{built.root / 'busybox-docker.tar'}:busybox:1")
    # What `docker export` writes: one tar of the flattened root filesystem.
    run("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", built.root / "umoci-busybox" / "rootfs",
        "-cf", built.root / "busybox-export.tar", ".")
    run("gzip", "-k", built.root / "busybox-export.tar")
    return built


@pytest.fixture
def store(tmp_path: Path):
    yield tmp_path / "store"


def test_oci_layout_overlay_and_dest_equal_umoci(images, store: Path, tmp_path: Path):
    dest = tmp_path / "flat"
    args = {"source": "oci-layout", "path": str(images.layout), "image": "busybox", "store": str(store),
            "dest": str(dest)}
    results = four_runs("rootfs_export", args)
    first = results[1]
    assert len(first["layers"]) == 2 and first["unpacked_layers"] == first["layers"]
    assert first["lowerdirs"] == [str(store / "layers" / d[7:]) for d in reversed(first["layers"])]
    assert results[3]["unpacked_layers"] == [] and results[3]["downloaded_bytes"] == 0
    assert first["config"] == {"entrypoint": [], "cmd": ["/bin/sh"], "env": ["PATH=/usr/bin:/bin"],
                               "working_dir": "/root", "user": None, "exposed_ports": [], "stop_signal": None,
                               "labels": {"purpose": "test"}}
    # The stored top layer holds the whiteouts in overlayfs form.
    top = Path(first["lowerdirs"][0])
    hostname = os.lstat(top / "etc" / "hostname")
    assert stat.S_ISCHR(hostname.st_mode) and hostname.st_rdev == 0
    assert os.getxattr(top / "opt" / "data", "trusted.overlay.opaque") == b"y"

    expected = images.reference["busybox"]
    with overlay_of(first["lowerdirs"], tmp_path / "merged") as merged:
        assert_same_tree(tree_listing(merged), expected)
    assert_same_tree(tree_listing(dest), expected)
    # The details that matter, spelled out.
    assert not (dest / "etc" / "hostname").exists()
    assert os.listdir(dest / "opt" / "data") == ["new.txt"]
    assert stat.S_IMODE(os.lstat(dest / "bin" / "su-like").st_mode) == 0o4755
    assert os.lstat(dest / "bin" / "su-hard").st_ino == os.lstat(dest / "bin" / "su-like").st_ino
    assert os.getxattr(dest / "bin" / "ping6", "security.capability") == CAP_NET_BIND
    assert os.readlink(dest / "etc" / "localtime") == "/usr/share/zoneinfo/UTC"
    assert stat.S_IMODE(os.lstat(dest / "var" / "tmp").st_mode) == 0o1777

    # Drift: dest removed by hand is written again.
    shutil.rmtree(dest)
    repaired = run_module("rootfs_export", args)
    assert repaired["changed"] and repaired["unpacked_layers"] == [] and dest.is_dir()

    absent = four_runs("rootfs_export", {**args, "state": "absent"})
    assert sorted(absent[1]["pruned_layers"]) == sorted(first["layers"])
    assert not dest.exists()
    assert os.listdir(store / "layers") == [] and os.listdir(store / "images") == []


def test_second_image_unpacks_only_its_own_layer(images, store: Path):
    busybox = run_module("rootfs_export", {"source": "oci-layout", "path": str(images.layout), "image": "busybox",
                                           "store": str(store)})
    nginx = four_runs("rootfs_export", {"source": "oci-layout", "path": str(images.layout), "image": "nginx",
                                        "store": str(store)})[1]
    base = busybox["layers"][0]
    assert nginx["layers"][0] == base
    assert nginx["reused_layers"] == [base] and nginx["unpacked_layers"] == [nginx["layers"][1]]
    nginx_blob = next(layer for layer in json.loads(
        (images.layout / "blobs" / "sha256" / nginx["digest"][7:]).read_text())["layers"][1:])
    assert nginx["downloaded_bytes"] == nginx_blob["size"]  # only the nginx layer was read
    assert nginx["config"]["entrypoint"] == ["/usr/sbin/nginx"]
    assert nginx["config"]["cmd"] == ["-g", "daemon off;"]
    assert nginx["config"]["exposed_ports"] == ["80/tcp"] and nginx["config"]["stop_signal"] == "SIGQUIT"
    with overlay_of(nginx["lowerdirs"], store.parent / "merged") as merged:
        assert_same_tree(tree_listing(merged), images.reference["nginx"])

    # Dropping busybox keeps the base layer nginx still uses.
    gone = run_module("rootfs_export", {"source": "oci-layout", "path": str(images.layout), "image": "busybox",
                                        "store": str(store), "state": "absent"})
    assert gone["pruned_layers"] == [busybox["layers"][1]]
    assert (store / "layers" / base[7:]).is_dir()
    # A layer a mounted overlay uses is kept, and said so.
    with overlay_of(nginx["lowerdirs"], store.parent / "merged2"):
        kept = run_module("rootfs_export", {"source": "oci-layout", "path": str(images.layout), "image": "nginx",
                                            "store": str(store), "state": "absent"})
    assert sorted(kept["kept_layers"]) == sorted(nginx["layers"]) and kept["pruned_layers"] == []


@pytest.mark.parametrize(("source", "name", "image"), [
    ("oci-archive", "busybox-oci.tar", None),
    ("docker-archive", "busybox-docker.tar", "busybox:1"),
    ("rootfs-tar", "busybox-export.tar", None),
    ("rootfs-tar", "busybox-export.tar.gz", None),
])
def test_archives_give_the_same_rootfs(images, store: Path, tmp_path: Path, source, name, image):
    dest = tmp_path / "flat"
    args = {"source": source, "path": str(images.root / name), "store": str(store), "dest": str(dest),
            **({"image": image} if image else {})}
    result = four_runs("rootfs_export", args)[1]
    assert_same_tree(tree_listing(dest), images.reference["busybox"])
    if len(result["lowerdirs"]) > 1:
        with overlay_of(result["lowerdirs"], tmp_path / "merged") as merged:
            assert_same_tree(tree_listing(merged), images.reference["busybox"])
    else:
        assert_same_tree(tree_listing(Path(result["lowerdirs"][0])), images.reference["busybox"])
    run_module("rootfs_export", {**args, "state": "absent"})
    assert os.listdir(store / "layers") == []


def test_platform_is_chosen_from_an_index(images, store: Path, tmp_path: Path):
    layout = tmp_path / "multi"
    shutil.copytree(images.layout, layout)
    index = json.loads((layout / "index.json").read_text())
    by_name = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    inner = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {**by_name["busybox"], "annotations": {}, "platform": {"os": "linux", "architecture": "arm64"}},
        {**by_name["nginx"], "annotations": {}, "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    data = json.dumps(inner).encode()
    digest = run("sha256sum", input=data.decode()).stdout.split()[0]
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    index["manifests"].append({"mediaType": inner["mediaType"], "digest": f"sha256:{digest}", "size": len(data),
                               "annotations": {"org.opencontainers.image.ref.name": "multi"}})
    (layout / "index.json").write_text(json.dumps(index))
    args = {"source": "oci-layout", "path": str(layout), "image": "multi", "store": str(store)}
    amd64 = run_module("rootfs_export", {**args, "platform": "linux/amd64"})
    assert amd64["digest"] == by_name["nginx"]["digest"] and amd64["index_digest"] == f"sha256:{digest}"
    arm64 = run_module("rootfs_export", {**args, "platform": "linux/arm64/v8"})
    assert arm64["digest"] == by_name["busybox"]["digest"]
    missing = run_module("rootfs_export", {**args, "platform": "linux/s390x"}, expect_failure=True)
    assert "no image for platform linux/s390x; it offers linux/amd64, linux/arm64" in missing["msg"]


def malicious_layout(images, tmp_path: Path, *layers: Path) -> Path:
    layout = tmp_path / "evil-layout"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:evil")
    for layer in (images.base_tar, *layers):
        run("umoci", "raw", "add-layer", "--image", f"{layout}:evil", layer)
    return layout


def assert_nothing_left(store: Path, keep_layers: int = 0):
    assert os.listdir(store / "tmp") == []
    assert os.listdir(store / "images") == []
    assert len([n for n in os.listdir(store / "layers") if not n.endswith(".json")]) == keep_layers


@pytest.mark.parametrize(("entries", "message"), [
    ([_entry("../../../../tmp/nbt-escape", data=b"x")], "climbs out of the layer with '..'"),
    ([_entry("/tmp/nbt-escape", data=b"x")], "has an absolute path"),
    ([_entry("etc/shadow-link", b"1", linkname="../../../etc/shadow")], "climbs out"),
    ([_entry("evil", b"2", linkname="/tmp"), _entry("evil/nbt-escape", data=b"x")],
     "written through the symlink 'evil'"),
])
def test_malicious_layers_are_refused(images, store: Path, tmp_path: Path, entries, message):
    layer = write_tar(tmp_path / "evil.tar", *entries)
    layout = malicious_layout(images, tmp_path, layer)
    failed = run_module("rootfs_export", {"source": "oci-layout", "path": str(layout), "store": str(store)},
                        expect_failure=True)
    assert message in failed["msg"] and failed["member"] == entries[-1][0].name
    assert not Path("/tmp/nbt-escape").exists()
    assert_nothing_left(store)


def test_a_directory_symlinked_in_a_lower_layer(images, store: Path, tmp_path: Path):
    """The lower layer makes `data` a symlink to /tmp; the upper one writes data/file without a dir entry."""
    lower = write_tar(tmp_path / "lower.tar", _entry("data", b"2", linkname="/tmp"))
    upper = write_tar(tmp_path / "upper.tar", _entry("data/nbt-escape", data=b"x"))
    layout = malicious_layout(images, tmp_path, lower, upper)
    failed = run_module("rootfs_export", {"source": "oci-layout", "path": str(layout), "store": str(store),
                                          "dest": str(tmp_path / "flat")}, expect_failure=True)
    assert "writes member 'data/nbt-escape' through 'data', which a lower layer made a symlink" in failed["msg"]
    assert not Path("/tmp/nbt-escape").exists() and not (tmp_path / "flat").exists()
    assert_nothing_left(store)
    # A layer that replaces the symlink by a directory of its own is fine (and means the same everywhere).
    upper_ok = write_tar(tmp_path / "upper-ok.tar", _entry("data", b"5"), _entry("data/file", data=b"x"))
    fine = malicious_layout(images, tmp_path / "ok", lower, upper_ok)
    result = run_module("rootfs_export", {"source": "oci-layout", "path": str(fine), "store": str(store),
                                          "dest": str(tmp_path / "flat")})
    assert (tmp_path / "flat" / "data" / "file").read_bytes() == b"x"
    assert len(result["layers"]) == 3


def _tamper(layout: Path, transform) -> str:
    """Rewrite the top layer blob of the only image in place (keeping its name); returns the blob digest."""
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    blob = layout / "blobs" / "sha256" / manifest["layers"][-1]["digest"][7:]
    blob.write_bytes(transform(blob.read_bytes()))
    return manifest["layers"][-1]["digest"]


@pytest.mark.parametrize(("transform", "message"), [
    (lambda data: data[: len(data) // 2], "gzip stream ends early"),
    (lambda data: gzip.compress(gzip.decompress(data) + b"\0" * 1024), "blob digest mismatch"),
])
def test_corrupt_blobs_fail_and_keep_nothing(images, store: Path, tmp_path: Path, transform, message):
    layer = write_tar(tmp_path / "big.tar", _entry("big", data=os.urandom(300_000)))
    layout = malicious_layout(images, tmp_path, layer)
    digest = _tamper(layout, transform)
    failed = run_module("rootfs_export", {"source": "oci-layout", "path": str(layout), "store": str(store)},
                        expect_failure=True)
    assert message in failed["msg"]
    if "mismatch" in message:
        assert failed["expected"] == digest
    assert_nothing_left(store)


def test_bad_input(images, store: Path, tmp_path: Path):
    cases = [
        ({"source": "oci-layout", "path": str(tmp_path / "nope")}, "does not exist"),
        ({"source": "oci-layout", "path": str(images.layout)}, "holds 2 images; set image to one of: busybox, nginx"),
        ({"source": "oci-layout", "path": str(images.layout), "image": "redis"}, "has no image named 'redis'"),
        ({"source": "oci-layout", "path": str(images.layout), "image": "busybox", "platform": "amd64"},
         "is not OS/ARCHITECTURE"),
        ({"source": "docker-archive", "path": str(images.layout / "index.json")}, "not an uncompressed tar"),
        ({"source": "oci-layout", "path": str(images.layout), "image": "busybox", "dest": "/"}, "must be a directory"),
    ]
    for extra, message in cases:
        failed = run_module("rootfs_export", {"store": str(store), **extra}, expect_failure=True)
        assert message in failed["msg"], (extra, failed["msg"])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine").write_text("keep")
    failed = run_module("rootfs_export", {"source": "oci-layout", "path": str(images.layout), "image": "busybox",
                                          "store": str(store), "dest": str(occupied)}, expect_failure=True)
    assert "was not written by rootfs_export" in failed["msg"] and (occupied / "mine").read_text() == "keep"


def test_two_runs_at_once_unpack_once(images, store: Path):
    args = {"source": "oci-layout", "path": str(images.layout), "image": "nginx", "store": str(store)}
    results = []
    threads = [threading.Thread(target=lambda: results.append(run_module("rootfs_export", args))) for _run in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    unpacked = sorted(len(r["unpacked_layers"]) for r in results)
    assert unpacked == [0, 2], [r["unpacked_layers"] for r in results]
    assert results[0]["lowerdirs"] == results[1]["lowerdirs"]


def test_interrupted_unpack_leaves_nothing_half_made(images, store: Path):
    """A run killed mid-unpack leaves a temporary directory only; the next run removes it and completes."""
    args = {"source": "oci-layout", "path": str(images.layout), "image": "nginx", "store": str(store)}
    (store / "tmp").mkdir(parents=True)
    layers = store / "layers"
    layers.mkdir()
    nginx_manifest = json.loads((images.layout / "index.json").read_text())["manifests"][1]["digest"]
    config_digest = json.loads((images.layout / "blobs/sha256" / nginx_manifest[7:]).read_text())["config"]["digest"]
    diff_id = json.loads((images.layout / "blobs/sha256" / config_digest[7:]).read_text())["rootfs"]["diff_ids"][1]
    half = store / "tmp" / f"{diff_id[7:]}.99999.deadbeef"
    (half / "usr").mkdir(parents=True)
    (layers / diff_id[7:]).mkdir()  # renamed but its record never written
    result = run_module("rootfs_export", args)
    assert diff_id in result["unpacked_layers"]
    assert os.listdir(store / "tmp") == []
    assert (layers / f"{diff_id[7:]}.json").exists()


def test_through_ansible_playbook_with_overlay_mount(images, tmp_path: Path):
    playbook = COLLECTION_ROOT / "tests" / "integration" / "playbooks" / "rootfs_export.yml"
    proc = run_playbook(playbook, "-e", f"base={tmp_path}", "-e", f"layout={images.layout}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    assert not mountinfo.mounts_below(str(tmp_path))


def test_overlay_mount_takes_a_long_layer_list(tmp_path: Path):
    """Store paths are long: three layers already pass fsconfig's 256-byte string limit (lowerdir+ then)."""
    lowers = []
    for index in range(4):
        layer = tmp_path / "layers" / (f"{index}" * 64)
        (layer / f"file{index}").parent.mkdir(parents=True)
        (layer / f"file{index}").write_text(str(index))
        lowers.append(str(layer))
    assert len(":".join(lowers)) > 256
    args = {"path": str(tmp_path / "merged"), "lowerdirs": lowers, "upperdir": str(tmp_path / "upper"),
            "workdir": str(tmp_path / "work")}
    try:
        results = four_runs("overlay_mount", args)
        assert results[3]["lowerdirs"] == lowers
        assert sorted(os.listdir(tmp_path / "merged")) == ["file0", "file1", "file2", "file3"]
    finally:
        run_module("overlay_mount", {**args, "state": "absent", "remove_upper": True})
    assert not mountinfo.mounts_below(str(tmp_path))
