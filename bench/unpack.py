"""Layer unpack throughput: rootfs_export's extractor against GNU tar and `umoci unpack`, same layers, one run.

The layers are tars of host directories (many small files, and large binaries), gzip-compressed and
uncompressed. Every tool writes into a fresh directory on the same filesystem; each is run REPEAT times
and the median is reported, with the ratio tool time / nsbox time (above 1: nsbox is faster). Each
layer is written to disk (times include a final sync: getting the files to disk, not only into the page
cache) and to tmpfs (the CPU cost alone). nsbox also checks the blob's sha256 (and, for a compressed
blob, the tar's); GNU tar checks nothing, so "sha+tar" is GNU tar after `openssl dgst -sha256` of the
blob, the same guarantee. On an uncompressed layer the sha256 alone (about 1.4 GB/s here, one core) can take longer
than GNU tar's whole unpack to tmpfs.

    python bench/unpack.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ansible_collections.nsbox.primitives.plugins.module_utils.images_extract import extract_layer

REPEAT = int(os.environ.get("NSBOX_BENCH_REPEAT", "3"))
# Disk times include writing the files out (a sync); tmpfs shows the CPU cost alone.
TMPFS = Path("/dev/shm")
LAYERS = {
    "small-files": ["usr/lib/python3.11", "usr/share/doc", "usr/share/zoneinfo"],
    "large-files": ["usr/bin", "usr/lib/x86_64-linux-gnu/perl-base", "usr/libexec"],
}


def run(*command: str | os.PathLike) -> None:
    subprocess.run([str(c) for c in command], check=True, capture_output=True)


def timed(actions: dict, fresh: Path) -> dict[str, float]:
    """Median seconds of each action; the tools take turns, so a busy disk weighs on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _round in range(REPEAT):
        for name, action in actions.items():
            if fresh.exists():
                shutil.rmtree(fresh)
            fresh.mkdir()
            subprocess.run(["sync"], check=True)
            start = time.perf_counter()
            action(fresh)
            subprocess.run(["sync"], check=True)  # count writing the files out, not only dirtying the cache
            times[name].append(time.perf_counter() - start)
    shutil.rmtree(fresh)
    return {name: statistics.median(values) for name, values in times.items()}


def nsbox(blob: Path):
    zstd = shutil.which("zstd")

    def action(dest: Path) -> None:
        with open(blob, "rb") as handle:
            extract_layer(handle, str(dest), zstd=zstd)
    return action


def gnu_tar(blob: Path):
    compressed = ["-z"] if blob.suffix == ".gz" else []

    def action(dest: Path) -> None:
        run("tar", *compressed, "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-f", blob,
            "-C", dest)
    return action


def verified_tar(blob: Path):
    """GNU tar given what nsbox guarantees: the blob's sha256 checked before it is unpacked (with OpenSSL,
    which uses the CPU's SHA instructions; coreutils' sha256sum is about 3.5 times slower here)."""
    extract = gnu_tar(blob)

    def action(dest: Path) -> None:
        run("openssl", "dgst", "-sha256", blob)
        extract(dest)
    return action


def umoci(layout: Path):
    def action(dest: Path) -> None:
        run("umoci", "unpack", "--image", f"{layout}:bench", dest / "bundle")
    return action


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="nsbox-bench-unpack-", dir="/var/tmp"))
    try:
        print(f"{'layer, written to':<30}{'MB':>6}{'files':>7}  {'nsbox s':>8}{'GNU tar s':>10}"
              f"{'sha+tar s':>10}{'umoci s':>9}  {'nsbox MB/s':>10}{'tar/nsbox':>10}{'sha+tar/nsbox':>14}"
              f"{'umoci/nsbox':>12}")
        for name, paths in LAYERS.items():
            present = [p for p in paths if os.path.exists("/" + p)]
            plain = work / f"{name}.tar"
            run("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", "/", "-cf", plain, *present)
            files = int(subprocess.run(f"tar -tf {plain} | wc -l", shell=True, check=True, capture_output=True,
                                       text=True).stdout)
            gz = work / f"{name}.tar.gz"
            run("sh", "-c", f"gzip -6 -c {plain} > {gz}")
            layout = work / f"{name}-layout"
            run("umoci", "init", "--layout", layout)
            run("umoci", "new", "--image", f"{layout}:bench")
            run("umoci", "raw", "add-layer", "--image", f"{layout}:bench", plain)
            size_mb = plain.stat().st_size / 1e6
            for label, blob in ((f"{name} (gzip)", gz), (f"{name} (tar)", plain)):
                actions = {"nsbox": nsbox(blob), "tar": gnu_tar(blob), "verified": verified_tar(blob)}
                if blob is gz:
                    actions["umoci"] = umoci(layout)
                for target, out in (("disk", work / "out"), ("tmpfs", TMPFS / f"nsbox-bench-{os.getpid()}")):
                    result = timed(actions, out)
                    ours, tar, verified, umoci_time = (result["nsbox"], result["tar"], result["verified"],
                                                       result.get("umoci"))
                    umoci_cells = (f"{umoci_time:>9.2f}", f"{umoci_time / ours:>12.2f}") if umoci_time else ("-", "-")
                    print(f"{label + ', ' + target:<30}{size_mb:>6.0f}{files:>7}  {ours:>8.2f}{tar:>10.2f}"
                          f"{verified:>10.2f}{umoci_cells[0]:>9}  {size_mb / ours:>10.0f}{tar / ours:>10.2f}"
                          f"{verified / ours:>14.2f}{umoci_cells[1]:>12}", flush=True)
        print(f"median of {REPEAT} runs each; umoci unpacks the gzip layer of an OCI layout (its only input form); "
              "sha+tar checks the blob's sha256 (openssl dgst), then unpacks it with GNU tar (what nsbox guarantees)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
