"""The one way the server fetches a URL a user gave it (a training's zip_url, a recording's audio_url).

A user's URL is an attacker's way into the server's own network (SPEC §4.8), so every fetch:
- takes http(s) only, and no `user:password@` (it hides where a URL goes from a reader);
- resolves the host itself and refuses it when ANY of its addresses is not a public one
  (providers/address_policy.py), then connects to exactly the addresses it checked: no second DNS
  lookup that a short-lived record could answer differently; TLS still verifies the URL's host name;
- follows at most MAX_REDIRECTS redirects itself, checking every hop like the first;
- ends at one deadline for all of it (the wait for a slot, every hop, a body trickling in);
- streams the body to a temporary file, cut at the caller's size cap, and runs at most `concurrency`
  fetches in the process at once, so neither memory nor disk grow with the number of requests.

Whatever goes wrong, the caller sees one FetchRefused with one message: telling "refused" from
"nothing answered" from "answered 404" would let a user map what listens inside the network. The real
reason is logged at info, with the URL cut before its query (which may hold a secret). Only the size
cap has its own error, and only from a host that passed the checks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from loguru import logger
from yarl import URL

from providers.address_policy import AddressPolicy, IPAddress
from providers.errors import StepError

MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024

# Answers the addresses a host name resolves to (the system's getaddrinfo, or a test's own table).
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]


class FetchRefused(StepError):
    """The URL could not be fetched, whatever the reason; `detail` says which, for logs and tests only."""

    reason = "failed_generic"

    def __init__(self, detail: str) -> None:
        super().__init__("the file at the given URL could not be fetched")
        self.detail = detail


class FetchTooLarge(StepError):
    """A host that passed every check sent more than the caller's cap."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the file at the given URL is over {max_bytes} bytes")
        self.max_bytes = max_bytes


@dataclass(frozen=True)
class FetchedFile:
    """The body, in a temporary file positioned at its start; gone when the fetch's context ends."""

    file: IO[bytes]
    size: int

    def read_all(self) -> bytes:
        self.file.seek(0)
        return self.file.read()


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """getaddrinfo, which also turns numeric spellings (2130706433, 0x7f.1, 127.1) into the address."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0])) for info in infos]


class GuardedFetcher:
    def __init__(
        self,
        *,
        timeout: float,
        concurrency: int,
        policy: AddressPolicy,
        resolve: Resolve = system_resolve,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        self.timeout = timeout
        self.policy = policy
        self.max_redirects = max_redirects
        self._resolve = resolve
        self._slots = asyncio.Semaphore(concurrency)

    @asynccontextmanager
    async def fetch(self, url: str, max_bytes: int) -> AsyncIterator[FetchedFile]:
        """The body at `url` in a temporary file, or FetchRefused / FetchTooLarge. The fetch's slot is
        held until the context ends, so what callers do with the file is bounded as well."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        with tempfile.TemporaryFile(prefix="aibot-fetch-") as file:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._refused(url, f"no free fetch slot within {self.timeout:.0f}s") from None
            try:
                size = await self._download(url, file, max_bytes, deadline)
                file.seek(0)
                yield FetchedFile(file=file, size=size)
            finally:
                self._slots.release()

    async def _download(self, url: str, file: IO[bytes], max_bytes: int, deadline: float) -> int:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._follow(url, file, max_bytes)
        except TimeoutError:
            raise self._refused(url, f"not done within {self.timeout:.0f}s") from None
        except FetchRefused as refused:
            raise self._refused(url, refused.detail) from None
        except (aiohttp.ClientError, OSError, ValueError, UnicodeError) as error:
            raise self._refused(url, f"{type(error).__name__}: {error}") from None

    async def check(self, url: str) -> None:
        """Refuse a URL whose address may not be reached, without connecting to it: a cheap check before
        anything is charged, for inputs fetched only later (the fetch checks again then)."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._checked_target(URL(url))
        except TimeoutError:
            raise self._refused(url, "the host did not resolve in time") from None
        except FetchRefused as refused:
            raise self._refused(url, refused.detail) from None
        except (OSError, ValueError, UnicodeError) as error:
            raise self._refused(url, f"{type(error).__name__}: {error}") from None

    async def _follow(self, url: str, file: IO[bytes], max_bytes: int) -> int:
        current = URL(url)
        for _ in range(self.max_redirects + 1):
            host, addresses = await self._checked_target(current)
            async with (
                _pinned_session(host, addresses) as session,
                session.get(
                    current,
                    allow_redirects=False,
                    # A compressed body would be unpacked before the cap could count it.
                    headers={"Accept-Encoding": "identity"},
                    timeout=aiohttp.ClientTimeout(total=None),
                ) as response,
            ):
                if response.status in REDIRECT_STATUSES and "Location" in response.headers:
                    current = current.join(URL(response.headers["Location"]))
                    continue
                if response.status != 200:
                    raise FetchRefused(f"answered {response.status}")
                return await _save_body(response, file, max_bytes)
        raise FetchRefused(f"more than {self.max_redirects} redirects")

    async def _checked_target(self, url: URL) -> tuple[str, list[IPAddress]]:
        """The URL's host and its addresses, every one of them allowed; raises FetchRefused."""
        if url.scheme not in ("http", "https"):
            raise FetchRefused(f"scheme {url.scheme!r} is not http(s)")
        if url.user is not None or url.password is not None:
            raise FetchRefused("the URL carries a user name or password")
        host, port = url.raw_host, url.port
        if not host or port is None:
            raise FetchRefused("the URL has no host")
        addresses = await self._addresses(host, port)
        if not addresses:
            raise FetchRefused(f"{host} has no address")
        refusal = self.policy.first_refusal(addresses)
        if refusal is not None:
            named = [str(address) for address in addresses] == [host]
            raise FetchRefused(refusal if named else f"{host}: {refusal}")
        return host, addresses

    async def _addresses(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]  # a literal in its canonical spelling: nothing to look up
        except ValueError:
            pass
        try:
            return await self._resolve(host.rstrip("."), port)
        except OSError as error:
            raise FetchRefused(f"{host} did not resolve: {error}") from None

    @staticmethod
    def _refused(url: str, detail: str) -> FetchRefused:
        logger.info("refused to fetch {}: {}", without_secrets(url), detail)
        return FetchRefused(detail)


async def _save_body(response: aiohttp.ClientResponse, file: IO[bytes], max_bytes: int) -> int:
    if response.content_length is not None and response.content_length > max_bytes:
        raise FetchTooLarge(max_bytes)
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise FetchTooLarge(max_bytes)
        # A page-cache write of one chunk: quicker than handing it to a thread.
        file.write(chunk)
    file.flush()
    return size


class _PinnedResolver(AbstractResolver):
    """Answers aiohttp with the addresses already checked for the one host this connection is for."""

    def __init__(self, host: str, addresses: list[IPAddress]) -> None:
        self._host = host.rstrip(".")
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.rstrip(".") != self._host:
            raise OSError(f"{host} was not checked")
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self._addresses
        ]

    async def close(self) -> None:
        return None


def _pinned_session(host: str, addresses: list[IPAddress]) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=_PinnedResolver(host, addresses), use_dns_cache=False, force_close=True, limit=1
    )
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False
    )


def without_secrets(url: str) -> str:
    """The URL as logs may show it: no user name or password, no query, no fragment."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))[:300]
    except (ValueError, UnicodeError):
        return "(an unparsable URL)"
