"""Which addresses a fetch of a user-given URL may reach (providers/address_policy.py)."""

from __future__ import annotations

import ipaddress

import pytest

from providers.address_policy import AddressPolicy, address_kind


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address judged, not one bound
        ("0.1.2.3", "unspecified"),
        ("10.0.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("192.0.2.1", "private"),  # documentation
        ("198.18.0.1", "private"),  # benchmarking
        ("100.64.0.1", "shared"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "private"),  # site-local, which `ipaddress` calls global
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),
        ("2002:c0a8:1::", "private"),
        ("2001::80ff:fffe", "loopback"),
        ("2001:db8::1", "private"),  # documentation
    ],
)
def test_what_is_not_public_is_named(address: str, kind: str) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::"],
)
def test_public_addresses_pass_also_when_an_ipv6_one_carries_a_public_ipv4(address: str) -> None:
    assert address_kind(ipaddress.ip_address(address)) is None
    assert AddressPolicy().refusal(ipaddress.ip_address(address)) is None


def test_allowing_private_addresses_still_refuses_metadata_unspecified_and_multicast() -> None:
    policy = AddressPolicy(allow_private=True)
    for allowed in ("127.0.0.1", "::1", "10.0.0.1", "100.64.0.1", "fd00::1", "::ffff:127.0.0.1"):
        assert policy.refusal(ipaddress.ip_address(allowed)) is None, allowed
    unspecified = str(ipaddress.IPv4Address(0))
    for refused in ("169.254.169.254", "fe80::1", unspecified, "::", "224.0.0.1", "240.0.0.1"):
        assert policy.refusal(ipaddress.ip_address(refused)) is not None, refused


def test_a_host_is_refused_when_any_of_its_addresses_is() -> None:
    addresses = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("127.0.0.1")]
    assert AddressPolicy().first_refusal(addresses) == "127.0.0.1 is loopback"
    assert AddressPolicy().first_refusal(addresses[:1]) is None


def test_a_refusal_names_the_ipv4_address_an_ipv6_one_carries() -> None:
    mapped = ipaddress.ip_address("::ffff:169.254.169.254")
    assert (
        AddressPolicy().first_refusal([mapped])
        == "::ffff:a9fe:a9fe is link-local (it carries 169.254.169.254)"
    )
