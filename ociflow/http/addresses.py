"""Which hosts are local: loopback names, and IP literals outside public unicast space.

Used where a public registry must not steer ociflow to a private address (a token realm, a
redirect: reliability.md A4, R2) and where loopback registries get their exceptions (plain-HTTP
fallback, realms). Only literals are judged: a name is not resolved here.
"""

from __future__ import annotations

import ipaddress


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address when it is one (IPv6 with or without brackets), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback literal (127.0.0.0/8, ::1)."""
    ip = ip_literal(host)
    return host.lower() == "localhost" or (ip is not None and ip.is_loopback)


def is_local_address(host: str) -> bool:
    """An IP literal that is not a public unicast address: private, loopback, link-local
    (169.254.169.254, the cloud metadata service), reserved, multicast or unspecified."""
    ip = ip_literal(host)
    return ip is not None and (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
        or ip.is_multicast or ip.is_unspecified
    )


def is_local(host: str) -> bool:
    """``localhost`` or a local address literal (:func:`is_local_address`)."""
    return host.lower() == "localhost" or is_local_address(host)
