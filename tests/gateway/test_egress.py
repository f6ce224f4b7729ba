"""The egress guard refuses what a customer-given URL must not reach, connects only to the address it checked,
never follows a redirect, and keeps query strings and credentials out of what it says."""

from __future__ import annotations

import ipaddress

import pytest

from arbiter.egress import (
    EgressFailed,
    EgressPolicy,
    EgressRefused,
    address_refusal,
    check_url,
    egress_request,
    redact_url,
)
from tests.gateway.receiver import running_receiver

LOOPBACK_ONLY = EgressPolicy.build(use="webhook", allowed_networks=["127.0.0.1/32"], production=False)
NOTHING_PRIVATE = EgressPolicy.build(use="webhook", allowed_networks=[], production=False)


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "100.100.100.200",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ],
)
def test_private_loopback_link_local_multicast_and_metadata_addresses_are_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), NOTHING_PRIVATE) is not None
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(EgressRefused):
        check_url(f"http://{host}/hook", NOTHING_PRIVATE)


def test_public_addresses_pass_and_the_allow_list_opens_exactly_its_networks() -> None:
    assert address_refusal(ipaddress.ip_address("93.184.216.34"), NOTHING_PRIVATE) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), LOOPBACK_ONLY) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.2"), LOOPBACK_ONLY) is not None
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), LOOPBACK_ONLY) is not None


def test_production_calls_only_https_and_refuses_credentials_in_urls() -> None:
    production = EgressPolicy.build(use="webhook", allowed_networks=[], production=True)
    with pytest.raises(EgressRefused, match="only https"):
        check_url("http://example.com/hook", production)
    check_url("https://example.com/hook", production)
    with pytest.raises(EgressRefused):
        check_url("ftp://example.com/hook", NOTHING_PRIVATE)
    with pytest.raises(EgressRefused, match="user names and passwords"):
        check_url("https://user:pw@example.com/hook", production)


def test_a_name_that_resolves_to_a_private_address_is_refused_before_connecting() -> None:
    with running_receiver() as receiver:
        with pytest.raises(EgressRefused, match="localhost resolves to"):
            egress_request(
                "POST", f"http://localhost:{receiver.port}/hook", policy=NOTHING_PRIVATE, body=b"{}"
            )
        assert receiver.received == []


def test_a_redirect_is_returned_not_followed_so_its_private_target_is_never_reached() -> None:
    with running_receiver("127.0.0.1") as front, running_receiver("127.0.0.2") as inside:
        front.answer("/hook", (302, {"Location": inside.url("/admin")}, b""))
        response = egress_request("POST", front.url("/hook"), policy=LOOPBACK_ONLY, body=b"{}")
        assert response.status == 302
        # Calling the redirect's target directly is refused: it is outside the allow-list.
        with pytest.raises(EgressRefused):
            egress_request("POST", inside.url("/admin"), policy=LOOPBACK_ONLY, body=b"{}")
        assert inside.received == []


def test_errors_and_logged_urls_never_carry_query_strings_or_credentials() -> None:
    assert redact_url("https://u:p@example.com:8443/a/b?token=SECRET#frag") == "https://example.com:8443/a/b"
    with running_receiver() as receiver:
        port = receiver.port
    # The receiver is gone: the connection is refused, and the error does not repeat the query string.
    with pytest.raises(EgressFailed) as failed:
        egress_request("POST", f"http://127.0.0.1:{port}/hook?token=SECRET", policy=LOOPBACK_ONLY, body=b"{}")
    assert "SECRET" not in str(failed.value) and "/hook" in str(failed.value)


def test_the_call_sends_the_host_header_of_the_url_and_returns_the_first_bytes_of_the_answer() -> None:
    with running_receiver() as receiver:
        receiver.answer("/hook", (200, {}, b"x" * 5000))
        response = egress_request(
            "POST", receiver.url("/hook?a=1"), policy=LOOPBACK_ONLY, body=b"{}", max_body_bytes=2048
        )
        assert response.status == 200 and len(response.body) == 2048
        got = receiver.wait(1)[0]
        assert got.headers["host"] == f"127.0.0.1:{receiver.port}" and got.path == "/hook?a=1"
