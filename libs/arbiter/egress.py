"""The egress guard: every call Arbiter makes to a URL a customer gave (webhooks now; image fetches and LLM calls
later) goes through `egress_request()`.

Server-side request forgery defence, on every call:
- the scheme: `https` only in production (`http` too elsewhere);
- the host is resolved here and *every* address it resolves to is checked: anything not globally routable
  (private, loopback, link-local, multicast, reserved, shared address space, the cloud metadata addresses) is
  refused unless it lies inside the use's allow-list (`EgressPolicy.allowed_networks`, e.g.
  `ARBITER_WEBHOOK_ALLOWED_NETWORKS`);
- the connection is made to the checked address itself (the name is used only for the `Host` header, TLS SNI
  and certificate verification), so a second DNS answer cannot point it elsewhere (DNS rebinding);
- redirects are never followed: a 3xx is returned to the caller as it is;
- what is logged or put in an error names the scheme, host and path only: never a query string, user info or
  header value (secrets travel there).

It is written here on urllib3's connection pools rather than taken from a library because the check has to sit
between name resolution and connect, which no maintained Python HTTP client exposes (the `advocate` package that
did is unmaintained).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import HTTPError as Urllib3Error

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Addresses that are globally routable by the registry's tables yet serve instance metadata in some clouds.
METADATA_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.169.254/32"),  # AWS, GCP, Azure, OpenStack (also link-local)
    ipaddress.ip_network("169.254.170.2/32"),  # AWS ECS task metadata
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud
    ipaddress.ip_network("192.0.0.192/32"),  # Oracle Cloud
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS over IPv6
)


class EgressRefused(Exception):
    """The guard refused the call before connecting; `reason` is a stable code, the message is safe to log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EgressFailed(Exception):
    """The call was allowed but did not complete (connection refused, timeout, TLS error); safe to log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class EgressPolicy:
    """What one use of the guard may reach."""

    use: str
    allowed_networks: tuple[IPNetwork, ...] = ()
    https_only: bool = True

    @classmethod
    def build(cls, *, use: str, allowed_networks: Iterable[str], production: bool) -> EgressPolicy:
        return cls(
            use=use,
            allowed_networks=tuple(ipaddress.ip_network(n.strip(), strict=False) for n in allowed_networks),
            https_only=production,
        )


@dataclass(frozen=True)
class EgressResponse:
    status: int
    headers: Mapping[str, str]
    # At most `max_body_bytes` of the body.
    body: bytes
    elapsed_ms: float
    address: str = field(default="")


def redact_url(url: str) -> str:
    """The URL as it may appear in logs and errors: no user info, no query string, no fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _normalised(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return mapped
    return address


def address_refusal(address: IPAddress, policy: EgressPolicy) -> str | None:
    """Why the guard refuses this address (None: it may be reached)."""
    plain = _normalised(address)
    if any(plain in network for network in policy.allowed_networks if network.version == plain.version):
        return None
    if any(plain in network for network in METADATA_NETWORKS if network.version == plain.version):
        return "a cloud metadata address"
    if plain.is_loopback:
        return "a loopback address"
    if plain.is_link_local:
        return "a link-local address"
    if plain.is_multicast:
        return "a multicast address"
    if plain.is_private or plain.is_reserved or plain.is_unspecified or not plain.is_global:
        return "a private or reserved address"
    return None


def check_url(url: str, policy: EgressPolicy) -> SplitResult:
    """Check what can be checked without resolving (scheme, host, literal addresses); raise `EgressRefused`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise EgressRefused("invalid_url", "the URL cannot be parsed") from None
    allowed = ("https",) if policy.https_only else ("https", "http")
    if parts.scheme not in allowed:
        raise EgressRefused(
            "scheme",
            f"{redact_url(url)}: only {' or '.join(allowed)} URLs may be called, not {parts.scheme!r}",
        )
    if not parts.hostname:
        raise EgressRefused("invalid_url", "the URL names no host")
    if parts.username or parts.password:
        raise EgressRefused("invalid_url", f"{redact_url(url)}: user names and passwords in URLs are refused")
    if port == 0:
        raise EgressRefused("invalid_url", f"{redact_url(url)}: port 0")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return parts
    reason = address_refusal(literal, policy)
    if reason is not None:
        raise EgressRefused(
            "address", f"{redact_url(url)} is {reason}, which {policy.use} calls may not reach"
        )
    return parts


def resolve_checked(host: str, port: int, policy: EgressPolicy) -> list[IPAddress]:
    """Every address `host` resolves to, each checked; refuses if any is refused (a name with one private
    answer among public ones is treated as private: which one a client picks is not ours to predict)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressFailed("dns", f"{host}: the name does not resolve ({exc.__class__.__name__})") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise EgressFailed("dns", f"{host}: the name has no address")
    for address in addresses:
        reason = address_refusal(address, policy)
        if reason is not None:
            raise EgressRefused(
                "address", f"{host} resolves to {address}, {reason}, which {policy.use} calls may not reach"
            )
    return addresses


class _Pools:
    """Connection pools keyed by (scheme, checked address, port, TLS name), so a delivery to the same endpoint
    reuses its keep-alive connection; bounded, the least recently used closed first."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._pools: OrderedDict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, *, scheme: str, address: str, port: int, server_hostname: str
    ) -> urllib3.HTTPConnectionPool:
        key = (scheme, address, port, server_hostname)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            pool = (
                urllib3.HTTPSConnectionPool(
                    address,
                    port,
                    maxsize=8,
                    block=False,
                    retries=False,
                    server_hostname=server_hostname,
                    assert_hostname=server_hostname,
                    cert_reqs="CERT_REQUIRED",
                )
                if scheme == "https"
                else urllib3.HTTPConnectionPool(address, port, maxsize=8, block=False, retries=False)
            )
            self._pools[key] = pool
            while len(self._pools) > self.size:
                _, old = self._pools.popitem(last=False)
                old.close()
            return pool


_POOLS = _Pools()


def _failure(exc: BaseException, where: str) -> EgressFailed:
    """An error message without the URL (urllib3's own messages include it, query string and all)."""
    # urllib3's NewConnectionError is a subclass of ConnectTimeoutError: a refused connection is tested first.
    if isinstance(exc, NewConnectionError) and not isinstance(exc.__cause__, TimeoutError):
        return EgressFailed("connect", f"{where}: connection refused or unreachable")
    if isinstance(exc, ConnectTimeoutError):
        return EgressFailed("connect_timeout", f"{where}: timed out connecting")
    if isinstance(exc, ReadTimeoutError):
        return EgressFailed("timeout", f"{where}: no answer within the time limit")
    if isinstance(exc, SSLError):
        return EgressFailed("tls", f"{where}: TLS failed (certificate or handshake)")
    if isinstance(exc, NewConnectionError):
        return EgressFailed("connect", f"{where}: connection refused or unreachable")
    if isinstance(exc, ProtocolError):
        return EgressFailed("protocol", f"{where}: the connection broke off")
    return EgressFailed("network", f"{where}: {type(exc).__name__}")


def egress_request(
    method: str,
    url: str,
    *,
    policy: EgressPolicy,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    max_body_bytes: int = 2048,
) -> EgressResponse:
    """Make one HTTP call through the guard; never follows redirects. Raises `EgressRefused` (nothing was sent)
    or `EgressFailed` (the call did not complete); any HTTP status is a response."""
    parts = check_url(url, policy)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve_checked(host, port, policy)
    where = redact_url(url)
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header += f":{parts.port}"
    sent_headers = {"Host": host_header, **(headers or {})}
    deadline = time.monotonic() + timeout_s
    last_error: EgressFailed | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        pool = _POOLS.get(scheme=parts.scheme, address=str(address), port=port, server_hostname=host)
        started = time.perf_counter()
        try:
            response = pool.urlopen(
                method,
                target,
                body=body,
                headers=sent_headers,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(connect=min(remaining, timeout_s), read=remaining),
                preload_content=False,
                assert_same_host=False,
            )
        except (Urllib3Error, OSError) as exc:
            last_error = _failure(exc, where)
            if last_error.reason in ("connect", "connect_timeout"):
                continue  # the next checked address of the name may answer
            raise last_error from None
        try:
            content = response.read(max_body_bytes, decode_content=True) or b""
        except (Urllib3Error, OSError) as exc:
            raise _failure(exc, where) from None
        finally:
            # What is left of a long body is not read: drop the connection rather than drain it.
            if response.length_remaining and response.length_remaining > 64 * 1024:
                response.close()
            else:
                response.drain_conn()
            response.release_conn()
        elapsed_ms = (time.perf_counter() - started) * 1000
        return EgressResponse(
            status=response.status,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=content[:max_body_bytes],
            elapsed_ms=elapsed_ms,
            address=str(address),
        )
    raise last_error or EgressFailed("timeout", f"{where}: no answer within the time limit")


REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class EgressRedirectRefused(EgressRefused):
    """A redirect the guard would not follow (too many, no usable `Location`, or a refused target)."""


def egress_get_following(
    url: str,
    *,
    policy: EgressPolicy,
    max_redirects: int,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    max_body_bytes: int = 2048,
) -> EgressResponse:
    """GET through the guard, following at most `max_redirects` redirects: each target is checked (scheme,
    every resolved address) exactly as the first URL was, and connected to at its checked address. The time
    limit covers the whole chain. A refused hop raises `EgressRedirectRefused` naming where it pointed."""
    from urllib.parse import urljoin

    deadline = time.monotonic() + timeout_s
    current = url
    for hop in range(max_redirects + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EgressFailed("timeout", f"{redact_url(url)}: no answer within the time limit")
        try:
            answer = egress_request(
                "GET",
                current,
                policy=policy,
                headers=headers,
                timeout_s=remaining,
                max_body_bytes=max_body_bytes,
            )
        except EgressRefused as exc:
            if hop == 0:
                raise
            raise EgressRedirectRefused(
                exc.reason, f"{redact_url(url)} redirected to {redact_url(current)}: {exc}"
            ) from None
        if answer.status not in REDIRECT_STATUSES:
            return answer
        location = answer.headers.get("location", "").strip()
        if not location:
            return answer  # a 3xx without a target: the caller sees the status
        current = urljoin(current, location)
    raise EgressRedirectRefused(
        "too_many_redirects", f"{redact_url(url)}: more than {max_redirects} redirects"
    )
