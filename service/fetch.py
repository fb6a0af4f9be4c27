"""Download an image from a caller-supplied URL without letting the URL reach inside the network.

Request messages come from other teams, so a URL is untrusted input: without care it could make
this service read a cloud metadata endpoint (credentials), an internal admin page, or a host on
the loopback interface (SSRF). The defences, each one needed:

* Only ``http``/``https`` URLs without userinfo, with a plausible host (:func:`check_url`).
* Every address a host name resolves to is checked *when the connection is made*, by a resolver
  wrapped around aiohttp's (:class:`PolicyResolver`), so a DNS answer that changes between a
  check and the connection (DNS rebinding) cannot slip through. aiohttp never sends IP-literal
  hosts to the resolver, so those are checked before the request instead.
* Redirects are followed by hand, each hop checked again as above.
* The whole fetch, body included, has one deadline; the body is read in chunks and abandoned as
  soon as it passes the size limit; the result must be a JPEG or PNG by its magic bytes.
* No proxies or ``.netrc`` from the environment, no cookies kept between fetches.

aiohttp errors become :class:`~service.errors.InputError` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, NoReturn
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from service.errors import InputError, Reason
from service.images import MAX_IMAGE_BYTES, check_image

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

USER_AGENT: Final = "image-moderation-service/0.1"
_CHUNK_BYTES: Final = 64 * 1024
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_MAX_URL_IN_MESSAGE: Final = 200
# Host names after IDNA encoding (yarl's raw_host): letters, digits, '-', '_' and dots.
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")

METADATA_ADDRESSES: Final[frozenset[IpAddress]] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack instance metadata
        "169.254.169.253",  # AWS VPC DNS
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::253",  # AWS VPC DNS over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
        "168.63.129.16",  # Azure WireServer (a public address, so only this list catches it)
        "192.0.0.192",  # Oracle Cloud (classic) metadata
    )
)
"""Cloud metadata endpoints: forbidden always, even inside ``FetchPolicy.allowed_networks``."""

# Ranges not globally reachable that the stdlib's flags miss on some Python versions.
_EXTRA_BLOCKED: Final[tuple[IpNetwork, ...]] = (
    ipaddress.ip_network("0.0.0.0/8"),  # "this network"
    ipaddress.ip_network("100.64.0.0/10"),  # shared address space (carrier-grade NAT)
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments
    ipaddress.ip_network("198.18.0.0/15"),  # benchmarking
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.ip_network("2001::/32"),  # Teredo tunnels
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchPolicy:
    """What :class:`ImageFetcher` may download, from where, how much and for how long."""

    max_bytes: int = MAX_IMAGE_BYTES
    timeout_s: float = 10.0
    max_redirects: int = 3
    # Explicit allowlist that overrides the block rules (not the metadata addresses), e.g. for an
    # internal image store or loopback in tests.
    allowed_networks: tuple[IpNetwork, ...] = ()
    allowed_schemes: tuple[str, ...] = ("https", "http")


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that an IPv6 one reaches (IPv4-mapped, NAT64, 6to4), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour


def _block_reason(addr: IpAddress, allowed: Iterable[IpNetwork]) -> str | None:
    """Why connecting to ``addr`` is forbidden, or None if it is allowed."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:
            addr = ipaddress.IPv6Address(int(addr))  # the zone does not change what it is
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            reason = _block_reason(embedded, allowed)
            # Mapped and NAT64 addresses are just another spelling of the IPv4 address (the stdlib
            # calls NAT64's ::/8 "reserved"); 6to4 must pass the IPv6 checks too.
            if reason is not None or addr.ipv4_mapped is not None or addr in _NAT64:
                return reason
    if addr in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if any(addr in network for network in allowed):
        return None
    flags = (
        ("an unspecified address", addr.is_unspecified),
        ("a loopback address", addr.is_loopback),
        ("a link-local address", addr.is_link_local),
        ("a multicast address", addr.is_multicast),
        ("a reserved address", addr.is_reserved),
        ("a private address", addr.is_private),
        ("not globally reachable", not addr.is_global),
        ("not globally reachable", any(addr in net for net in _EXTRA_BLOCKED)),
    )
    return next((name for name, hit in flags if hit), None)


def is_forbidden_address(addr: IpAddress, allowed: Iterable[IpNetwork] = ()) -> bool:
    """True if the fetcher must not connect to ``addr``.

    Forbidden: anything not globally reachable (private, loopback, link-local, multicast,
    reserved, unspecified, shared 100.64/10, ...), IPv6 forms that embed such an IPv4 address
    (IPv4-mapped, NAT64, 6to4), and cloud metadata addresses. ``allowed`` overrides all of that
    except the metadata addresses, which no legitimate image is served from.
    """
    return _block_reason(addr, tuple(allowed)) is not None


def redact_url(url: str | URL) -> str:
    """``url`` without userinfo, query or fragment (where secrets live), safe for messages."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    text = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else f"{netloc}{parts.path}"
    if len(text) > _MAX_URL_IN_MESSAGE:
        text = text[: _MAX_URL_IN_MESSAGE - 3] + "..."
    return text


def _ip_literal(host: str) -> IpAddress | None:
    """The address if ``host`` is one aiohttp connects to without asking the resolver.

    aiohttp treats a host as an address when it contains ':' or only digits and dots; the
    legacy numeric forms (``127.1``, ``2130706433``) that ``inet_aton`` would still map onto an
    address are refused outright rather than interpreted.
    """
    if ":" not in host and not host.replace(".", "").isdigit():
        return None
    return ipaddress.ip_address(host)  # ValueError for the legacy forms


def check_url(url: str | URL, policy: FetchPolicy) -> URL:
    """Parse ``url`` and refuse what must never be requested, before any connection is made.

    Raises ``INVALID_URL`` (unparsable, relative, other scheme, userinfo, bad host) or
    ``FORBIDDEN_URL`` (an IP-literal host that :func:`is_forbidden_address`). Host names are
    checked later, at connection time, by :class:`PolicyResolver`.
    """
    shown = redact_url(url)
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        host = parsed.host
        raw_host = parsed.raw_host
    except (ValueError, TypeError) as exc:
        raise InputError(Reason.INVALID_URL, f"unparsable URL {shown}: {exc}") from exc
    if parsed.scheme not in policy.allowed_schemes:
        allowed = ", ".join(policy.allowed_schemes)
        raise InputError(
            Reason.INVALID_URL,
            f"URL scheme {parsed.scheme[:20]!r} is not allowed ({allowed}): {shown}",
        )
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise InputError(Reason.INVALID_URL, f"URL must not contain credentials: {shown}")
    if not host or not raw_host:
        raise InputError(Reason.INVALID_URL, f"URL has no host: {shown}")
    try:
        addr = _ip_literal(host)
    except ValueError:
        raise InputError(
            Reason.INVALID_URL, f"URL host is not a canonical IP address: {shown}"
        ) from None
    if addr is None:
        if len(raw_host) > 253 or not _HOST_NAME.fullmatch(raw_host):
            raise InputError(Reason.INVALID_URL, f"URL host is not a valid name: {shown}")
        return parsed
    reason = _block_reason(addr, policy.allowed_networks)
    if reason is not None:
        raise InputError(Reason.FORBIDDEN_URL, f"{shown}: {addr} is {reason}")
    return parsed


class ForbiddenAddressError(OSError):
    """A host name resolved to a forbidden address.

    An ``OSError`` so that aiohttp's connector wraps it like any resolver failure
    (``ClientConnectorDNSError`` with this as ``os_error`` and ``__cause__``), from which
    :class:`ImageFetcher` recovers it to tell FORBIDDEN_URL apart from UNREACHABLE_URL.
    """

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} resolves to {address}, which is {reason}")
        self.host = host
        self.address = address
        self.reason = reason


class PolicyResolver(AbstractResolver):
    """Resolve with ``inner``, then refuse the whole answer if any address is forbidden.

    The connector connects only to addresses this returns, so the check cannot be bypassed by a
    second, different DNS answer. Refusing on *any* bad address (rather than filtering) keeps a
    name that mixes public and internal addresses from working by chance.
    """

    def __init__(self, inner: AbstractResolver, allowed: Iterable[IpNetwork] = ()) -> None:
        self._inner = inner
        self._allowed = tuple(allowed)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and return the answer only if every address in it is allowed."""
        results = await self._inner.resolve(host, port, family)
        if not results:
            raise OSError(f"{host} resolves to no address")
        for result in results:
            address = result["host"]
            try:
                addr = ipaddress.ip_address(address)
            except ValueError:
                raise ForbiddenAddressError(host, address, "not an IP address") from None
            reason = _block_reason(addr, self._allowed)
            if reason is not None:
                raise ForbiddenAddressError(host, address, reason)
        return results

    async def close(self) -> None:
        """Close the wrapped resolver (the connector only closes resolvers it created)."""
        await self._inner.close()


def _forbidden_cause(exc: BaseException) -> ForbiddenAddressError | None:
    """The :class:`ForbiddenAddressError` behind an aiohttp connection error, if there is one."""
    current: BaseException | None = exc
    for _ in range(8):  # a short chain; bounded in case of a cycle
        if current is None:
            break
        if isinstance(current, ForbiddenAddressError):
            return current
        if isinstance(current, aiohttp.ClientConnectorError) and isinstance(
            current.os_error, ForbiddenAddressError
        ):
            return current.os_error
        current = current.__cause__
    return None


def _translate(exc: Exception, url: URL) -> NoReturn:
    """Raise the :class:`InputError` for an aiohttp (or socket) failure while fetching ``url``."""
    shown = redact_url(url)
    forbidden = _forbidden_cause(exc)
    if forbidden is not None:
        raise InputError(Reason.FORBIDDEN_URL, f"{shown}: {forbidden}") from exc
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        raise InputError(Reason.INVALID_URL, f"{shown}: {type(exc).__name__}") from exc
    if isinstance(exc, TimeoutError):
        raise InputError(Reason.UNREACHABLE_URL, f"{shown}: timed out") from exc
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        raise InputError(Reason.UNREACHABLE_URL, f"{shown}: host name not resolved") from exc
    if isinstance(exc, aiohttp.ClientResponseError):
        # The server answered, but not with HTTP we can use (malformed status line, headers).
        raise InputError(
            Reason.URL_HTTP_ERROR, f"{shown}: bad HTTP response ({exc.status}, {exc.message})"
        ) from exc
    raise InputError(
        Reason.UNREACHABLE_URL, f"{shown}: {type(exc).__name__}: {str(exc)[:200]}"
    ) from exc


Reserve = Callable[[int], Awaitable[None]]


class _Body:
    """One fetch's deadline and memory reservation: waiting for the memory stops the clock."""

    def __init__(self, deadline: asyncio.Timeout, reserve: Reserve | None) -> None:
        self._deadline = deadline
        self._reserve = reserve

    async def reserve(self, size: int) -> None:
        if self._reserve is None:
            return
        loop = asyncio.get_running_loop()
        when = self._deadline.when()
        started = loop.time()
        self._deadline.reschedule(None)
        try:
            await self._reserve(size)
        finally:
            if when is not None:
                self._deadline.reschedule(when + (loop.time() - started))


class ImageFetcher:
    """Downloads images by URL under a :class:`FetchPolicy`; one shared session, no state kept.

    Use ``await start()`` before :meth:`fetch` and ``await close()`` after (or ``async with``).
    """

    def __init__(self, policy: FetchPolicy, *, resolver: AbstractResolver | None = None) -> None:
        """``resolver`` replaces aiohttp's DNS resolver *inside* the policy check (for tests)."""
        self._policy = policy
        self._inner_resolver = resolver
        self._resolver: PolicyResolver | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def policy(self) -> FetchPolicy:
        """The policy every fetch is held to."""
        return self._policy

    async def start(self) -> None:
        """Create the HTTP session whose connector resolves through :class:`PolicyResolver`."""
        if self._session is not None:
            return
        inner = self._inner_resolver or aiohttp.DefaultResolver()
        self._resolver = PolicyResolver(inner, self._policy.allowed_networks)
        connector = aiohttp.TCPConnector(resolver=self._resolver)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # The one deadline is fetch()'s, over all hops and the body; none per request here.
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "image/jpeg, image/png;q=0.9, */*;q=0.1",
                # Content-Length then means what it says; aiohttp still bounds decompression.
                "Accept-Encoding": "identity",
            },
        )

    async def close(self) -> None:
        """Close the session, its connections and the resolver; safe to call more than once."""
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()  # passed in, so the connector does not close it

    async def __aenter__(self) -> ImageFetcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def fetch(self, url: str, *, reserve: Reserve | None = None) -> bytes:
        """Return the image at ``url`` as checked JPEG or PNG bytes, or raise :class:`InputError`.

        Reasons: INVALID_URL, FORBIDDEN_URL (also for any redirect hop), UNREACHABLE_URL
        (connection refused, DNS failure, timeout of the whole fetch), URL_HTTP_ERROR (non-2xx
        status, a redirect without Location, more than ``max_redirects`` redirects),
        IMAGE_TOO_LARGE, NOT_AN_IMAGE. Cancellation propagates untouched.

        ``reserve``: awaited with the body's declared size (the limit when it declares none)
        before the body is read, to hold that much memory; the time it waits does not count
        against the fetch's timeout.
        """
        if self._session is None:
            raise RuntimeError("ImageFetcher.fetch() called before start()")
        current = check_url(url, self._policy)
        try:
            async with asyncio.timeout(self._policy.timeout_s) as deadline:
                return await self._follow(self._session, current, _Body(deadline, reserve))
        except TimeoutError as exc:
            raise InputError(
                Reason.UNREACHABLE_URL,
                f"{redact_url(url)}: no complete response within {self._policy.timeout_s:g} s",
            ) from exc

    async def _follow(self, session: aiohttp.ClientSession, url: URL, body: _Body) -> bytes:
        """Request ``url`` and its redirects, each hop checked, and return the final body."""
        policy = self._policy
        for redirects in range(policy.max_redirects + 1):
            location = await self._request(session, url, body)
            if isinstance(location, bytes):
                return location
            if redirects == policy.max_redirects:
                break
            try:
                target = url.join(URL(location))
            except ValueError as exc:
                raise InputError(
                    Reason.INVALID_URL, f"{redact_url(url)} redirects to an unparsable URL"
                ) from exc
            try:
                checked = check_url(target, policy)
            except InputError as exc:
                raise InputError(
                    exc.reason, f"{redact_url(url)} redirects to {exc.message}"
                ) from exc
            url = checked
        raise InputError(
            Reason.URL_HTTP_ERROR,
            f"{redact_url(url)}: more than {policy.max_redirects} redirects",
        )

    async def _request(self, session: aiohttp.ClientSession, url: URL, hold: _Body) -> bytes | str:
        """One GET: the checked body, or the Location of a redirect."""
        try:
            async with session.get(url, allow_redirects=False) as response:
                status = response.status
                if status in _REDIRECT_STATUSES:
                    location = response.headers.get(aiohttp.hdrs.LOCATION)
                    if not location:
                        raise InputError(
                            Reason.URL_HTTP_ERROR,
                            f"{redact_url(url)}: HTTP {status} redirect without a Location",
                        )
                    return location
                if not 200 <= status < 300:
                    raise InputError(Reason.URL_HTTP_ERROR, f"{redact_url(url)}: HTTP {status}")
                body = await self._read_body(response, url, hold)
        except (aiohttp.ClientError, OSError) as exc:
            # TimeoutError is an OSError: aiohttp's own timeouts end up here too.
            _translate(exc, url)
        try:
            check_image(body, self._policy.max_bytes)
        except InputError as exc:
            raise InputError(exc.reason, f"{redact_url(url)}: {exc.message}") from exc
        return body

    async def _read_body(self, response: aiohttp.ClientResponse, url: URL, hold: _Body) -> bytes:
        """Read at most ``max_bytes`` (plus one chunk) and give up as soon as it is exceeded."""
        limit = self._policy.max_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise InputError(
                Reason.IMAGE_TOO_LARGE,
                f"{redact_url(url)}: Content-Length {declared} is more than the limit of {limit}",
            )
        await hold.reserve(declared if declared is not None else limit)
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            body += chunk
            if len(body) > limit:
                raise InputError(
                    Reason.IMAGE_TOO_LARGE,
                    f"{redact_url(url)}: body is more than the limit of {limit} bytes",
                )
        return bytes(body)
