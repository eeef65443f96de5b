"""Image references as Docker reads them, platforms, and the registry's authentication challenges."""

from __future__ import annotations

import pytest
from ansible_collections.nsbox.primitives.plugins.module_utils.images_registry import (
    _challenge,
    _is_loopback,
    parse_reference,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.images_sources import (
    Platform,
    image_config_summary,
    parse_platform,
    select_manifest,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("image", "registry", "repository", "tag", "digest"), [
    ("nginx", "docker.io", "library/nginx", "latest", None),
    ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
    ("docker.io/library/nginx:1.27", "docker.io", "library/nginx", "1.27", None),
    ("bitnami/redis", "docker.io", "bitnami/redis", "latest", None),
    ("localhost:5000/app", "localhost:5000", "app", "latest", None),
    ("localhost/app:2", "localhost", "app", "2", None),
    ("127.0.0.1:41234/nbt/busybox:1", "127.0.0.1:41234", "nbt/busybox", "1", None),
    (f"registry.example.com/team/app@{DIGEST}", "registry.example.com", "team/app", None, DIGEST),
    (f"ghcr.io/o/app:v1@{DIGEST}", "ghcr.io", "o/app", "v1", DIGEST),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1.4", "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
     "app", "1.4", None),
])
def test_references(image, registry, repository, tag, digest):
    ref = parse_reference(image)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.reference == (digest or tag)


@pytest.mark.parametrize(("image", "message"), [
    ("Nginx", "not a valid repository name"),
    ("nginx@sha256:abc", "is not a sha256 digest"),
    ("nginx:-bad", "invalid tag"),
])
def test_bad_references(image, message):
    with pytest.raises(NsboxError, match=message):
        parse_reference(image)


def test_platforms():
    assert parse_platform("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert Platform("linux", "arm64", "v8").matches({"os": "linux", "architecture": "arm64"})
    assert not Platform("linux", "arm", "v7").matches({"os": "linux", "architecture": "arm", "variant": "v6"})
    assert Platform("linux", "amd64").matches({"os": "linux", "architecture": "amd64", "variant": "v3"})
    index = {"manifests": [{"digest": "a", "platform": {"os": "unknown", "architecture": "unknown"}},
                           {"digest": "b", "platform": {"os": "linux", "architecture": "amd64"}}]}
    assert select_manifest(index, Platform("linux", "amd64"), "x")["digest"] == "b"
    with pytest.raises(NsboxError, match="offers linux/amd64, unknown/unknown"):
        select_manifest(index, Platform("linux", "riscv64"), "x")


def test_challenges_and_loopback():
    assert _challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                      'scope="repository:library/nginx:pull"') == (
        "bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                   "scope": "repository:library/nginx:pull"})
    assert _challenge('Basic realm="https://123.dkr.ecr.us-east-1.amazonaws.com/"')[0] == "basic"
    assert _is_loopback("127.0.0.1:5000") and _is_loopback("localhost") and _is_loopback("[::1]:5000")
    assert not _is_loopback("registry.example.com:5000")


def test_config_summary_defaults():
    assert image_config_summary({}) == {"entrypoint": [], "cmd": [], "env": [], "working_dir": None, "user": None,
                                        "exposed_ports": [], "stop_signal": None, "labels": {}}
    summary = image_config_summary({"config": {"ExposedPorts": {"443/tcp": {}, "80/tcp": {}}, "User": "101"}})
    assert summary["exposed_ports"] == ["443/tcp", "80/tcp"] and summary["user"] == "101"
