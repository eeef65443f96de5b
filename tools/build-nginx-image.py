"""Builds the demo's nginx image offline, without Docker, as an OCI image layout.

The image is made from what Debian's packages put on this host: a base layer of busybox-static with
its applet links and the usual top-level directories (also tagged `busybox`, the image of
playbooks/red-blue.yml), and a layer with the host's nginx-light binary, the shared libraries it links
to and a minimal configuration (workers as the `nginx` user, uid/gid 101, as in the official image).
umoci writes the layout. Building again with the same inputs gives the same layers (fixed mtimes,
numeric owners), so a deployment of a rebuilt image changes nothing.

    python tools/build-nginx-image.py LAYOUT_DIR [ARCHIVE]

tags LAYOUT_DIR:nginx and LAYOUT_DIR:busybox, and with ARCHIVE also writes the layout as one oci-archive
file (a tar of the layout; nsbox_image_source=oci-archive), handier to copy to a remote host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
NGINX = "/usr/sbin/nginx"
NGINX_UID = NGINX_GID = 101
MTIME = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"

NGINX_CONF = """\
user nginx;
worker_processes 1;
pid /run/nginx.pid;
error_log /dev/stderr notice;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    access_log /dev/stdout;
    client_body_temp_path /var/lib/nginx/body;
    proxy_temp_path /var/lib/nginx/proxy;
    fastcgi_temp_path /var/lib/nginx/fastcgi;
    uwsgi_temp_path /var/lib/nginx/uwsgi;
    scgi_temp_path /var/lib/nginx/scgi;
    server {
        listen 80;
        root /usr/share/nginx/html;
    }
}
"""
INDEX_HTML = "<html><body><h1>nginx in nsbox containers</h1></body></html>\n"


def run(*command: str | os.PathLike) -> None:
    subprocess.run([str(c) for c in command], check=True, capture_output=True, text=True)


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def busybox_tree(root: Path) -> Path:
    for directory in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "var/log", "root", "usr/bin", "usr/sbin"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if link.name != "busybox" and not os.path.lexists(link):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    write(root / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n"
          f"nginx:x:{NGINX_UID}:{NGINX_GID}:nginx:/nonexistent:/bin/false\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    write(root / "etc" / "group", f"root:x:0:\nnginx:x:{NGINX_GID}:\nnogroup:x:65534:\n")
    write(root / "etc" / "hostname", "nsbox\n")
    return root


def copy_with_path(root: Path, source: str) -> None:
    """Copy source to the same path inside root, and its real path too (lib -> usr/lib)."""
    real = os.path.realpath(source)
    for path in dict.fromkeys((source, real)):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy2(real, target)


def nginx_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    copy_with_path(root, NGINX)
    ldd = subprocess.run(["ldd", NGINX], capture_output=True, text=True, check=True).stdout
    for library in re.findall(r"(/\S+) \(0x", ldd):
        copy_with_path(root, library)
    write(root / "etc" / "nginx" / "nginx.conf", NGINX_CONF)
    shutil.copy2("/etc/nginx/mime.types", root / "etc" / "nginx" / "mime.types")
    write(root / "usr" / "share" / "nginx" / "html" / "index.html", INDEX_HTML)
    for directory in ("var/log/nginx", "var/lib/nginx"):
        (root / directory).mkdir(parents=True, exist_ok=True)
        os.chown(root / directory, NGINX_UID, NGINX_GID)
    return root


def layer_tar(root: Path, out: Path) -> Path:
    def fix(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""
        info.mtime = MTIME
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(os.listdir(root)):
            archive.add(root / name, arcname=name, filter=fix)
    return out


def build(layout: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="nsbox-image-") as tmp:
        work = Path(tmp)
        base = layer_tar(busybox_tree(work / "base"), work / "base.tar")
        nginx = layer_tar(nginx_tree(work / "nginx"), work / "nginx.tar")
        if layout.exists():
            shutil.rmtree(layout)
        layout.parent.mkdir(parents=True, exist_ok=True)
        run("umoci", "init", "--layout", layout)
        for tag, layers, config in (
            ("busybox", [base], ["--config.cmd", "/bin/sh", "--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]),
            ("nginx", [base, nginx], ["--config.entrypoint", "/usr/sbin/nginx", "--config.cmd", "-g",
                                      "--config.cmd", "daemon off;", "--config.exposedports", "80/tcp",
                                      "--config.stopsignal", "SIGQUIT",
                                      "--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]),
        ):
            image = f"{layout}:{tag}"
            run("umoci", "new", "--image", image)
            for layer in layers:
                run("umoci", "raw", "add-layer", "--no-history", "--image", image, layer)
            run("umoci", "config", "--no-history", "--created", CREATED, "--image", image, *config)
    return layout


def archive(layout: Path, out: Path) -> Path:
    """The layout as an oci-archive: its files at the top of a tar, in a stable order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirs, files in os.walk(layout):
            dirs.sort()
            for name in sorted(files):
                path = Path(directory) / name
                info = tar.gettarinfo(path, arcname=str(path.relative_to(layout)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = MTIME
                with open(path, "rb") as data:
                    tar.addfile(info, data)
    return out


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    layout = build(Path(argv[1]).absolute())
    print(layout)
    if len(argv) == 3:
        print(archive(layout, Path(argv[2]).absolute()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
