"""Filters of the firewall role: addresses from the inventory, and checks.

The "who talks to whom" data lives in ``vars/main.yml``; these filters only
turn inventory hosts into addresses and check addresses with Python's
``ipaddress`` module, so the role needs neither netaddr nor ansible.utils.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    return list(value)


def firewall_host_addresses(hosts: Iterable[str], hostvars: Mapping[str, Any]) -> list[str]:
    """Addresses of inventory hosts: ``firewall_address`` (string or list) or
    the ``ansible_default_ipv4.address`` fact. Sorted, without duplicates."""
    out: set[str] = set()
    for name in _as_list(hosts):
        hv = hostvars[name]
        override = hv.get("firewall_address") if hasattr(hv, "get") else None
        if override not in (None, "", []):
            out.update(str(a) for a in _as_list(override))
            continue
        facts = hv.get("ansible_default_ipv4") or {}
        address = facts.get("address") if hasattr(facts, "get") else None
        if not address:
            raise AnsibleFilterError(
                f"firewall: no address for host '{name}': gather its facts in the play "
                "(ansible_default_ipv4) or set the host variable firewall_address"
            )
        out.add(str(address))
    return sorted(out)


def firewall_invalid_networks(values: Any) -> list[str]:
    """The entries that are not an IPv4/IPv6 address or network in canonical
    form (no host bits set: 10.0.0.0/8, not 10.0.0.1/8). Empty when all are valid."""
    bad = []
    for value in _as_list(values):
        try:
            ipaddress.ip_network(str(value), strict=True)
        except (ValueError, TypeError):
            bad.append(str(value))
    return bad


def firewall_family(values: Any, family: int) -> list[str]:
    """The entries of one IP family (4 or 6), merged where they overlap or
    touch (nft refuses overlapping elements in an interval set) and sorted."""
    nets = [ipaddress.ip_network(str(v), strict=True) for v in _as_list(values)]
    picked = [n for n in nets if n.version == int(family)]
    merged = ipaddress.collapse_addresses(picked)  # type: ignore[type-var]
    return [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in sorted(merged)]


def firewall_address_allowed(address: Any, networks: Any) -> bool:
    """True when the address lies inside one of the networks."""
    try:
        addr = ipaddress.ip_address(str(address))
    except ValueError:
        return False
    for net in _as_list(networks):
        try:
            if addr in ipaddress.ip_network(str(net), strict=False):
                return True
        except ValueError:
            continue
    return False


def firewall_invalid_ports(values: Any) -> list[str]:
    """The entries that are not an integer port in 1-65535."""
    bad = []
    for value in _as_list(values):
        if isinstance(value, bool):
            bad.append(str(value))
            continue
        try:
            port = int(str(value), 10)
        except ValueError:
            bad.append(str(value))
            continue
        if not 1 <= port <= 65535:
            bad.append(str(value))
    return bad


def firewall_invalid_port_settings(settings: Mapping[str, Any]) -> dict[str, str]:
    """The settings (name: port) whose value is not a port in 1-65535."""
    return {name: str(value) for name, value in dict(settings).items() if firewall_invalid_ports([value])}


class FilterModule:
    """Filters of the firewall role."""

    def filters(self) -> dict[str, Any]:
        return {
            "firewall_host_addresses": firewall_host_addresses,
            "firewall_invalid_networks": firewall_invalid_networks,
            "firewall_family": firewall_family,
            "firewall_address_allowed": firewall_address_allowed,
            "firewall_invalid_ports": firewall_invalid_ports,
            "firewall_invalid_port_settings": firewall_invalid_port_settings,
        }
