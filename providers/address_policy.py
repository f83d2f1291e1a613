"""Which network addresses a fetch of a user-given URL may reach (SPEC §4.8).

Only globally routable unicast addresses, by default. An IPv6 address that carries an IPv4 one (mapped
`::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo) is judged by the IPv4 address it
carries as well, since the packets end up there. Spellings are not this module's business: the resolver
turns `2130706433`, `0x7f.1` or `127.1` into the address they mean before anything is judged here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Carrier-grade NAT space: not private in `ipaddress`'s sense, but never a public server either.
SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
# "This network": 0.0.0.0 itself reaches the local host on Linux, the rest of 0/8 reaches nothing.
THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")

# What FETCH_ALLOW_PRIVATE lets through (tests and local development reach their own servers). Link-local
# stays refused even then: 169.254.169.254 is a cloud's metadata service, which holds credentials.
PRIVATE_KINDS = frozenset({"loopback", "private", "shared"})


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    # Networks reachable whatever they are: a test's stand-in for a public server, which must live on
    # loopback when the tests run without a network.
    treated_as_public: tuple[IPNetwork, ...] = ()

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` may not be reached (its kind, e.g. "loopback"), or None when it may."""
        if any(address in network for network in self.treated_as_public):
            return None
        kind = address_kind(address)
        if kind is None or (self.allow_private and kind in PRIVATE_KINDS):
            return None
        return kind

    def first_refusal(self, addresses: Iterable[IPAddress]) -> str | None:
        """A host is refused when any of its addresses is: the connection may go to any of them."""
        for address in addresses:
            kind = self.refusal(address)
            if kind is not None:
                carried = carried_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else []
                within = f" (it carries {', '.join(map(str, carried))})" if carried else ""
                return f"{address} is {kind}{within}"
        return None


def address_kind(address: IPAddress) -> str | None:
    """None for a globally routable unicast address; else what it is."""
    if isinstance(address, ipaddress.IPv6Address):
        for carried in carried_ipv4(address):
            kind = _ipv4_kind(carried)
            if kind is not None:
                return kind
        return _ipv6_kind(address)
    return _ipv4_kind(address)


def carried_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 one leads to: mapped, NAT64, 6to4, and Teredo's client."""
    carried = []
    if address.ipv4_mapped is not None:
        carried.append(address.ipv4_mapped)
    if address in NAT64_WELL_KNOWN:
        carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        carried.append(address.sixtofour)
    if address.teredo is not None:
        carried.append(address.teredo[1])
    return carried


def _ipv4_kind(address: ipaddress.IPv4Address) -> str | None:
    if address in THIS_NETWORK:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_link_local:
        return "link-local"
    if address.is_loopback:
        return "loopback"
    if address.is_reserved or address == ipaddress.IPv4Address("255.255.255.255"):
        return "reserved"
    if address in SHARED_ADDRESS_SPACE:
        return "shared"
    if not address.is_global:
        return "private"
    return None


def _ipv6_kind(address: ipaddress.IPv6Address) -> str | None:
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_link_local:
        return "link-local"
    if address.is_loopback:
        return "loopback"
    if address.is_site_local or address in ipaddress.IPv6Network("fc00::/7"):
        return "private"
    # Mapped, NAT64 and IPv4-compatible addresses sit in ::/8, which `ipaddress` calls reserved; the first
    # two were judged by what they carry.
    if address.ipv4_mapped is not None or address in NAT64_WELL_KNOWN:
        return None
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "private"
    return None
