"""Which network addresses the relay may call (pure; the SSRF policy of docs/agents.md).

An HTTP agent's endpoint is user-supplied, and the relay runs inside our network, so it
must not become a door into it: loopback, link-local (cloud metadata lives there),
private, CGNAT, unspecified, multicast, broadcast and other special-purpose addresses are
refused unless an operator allows their network (``SPINE_RELAY_ALLOWED_NETWORKS``).
IPv6 forms that carry an IPv4 address (mapped ``::ffff:a.b.c.d``, 6to4, Teredo, NAT64)
are judged by that IPv4 address too, so ``::ffff:127.0.0.1`` is loopback.

:meth:`AddressPolicy.refusal` decides one address; the relay's connect-time guard
(:mod:`spine_registry.relay.guard`) asks it for every address a host resolves to, and the
registry asks it at registration when the endpoint's host already resolves.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The setting that lets the relay call refused networks (comma-separated CIDRs).
ALLOWED_NETWORKS_SETTING = "SPINE_RELAY_ALLOWED_NETWORKS"

#: Cloud metadata services, named as such in refusals (all also fall in a refused range).
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_BROADCAST = ipaddress.ip_address("255.255.255.255")


def parse_networks(value: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """``"127.0.0.1/32, 10.0.0.0/8"`` → networks; a bare address is its /32 or /128."""
    items = value.split(",") if isinstance(value, str) else value
    out: list[IPNetwork] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ValueError(f"{ALLOWED_NETWORKS_SETTING}: {text!r} is not a CIDR") from exc
    return tuple(out)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _category(ip: IPAddress) -> str | None:
    """Why ``ip`` itself (not what it embeds) is refused, or None when it is public."""
    if ip in METADATA:
        return "cloud metadata"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "CGNAT"
    if ip == _BROADCAST:
        return "broadcast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "special-purpose"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_setting(cls, value: str) -> AddressPolicy:
        return cls(parse_networks(value))

    def is_allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allowed)

    def refusal(self, address: str | IPAddress) -> str | None:
        """None when the relay may connect to ``address``, else why not (e.g. "loopback",
        "IPv4-mapped loopback"). An address that is not an IP is refused."""
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return "not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        inner = embedded_ipv4(ip)
        if self.is_allowed(ip) or (inner is not None and self.is_allowed(inner)):
            return None
        if inner is not None:
            why = _category(inner)
            mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
            if why is not None:
                return f"{'IPv4-mapped' if mapped else 'IPv4-embedding'} {why}"
            if mapped:  # the socket connects to the IPv4 address itself, which is public
                return None
        return _category(ip)


class AddressRefused(OSError):
    """The relay will not connect to this address (see :class:`AddressPolicy`)."""

    def __init__(self, host: str, address: str, why: str) -> None:
        self.host = host
        self.address = address
        self.why = why
        shown = address if host == address else f"{host} ({address})"
        super().__init__(
            f"refused to connect to {shown}: {why} address, "
            f"not allowed by {ALLOWED_NETWORKS_SETTING}"
        )


async def resolve(host: str, port: int, within: float | None = None) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, without blocking the
    loop (a numeric host, even ``2130706433``, resolves to itself)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen[str(sockaddr[0])] = None
    return list(seen)


def check_resolved(policy: AddressPolicy, host: str, addresses: Iterable[str]) -> None:
    """Raise :class:`AddressRefused` for the first refused address ``host`` resolved to."""
    for address in addresses:
        why = policy.refusal(address)
        if why is not None:
            raise AddressRefused(host, address, why)


def endpoint_host(endpoint: str) -> tuple[str, int] | None:
    """The host and port an endpoint URL names (None when it names none)."""
    parts = urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname, port or default


async def endpoint_refusal(policy: AddressPolicy, endpoint: str, within: float = 2.0) -> str | None:
    """Why the relay would refuse ``endpoint`` now, or None. A name that does not resolve
    (yet) is not refused here: the connect-time guard judges it when it is called."""
    target = endpoint_host(endpoint)
    if target is None:
        return None
    host, port = target
    try:
        addresses = await resolve(host, port, within)
    except (OSError, TimeoutError, UnicodeError):
        return None
    try:
        check_resolved(policy, host, addresses)
    except AddressRefused as exc:
        return str(exc)
    return None
