"""The guarded fetch of user-given URLs (providers/guarded_fetch.py) against real servers on loopback:
local addresses in every spelling refused before any connection, names resolving to them too, redirects
checked at every hop, one deadline, a size cap while streaming to a file, a cap on fetches at once."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator

import pytest
from loguru import logger

from providers.address_policy import AddressPolicy, IPAddress
from providers.guarded_fetch import FetchRefused, FetchTooLarge, GuardedFetcher, system_resolve
from tests.conftest import closed_port, wait_until
from tests.fakes.file_host import FileHost

LOCAL = ipaddress.ip_address("127.0.0.1")
# Loopback, but made to stand for a public server (the tests run without a network).
STAND_IN_PUBLIC = "127.0.0.2"


def fetcher(
    *,
    allow_private: bool = False,
    treated_as_public: tuple[str, ...] = (),
    timeout: float = 5.0,
    concurrency: int = 4,
    resolve: dict[str, list[str]] | None = None,
) -> GuardedFetcher:
    policy = AddressPolicy(
        allow_private=allow_private,
        treated_as_public=tuple(ipaddress.ip_network(network) for network in treated_as_public),
    )
    if resolve is None:
        return GuardedFetcher(timeout=timeout, concurrency=concurrency, policy=policy)
    return GuardedFetcher(
        timeout=timeout, concurrency=concurrency, policy=policy, resolve=Table(resolve).resolve
    )


class Table:
    """A resolver answering from a table first, like a hosts file (names that look public, with any
    address), then as the system does."""

    def __init__(self, entries: dict[str, list[str]]) -> None:
        self.entries = entries
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        if host not in self.entries:
            return await system_resolve(host, port)
        return [ipaddress.ip_address(address) for address in self.entries[host]]


@pytest.fixture
async def files() -> AsyncIterator[FileHost]:
    host = FileHost(trickle_interval=0.05)
    await host.start()
    yield host
    await host.stop()


async def refusal(guarded: GuardedFetcher, url: str, max_bytes: int = 1024 * 1024) -> FetchRefused:
    with pytest.raises(FetchRefused) as refused:
        async with guarded.fetch(url, max_bytes):
            pass
    return refused.value


# Each URL (with {port}, the file host's) and what the refusal must name: the policy refused it, not a
# failed connection.
LOCAL_SPELLINGS = [
    ("http://127.0.0.1:{port}/files/a", "127.0.0.1 is loopback"),
    ("https://127.0.0.1:{port}/files/a", "127.0.0.1 is loopback"),
    ("http://localhost:{port}/files/a", "is loopback"),
    ("http://LOCALHOST.:{port}/files/a", "is loopback"),
    ("http://0.0.0.0:{port}/files/a", "0.0.0.0 is unspecified"),
    ("http://2130706433:{port}/files/a", "127.0.0.1 is loopback"),
    ("http://0x7f.1:{port}/files/a", "127.0.0.1 is loopback"),
    ("http://0x7f000001:{port}/files/a", "127.0.0.1 is loopback"),
    ("http://017700000001:{port}/files/a", "127.0.0.1 is loopback"),
    ("http://127.1:{port}/files/a", "127.0.0.1 is loopback"),
    ("http://user:pw@127.0.0.1:{port}/files/a", "user name or password"),
    ("http://files.example.com@127.0.0.1:{port}/files/a", "user name or password"),
    ("http://[::1]:{port}/files/a", "::1 is loopback"),
    ("http://[::]:{port}/files/a", ":: is unspecified"),
    # IPv6 carrying 127.0.0.1: mapped, 6to4, NAT64, Teredo (its client address is stored inverted).
    ("http://[::ffff:127.0.0.1]:{port}/files/a", "::ffff:7f00:1 is loopback (it carries 127.0.0.1)"),
    ("http://[2002:7f00:1::]:{port}/files/a", "2002:7f00:1:: is loopback (it carries 127.0.0.1)"),
    ("http://[64:ff9b::7f00:1]:{port}/files/a", "64:ff9b::7f00:1 is loopback (it carries"),
    ("http://[2001::80ff:fffe]:{port}/files/a", "2001::80ff:fffe is loopback (it carries"),
    ("http://[::127.0.0.1]:{port}/files/a", "is reserved"),
    ("http://[fe80::1]:{port}/files/a", "fe80::1 is link-local"),
    ("http://[fd00::1]:{port}/files/a", "fd00::1 is private"),
    ("http://[fec0::1]:{port}/files/a", "fec0::1 is private"),
    ("http://[ff02::1]:{port}/files/a", "ff02::1 is multicast"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is link-local"),
    ("http://10.0.0.1:{port}/files/a", "10.0.0.1 is private"),
    ("http://172.16.0.1:{port}/files/a", "172.16.0.1 is private"),
    ("http://192.168.1.1:{port}/files/a", "192.168.1.1 is private"),
    ("http://100.64.0.1:{port}/files/a", "100.64.0.1 is shared"),
    ("http://224.0.0.1:{port}/files/a", "224.0.0.1 is multicast"),
    ("http://240.0.0.1:{port}/files/a", "240.0.0.1 is reserved"),
    ("http://255.255.255.255:{port}/files/a", "255.255.255.255 is reserved"),
    ("ftp://127.0.0.1:{port}/files/a", "scheme 'ftp'"),
    ("file:///etc/passwd", "scheme 'file'"),
]


@pytest.mark.parametrize(("template", "named"), LOCAL_SPELLINGS, ids=[url for url, _ in LOCAL_SPELLINGS])
async def test_every_spelling_of_a_local_address_is_refused_before_connecting(
    files: FileHost, template: str, named: str
) -> None:
    files.put("a", b"secret")
    refused = await refusal(fetcher(), template.format(port=files.port))
    assert named in refused.detail
    assert files.accepted == 0


@pytest.mark.parametrize(
    "addresses",
    [["127.0.0.1"], ["93.184.216.34", "127.0.0.1"], ["10.1.2.3"], ["::ffff:169.254.169.254"]],
    ids=["loopback", "one-of-several", "private", "mapped-metadata"],
)
async def test_a_public_looking_name_resolving_to_a_local_address_is_refused(
    files: FileHost, addresses: list[str]
) -> None:
    files.put("a", b"secret")
    guarded = fetcher(resolve={"files.example.com": addresses})
    refused = await refusal(guarded, f"http://files.example.com:{files.port}/files/a")
    assert "files.example.com:" in refused.detail and " is " in refused.detail
    assert files.accepted == 0


async def test_the_connection_goes_to_the_checked_address_without_a_second_lookup(files: FileHost) -> None:
    files.put("a", b"the archive")
    table = Table({"files.example.com": ["127.0.0.1"]})
    guarded = GuardedFetcher(
        timeout=5,
        concurrency=1,
        policy=AddressPolicy(treated_as_public=(ipaddress.ip_network("127.0.0.1/32"),)),
        resolve=table.resolve,
    )
    # The name exists only in the table: a lookup by the HTTP client itself would fail.
    async with guarded.fetch(f"http://files.example.com:{files.port}/files/a", 1024) as fetched:
        assert fetched.read_all() == b"the archive"
    assert table.lookups == ["files.example.com"]
    assert files.host_headers == [f"files.example.com:{files.port}"]


async def test_tls_is_spoken_to_the_checked_address_for_the_urls_host_name() -> None:
    """The connection goes to the address checked, but TLS names (and verifies) the URL's host: its
    ClientHello carries the name (SNI), never the address."""
    hellos: list[bytes] = []

    async def read_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hellos.append(await reader.read(4096))
        writer.close()

    server = await asyncio.start_server(read_hello, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        guarded = fetcher(treated_as_public=("127.0.0.1/32",), resolve={"files.example.com": ["127.0.0.1"]})
        await refusal(guarded, f"https://files.example.com:{port}/photos.zip")
    finally:
        server.close()
    [hello] = hellos
    assert hello[:1] == b"\x16"  # a TLS handshake record
    assert b"files.example.com" in hello


async def test_a_redirect_to_a_local_address_is_refused(files: FileHost) -> None:
    files.put("a", b"secret")
    public = FileHost(STAND_IN_PUBLIC)
    await public.start()
    try:
        guarded = fetcher(
            treated_as_public=(f"{STAND_IN_PUBLIC}/32",), resolve={"internal.example.com": ["127.0.0.1"]}
        )
        targets = [
            f"http://127.0.0.1:{files.port}/files/a",
            f"http://localhost:{files.port}/files/a",
            f"http://2130706433:{files.port}/files/a",
            f"http://internal.example.com:{files.port}/files/a",
            f"http://user:pw@{STAND_IN_PUBLIC}:{public.port}/loop",
        ]
        for target in targets:
            refused = await refusal(guarded, f"{public.base}/redirect?to={target}")
            assert "is loopback" in refused.detail or "user name" in refused.detail, target
        assert public.accepted == len(targets)  # each first hop was fetched...
        assert files.accepted == 0  # ...and no redirect reached the local host
    finally:
        await public.stop()


async def test_redirects_are_followed_up_to_the_limit_and_no_further(files: FileHost) -> None:
    files.put("a", b"at the end")
    guarded = fetcher(allow_private=True)

    def chain(hops: int) -> str:
        url = f"{files.base}/files/a"
        for _ in range(hops):
            url = f"{files.base}/redirect?to={url}"
        return url

    async with guarded.fetch(chain(3), 1024) as fetched:
        assert fetched.read_all() == b"at the end"
    assert "more than 3 redirects" in (await refusal(guarded, chain(4))).detail
    assert "more than 3 redirects" in (await refusal(guarded, f"{files.base}/loop")).detail


async def test_a_trickling_body_is_cut_at_the_one_deadline(files: FileHost) -> None:
    guarded = fetcher(allow_private=True, timeout=0.5)
    started = time.monotonic()
    # Through a redirect: the deadline covers the whole fetch, not each hop.
    refused = await refusal(guarded, f"{files.base}/redirect?to={files.base}/trickle")
    elapsed = time.monotonic() - started
    assert "not done within" in refused.detail
    assert 0.4 < elapsed < 2.0


async def test_an_endless_body_is_cut_at_the_cap(files: FileHost) -> None:
    guarded = fetcher(allow_private=True)
    with pytest.raises(FetchTooLarge):
        async with guarded.fetch(f"{files.base}/endless", 1024 * 1024):
            pass
    # A body announced over the cap is refused before it is read (the trickle announces 1 MB).
    started = time.monotonic()
    with pytest.raises(FetchTooLarge):
        async with guarded.fetch(f"{files.base}/trickle", 1000):
            pass
    assert time.monotonic() - started < 0.5


async def test_the_body_is_in_a_temporary_file_gone_after_the_fetch(files: FileHost) -> None:
    url = files.put("a", b"x" * 300_000)
    async with fetcher(allow_private=True).fetch(url, 1024 * 1024) as fetched:
        assert fetched.size == 300_000
        assert fetched.file.fileno() >= 0  # a file on disk, not a buffer in memory
        assert fetched.file.read(5) == b"xxxxx"
    assert fetched.file.closed


async def test_at_most_the_cap_of_fetches_run_at_once(files: FileHost) -> None:
    files.put("a", b"held")
    guarded = fetcher(allow_private=True, concurrency=2, timeout=10)

    async def fetch_one() -> bytes:
        async with guarded.fetch(f"{files.base}/hold/a", 1024) as fetched:
            return fetched.read_all()

    fetches = [asyncio.create_task(fetch_one()) for _ in range(5)]

    async def two_held() -> bool:
        return files.held == 2

    await wait_until(two_held)
    # Nothing can be awaited for "no third one comes": give the other three time to try.
    await asyncio.sleep(0.3)
    assert files.held == 2 and files.accepted == 2
    files.release()
    assert await asyncio.gather(*fetches) == [b"held"] * 5
    assert files.most_held == 2 and files.accepted == 5


async def test_waiting_for_a_slot_counts_against_the_deadline(files: FileHost) -> None:
    files.put("a", b"held")
    guarded = fetcher(allow_private=True, concurrency=1, timeout=0.5)
    async with guarded.fetch(files.put("b", b"holding the only slot"), 1024):
        refused = await refusal(guarded, f"{files.base}/files/a")
    assert "no free fetch slot" in refused.detail


async def test_every_failure_reads_the_same_to_the_caller(files: FileHost) -> None:
    guarded = fetcher(allow_private=True, resolve={}, timeout=0.5)
    failures = [
        await refusal(fetcher(), f"http://127.0.0.1:{files.port}/files/a"),  # refused address
        await refusal(guarded, f"{files.base}/files/missing"),  # 404
        await refusal(guarded, f"http://127.0.0.1:{closed_port()}/a"),  # nothing listening
        await refusal(guarded, "http://no-such-host.example.com/a"),  # no such name
        await refusal(guarded, f"{files.base}/trickle"),  # too slow
        await refusal(guarded, f"{files.base}/loop"),  # too many redirects
    ]
    assert len({failure.detail for failure in failures}) == len(failures)
    assert {str(failure) for failure in failures} == {"the file at the given URL could not be fetched"}


async def test_the_log_says_why_without_the_query_or_credentials(files: FileHost) -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    try:
        await refusal(fetcher(), f"http://user:hunter2@127.0.0.1:{files.port}/files/a?token=s3cr3t#frag")
        await refusal(fetcher(), f"http://127.0.0.1:{files.port}/files/a?token=s3cr3t")
    finally:
        logger.remove(sink)
    base = f"http://127.0.0.1:{files.port}/files/a"
    assert lines == [
        f"refused to fetch {base}: the URL carries a user name or password\n",
        f"refused to fetch {base}: 127.0.0.1 is loopback\n",
    ]
