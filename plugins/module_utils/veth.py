# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The veth module's logic: one pair, each end in the host or a named namespace, both ends converged.

The end called ``name`` (in ``netns``) is the pair's identity. Its peer is found through the kernel's
own link (IFLA_LINK and IFLA_LINK_NETNSID), so a peer that was renamed or moved to another named
namespace is found and brought back, rather than a second pair being made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import netlink
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError


@dataclass
class EndSpec:
    """What one end should be; None means the attribute is not managed."""

    role: str  # "interface" or "peer"
    name: str
    netns: str | None
    link_state: str
    mtu: int | None
    mac: str | None
    addresses: list[str] | None
    routes: list[netlink.Route] | None
    bridge: str | None = None

    @property
    def where(self) -> str:
        return "the host" if self.netns is None else f"netns {self.netns}"

    @property
    def label(self) -> str:
        return f"{self.name} in {self.where}"

    def wanted(self) -> dict[str, Any]:
        values: dict[str, Any] = {"name": self.name, "netns": self.netns, "link_state": self.link_state}
        if self.mtu is not None:
            values["mtu"] = self.mtu
        if self.mac is not None:
            values["mac"] = self.mac
        if self.addresses is not None:
            values["addresses"] = self.addresses
        if self.routes is not None:
            values["routes"] = [r.as_dict() for r in self.routes]
        if self.bridge is not None:
            values["master"] = self.bridge
        return values


def end_spec(role: str, params: dict[str, Any], bridge: str | None = None) -> EndSpec:
    prefix = "" if role == "interface" else "peer."
    name = netlink.check_ifname(params.get("name"), f"{prefix}name")
    netns = params.get("netns") or None
    if netns is not None:
        netns = netlink.check_netns_name(netns, f"{prefix}netns")
    addresses = netlink.normalize_addresses(params.get("addresses"), f"{prefix}addresses")
    return EndSpec(
        role=role, name=name, netns=netns, link_state=params.get("link_state") or "up",
        mtu=None if params.get("mtu") is None else netlink.normalize_mtu(params["mtu"], f"{prefix}mtu"),
        mac=None if params.get("mac") is None else netlink.normalize_mac(params["mac"], f"{prefix}mac"),
        addresses=addresses,
        routes=netlink.normalize_routes(params.get("routes"), addresses, f"{prefix}routes"),
        bridge=None if bridge is None else netlink.check_ifname(bridge, "bridge"),
    )


def observe(ns: netlink.Namespace, link: netlink.Link, netns_name: str | None) -> dict[str, Any]:
    """An end as the kernel reports it, in the module's vocabulary."""
    master = None
    if link.master:
        found = netlink.get_link(ns, index=link.master)
        master = found.name if found else str(link.master)
    return {
        "name": link.name, "netns": netns_name, "ifindex": link.index, "mtu": link.mtu, "mac": link.mac,
        "addresses": netlink.addresses(ns, link.index),
        "routes": [r.as_dict() for r in netlink.routes(ns, link.index)],
        "link_state": link.link_state, "master": master,
    }


class VethManager(Manager):
    lock_kind = "veth"

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.namespaces: dict[str | None, netlink.Namespace | None] = {}

    def lock_name(self) -> str:
        return f"{self.params.get('netns') or ''}/{self.params['name']}"

    def close(self) -> None:
        for ns in self.namespaces.values():
            if ns is not None:
                ns.close()

    # -- namespaces -----------------------------------------------------------------------------

    def namespace(self, name: str | None, option: str) -> netlink.Namespace | None:
        """The namespace, or None in check mode when it does not exist yet (an earlier task makes it)."""
        if name not in self.namespaces:
            ns = netlink.open_host() if name is None else netlink.open_named(name)
            if ns is None:
                if not self.check_mode:
                    raise netlink.missing_netns_error(name, option)
                self.module.warn(f"network namespace {name} does not exist; check mode assumes an earlier task "
                                 "creates it")
            self.namespaces[name] = ns
        return self.namespaces[name]

    def _known(self, name: str | None) -> netlink.Namespace | None:
        """The host or a named namespace if it exists; never fails."""
        if name not in self.namespaces:
            self.namespaces[name] = netlink.open_host() if name is None else netlink.open_named(name)
        return self.namespaces[name]

    def _locate_peer(self, ns: netlink.Namespace, link: netlink.Link) -> tuple[str | None, netlink.Link] | None:
        """Where the peer of a veth end is: (namespace name, link), among the host and the named namespaces."""
        if link.peer_index is None:
            return None
        for candidate in (None, *netlink.named_namespaces()):
            other = self._known(candidate)
            if other is None:
                continue
            same = other.inode == ns.inode
            if link.peer_nsid is None:
                if not same:
                    continue
            elif same or netlink.nsid_of(ns, other) != link.peer_nsid:
                continue
            peer = netlink.get_link(other, index=link.peer_index)
            if peer is not None and peer.kind == "veth" and peer.peer_index == link.index:
                return candidate, peer
        return None

    # -- present --------------------------------------------------------------------------------

    def present(self) -> None:
        p = self.params
        if not p.get("peer") or not p["peer"].get("name"):
            raise NsboxError("state=present needs peer.name: the name of the other end of the pair (e.g. eth0)",
                             option="peer.name")
        a_spec = end_spec("interface", p, p.get("bridge"))
        b_spec = end_spec("peer", p["peer"])
        if a_spec.netns == b_spec.netns and a_spec.name == b_spec.name:
            raise NsboxError(f"both ends are called {a_spec.name} in {a_spec.where}; give the peer another name or "
                             "put it in another netns", option="peer.name")
        a_ns = self.namespace(a_spec.netns, "netns")
        b_ns = self.namespace(b_spec.netns, "peer.netns")
        a = netlink.get_link(a_ns, a_spec.name) if a_ns else None
        b = netlink.get_link(b_ns, b_spec.name) if b_ns else None
        bridge = self._bridge(a_ns, a_spec)

        if a is not None and a.kind != "veth":
            raise NsboxError(f"{a_spec.label} exists and is a {a.kind or 'physical or unnamed-kind'} interface, not a "
                             "veth; choose another name or remove that interface", interface=a_spec.name,
                             kind=a.kind)
        before: dict[str, dict[str, Any] | None] = {"interface": None, "peer": None}
        move = False
        peer_link: tuple[str | None, netlink.Link] | None = None
        if a is not None:
            before["interface"] = observe(a_ns, a, a_spec.netns)
            peer_link = self._locate_peer(a_ns, a)
            if peer_link is None:
                raise NsboxError(f"the peer of veth {a_spec.label} is in a network namespace without a name in "
                                 f"{netlink.NETNS_DIR} (a process's own?), so it cannot be brought back to "
                                 f"{b_spec.label}; remove the pair (state: absent) and create it again",
                                 interface=a_spec.name)
            peer_ns_name, peer = peer_link
            before["peer"] = observe(self.namespaces[peer_ns_name], peer, peer_ns_name)
            move = peer_ns_name != b_spec.netns or peer.name != b_spec.name
            if move and b is not None:
                raise NsboxError(f"the peer of {a_spec.label} is {peer.name} in "
                                 f"{'the host' if peer_ns_name is None else 'netns ' + peer_ns_name}, and "
                                 f"{b_spec.label} is another interface ({b.kind or 'unknown kind'}); remove or rename "
                                 f"that one, or choose another peer name", interface=b_spec.name)
        elif b is not None:
            other = self._describe_peer_of(b_ns, b)
            kind = b.kind or "an interface of no kind, physical?"
            raise NsboxError(f"peer {b_spec.label} already exists ({kind}{other}) and is not the peer of "
                             f"{a_spec.label}; choose another peer name or remove it first",
                             interface=b_spec.name, netns=b_spec.netns)

        self._record("interface", before["interface"], a_spec)
        self._record("peer", before["peer"], b_spec)

        if self.check_mode:
            self._report_predicted(before, a_spec, b_spec)
            return
        if a is None:
            self._create(a_ns, b_ns, a_spec, b_spec)
        elif move:
            self._bring_back(peer_link, b_ns, b_spec)
        old_peer_mac = self._converge(b_ns, b_spec, None)
        old_mac = self._converge(a_ns, a_spec, bridge)
        # Each end's neighbours are the other end (or, bridged, what is behind the bridge).
        if old_peer_mac:
            netlink.forget_neighbours(a_ns, old_peer_mac, f"veth {b_spec.label}")
        if old_mac:
            netlink.forget_neighbours(b_ns, old_mac, f"veth {a_spec.label}")
        self._report_observed(a_ns, b_ns, a_spec, b_spec)

    def _describe_peer_of(self, ns: netlink.Namespace, link: netlink.Link) -> str:
        if link.kind != "veth":
            return ""
        found = self._locate_peer(ns, link)
        if found is None:
            return ", whose other end is in an unnamed namespace"
        where = "the host" if found[0] is None else f"netns {found[0]}"
        return f", whose other end is {found[1].name} in {where}"

    def _bridge(self, ns: netlink.Namespace | None, spec: EndSpec) -> netlink.Link | None:
        if spec.bridge is None:
            return None
        bridge = netlink.get_link(ns, spec.bridge) if ns else None
        if bridge is None:
            if self.check_mode:
                self.module.warn(f"bridge {spec.bridge} does not exist in {spec.where}; check mode assumes an earlier "
                                 "task creates it")
                return None
            raise NsboxError(f"bridge {spec.bridge} does not exist in {spec.where}; create it first with "
                             "nsbox.primitives.bridge (in the same netns as this end)", bridge=spec.bridge)
        if bridge.kind != "bridge":
            raise NsboxError(f"{spec.bridge} in {spec.where} is a {bridge.kind or 'physical'} interface, not a bridge, "
                             "so it cannot take the veth as a port; name a bridge", bridge=spec.bridge,
                             kind=bridge.kind)
        return bridge

    def _record(self, role: str, current: dict[str, Any] | None, spec: EndSpec) -> None:
        wanted = spec.wanted()
        if current is None:
            self.diff.add(role, {"state": "absent"}, {"state": "present", **wanted})
            return
        changed_before = {k: current.get(k) for k, v in wanted.items() if current.get(k) != v}
        changed_after = {k: v for k, v in wanted.items() if current.get(k) != v}
        if changed_after:
            self.diff.add(role, changed_before, changed_after)

    def _create(self, a_ns: netlink.Namespace, b_ns: netlink.Namespace, a_spec: EndSpec, b_spec: EndSpec) -> None:
        peer: dict[str, Any] = {"ifname": b_spec.name}
        if b_ns.inode != a_ns.inode:
            peer["net_ns_fd"] = b_ns.fd
        try:
            a_ns.ipr.link("add", ifname=a_spec.name, kind="veth", peer=peer)
        except netlink.NetlinkError as error:
            raise netlink.netlink_error(error, f"creating veth pair {a_spec.label} <-> {b_spec.label}") from None
        created = netlink.get_link(a_ns, a_spec.name)
        if created is None:
            raise NsboxError(f"veth {a_spec.label} was created but cannot be found again", interface=a_spec.name)
        self.undo.push(f"remove veth pair {a_spec.label} <-> {b_spec.label}",
                       lambda: netlink.delete_link(a_ns, created.index, a_spec.label))

    def _bring_back(self, found: tuple[str | None, netlink.Link], b_ns: netlink.Namespace, spec: EndSpec) -> None:
        ns_name, peer = found
        ns = self.namespaces[ns_name]
        where = "the host" if ns_name is None else f"netns {ns_name}"
        if ns.inode == b_ns.inode:
            # The kernel renames only interfaces that are down; converging brings it up again.
            netlink.set_link(ns, peer.index, f"{peer.name} in {where}", state="down")
            netlink.set_link(ns, peer.index, f"{peer.name} in {where}", ifname=spec.name)
        else:
            netlink.set_link(ns, peer.index, f"{peer.name} in {where}", net_ns_fd=b_ns.fd, ifname=spec.name)

    def _converge(self, ns: netlink.Namespace, spec: EndSpec, bridge: netlink.Link | None) -> str | None:
        """Brings one end to its spec; returns the MAC address it had if that was changed."""
        link = netlink.get_link(ns, spec.name)
        if link is None:
            raise NsboxError(f"{spec.label} disappeared while it was being configured", interface=spec.name)
        label = f"veth {spec.label}"
        old_mac = None
        if spec.mtu is not None and link.mtu != spec.mtu:
            netlink.set_link(ns, link.index, label, mtu=spec.mtu)
        if spec.mac is not None and (link.mac or "").lower() != spec.mac:
            netlink.set_link(ns, link.index, label, address=spec.mac)
            old_mac = link.mac
        if bridge is not None and link.master != bridge.index:
            netlink.set_link(ns, link.index, label, master=bridge.index)
        if link.link_state != spec.link_state:
            netlink.set_link(ns, link.index, label, state=spec.link_state)
        if spec.addresses is not None:
            netlink.converge_addresses(ns, link.index, spec.addresses, label)
        if spec.routes is not None:
            netlink.converge_routes(ns, link.index, spec.routes, label)
        return old_mac

    # -- absent ---------------------------------------------------------------------------------

    def absent(self) -> None:
        name = netlink.check_ifname(self.params["name"])
        netns = self.params.get("netns") or None
        if netns is not None:
            netlink.check_netns_name(netns)
        where = "the host" if netns is None else f"netns {netns}"
        ns = self._known(netns)
        link = netlink.get_link(ns, name) if ns else None
        if link is None:
            self.result.update(state="absent", interface=None, peer=None)
            return
        if link.kind != "veth":
            raise NsboxError(f"{name} in {where} is a {link.kind or 'physical or unnamed-kind'} interface, not a veth; "
                             "this module removes only veth pairs", interface=name, kind=link.kind)
        interface = observe(ns, link, netns)
        found = self._locate_peer(ns, link)
        peer = observe(self.namespaces[found[0]], found[1], found[0]) if found else None
        self.diff.add("interface", interface, {"state": "absent"})
        if peer is not None:
            self.diff.add("peer", peer, {"state": "absent"})
        if not self.check_mode:
            netlink.delete_link(ns, link.index, f"veth {name} in {where}")
        self.result.update(state="absent", interface=interface, peer=peer)

    # -- results --------------------------------------------------------------------------------

    def _report_predicted(self, before: dict[str, dict[str, Any] | None], a_spec: EndSpec, b_spec: EndSpec) -> None:
        result: dict[str, Any] = {}
        for role, spec in (("interface", a_spec), ("peer", b_spec)):
            current = before[role] or {"ifindex": None, "mtu": 1500, "mac": None, "addresses": [], "routes": [],
                                       "master": None}
            predicted = {**current, **spec.wanted()}
            if before[role] and current.get("netns") != spec.netns:
                # Moving an interface to another namespace drops its addresses and routes.
                predicted.update({k: [] for k in ("addresses", "routes") if k not in spec.wanted()})
            result[role] = predicted
        self.result.update(state="present", **result)

    def _report_observed(self, a_ns: netlink.Namespace, b_ns: netlink.Namespace, a_spec: EndSpec,
                         b_spec: EndSpec) -> None:
        result = {}
        for role, ns, spec in (("interface", a_ns, a_spec), ("peer", b_ns, b_spec)):
            link = netlink.get_link(ns, spec.name)
            result[role] = observe(ns, link, spec.netns) if link else None
        self.result.update(state="present", **result)
