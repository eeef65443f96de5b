# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Images from a registry speaking the OCI distribution API (Docker Registry HTTP API v2).

Anonymous access, the bearer-token challenge (as Docker Hub does it) and basic auth (as ECR does it,
with the password from `aws ecr get-login-password`). TLS is verified against the system CAs or a given
CA file, or not at all when asked. HTTP goes through ansible.module_utils.urls.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import ssl
import urllib.error
import urllib.parse
from dataclasses import dataclass
from typing import IO, Any

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import Request
from ansible_collections.nsbox.primitives.plugins.module_utils.images_sources import (
    ACCEPT,
    BlobSource,
    Image,
    Layer,
    Platform,
)
from ansible_collections.nsbox.primitives.plugins.module_utils.images_store import Store, digest_hex, sha256_digest
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
MANIFEST_LIMIT = 4 << 20


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(image: str) -> Reference:
    """docker.io/library/nginx:1.27, nginx, localhost:5000/app@sha256:..., as Docker reads them."""
    rest, _at, digest = image.partition("@")
    if digest:
        digest_hex(digest, f"digest of image {image!r}")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise NsboxError(f"image {image!r} has an invalid tag {tag!r}")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _REPOSITORY.match(path):
        raise NsboxError(f"image {image!r}: {path!r} is not a valid repository name (lowercase letters, digits, "
                         "separators . _ - and /)")
    if not tag and not digest:
        tag = "latest"
    return Reference(registry, path, tag, digest or None)


def _is_loopback(host: str) -> bool:
    host = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") else host[1:].split("]")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _space, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class RegistrySource(BlobSource):
    def __init__(self, image: str, wanted: Platform, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, validate_certs: bool = True, timeout: float = 60) -> None:
        self.ref = parse_reference(image)
        self.name = f"registry {self.ref.registry}"
        self.wanted = wanted
        self.username = username
        self.password = password
        self.ca_file = ca_file
        self.validate_certs = validate_certs
        self.timeout = timeout
        host = DOCKER_HUB_API if self.ref.registry == DOCKER_HUB else self.ref.registry
        self.base = f"https://{host}"
        self.authorization: str | None = None
        self.requests = 0
        self._http_fallback = _is_loopback(host)

    # -- HTTP ----------------------------------------------------------------------------------

    def _open(self, url: str, headers: dict[str, str], auth: str | None = None) -> Any:
        request = Request(timeout=self.timeout, validate_certs=self.validate_certs, ca_path=self.ca_file,
                          http_agent="nsbox.primitives-rootfs_export", follow_redirects="all")
        headers = dict(headers)
        if auth:
            headers["Authorization"] = auth
        self.requests += 1
        return request.open("GET", url, headers=headers, unredirected_headers=["Authorization"], decompress=False)

    def _get(self, path: str, headers: dict[str, str]) -> Any:
        url = self.base + path
        try:
            try:
                return self._open(url, headers, self.authorization)
            except urllib.error.HTTPError as error:
                if error.code != 401:
                    raise
                self.authorization = self._authenticate(error.headers.get("WWW-Authenticate", ""), url)
                return self._open(url, headers, self.authorization)
        except urllib.error.HTTPError as error:
            raise self._http_error(error, url) from None
        except (urllib.error.URLError, UrlsConnectionError, ssl.SSLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if self._http_fallback and self.base.startswith("https://") and "WRONG_VERSION_NUMBER" in str(reason):
                # A registry on this host speaking plain HTTP, as Docker allows for loopback registries.
                self.base = "http://" + self.base[len("https://"):]
                return self._get(path, headers)
            raise self._connection_error(reason, url) from None

    def _authenticate(self, header: str, url: str) -> str:
        scheme, params = _challenge(header)
        credentials = None
        if self.username is not None:
            token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            credentials = f"Basic {token}"
        if scheme == "basic":
            if credentials is None:
                raise NsboxError(f"{self.name} requires a username and password for {self.ref}: set username "
                                 "and password (for ECR: username AWS, password from `aws ecr get-login-password`)",
                                 url=url, status=401)
            return credentials
        if scheme != "bearer" or "realm" not in params:
            raise NsboxError(f"{self.name} answered 401 with an authentication challenge this module does not "
                             f"speak: {header!r}", url=url, status=401)
        query = {"service": params.get("service", "")}
        query["scope"] = params.get("scope") or f"repository:{self.ref.repository}:pull"
        token_url = params["realm"] + "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
        try:
            response = self._open(token_url, {"Accept": "application/json"}, credentials)
            body = json.loads(response.read(MANIFEST_LIMIT))
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                raise NsboxError(f"{self.name} refused the credentials for {self.ref} (token service {params['realm']} "
                                 f"answered {error.code}): check username and password", url=token_url,
                                 status=error.code) from None
            raise self._http_error(error, token_url) from None
        except (urllib.error.URLError, UrlsConnectionError, ssl.SSLError, OSError) as error:
            raise self._connection_error(getattr(error, "reason", error), token_url) from None
        except ValueError:
            raise NsboxError(f"the token service {params['realm']} of {self.name} returned no JSON",
                             url=token_url) from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise NsboxError(f"the token service {params['realm']} of {self.name} returned no token", url=token_url)
        return f"Bearer {token}"

    def _http_error(self, error: urllib.error.HTTPError, url: str) -> NsboxError:
        if error.code == 401:
            hint = ("check username and password" if self.username is not None
                    else "set username and password; the registry wants credentials")
            return NsboxError(f"{self.name} refused access to {self.ref} (401 unauthorized): {hint}", url=url,
                              status=401)
        if error.code == 404:
            return NsboxError(f"{self.name} has no {url.rsplit('/v2/', 1)[-1]} (404): check the image name and tag "
                              f"of {self.ref}", url=url, status=404)
        if error.code == 403:
            return NsboxError(f"{self.name} forbids access to {self.ref} (403): the credentials lack pull "
                              "permission", url=url, status=403)
        return NsboxError(f"{self.name} answered {error.code} {error.reason} for {url}", url=url, status=error.code)

    def _connection_error(self, reason: Any, url: str) -> NsboxError:
        text = str(reason)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text.lower() \
                or isinstance(reason, ssl.SSLCertVerificationError):
            return NsboxError(f"the TLS certificate of {self.name} is not trusted ({text}): give the CA that signed "
                              "it as ca_file, or set validate_certs: false to skip verification (insecure)", url=url)
        return NsboxError(f"cannot reach {self.name} at {url}: {text}", url=url)

    # -- blobs and manifests -------------------------------------------------------------------

    def fetch_manifest(self, reference: str) -> bytes:
        response = self._get(f"/v2/{self.ref.repository}/manifests/{reference}", {"Accept": ACCEPT})
        return response.read(MANIFEST_LIMIT)

    def fetch(self, digest: str, media_type: str | None = None) -> bytes:
        if media_type and "manifest" in media_type:
            return self.fetch_manifest(digest)
        return self._get(f"/v2/{self.ref.repository}/blobs/{digest}", {}).read()

    def open_layer(self, layer: Layer) -> IO[bytes]:
        return self._get(f"/v2/{self.ref.repository}/blobs/{layer.digest}", {})

    def resolve(self, store: Store | None) -> Image:
        if self.ref.digest and store is not None:
            cached = store.read_blob(self.ref.digest)
            if cached is not None:
                return self.image_from_manifest(store, cached, self.ref.digest, self.wanted)
        data = self.fetch_manifest(self.ref.reference)
        digest = sha256_digest(data)
        if self.ref.digest and digest != self.ref.digest:
            raise NsboxError(f"{self.name} returned a manifest for {self.ref} whose digest is {digest}; the registry "
                             "is corrupt or was tampered with", expected=self.ref.digest, actual=digest)
        return self.image_from_manifest(store, data, digest, self.wanted)
