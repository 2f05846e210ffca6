"""Which URLs the service may send requests to (webhooks): a guard against server-side request
forgery (SSRF).

A target must be ``http`` or ``https``, carry no credentials, and its host must resolve only to
public addresses: loopback, private (RFC 1918, unique-local), link-local (169.254.0.0/16, where
cloud metadata services answer), IPv6 site-local, carrier-grade NAT, multicast, reserved and
unspecified addresses are refused, also when written as IPv4-mapped IPv6. An allow-list
(``WEBHOOK_ALLOW_LIST``) may let named networks or host names through. The check runs when an
endpoint is registered and again before every delivery, and the delivery connects to the very
address that was checked (a DNS answer that changes in between, "DNS rebinding", cannot redirect
it); redirects are not followed.
Shared by the API (registration) and the workers (delivery); no network traffic but DNS.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048


class TargetRefused(Exception):
    """The URL may not be called; ``message`` says why (safe to show to the client)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class AllowList:
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """``"127.0.0.1, 10.0.0.0/8, hooks.internal"``: networks and host names."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows_address(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``address``), and what to say to it."""

    url: str
    scheme: str
    host: str  # as written in the URL (no brackets), lower case
    port: int
    path: str  # path and query, at least "/"
    address: str  # the checked IP to connect to

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def pinned_url(self) -> str:
        """The URL with the host replaced by the checked address."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public address, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 is judged as that IPv4 address: IPv4-mapped
        # (::ffff:a.b.c.d) is a plain IPv4 connection, and a 6to4 address (2002:AABB:CCDD::/48)
        # is tunnelled to the IPv4 host it embeds by any host with a 6to4 route, so
        # 2002:7f00:1:: or 2002:a9fe:a9fe:: would reach loopback or the metadata service.
        # Python counts 2002::/16 as global.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return refusal_reason(embedded)
    # Most specific first: Python counts loopback and link-local as private too. Site-local
    # (fec0::/10) is deprecated but still routed inside the networks that used it, and Python
    # counts it as global.
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    for reason, flag in (("loopback", address.is_loopback),
                         ("link-local", address.is_link_local),
                         ("site-local", site_local),
                         ("multicast", address.is_multicast),
                         ("unspecified", address.is_unspecified),
                         ("reserved", address.is_reserved), ("private", address.is_private)):
        if flag:
            return reason
    if not address.is_global:
        return "not globally routable"
    return None


def check_target(url: str, allow: AllowList, resolver: Resolver = resolve) -> Target:
    """The checked target of ``url``, or :class:`TargetRefused` saying why not."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"the URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TargetRefused(f"the scheme '{scheme[:20]}' is not allowed; use http or https")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("the URL may not carry credentials (user:password@)")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise TargetRefused("the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise TargetRefused(f"the host '{host[:100]}' does not resolve: {exc}") from None
        if not addresses:
            raise TargetRefused(f"the host '{host[:100]}' does not resolve")
    if host not in allow.hosts:
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            reason = refusal_reason(address)
            if reason is not None and not allow.allows_address(address):
                raise TargetRefused(
                    f"the host '{host[:100]}' resolves to {address} ({reason}); webhooks go to "
                    "public addresses only (WEBHOOK_ALLOW_LIST lets others through)")
    return Target(url=url, scheme=scheme, host=host, port=port, path=path, address=addresses[0])


_PERCENT_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


def comparable_url(url: str) -> str:
    """``url`` in the form two URLs of one target share, for "one endpoint per URL": scheme and
    host in lower case, an internationalised host in its ASCII (IDNA) form, the host's trailing
    dot and the scheme's default port (80 for http, 443 for https) dropped, an empty path read
    as ``/``, percent escapes in upper case, and the fragment (never sent) dropped. The path
    and query keep their case: a server may tell ``/Hook`` from ``/hook``. A URL that cannot be
    parsed is returned as it is (registration refuses it before it is compared)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    try:
        host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
    except UnicodeError:  # not a valid IDN label: compared as written, lower case
        host = host.lower()
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}" if userinfo else host
    path = _PERCENT_ESCAPE.sub(lambda m: m.group(0).upper(), parts.path or "/")
    query = _PERCENT_ESCAPE.sub(lambda m: m.group(0).upper(), parts.query)
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
