"""rootfs_export against a real registry (Debian's docker-registry) on 127.0.0.1: TLS from a self-signed CA,
htpasswd basic auth, bearer tokens from a token service of the test's own, gzip and zstd layers."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from harness import four_runs, run_module
from image_builder import assert_same_tree, build_images, overlay_of, run, skopeo, tree_listing, umoci_unpack

pytestmark = pytest.mark.slow
USER, PASSWORD = "nbtuser", secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it; a second, untrusted CA."""
    root = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=nbt {ca}",
            "-keyout", root / f"{ca}.key", "-out", root / f"{ca}.crt")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", root / "server.key",
        "-out", root / "server.csr")
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("openssl", "x509", "-req", "-in", root / "server.csr", "-CA", root / "ca.crt", "-CAkey", root / "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", root / "san.ext", "-out", root / "server.crt")
    (root / "certs.d").mkdir()
    (root / "certs.d" / "ca.crt").write_bytes((root / "ca.crt").read_bytes())
    return root


@contextlib.contextmanager
def registry(root: Path, pki: Path, auth: dict | None):
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "tls": {"certificate": str(pki / "server.crt"),
                                                      "key": str(pki / "server.key")}},
    }
    if auth:
        config["auth"] = auth
    (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(root / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None, (root / "registry.log").read_text()
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    built = build_images(tmp_path_factory.mktemp("images"))
    built.reference = {name: tree_listing(umoci_unpack(built.tag(name), built.root / f"umoci-{name}"))
                       for name in ("busybox", "nginx")}
    return built


def push(images, name: str, target: str, pki: Path, *extra: str) -> None:
    skopeo("copy", "--dest-cert-dir", pki / "certs.d", *extra, f"oci:{images.layout}:{name}", f"docker://{target}")


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory, pki, images):
    root = tmp_path_factory.mktemp("registry-basic")
    htpasswd = run("htpasswd", "-Bbn", USER, PASSWORD).stdout
    (root / "htpasswd").write_text(htpasswd)
    with registry(root, pki, {"htpasswd": {"realm": "nbt", "path": str(root / "htpasswd")}}) as address:
        for name in ("busybox", "nginx"):
            push(images, name, f"{address}/nbt/{name}:1", pki, "--dest-creds", f"{USER}:{PASSWORD}")
        yield address


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory, pki, images):
    """A registry with token auth, as Docker Hub runs it: anonymous pulls, pushes with credentials."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    root = tmp_path_factory.mktemp("registry-token")
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=nbt token signer",
        "-keyout", root / "signer.key", "-out", root / "signer.crt")
    key = serialization.load_pem_private_key((root / "signer.key").read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate((root / "signer.crt").read_bytes())
    chain = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    issued: list[dict] = []

    class TokenHandler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

        def do_GET(self):
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            authorization = self.headers.get("Authorization", "")
            authenticated = authorization == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if authorization and not authenticated:
                self.send_response(401)
                self.end_headers()
                return
            access = []
            for scope in query.get("scope", []):
                kind, name, actions = scope.split(":")
                allowed = [a for a in actions.split(",") if a == "pull" or authenticated]
                access.append({"type": kind, "name": name, "actions": allowed})
            now = int(time.time())
            header = {"alg": "RS256", "typ": "JWT", "x5c": chain}
            claims = {"iss": "nbt-token", "sub": USER if authenticated else "", "aud": "nbt-registry",
                      "exp": now + 300, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
            signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
            signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
            issued.append({"authenticated": authenticated, "access": access})
            body = json.dumps({"token": f"{signing_input}.{_b64(signature)}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    realm = f"http://127.0.0.1:{server.server_address[1]}/token"
    auth = {"token": {"realm": realm, "service": "nbt-registry", "issuer": "nbt-token",
                      "rootcertbundle": str(root / "signer.crt")}}
    try:
        with registry(root, pki, auth) as address:
            # zstd first: skopeo would otherwise reuse the gzip base layer already in the registry.
            push(images, "nginx", f"{address}/nbt/nginx:zstd", pki, "--dest-creds", f"{USER}:{PASSWORD}",
                 "--dest-compress-format", "zstd")
            push(images, "busybox", f"{address}/nbt/busybox:1", pki, "--dest-creds", f"{USER}:{PASSWORD}")
            yield address, issued
    finally:
        server.shutdown()
        server.server_close()


def test_basic_auth_over_tls_with_a_ca_file(basic_registry, images, pki, tmp_path: Path):
    store = tmp_path / "store"
    args = {"image": f"{basic_registry}/nbt/busybox:1", "username": USER, "password": PASSWORD,
            "ca_file": str(pki / "ca.crt"), "store": str(store), "dest": str(tmp_path / "flat")}
    results = four_runs("rootfs_export", args)
    assert len(results[1]["unpacked_layers"]) == 2
    # A tag already present costs one manifest request (and the 401 challenge before it).
    assert results[3]["registry_requests"] == 2 and results[3]["downloaded_bytes"] == 0
    with overlay_of(results[1]["lowerdirs"], tmp_path / "merged") as merged:
        assert_same_tree(tree_listing(merged), images.reference["busybox"])
    assert_same_tree(tree_listing(tmp_path / "flat"), images.reference["busybox"])
    assert "PASSWORD" not in json.dumps(results) and PASSWORD not in json.dumps(results)

    # Pinned by digest and present: no network at all.
    pinned = {**args, "image": f"{basic_registry}/nbt/busybox@{results[1]['digest']}"}
    first = run_module("rootfs_export", pinned)
    assert first["changed"] and first["unpacked_layers"] == []  # a new reference to layers already there
    again = run_module("rootfs_export", pinned)
    assert not again["changed"] and again["registry_requests"] == 0

    # nginx shares the base layer: only its own layer is downloaded.
    nginx = run_module("rootfs_export", {**args, "image": f"{basic_registry}/nbt/nginx:1", "dest": None})
    assert nginx["reused_layers"] == [results[1]["layers"][0]] and len(nginx["unpacked_layers"]) == 1
    run_module("rootfs_export", {**args, "state": "absent"})
    run_module("rootfs_export", {**pinned, "state": "absent"})
    run_module("rootfs_export", {**args, "image": f"{basic_registry}/nbt/nginx:1", "dest": None, "state": "absent"})
    assert os.listdir(store / "layers") == []


@pytest.mark.parametrize(("extra", "message"), [
    ({"username": USER, "password": "wrong"}, "refused access to"),
    ({}, "requires a username and password"),
    ({"ca_file": None}, "is not trusted"),
    ({"image_suffix": "nbt/missing:1"}, "(404)"),
    ({"image_suffix": "nbt/busybox:nope"}, "(404)"),
    ({"image_suffix": "nbt/busybox@sha256:" + "0" * 64}, "(404)"),
])
def test_registry_failures_are_clear(basic_registry, pki, tmp_path: Path, extra, message):
    store = tmp_path / "store"
    extra = dict(extra)
    anonymous = not extra
    args = {"image": f"{basic_registry}/{extra.pop('image_suffix', 'nbt/busybox:1')}", "username": USER,
            "password": PASSWORD, "ca_file": str(pki / "ca.crt"), "store": str(store)}
    if anonymous:
        del args["username"], args["password"]
    args.update(extra)
    args = {k: v for k, v in args.items() if v is not None}
    failed = run_module("rootfs_export", args, expect_failure=True)
    assert message in failed["msg"], failed["msg"]
    assert os.listdir(store / "layers") == [] and os.listdir(store / "images") == []


def test_an_untrusted_ca_and_validate_certs_false(basic_registry, pki, tmp_path: Path):
    args = {"image": f"{basic_registry}/nbt/busybox:1", "username": USER, "password": PASSWORD,
            "store": str(tmp_path / "store")}
    failed = run_module("rootfs_export", {**args, "ca_file": str(pki / "other-ca.crt")}, expect_failure=True)
    assert "is not trusted" in failed["msg"] and "ca_file" in failed["msg"]
    insecure = run_module("rootfs_export", {**args, "validate_certs": False})
    assert len(insecure["unpacked_layers"]) == 2


def test_bearer_tokens_anonymous_and_zstd(token_registry, images, pki, tmp_path: Path):
    address, issued = token_registry
    store = tmp_path / "store"
    args = {"image": f"{address}/nbt/nginx:zstd", "ca_file": str(pki / "ca.crt"), "store": str(store)}
    before = len(issued)
    results = four_runs("rootfs_export", args)
    assert issued[before]["authenticated"] is False
    assert issued[before]["access"] == [{"type": "repository", "name": "nbt/nginx", "actions": ["pull"]}]
    manifest = json.loads(subprocess.run(
        ["skopeo", "inspect", "--raw", "--cert-dir", str(pki / "certs.d"), f"docker://{address}/nbt/nginx:zstd"],
        capture_output=True, check=True, text=True).stdout)
    assert all("zstd" in layer["mediaType"] for layer in manifest["layers"])
    with overlay_of(results[1]["lowerdirs"], tmp_path / "merged") as merged:
        assert_same_tree(tree_listing(merged), images.reference["nginx"])
    # With credentials the token service is asked with them.
    authed = run_module("rootfs_export", {**args, "image": f"{address}/nbt/busybox:1", "username": USER,
                                          "password": PASSWORD})
    assert issued[-1]["authenticated"] is True and len(authed["layers"]) == 2
    failed = run_module("rootfs_export", {**args, "image": f"{address}/nbt/busybox:1", "username": USER,
                                          "password": "wrong"}, expect_failure=True)
    assert "refused the credentials" in failed["msg"]
