# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Netlink (pyroute2) helpers the network modules share: namespaces opened without ever creating
one, link lookups, and addresses and routes in a comparable form.

pyroute2's ``IPRoute(netns=NAME)`` creates NAME when it is missing (its default flags are O_CREAT)
and forks a helper process per socket. Instead this file opens ``/run/netns/NAME`` itself (a
missing namespace is an error, never a new one), moves the calling thread into it with setns(2),
opens the netlink socket there and moves the thread back: a socket keeps talking to the namespace
it was created in.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import syscalls
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import NsboxError

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR: str | None = None
except ImportError as _error:  # pragma: no cover - reported by the modules through missing_required_lib
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = str(_error)

    class NetlinkError(Exception):  # type: ignore[no-redef]
        code = 0

NETNS_DIR = "/run/netns"
IFNAMSIZ = 16
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTPROT_BOOT = 3
RTPROT_STATIC = 4
# Routes of these origins are the ones a person or a tool adds; the module manages only those.
MANAGED_ROUTE_PROTOCOLS = (RTPROT_BOOT, RTPROT_STATIC)
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def check_ifname(name: Any, option: str = "name") -> str:
    """The kernel's dev_valid_name(): 1-15 bytes, not . or .., no '/', ':' or whitespace."""
    text = "" if name is None else str(name)
    raw = text.encode()
    problem = ""
    if not raw:
        problem = "is empty"
    elif len(raw) >= IFNAMSIZ:
        problem = f"is {len(raw)} bytes long; the kernel allows at most {IFNAMSIZ - 1}"
    elif text in (".", ".."):
        problem = "is not allowed"
    elif any(c in text for c in "/:") or any(c.isspace() for c in text):
        problem = "contains '/', ':' or whitespace, which the kernel refuses"
    if problem:
        raise NsboxError(f"{option} {text!r} {problem}: choose an interface name of 1-15 bytes without "
                         "'/', ':' or spaces", option=option)
    return text


def check_netns_name(name: Any, option: str = "netns") -> str:
    text = "" if name is None else str(name)
    if not text or text in (".", "..") or "/" in text or "\0" in text or len(text.encode()) > 255:
        raise NsboxError(f"{option} {text!r} is not a usable network namespace name: it becomes the file "
                         f"{NETNS_DIR}/NAME, so use 1-255 bytes without '/'", option=option)
    return text


def normalize_mac(value: Any, option: str = "mac") -> str:
    text = str(value).strip().lower().replace("-", ":")
    if not _MAC.match(text):
        raise NsboxError(f"{option} {value!r} is not a MAC address like 02:42:ac:11:00:02", option=option)
    if int(text[:2], 16) & 1:
        raise NsboxError(f"{option} {value!r} is a multicast address (lowest bit of the first byte set), which an "
                         "interface cannot have; use a unicast one, e.g. with first byte 02 (locally administered)",
                         option=option)
    if text == "00:00:00:00:00:00":
        raise NsboxError(f"{option} {value!r} is all zeros; choose a unicast address such as 02:00:00:00:00:01",
                         option=option)
    return text


def normalize_mtu(value: Any, option: str = "mtu") -> int:
    try:
        mtu = int(value)
    except (TypeError, ValueError):
        mtu = -1
    if not 68 <= mtu <= 65535:
        raise NsboxError(f"{option} {value!r} is not an MTU between 68 and 65535", option=option)
    return mtu


def normalize_cidr(value: Any, option: str = "addresses") -> str:
    """'10.0.0.2/24' or '2001:db8::2/64', in the form the kernel reports back."""
    text = str(value).strip()
    if "/" not in text:
        raise NsboxError(f"{option}: {text!r} has no prefix length; write it as CIDR, e.g. 10.0.0.2/24 or "
                         "fd00::2/64", option=option, address=text)
    try:
        interface = ipaddress.ip_interface(text)
    except ValueError as error:
        raise NsboxError(f"{option}: {text!r} is not a valid CIDR address ({error}); write it like 10.0.0.2/24 "
                         "or fd00::2/64", option=option, address=text) from None
    return f"{interface.ip.compressed}/{interface.network.prefixlen}"


def normalize_addresses(values: list[Any] | None, option: str = "addresses") -> list[str] | None:
    if values is None:
        return None
    seen: list[str] = []
    for value in values:
        cidr = normalize_cidr(value, option)
        if cidr not in seen:
            seen.append(cidr)
    return sort_addresses(seen)


def sort_addresses(addresses: list[str]) -> list[str]:
    def key(cidr: str) -> tuple[int, int, int]:
        interface = ipaddress.ip_interface(cidr)
        return (interface.version, int(interface.ip), interface.network.prefixlen)
    return sorted(addresses, key=key)


@dataclass(frozen=True)
class Route:
    dst: str  # 'default' or a network in CIDR
    gateway: str | None
    metric: int
    family: int

    def as_dict(self) -> dict[str, Any]:
        return {"dst": self.dst, "gateway": self.gateway, "metric": self.metric}

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.dst, self.metric, self.family)


def normalize_route(entry: Any, addresses: list[str] | None, option: str = "routes") -> Route:
    if not isinstance(entry, dict) or "dst" not in entry:
        raise NsboxError(f"{option}: {entry!r} must be a dict with dst (default or CIDR) and optionally gateway "
                         "and metric", option=option)
    unknown = set(entry) - {"dst", "gateway", "metric"}
    if unknown:
        raise NsboxError(f"{option}: unknown keys {', '.join(sorted(unknown))} in {entry!r}; a route has dst, "
                         "gateway and metric", option=option)
    gateway_text = entry.get("gateway")
    gateway = None
    if gateway_text not in (None, ""):
        try:
            gateway = ipaddress.ip_address(str(gateway_text).strip())
        except ValueError:
            raise NsboxError(f"{option}: gateway {gateway_text!r} is not an IP address", option=option) from None
    dst_text = str(entry["dst"]).strip()
    if dst_text in ("default", "0.0.0.0/0", "::/0"):
        if dst_text == "::/0" or (dst_text == "default" and gateway is not None and gateway.version == 6):
            version = 6
        else:
            version = 4
        dst = "default"
    else:
        try:
            network = ipaddress.ip_network(dst_text, strict=False)
        except ValueError as error:
            raise NsboxError(f"{option}: dst {dst_text!r} is not 'default' or a CIDR network ({error})",
                             option=option) from None
        version = network.version
        dst = "default" if network.prefixlen == 0 else network.compressed
    if gateway is not None and gateway.version != version:
        raise NsboxError(f"{option}: gateway {gateway} is IPv{gateway.version} but dst {dst_text} is IPv{version}",
                         option=option)
    if gateway is not None and addresses is not None and not (version == 6 and gateway.is_link_local):
        networks = [ipaddress.ip_interface(a).network for a in addresses]
        if not any(gateway in net for net in networks):
            shown = ", ".join(addresses) or "none"
            raise NsboxError(f"{option}: gateway {gateway} for {dst_text} lies outside every subnet of this "
                             f"interface's addresses ({shown}), so the kernel could not reach it; use a gateway "
                             "inside one of them or add an address in its subnet", option=option,
                             gateway=str(gateway))
    metric_value = entry.get("metric")
    try:
        metric = (1024 if version == 6 else 0) if metric_value in (None, "") else int(metric_value)
    except (TypeError, ValueError):
        metric = -1
    if not 0 <= metric <= 0xFFFFFFFF:
        raise NsboxError(f"{option}: metric {metric_value!r} is not a number from 0 to 4294967295", option=option)
    return Route(dst, None if gateway is None else gateway.compressed, metric, 10 if version == 6 else 2)


def normalize_routes(values: list[Any] | None, addresses: list[str] | None,
                     option: str = "routes") -> list[Route] | None:
    if values is None:
        return None
    routes: dict[tuple[str, int, int], Route] = {}
    for value in values:
        route = normalize_route(value, addresses, option)
        if route.key in routes and routes[route.key] != route:
            raise NsboxError(f"{option}: two routes to {route.dst} with metric {route.metric}; give them different "
                             "metrics or keep one", option=option)
        routes[route.key] = route
    return sort_routes(list(routes.values()))


def sort_routes(routes: list[Route]) -> list[Route]:
    return sorted(routes, key=lambda r: (r.family, r.dst != "default", r.dst, r.metric))


# ---------------------------------------------------------------------------------------------
# Namespaces
# ---------------------------------------------------------------------------------------------

def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


@contextlib.contextmanager
def inside(fd: int, label: str) -> Iterator[None]:
    """Run the block with this thread in the network namespace behind fd, then return."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(fd, syscalls.CLONE_NEWNET, label)
        try:
            yield
        finally:
            syscalls.setns(home, syscalls.CLONE_NEWNET, "the module's own network namespace")
    finally:
        os.close(home)


def netlink_error(error: Exception, what: str, hint: str = "") -> NsboxError:
    code = getattr(error, "code", 0) or 0
    reason = os.strerror(code) if code else str(error)
    name = errno.errorcode.get(code, "?")
    message = f"{what} failed: [Errno {code}] {reason} ({name})"
    if hint:
        message += f". {hint}"
    return NsboxError(message, errno=code)


def _new_iproute() -> Any:
    """An IPRoute socket that subscribes to no multicast group (we only ask; we never listen).

    pyroute2 0.7 (Debian 12's and Ubuntu 24.04's python3-pyroute2) takes no ``groups`` argument.
    """
    try:
        return IPRoute(groups=0)
    except TypeError:
        return IPRoute()


class Namespace:
    """A network namespace to work in: the host's (name None) or a named one. Never creates one."""

    def __init__(self, name: str | None, fd: int) -> None:
        self.name = name
        self.fd = fd
        self._ipr: Any = None

    @property
    def label(self) -> str:
        return "the host" if self.name is None else f"netns {self.name}"

    @property
    def inode(self) -> tuple[int, int]:
        st = os.fstat(self.fd)
        return (st.st_dev, st.st_ino)

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            with inside(self.fd, self.label):
                self._ipr = _new_iproute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        with contextlib.suppress(OSError):
            os.close(self.fd)


def open_host() -> Namespace:
    return Namespace(None, os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))


def is_netns_file(path: str) -> bool:
    """Whether path is a bind mount of a network namespace (and not the empty file under it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return os.stat("/proc/self/ns/net").st_dev == st.st_dev
    finally:
        os.close(fd)


def open_named(name: str) -> Namespace | None:
    """The named namespace, or None when /run/netns/NAME is missing or not a namespace mount."""
    path = netns_path(name)
    if not is_netns_file(path):
        return None
    return Namespace(name, os.open(path, os.O_RDONLY | os.O_CLOEXEC))


def missing_netns_error(name: str, option: str = "netns") -> NsboxError:
    return NsboxError(f"{option}: network namespace {name!r} does not exist ({netns_path(name)} is not a "
                      "namespace); create it first with nsbox.primitives.netns", netns=name, option=option)


def named_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------------------------
# Links
# ---------------------------------------------------------------------------------------------

@dataclass
class Link:
    index: int
    name: str
    kind: str | None
    mtu: int
    mac: str | None
    up: bool
    master: int | None
    peer_index: int | None = None  # veth: IFLA_LINK, the peer's ifindex in its namespace
    peer_nsid: int | None = None   # veth: IFLA_LINK_NETNSID, None when the peer is in the same namespace
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def link_state(self) -> str:
        return "up" if self.up else "down"


def _linkinfo_kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def parse_link(msg: Any) -> Link:
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=_linkinfo_kind(msg),
        mtu=msg.get_attr("IFLA_MTU"),
        mac=msg.get_attr("IFLA_ADDRESS"),
        up=bool(msg["flags"] & IFF_UP),
        master=msg.get_attr("IFLA_MASTER"),
        peer_index=msg.get_attr("IFLA_LINK"),
        peer_nsid=msg.get_attr("IFLA_LINK_NETNSID"),
    )


def get_link(ns: Namespace, name: str | None = None, index: int | None = None) -> Link | None:
    try:
        query = {"index": index} if index is not None else {"ifname": name}
        msgs = list(ns.ipr.link("get", **query))
    except NetlinkError as error:
        if error.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise netlink_error(error, f"looking up interface {name or index} in {ns.label}") from None
    return parse_link(msgs[0]) if msgs else None


def links(ns: Namespace) -> list[Link]:
    return [parse_link(m) for m in ns.ipr.get_links()]


def nsid_of(viewer: Namespace, other: Namespace) -> int | None:
    """The id under which viewer's namespace knows other's (None when it has none)."""
    if viewer.inode == other.inode:
        return None
    answer = viewer.ipr.get_netnsid(fd=other.fd) or {}
    nsid = answer.get("nsid")
    return None if nsid is None or nsid < 0 or nsid == 4294967295 else nsid


def addresses(ns: Namespace, index: int) -> list[str]:
    """The interface's addresses as CIDR, without IPv6 link-local ones (the kernel makes those)."""
    found = []
    for msg in ns.ipr.get_addr(index=index):
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        cidr = f"{ipaddress.ip_address(address).compressed}/{msg['prefixlen']}"
        if msg["family"] == 10 and ipaddress.ip_interface(cidr).ip.is_link_local:
            continue
        found.append(cidr)
    return sort_addresses(found)


def converge_addresses(ns: Namespace, index: int, wanted: list[str], what: str) -> None:
    current = addresses(ns, index)
    for cidr in current:
        if cidr not in wanted:
            interface = ipaddress.ip_interface(cidr)
            try:
                ns.ipr.addr("del", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
            except NetlinkError as error:
                raise netlink_error(error, f"removing address {cidr} from {what}") from None
    # Removing a primary address takes its secondaries with it, so look again before adding.
    current = addresses(ns, index)
    for cidr in wanted:
        if cidr not in current:
            interface = ipaddress.ip_interface(cidr)
            try:
                ns.ipr.addr("add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen)
            except NetlinkError as error:
                hint = ""
                if error.code == errno.EACCES and interface.version == 6:
                    hint = "IPv6 is disabled there (net.ipv6.conf.*.disable_ipv6=1)"
                raise netlink_error(error, f"adding address {cidr} to {what}", hint) from None


def routes(ns: Namespace, index: int) -> list[Route]:
    """Routes in the main table through this interface that a person or tool added (not the kernel)."""
    found = []
    for msg in ns.ipr.get_routes(oif=index, table=RT_TABLE_MAIN):
        if msg["proto"] not in MANAGED_ROUTE_PROTOCOLS:
            continue
        family = msg["family"]
        dst = msg.get_attr("RTA_DST")
        dst_text = "default" if not msg["dst_len"] else ipaddress.ip_network(f"{dst}/{msg['dst_len']}").compressed
        gateway = msg.get_attr("RTA_GATEWAY")
        metric = msg.get_attr("RTA_PRIORITY") or 0
        found.append(Route(dst_text, ipaddress.ip_address(gateway).compressed if gateway else None, metric, family))
    return sort_routes(found)


def _route_spec(route: Route, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"oif": index, "family": route.family, "priority": route.metric,
                            "table": RT_TABLE_MAIN, "proto": RTPROT_STATIC}
    if route.dst == "default":
        spec["dst_len"] = 0
    else:
        network = ipaddress.ip_network(route.dst)
        spec["dst"] = str(network.network_address)
        spec["dst_len"] = network.prefixlen
    if route.gateway:
        spec["gateway"] = route.gateway
    else:
        spec["scope"] = 253  # RT_SCOPE_LINK: a directly connected destination
    return spec


def converge_routes(ns: Namespace, index: int, wanted: list[Route], what: str) -> None:
    current = routes(ns, index)
    wanted_keys = {r.key: r for r in wanted}
    for route in current:
        if wanted_keys.get(route.key) != route:
            spec = _route_spec(route, index)
            spec.pop("proto")
            spec.pop("scope", None)
            try:
                ns.ipr.route("del", **spec)
            except NetlinkError as error:
                raise netlink_error(error, f"removing route to {route.dst} from {what}") from None
    for route in wanted:
        if route not in current:
            try:
                ns.ipr.route("add", **_route_spec(route, index))
            except NetlinkError as error:
                hint = ""
                if error.code == errno.ENETDOWN:
                    hint = "the interface is down; routes need link_state: up"
                elif error.code == errno.ENETUNREACH:
                    hint = "the gateway is not inside a subnet of the interface's addresses"
                raise netlink_error(error, f"adding route to {route.dst} via {route.gateway or 'the link'} on "
                                           f"{what}", hint) from None


def set_link(ns: Namespace, index: int, what: str, **changes: Any) -> None:
    try:
        ns.ipr.link("set", index=index, **changes)
    except NetlinkError as error:
        shown = ", ".join(f"{k}={v}" for k, v in changes.items())
        raise netlink_error(error, f"setting {shown} on {what}") from None


def forget_neighbours(ns: Namespace, mac: str, what: str) -> None:
    """Drop the neighbour entries that still point at a MAC address an interface no longer has.

    Without this, the other end keeps sending to the old address until its entry goes stale (up to a
    minute), because the kernel announces a new MAC only where net.ipv4.conf.*.arp_notify is on.
    """
    for msg in ns.ipr.get_neighbours():
        if (msg.get_attr("NDA_LLADDR") or "").lower() != mac.lower() or not msg.get_attr("NDA_DST"):
            continue
        try:
            ns.ipr.neigh("del", ifindex=msg["ifindex"], dst=msg.get_attr("NDA_DST"), family=msg["family"])
        except NetlinkError as error:
            if error.code != errno.ENOENT:
                raise netlink_error(error, f"forgetting the old MAC address {mac} of {what}") from None


def delete_link(ns: Namespace, index: int, what: str) -> None:
    try:
        ns.ipr.link("del", index=index)
    except NetlinkError as error:
        if error.code == errno.ENODEV:
            return
        raise netlink_error(error, f"removing {what}") from None
