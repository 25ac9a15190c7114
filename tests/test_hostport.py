"""HOST[:PORT] as operators write it, an IPv6 address bare or in brackets."""

from __future__ import annotations

import pytest

from failoverd.hostport import join_hostport, split_hostport, unbracket


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("broker.example", ("broker.example", 1883)),
        ("broker.example:8883", ("broker.example", 8883)),
        ("192.0.2.10", ("192.0.2.10", 1883)),
        ("192.0.2.10:1884", ("192.0.2.10", 1884)),
        ("2001:db8::10", ("2001:db8::10", 1883)),
        ("[2001:db8::10]", ("2001:db8::10", 1883)),
        ("[2001:db8::10]:1884", ("2001:db8::10", 1884)),
        ("[fe80::1%fiber0]:1884", ("fe80::1%fiber0", 1884)),
        ("fe80::1%fiber0", ("fe80::1%fiber0", 1883)),
        # Bare, the last group is the address's: a port after an IPv6 address needs the brackets.
        ("2001:db8::10:1884", ("2001:db8::10:1884", 1883)),
    ],
)
def test_split(text: str, expect: tuple[str, int]) -> None:
    assert split_hostport(text, 1883) == expect


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[broker.example]:1883", "brackets hold an IPv6 address"),
        ("[2001:db8::10", "brackets hold an IPv6 address"),
        ("[2001:db8::10]1883", "brackets hold an IPv6 address"),
        ("2001:db8::zz:1883", "is not an IPv6 address"),
        ("broker:mqtt", "is not a port number"),
        ("broker:", "is not a port number"),
        ("broker:70000", "not between 1 and 65535"),
        ("[2001:db8::10]:0", "not between 1 and 65535"),
        (":1883", "no host"),
        ("", "no host"),
    ],
)
def test_split_refuses_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        split_hostport(text, 1883)


def test_join_puts_an_ipv6_address_in_brackets() -> None:
    assert join_hostport("2001:db8::10", 1883) == "[2001:db8::10]:1883"
    assert join_hostport("192.0.2.10", 1883) == "192.0.2.10:1883"
    assert join_hostport("broker.example", 8883) == "broker.example:8883"
    for text in ("[2001:db8::10]:1884", "192.0.2.10:1884", "[fe80::1%fiber0]:1884"):
        assert join_hostport(*split_hostport(text, 1)) == text


def test_unbracket() -> None:
    assert unbracket("[2001:db8::10]") == "2001:db8::10"
    assert unbracket("2001:db8::10") == "2001:db8::10"
    assert unbracket("broker.example") == "broker.example"
    for bad in ("[broker.example]", "[2001:db8::10", "2001:db8::10]", "[]"):
        with pytest.raises(ValueError, match="brackets hold an IPv6 address"):
            unbracket(bad)
