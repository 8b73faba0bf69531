"""Which IP addresses a caller's URL may reach: pure rules, no I/O.

Internal means anything that is not global unicast: loopback, private, link-local and
cloud metadata, CGNAT, multicast, reserved, unspecified. IPv6 forms that carry an IPv4
address inside them are judged by that address or refused outright:

| form | range | rule |
| --- | --- | --- |
| IPv4-mapped | ``::ffff:0:0/96`` | judged by the embedded IPv4 address |
| NAT64 well-known prefix | ``64:ff9b::/96`` | judged by the embedded IPv4 address |
| NAT64 local use | ``64:ff9b:1::/48`` | refused (where the IPv4 sits is site-defined) |
| 6to4 | ``2002::/16`` | refused (deprecated; relays reach the embedded IPv4) |
| Teredo | ``2001::/32`` | refused (the client address is obfuscated inside) |
| IPv4-compatible | ``::/96`` (``::a.b.c.d``) | refused (deprecated) |
| IPv4-translated | ``::ffff:0:0:0/96`` (``::ffff:0:a.b.c.d``) | refused |
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
REFUSED_V6 = tuple(ipaddress.ip_network(net) for net in (
    "64:ff9b:1::/48",   # NAT64 local use
    "2002::/16",        # 6to4
    "2001::/32",        # Teredo
    "::/96",            # IPv4-compatible (also holds :: and ::1)
    "::ffff:0:0:0/96",  # IPv4-translated
))


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped or NAT64 (well-known prefix) address stands for."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def internal(address: IPAddress) -> bool:
    """True when a caller may not aim jobqueue at this address."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        return internal(embedded)
    if isinstance(address, ipaddress.IPv6Address) and any(
            address in net for net in REFUSED_V6):
        return True
    return (address.is_private or address.is_loopback or address.is_link_local
            or address.is_multicast or address.is_reserved or address.is_unspecified
            or (isinstance(address, ipaddress.IPv4Address) and address in CGNAT)
            or not address.is_global)


def in_networks(address: IPAddress, networks: list[IPNetwork]) -> bool:
    """Whether the address, or the IPv4 address it stands for, is in one of them."""
    embedded = embedded_ipv4(address)
    return any(address in net or (embedded is not None and embedded in net)
               for net in networks)


def literal_address(host: str) -> IPAddress | None:
    """The address a host names directly, in any spelling resolvers accept."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:  # decimal (2852039166), octal (0251.0376.0251.0376), hex (0xA9FEA9FE), short
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None
