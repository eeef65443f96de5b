"""Hand-made container root filesystems for tests, from what Debian's packages put on this host.

No image registry or Docker is needed: a busybox rootfs is busybox-static plus its applet links and the
usual top-level directories; an nginx rootfs adds the host's nginx-light binary with the shared libraries
it links to, a minimal configuration that runs in the foreground with workers dropping to the `nginx`
user (uid/gid 101, as in the official nginx image), and a page to serve.

    python tests/rootfs_builder.py busybox DEST
    python tests/rootfs_builder.py nginx DEST
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

BUSYBOX = "/bin/busybox"
NGINX = "/usr/sbin/nginx"
NGINX_UID = NGINX_GID = 101

NGINX_CONF = """\
user nginx;
worker_processes 2;
daemon off;
pid /run/nginx.pid;
error_log /dev/stderr notice;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    access_log /var/log/nginx/access.log;
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

INDEX_HTML = "<html><body><h1>nsbox nginx</h1></body></html>\n"


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _skeleton(root: Path) -> None:
    for directory in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "var/log", "root", "usr/bin", "usr/sbin"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    (root / "root").chmod(0o700)


def _install_busybox(root: Path) -> None:
    target = root / "bin" / "busybox"
    shutil.copy2(BUSYBOX, target)
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if link.name == "busybox" or os.path.lexists(link):
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def busybox_rootfs(dest: str | os.PathLike, users: str = "") -> Path:
    """A minimal rootfs: busybox with every applet at its usual path, root and nobody in /etc/passwd."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    _skeleton(root)
    _install_busybox(root)
    _write(root / "etc" / "passwd", "root:x:0:0:root:/root:/bin/sh\n" + users
           + "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    _write(root / "etc" / "group", "root:x:0:\n" + "".join(
        f"{line.split(':')[0]}:x:{line.split(':')[3]}:\n" for line in users.splitlines() if line)
        + "nogroup:x:65534:\n")
    _write(root / "etc" / "hostname", "nsbox\n")
    return root


def _shared_libraries(binary: str) -> list[str]:
    output = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libraries = []
    for line in output.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            libraries.append(match.group(1))
    return libraries


def _copy_preserving_path(root: Path, source: str) -> None:
    """Copy source to the same path inside root, following symlinks on the way (lib -> usr/lib)."""
    real = os.path.realpath(source)
    for path in dict.fromkeys((source, real)):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy2(real, target)


def nginx_rootfs(dest: str | os.PathLike) -> Path:
    """busybox plus the host's nginx, configured to run in the foreground as PID 1, workers as `nginx`."""
    root = busybox_rootfs(dest, users=f"nginx:x:{NGINX_UID}:{NGINX_GID}:nginx:/nonexistent:/bin/false\n")
    _copy_preserving_path(root, NGINX)
    for library in _shared_libraries(NGINX):
        _copy_preserving_path(root, library)
    _write(root / "etc" / "nginx" / "nginx.conf", NGINX_CONF)
    shutil.copy2("/etc/nginx/mime.types", root / "etc" / "nginx" / "mime.types")
    _write(root / "usr" / "share" / "nginx" / "html" / "index.html", INDEX_HTML)
    for directory in ("var/log/nginx", "var/lib/nginx"):
        path = root / directory
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, NGINX_UID, NGINX_GID)
    return root


def main(argv: list[str]) -> int:
    builders = {"busybox": busybox_rootfs, "nginx": nginx_rootfs}
    if len(argv) != 3 or argv[1] not in builders:
        print(__doc__, file=sys.stderr)
        return 2
    print(builders[argv[1]](argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
