# Copyright: nsbox.primitives contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bridge module's logic: a Linux bridge in the host or a named namespace, with addresses, MTU and state."""

from __future__ import annotations

from typing import Any

from ansible_collections.nsbox.primitives.plugins.module_utils import netlink
from ansible_collections.nsbox.primitives.plugins.module_utils.manager import Manager, NsboxError


def ports(ns: netlink.Namespace, bridge: netlink.Link) -> list[str]:
    return sorted(link.name for link in netlink.links(ns) if link.master == bridge.index)


def observe(ns: netlink.Namespace, bridge: netlink.Link) -> dict[str, Any]:
    return {"ifindex": bridge.index, "mtu": bridge.mtu, "addresses": netlink.addresses(ns, bridge.index),
            "link_state": bridge.link_state, "ports": ports(ns, bridge)}


class BridgeManager(Manager):
    lock_kind = "bridge"

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.ns: netlink.Namespace | None = None

    def lock_name(self) -> str:
        return f"{self.params.get('netns') or ''}/{self.params['name']}"

    def close(self) -> None:
        if self.ns is not None:
            self.ns.close()

    def _open(self) -> tuple[str, str | None, str]:
        name = netlink.check_ifname(self.params["name"])
        netns = self.params.get("netns") or None
        where = "the host"
        if netns is not None:
            netlink.check_netns_name(netns)
            where = f"netns {netns}"
        self.ns = netlink.open_host() if netns is None else netlink.open_named(netns)
        if self.ns is None and not (self.check_mode and self.params["state"] == "present"):
            if self.params["state"] == "absent":
                return name, netns, where
            raise netlink.missing_netns_error(netns)
        if self.ns is None:
            self.module.warn(f"network namespace {netns} does not exist; check mode assumes an earlier task creates it")
        return name, netns, where

    def _existing(self, name: str, where: str) -> netlink.Link | None:
        link = netlink.get_link(self.ns, name) if self.ns else None
        if link is not None and link.kind != "bridge":
            raise NsboxError(f"{name} in {where} exists and is a {link.kind or 'physical or unnamed-kind'} interface, "
                             "not a bridge; choose another name", interface=name, kind=link.kind)
        return link

    def present(self) -> None:
        name, netns, where = self._open()
        addresses = netlink.normalize_addresses(self.params.get("addresses"))
        mtu = None if self.params.get("mtu") is None else netlink.normalize_mtu(self.params["mtu"])
        link_state = self.params["link_state"]
        wanted: dict[str, Any] = {"link_state": link_state}
        if mtu is not None:
            wanted["mtu"] = mtu
        if addresses is not None:
            wanted["addresses"] = addresses
        bridge = self._existing(name, where)
        label = f"bridge {name} in {where}"
        if bridge is None:
            self.diff.add("bridge", {"state": "absent"}, {"state": "present", **wanted})
            if self.check_mode:
                self._report(name, netns, {"ifindex": None, "mtu": mtu or 1500, "addresses": addresses or [],
                                           "link_state": link_state, "ports": []})
                return
            try:
                self.ns.ipr.link("add", ifname=name, kind="bridge")
            except netlink.NetlinkError as error:
                raise netlink.netlink_error(error, f"creating {label}") from None
            bridge = netlink.get_link(self.ns, name)
            if bridge is None:
                raise NsboxError(f"{label} was created but cannot be found again", interface=name)
            created = bridge.index
            self.undo.push(f"remove {label}", lambda: netlink.delete_link(self.ns, created, label))
        else:
            current = observe(self.ns, bridge)
            before = {k: current[k] for k, v in wanted.items() if current[k] != v}
            if before:
                self.diff.add("bridge", before, {k: wanted[k] for k in before})
            if self.check_mode:
                self._report(name, netns, {**current, **wanted})
                return
        if mtu is not None and bridge.mtu != mtu:
            netlink.set_link(self.ns, bridge.index, label, mtu=mtu)
        if bridge.link_state != link_state:
            netlink.set_link(self.ns, bridge.index, label, state=link_state)
        if addresses is not None:
            netlink.converge_addresses(self.ns, bridge.index, addresses, label)
        self._report(name, netns, observe(self.ns, netlink.get_link(self.ns, name)))

    def absent(self) -> None:
        name, netns, where = self._open()
        bridge = self._existing(name, where)
        if bridge is None:
            self._report(name, netns, {"ifindex": None, "mtu": None, "addresses": [], "link_state": None, "ports": []})
            return
        current = observe(self.ns, bridge)
        self.diff.add("bridge", {"state": "present", **current}, {"state": "absent"})
        if not self.check_mode:
            # The ports stay (a veth end is released, not deleted); the kernel detaches them.
            netlink.delete_link(self.ns, bridge.index, f"bridge {name} in {where}")
        self._report(name, netns, current)

    def _report(self, name: str, netns: str | None, values: dict[str, Any]) -> None:
        self.result.update(name=name, netns=netns, state=self.params["state"], **values)
