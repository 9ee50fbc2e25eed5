"""SSRF guard for fetching attacker-chosen URLs (pages and thumbnails that came from search results).

What it enforces, exactly:
- only `http` and `https` URLs, with a host;
- the host is resolved once, and every resolved address must be *global* (`ipaddress` `is_global`, not
  multicast); IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are judged by their IPv4 address. This refuses
  loopback, 0.0.0.0/8, 10/8, 172.16/12, 192.168/16, 100.64/10 (shared), 169.254/16 (link-local, cloud metadata),
  fc00::/7, fe80::/10, documentation and reserved ranges;
- legacy numeric IPv4 spellings that C resolvers accept (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`) are
  parsed by `parse_legacy_ipv4` into the address they really mean, and judged as such;
- the check runs *inside the connection step*: `GuardedNetworkBackend.connect_tcp` resolves, checks, and then
  connects to the checked IP itself, so there is no window for DNS rebinding between check and connect and no
  packet is ever sent to a refused address. TLS still uses the URL's host name (httpcore passes it to
  `start_tls` as `server_hostname`, so SNI and certificate verification use the name; the Host header is built
  from the URL), and certificate verification stays on;
- `check_url` runs the same check before a request (for a clear error), and `web/fetch.py` follows redirects
  itself, checking every hop;
- `guard_reader(reader)` puts any page reader behind `check_url`; `search/factory.py` wraps every web reader
  (`jina`, `fetch`, any future one: every reader type but the local ones and `service`, whose server guards its
  own) this way, outermost, so a search result pointing at `http://169.254.169.254/` is refused before any
  request, cache lookup or retry. Thumbnails go through `SafeFetcher` (`web/fetch.py`), which applies the same
  `check_url` and connects through `GuardedTransport`.

`allow_hosts` is an explicit allow-list (host names or IP strings) for tests that fetch from loopback servers;
it is empty by default.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

from mmsearch_r1.search.base import SearchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class UnsafeURLError(SearchError):
    """The URL is refused by the SSRF guard (bad scheme, non-global address, unresolvable host)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def parse_legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Parse the numeric IPv4 forms `inet_aton` accepts (1 to 4 parts, decimal/octal/hex). None if not numeric."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or any(p == "" for p in parts):
        return None
    nums: list[int] = []
    for p in parts:
        try:
            if p.lower().startswith("0x"):
                nums.append(int(p[2:] or "0", 16))
            elif len(p) > 1 and p.startswith("0"):
                nums.append(int(p[1:], 8))
            else:
                nums.append(int(p, 10))
        except ValueError:
            return None
    *head, last = nums
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(nums)):
        return None
    value = 0
    for n in head:
        value = value * 256 + n
    value = (value << (8 * (5 - len(nums)))) + last
    return ipaddress.IPv4Address(value)


def parse_ip_literal(host: str) -> IPAddress | None:
    """An IP written in the host (`[::1]`, `127.0.0.1`, `0x7f000001`, ...), or None for a name."""
    h = host.strip("[]")
    try:
        return ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        return parse_legacy_ipv4(h)


def is_public_ip(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses (pure function, no network)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_ip(ip.ipv4_mapped)
        if ip.sixtofour is not None or ip.teredo is not None:
            return False
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_reserved:
        return False
    return ip.is_global


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with getaddrinfo; returns IP strings (may be empty)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UnsafeURLError(f"cannot resolve host {host!r}: {e.strerror}") from None
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class UrlPolicy:
    """Who may be fetched. `allow_hosts` (names or IPs) bypasses the address check: tests only."""

    allow_hosts: frozenset[str] = frozenset()
    resolver: Resolver = system_resolver

    @classmethod
    def make(cls, allow_hosts: Iterable[str] = (), resolver: Resolver | None = None) -> UrlPolicy:
        return cls(frozenset(h.lower().strip("[]") for h in allow_hosts), resolver or system_resolver)

    def resolve_checked(self, host: str, port: int) -> list[IPAddress]:
        """Addresses to connect to for host, all checked; raises UnsafeURLError if any is refused."""
        host_l = host.lower().strip("[]").rstrip(".")
        literal = parse_ip_literal(host_l)
        if literal is not None:
            ips = [literal]
        else:
            ips = []
            for s in self.resolver(host_l, port):
                ip = parse_ip_literal(s)
                if ip is None:
                    raise UnsafeURLError(f"resolver returned a non-address for {host!r}")
                ips.append(ip)
        if not ips:
            raise UnsafeURLError(f"host {host!r} resolved to no address")
        if host_l in self.allow_hosts:
            return ips
        for ip in ips:
            if str(ip) not in self.allow_hosts and not is_public_ip(ip):
                raise UnsafeURLError(f"refused {host!r}: resolves to non-global address {ip}")
        return ips


def check_url(url: str, policy: UrlPolicy) -> list[IPAddress]:
    """Check scheme and host of url; return the checked addresses. Raises UnsafeURLError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeURLError(f"malformed URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURLError(f"refused scheme {parts.scheme!r}: only http and https")
    if not parts.hostname:
        raise UnsafeURLError("URL has no host")
    if parts.username or parts.password:
        raise UnsafeURLError("URLs with credentials are refused")
    return policy.resolve_checked(parts.hostname, port or (443 if parts.scheme == "https" else 80))


class GuardedNetworkBackend(httpcore.NetworkBackend):
    """httpcore network backend that resolves, checks, and connects to the checked IP (no rebinding window)."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        ips = self.policy.resolve_checked(host, port)
        last: Exception | None = None
        for ip in ips:
            try:
                return self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        assert last is not None
        raise last

    def connect_unix_socket(self, *args: object, **kwargs: object) -> httpcore.NetworkStream:
        raise UnsafeURLError("unix sockets are refused")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx transport whose connection pool uses `GuardedNetworkBackend` (TLS verification on, no proxies).

    httpx 0.28 has no public hook for a network backend, so the pool is rebuilt with httpcore's public
    `ConnectionPool(network_backend=...)` and stored where `HTTPTransport` keeps it (`_pool`); a test checks
    that a refused host never sees a connection.
    """

    def __init__(self, policy: UrlPolicy, *, max_connections: int = 20, verify: bool | str = True) -> None:
        """`verify`: True (system CAs), a CA bundle path (tests with their own CA), or False (never in use)."""
        if isinstance(verify, str):
            ssl_context = ssl.create_default_context(cafile=verify)
        else:
            ssl_context = httpx.create_ssl_context(verify=verify)
        super().__init__(verify=ssl_context)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            network_backend=GuardedNetworkBackend(policy),
        )


class GuardedReader:
    """A page reader behind the SSRF guard: `read(url)` refuses (UnsafeURLError, nothing sent) any URL that
    `check_url` refuses, before the inner reader sees it. This is the one place every web reader is guarded:
    JINA fetches the URL on its own servers and `fetch` fetches it here, and both get only checked URLs."""

    def __init__(self, inner: object, policy: UrlPolicy) -> None:
        self.inner = inner
        self.policy = policy
        self.name = getattr(inner, "name", type(inner).__name__)
        self.counters = getattr(inner, "counters", None)

    def __repr__(self) -> str:
        return f"GuardedReader({self.inner!r})"

    def __getattr__(self, name: str) -> object:  # cache_params, stats, close, ... of the inner reader
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def read(self, url: str) -> object:
        check_url(url, self.policy)
        return self.inner.read(url)  # type: ignore[attr-defined]


def guard_reader(reader: object, policy: UrlPolicy | None = None) -> GuardedReader:
    """Wrap a page reader so that only URLs passing the SSRF guard reach it (default policy: no allow-list)."""
    return GuardedReader(reader, policy or UrlPolicy.make())
