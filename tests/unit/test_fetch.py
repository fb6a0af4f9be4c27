"""Safe URL download: URL and address policy, redirects, limits, error translation.

Every connection these tests make goes to a server on 127.0.0.1 started here. URLs pointing
anywhere else must be refused before any connection: the autouse ``loopback_only`` fixture fails
a test that tries to connect to a non-loopback address, so a regression cannot send traffic out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any

import aiohappyeyeballs
import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from service.errors import InputError, Reason
from service.fetch import (
    USER_AGENT,
    FetchPolicy,
    ForbiddenAddressError,
    ImageFetcher,
    PolicyResolver,
    check_url,
    is_forbidden_address,
    redact_url,
)
from service.images import MAX_IMAGE_BYTES

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20
BIG = 6 * 1024 * 1024
LOOPBACK = (ip_network("127.0.0.1/32"),)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- the address classifier -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:8.8.8.8", False),  # IPv4-mapped public address
        ("64:ff9b::808:808", False),  # NAT64 of a public address
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("10.0.0.1", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("192.168.1.1", True),
        ("169.254.1.1", True),  # link-local
        ("169.254.169.254", True),  # metadata
        ("169.254.170.2", True),
        ("100.64.0.1", True),  # shared address space
        ("100.127.255.255", True),
        ("100.100.100.200", True),  # Alibaba metadata
        ("168.63.129.16", True),  # Azure WireServer, a public address
        ("192.0.0.192", True),
        ("0.0.0.0", True),
        ("0.1.2.3", True),
        ("224.0.0.1", True),  # multicast
        ("239.255.255.250", True),
        ("240.0.0.1", True),  # reserved
        ("255.255.255.255", True),
        ("192.0.2.1", True),  # documentation
        ("198.18.0.1", True),  # benchmarking
        ("::", True),
        ("::1", True),
        ("::127.0.0.1", True),  # IPv4-compatible, deprecated
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("::ffff:100.64.0.1", True),
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ("64:ff9b::7f00:1", True),
        ("64:ff9b:1::808:808", True),  # local-use NAT64
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("2002:a00:1::", True),  # 6to4 of 10.0.0.1
        ("2001::1", True),  # Teredo
        ("fe80::1", True),
        ("fe80::1%eth0", True),
        ("fc00::1", True),
        ("fd00:ec2::254", True),  # AWS metadata over IPv6
        ("ff02::1", True),
        ("2001:db8::1", True),
    ],
)
def test_is_forbidden_address(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(ip_address(address)) is forbidden


@pytest.mark.parametrize(
    ("address", "allowed", "forbidden"),
    [
        ("127.0.0.1", LOOPBACK, False),
        ("127.0.0.2", LOOPBACK, True),
        ("::ffff:127.0.0.1", LOOPBACK, False),  # the same address, spelled in IPv6
        ("::1", LOOPBACK, True),
        ("10.1.2.3", (ip_network("10.0.0.0/8"),), False),
        ("10.1.2.3", (ip_network("192.168.0.0/16"), ip_network("10.1.0.0/16")), False),
        ("172.16.0.1", (ip_network("10.0.0.0/8"),), True),
        ("fd12::1", (ip_network("fd12::/16"),), False),
        # The metadata addresses stay forbidden whatever the allowlist says.
        ("169.254.169.254", (ip_network("169.254.0.0/16"),), True),
        ("169.254.169.254", (ip_network("0.0.0.0/0"),), True),
        ("::ffff:169.254.169.254", (ip_network("0.0.0.0/0"),), True),
        ("fd00:ec2::254", (ip_network("::/0"),), True),
        ("169.254.1.1", (ip_network("169.254.0.0/16"),), False),
    ],
)
def test_is_forbidden_address_with_allowlist(
    address: str,
    allowed: tuple[Network, ...],
    forbidden: bool,
) -> None:
    assert is_forbidden_address(ip_address(address), allowed) is forbidden


# --- URL checks and redaction -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/a/b.png", "https://example.com/a/b.png"),
        ("https://example.com/a.png?X-Amz-Signature=abc&token=t", "https://example.com/a.png"),
        ("https://user:pw@example.com:8443/a.png#frag", "https://example.com:8443/a.png"),
        ("http://[::1]:8080/x?y", "http://[::1]:8080/x"),
        ("HTTP://Example.COM/X", "http://example.com/X"),
        ("http://h:99999/", "<unparsable URL>"),
        ("http://[::1", "<unparsable URL>"),
        ("https://example.com/" + "a" * 500, "https://example.com/" + "a" * 177 + "..."),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x.png",
        "file:///etc/passwd",
        "gopher://example.com/",
        "data:image/png;base64,iVBORw0KGgo=",
        "http://user:pw@example.com/",
        "http://user@example.com/",
        "not a url",
        "/relative/x.png",
        "//example.com/x.png",
        "http:///x.png",
        "http://[::1",
        "http://example.com:99999/",
        "http://ex ample.com/",
        "http://exa$mple.com/",
        "http://127.1/",  # legacy numeric forms are not interpreted
        "http://2130706433/",
        "http://017700000001/",
        "http://127.0.0.1./",
        "http://" + "a" * 300 + ".com/",
    ],
)
def test_check_url_invalid(url: str) -> None:
    with pytest.raises(InputError) as info:
        check_url(url, FetchPolicy())
    assert info.value.reason is Reason.INVALID_URL
    assert "pw" not in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://10.0.0.1/",
        "http://127.0.0.1:8080/x.png",
        "https://192.168.0.1/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1%25eth0]/",
        "http://[64:ff9b::a9fe:a9fe]/",
    ],
)
def test_check_url_forbidden_ip_literal(url: str) -> None:
    with pytest.raises(InputError) as info:
        check_url(url, FetchPolicy())
    assert info.value.reason is Reason.FORBIDDEN_URL


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/x.png",
        "http://example.com:8080/x.png?sig=1",
        "https://8.8.8.8/x.png",
        "https://[2606:4700:4700::1111]/x.png",
        "https://bücher.example/x.png",  # IDNA
        "https://my_bucket.s3.amazonaws.com/x.png",
        "https://example.com./x.png",
    ],
)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url, FetchPolicy()).scheme in {"http", "https"}


def test_check_url_scheme_allowlist() -> None:
    with pytest.raises(InputError) as info:
        check_url("http://example.com/", FetchPolicy(allowed_schemes=("https",)))
    assert info.value.reason is Reason.INVALID_URL


# --- the resolver wrapper ---------------------------------------------------------------------


class StaticResolver(AbstractResolver):
    """Answers from a table, as DNS would, without any network traffic."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[str] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.table[host]
        ]

    async def close(self) -> None:
        self.closed = True


class NoResolver(AbstractResolver):
    """Fails the test if anything is resolved."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise AssertionError(f"resolved {host}, expected a refusal before any lookup")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("addresses", "allowed", "refused"),
    [
        (["93.184.215.14"], (), False),
        (["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"], (), False),
        (["127.0.0.1"], (), True),
        (["93.184.215.14", "10.0.0.1"], (), True),  # any forbidden address refuses the name
        (["::ffff:169.254.169.254"], (), True),
        (["127.0.0.1"], LOOPBACK, False),
        (["169.254.169.254"], (ip_network("169.254.0.0/16"),), True),
        (["not-an-address"], (), True),
    ],
)
async def test_policy_resolver(
    addresses: list[str],
    allowed: tuple[Network, ...],
    refused: bool,
) -> None:
    resolver = PolicyResolver(StaticResolver({"h.test": addresses}), allowed)
    if refused:
        with pytest.raises(ForbiddenAddressError) as info:
            await resolver.resolve("h.test", 80)
        assert "h.test resolves to" in str(info.value)
    else:
        assert [r["host"] for r in await resolver.resolve("h.test", 80)] == addresses


async def test_policy_resolver_passes_failures_through_and_closes_inner() -> None:
    inner = StaticResolver({"empty.test": []})
    resolver = PolicyResolver(inner)
    with pytest.raises(socket.gaierror):
        await resolver.resolve("missing.test", 80)
    with pytest.raises(OSError, match="no address") as info:
        await resolver.resolve("empty.test", 80)
    assert not isinstance(info.value, ForbiddenAddressError)
    await resolver.close()
    assert inner.closed


# --- the local server -------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    requests: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def redirect(self, location: str) -> str:
        return str(URL(self.url("/to")).with_query(location=location))


def _app(state: Server) -> web.Application:
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        state.requests.append(dict(request.headers))
        response: web.StreamResponse = await handler(request)
        return response

    async def png(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def jpeg(request: web.Request) -> web.Response:
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def png_untyped(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="application/octet-stream")

    async def lie(request: web.Request) -> web.Response:
        return web.Response(body=b"<html><body>hello</body></html>", content_type="image/png")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="image/png")

    async def cookie(request: web.Request) -> web.Response:
        response = web.Response(body=PNG, content_type="image/png")
        response.set_cookie("session", "s3cret")
        return response

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=PNG + b"\x00" * (BIG - len(PNG)), content_type="image/png")

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await response.write(PNG)
            chunk = b"\x00" * 65536
            for _ in range(BIG // len(chunk)):
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up, as it should
        return response

    async def chain(request: web.Request) -> web.Response:
        hops = int(request.match_info["hops"])
        if hops == 0:
            return web.Response(body=PNG, content_type="image/png")
        if hops == 1:  # absolute
            location = state.url("/chain/0")
        elif hops % 2 == 0:  # relative to the current path
            location = str(hops - 1)
        else:  # absolute path
            location = f"/chain/{hops - 1}"
        raise web.HTTPFound(location)

    async def to(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["location"]})

    async def moved_nowhere(request: web.Request) -> web.Response:
        return web.Response(status=302)

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="nothing here")

    async def server_error(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    async def slow_headers(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.release.wait(), 5)
        return web.Response(body=PNG, content_type="image/png")

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "image/png", "Content-Length": str(len(PNG) + 100)}
        )
        await response.prepare(request)
        try:
            await response.write(PNG)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.release.wait(), 5)
            await response.write(b"\x00" * 100)
        except ConnectionError:
            pass
        return response

    app = web.Application(middlewares=[web.middleware(record)])
    app.router.add_get("/x.png", png)
    app.router.add_get("/x.jpg", jpeg)
    app.router.add_get("/untyped", png_untyped)
    app.router.add_get("/lie.png", lie)
    app.router.add_get("/empty", empty)
    app.router.add_get("/cookie", cookie)
    app.router.add_get("/big", big)
    app.router.add_get("/big-chunked", big_chunked)
    app.router.add_get("/chain/{hops}", chain)
    app.router.add_get("/to", to)
    app.router.add_get("/moved-nowhere", moved_nowhere)
    app.router.add_get("/status/404", not_found)
    app.router.add_get("/status/503", server_error)
    app.router.add_get("/slow-headers", slow_headers)
    app.router.add_get("/slow-body", slow_body)
    return app


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[Server]:
    state = Server(port=0)
    runner = web.AppRunner(_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert runner.addresses
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test whose fetch tries to connect anywhere but loopback."""
    real = aiohappyeyeballs.start_connection

    async def guarded(addr_infos: Sequence[Any], **kwargs: Any) -> socket.socket:
        for info in addr_infos:
            address = ip_address(info[4][0])
            assert address.is_loopback, f"test tried to connect to {address}"
        return await real(addr_infos, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", guarded)


@pytest.fixture
def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _started(policy: FetchPolicy, resolver: AbstractResolver | None = None) -> ImageFetcher:
    fetcher = ImageFetcher(policy, resolver=resolver)
    await fetcher.start()
    return fetcher


@pytest.fixture
async def fetcher() -> AsyncIterator[ImageFetcher]:
    """Allows loopback, as a deployment would allow an internal image store."""
    fetcher = await _started(FetchPolicy(allowed_networks=LOOPBACK, timeout_s=5))
    yield fetcher
    await fetcher.close()


@pytest.fixture
async def strict_fetcher() -> AsyncIterator[ImageFetcher]:
    """The default policy: loopback forbidden."""
    fetcher = await _started(FetchPolicy())
    yield fetcher
    await fetcher.close()


async def _reason(fetcher: ImageFetcher, url: str) -> InputError:
    with pytest.raises(InputError) as info:
        await fetcher.fetch(url)
    return info.value


# --- fetching ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [("/x.png", PNG), ("/x.jpg", JPEG)])
async def test_fetch_image(
    fetcher: ImageFetcher, server: Server, path: str, expected: bytes
) -> None:
    assert await fetcher.fetch(server.url(path)) == expected


async def test_content_type_is_not_trusted_either_way(
    fetcher: ImageFetcher, server: Server
) -> None:
    assert await fetcher.fetch(server.url("/untyped")) == PNG
    error = await _reason(fetcher, server.url("/lie.png"))
    assert error.reason is Reason.NOT_AN_IMAGE
    assert "3c 68 74 6d 6c 3e" in error.message  # "<html>" as hex, never the body itself
    assert (await _reason(fetcher, server.url("/empty"))).reason is Reason.NOT_AN_IMAGE


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
async def test_body_over_the_limit(fetcher: ImageFetcher, server: Server, path: str) -> None:
    error = await _reason(fetcher, server.url(path))
    assert error.reason is Reason.IMAGE_TOO_LARGE
    assert str(MAX_IMAGE_BYTES) in error.message
    if path == "/big-chunked":  # no Content-Length: refused while reading
        assert "body is more than" in error.message


async def test_content_length_refused_before_the_body(
    fetcher: ImageFetcher, server: Server
) -> None:
    error = await _reason(fetcher, server.url("/big"))
    assert f"Content-Length {BIG}" in error.message


async def test_body_limit_follows_the_policy(server: Server) -> None:
    async with ImageFetcher(FetchPolicy(max_bytes=20, allowed_networks=LOOPBACK)) as small:
        error = await _reason(small, server.url("/x.png"))
    assert error.reason is Reason.IMAGE_TOO_LARGE


async def test_the_body_is_reserved_before_it_is_read_and_the_wait_is_not_timed(
    server: Server,
) -> None:
    reserved: list[int] = []

    async def reserve(size: int) -> None:
        reserved.append(size)
        await asyncio.sleep(0.8)  # longer than the whole fetch may take: memory was short

    async with ImageFetcher(FetchPolicy(timeout_s=0.5, allowed_networks=LOOPBACK)) as quick:
        assert await quick.fetch(server.url("/x.png"), reserve=reserve) == PNG
        assert reserved == [len(PNG)]  # its Content-Length
        error = await _reason(quick, server.url("/slow-body"))  # the clock still runs
    assert error.reason is Reason.UNREACHABLE_URL


@pytest.mark.parametrize("hops", [1, 2, 3])
async def test_redirects_followed(fetcher: ImageFetcher, server: Server, hops: int) -> None:
    # /chain/3 -> /chain/2 (absolute path) -> 1 (relative) -> http://127.0.0.1:port/chain/0
    assert await fetcher.fetch(server.url(f"/chain/{hops}")) == PNG


async def test_too_many_redirects(fetcher: ImageFetcher, server: Server) -> None:
    error = await _reason(fetcher, server.url("/chain/4?sig=SECRET"))
    assert error.reason is Reason.URL_HTTP_ERROR
    assert "more than 3 redirects" in error.message
    assert "SECRET" not in error.message
    async with ImageFetcher(FetchPolicy(max_redirects=0, allowed_networks=LOOPBACK)) as none:
        assert (await _reason(none, server.url("/chain/1"))).reason is Reason.URL_HTTP_ERROR
        assert await none.fetch(server.url("/chain/0")) == PNG


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", Reason.FORBIDDEN_URL),
        ("http://10.0.0.1/", Reason.FORBIDDEN_URL),
        ("http://[::ffff:10.0.0.1]/", Reason.FORBIDDEN_URL),
        ("http://127.0.0.2/x.png", Reason.FORBIDDEN_URL),  # loopback, but not allowlisted
        ("ftp://example.com/x.png", Reason.INVALID_URL),
        ("file:///etc/passwd", Reason.INVALID_URL),
        ("http://user:pw@example.com/", Reason.INVALID_URL),
        ("http://[::1", Reason.INVALID_URL),
    ],
)
async def test_redirect_hops_are_checked(
    fetcher: ImageFetcher, server: Server, location: str, reason: Reason
) -> None:
    error = await _reason(fetcher, server.redirect(location))
    assert error.reason is reason, error.message
    assert error.message.startswith(f"{server.url('/to')} redirects to"), error.message
    assert "pw" not in error.message


async def test_redirect_without_location(fetcher: ImageFetcher, server: Server) -> None:
    error = await _reason(fetcher, server.url("/moved-nowhere"))
    assert error.reason is Reason.URL_HTTP_ERROR
    assert "302" in error.message


@pytest.mark.parametrize("status", [404, 503])
async def test_http_error_status(fetcher: ImageFetcher, server: Server, status: int) -> None:
    error = await _reason(fetcher, server.url(f"/status/{status}?token=SECRET"))
    assert error.reason is Reason.URL_HTTP_ERROR
    assert str(status) in error.message
    assert "SECRET" not in error.message
    assert f"/status/{status}" in error.message


@pytest.mark.parametrize("path", ["/slow-headers", "/slow-body"])
async def test_timeout_covers_the_whole_fetch(server: Server, path: str) -> None:
    async with ImageFetcher(FetchPolicy(timeout_s=0.5, allowed_networks=LOOPBACK)) as quick:
        started = asyncio.get_running_loop().time()
        error = await _reason(quick, server.url(path))
        elapsed = asyncio.get_running_loop().time() - started
    assert error.reason is Reason.UNREACHABLE_URL
    assert elapsed < 2.0


async def test_connection_refused(fetcher: ImageFetcher, closed_port: int) -> None:
    error = await _reason(fetcher, f"http://127.0.0.1:{closed_port}/x.png")
    assert error.reason is Reason.UNREACHABLE_URL
    assert isinstance(error.__cause__, aiohttp.ClientConnectorError)


async def test_cancellation_propagates(server: Server) -> None:
    async with ImageFetcher(FetchPolicy(allowed_networks=LOOPBACK)) as fetcher:
        task = asyncio.create_task(fetcher.fetch(server.url("/slow-headers")))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- the address policy, end to end -----------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_forbidden_without_allowlist(
    strict_fetcher: ImageFetcher, server: Server, host: str
) -> None:
    before = len(server.requests)
    error = await _reason(strict_fetcher, server.url("/x.png", host=host))
    assert error.reason is Reason.FORBIDDEN_URL
    assert "loopback" in error.message
    assert len(server.requests) == before


async def test_resolver_refusal_is_translated_precisely(
    strict_fetcher: ImageFetcher, server: Server
) -> None:
    error = await _reason(strict_fetcher, server.url("/x.png", host="localhost"))
    assert isinstance(error.__cause__, aiohttp.ClientConnectorDNSError)
    assert isinstance(error.__cause__.os_error, ForbiddenAddressError)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x.png",
        "file:///etc/passwd",
        "http://user:pw@host/",
        "http://127.1/",
    ],
)
async def test_invalid_urls_refused_before_any_lookup(url: str) -> None:
    async with ImageFetcher(FetchPolicy(), resolver=NoResolver()) as fetcher:
        assert (await _reason(fetcher, url)).reason is Reason.INVALID_URL


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://10.0.0.1/",
        "http://[fd00:ec2::254]/",
    ],
)
async def test_forbidden_ip_literals_refused_before_any_connection(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    async def no_connection(*args: Any, **kwargs: Any) -> socket.socket:
        raise AssertionError(f"connected for {url}")

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", no_connection)
    async with ImageFetcher(FetchPolicy(), resolver=NoResolver()) as fetcher:
        assert (await _reason(fetcher, url)).reason is Reason.FORBIDDEN_URL


async def test_host_names_go_through_the_policy_resolver(server: Server) -> None:
    dns = StaticResolver(
        {
            "images.test": ["127.0.0.1"],
            "rebound.test": ["93.184.215.14", "10.0.0.1"],
            "metadata.test": ["169.254.169.254"],
        }
    )
    policy = FetchPolicy(allowed_networks=(*LOOPBACK, ip_network("169.254.0.0/16")))
    async with ImageFetcher(policy, resolver=dns) as fetcher:
        # A name that resolves to an allowed address is fetched from that address.
        assert await fetcher.fetch(f"http://images.test:{server.port}/x.png") == PNG
        assert server.requests[-1]["Host"] == f"images.test:{server.port}"
        for host in ("rebound.test", "metadata.test"):
            error = await _reason(fetcher, f"http://{host}:{server.port}/x.png")
            assert error.reason is Reason.FORBIDDEN_URL, error.message
            assert f"{host} resolves to" in error.message
        # A redirect to a name is checked at its own connection.
        redirect = server.redirect("http://metadata.test/")
        assert (await _reason(fetcher, redirect)).reason is Reason.FORBIDDEN_URL
        # DNS failure is a reachability problem, not a policy one.
        error = await _reason(fetcher, f"http://missing.test:{server.port}/x.png")
        assert error.reason is Reason.UNREACHABLE_URL
    assert {"images.test", "rebound.test", "metadata.test", "missing.test"} <= set(dns.calls)
    assert dns.closed


# --- session hygiene --------------------------------------------------------------------------


async def test_fixed_user_agent_no_cookies_identity_encoding(
    fetcher: ImageFetcher, server: Server
) -> None:
    assert await fetcher.fetch(server.url("/cookie")) == PNG
    assert await fetcher.fetch(server.url("/x.png")) == PNG
    headers = server.requests[-1]
    assert headers["User-Agent"] == USER_AGENT == "image-moderation-service/0.1"
    assert "Cookie" not in headers
    assert headers["Accept-Encoding"] == "identity"


async def test_proxy_settings_from_the_environment_are_ignored(
    monkeypatch: pytest.MonkeyPatch, server: Server, closed_port: int
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with ImageFetcher(FetchPolicy(allowed_networks=LOOPBACK)) as fetcher:
        assert await fetcher.fetch(server.url("/x.png")) == PNG


async def test_lifecycle() -> None:
    fetcher = ImageFetcher(FetchPolicy())
    with pytest.raises(RuntimeError):
        await fetcher.fetch("https://example.com/x.png")
    await fetcher.start()
    await fetcher.start()  # idempotent
    await fetcher.close()
    await fetcher.close()  # idempotent
    with pytest.raises(RuntimeError):
        await fetcher.fetch("https://example.com/x.png")
