"""The SSRF guard of outbound requests: schemes, credentials, and every non-public address
refused (also through DNS, IPv4-mapped IPv6, or a DNS answer that changes between two checks),
unless the allow-list names the network or the host. Nothing here opens a connection; names are
resolved by a stand-in resolver except 'localhost' (the hosts file)."""

from __future__ import annotations

import pytest

from persistence.outbound import AllowList, TargetRefused, check_target

NONE = AllowList.parse("")


def fixed(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.0.10/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]:8080/", "loopback"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fd00::1]/", "private"),
    ("http://[fec0::1]/", "site-local"),  # deprecated, still internal; Python: global
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    # 6to4 addresses embed an IPv4 host: 127.0.0.1, 10.0.0.1, 169.254.169.254
    ("http://[2002:7f00:1::]/", "loopback"),
    ("http://[2002:a00:1::1]/", "private"),
    ("http://[2002:a9fe:a9fe::]/latest/meta-data/", "link-local"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "not globally routable"),
    ("http://localhost:9/", "loopback"),
])
def test_non_public_addresses_are_refused(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused) as caught:
        check_target(url, NONE)
    assert f"({reason})" in caught.value.message


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd",
                                 "gopher://example.com/", "http://user:pw@example.com/",
                                 "http:///nohost", "http://example.com:99999/"])
def test_bad_schemes_credentials_and_shapes_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_target(url, NONE, fixed("93.184.215.14"))


def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    assert check_target("https://hooks.example.com/x", NONE, fixed("93.184.215.14")).address == (
        "93.184.215.14")
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.5"):
        check_target("https://hooks.example.com/x", NONE, fixed("93.184.215.14", "10.0.0.5"))


def test_dns_rebinding_is_caught_by_the_second_check() -> None:
    answers = iter([["93.184.215.14"], ["169.254.169.254"]])
    resolver = lambda host, port: next(answers)  # noqa: E731
    target = check_target("http://rebind.example/x", NONE, resolver)
    # The delivery connects to the checked address, with the original Host header.
    assert target.pinned_url == "http://93.184.215.14:80/x"
    assert target.host_header == "rebind.example"
    with pytest.raises(TargetRefused, match=r"169\.254\.169\.254"):
        check_target("http://rebind.example/x", NONE, resolver)


def test_allow_list_by_network_and_by_host() -> None:
    allow = AllowList.parse("127.0.0.1, 10.20.0.0/16, hooks.internal")
    assert check_target("http://127.0.0.1:8080/h", allow).port == 8080
    assert check_target("http://10.20.3.4/h", allow).address == "10.20.3.4"
    with pytest.raises(TargetRefused):
        check_target("http://10.21.0.1/h", allow)
    with pytest.raises(TargetRefused):
        check_target("http://[::1]/h", allow)
    assert check_target("http://hooks.internal/h", allow, fixed("10.9.9.9")).host == (
        "hooks.internal")
