"""Addresses of workloads and the shared command-line behaviour (one-line errors, ranges)."""

from __future__ import annotations

import argparse

import pytest

from jiriaf.errors import UserError
from jiriaf.workloads import commandline
from jiriaf.workloads.addresses import (
    default_host,
    is_loopback_host,
    parse_host_port,
    require_local_target,
    url_host,
)

pytestmark = pytest.mark.unit


def test_default_host_follows_pod_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    assert default_host() == "127.0.0.1"
    monkeypatch.setenv("POD_IP", " 127.0.3.4 ")
    assert default_host() == "127.0.3.4"
    monkeypatch.setenv("POD_IP", "")
    assert default_host() == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("127.0.0.1:7000", None, ("127.0.0.1", 7000)),
        ("receiver.stream.svc:7000", None, ("receiver.stream.svc", 7000)),
        ("[::1]:80", None, ("::1", 80)),
        ("[::1]", 9, ("::1", 9)),
        ("host", 8080, ("host", 8080)),
        (" host:1 ", None, ("host", 1)),
        ("host:65535", None, ("host", 65535)),
    ],
)
def test_parse_host_port(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, default) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("host", "no port"),
        (":80", "no host"),
        ("host:0", "invalid port"),
        ("host:65536", "invalid port"),
        ("host:http", "invalid port"),
        ("[::1", "unclosed"),
        ("[::1]x", r"not \[HOST\]:PORT"),
    ],
)
def test_parse_host_port_rejects(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_host_port(text)


def test_url_host_brackets_ipv6_only() -> None:
    assert url_host("::1") == "[::1]"
    assert url_host("[::1]") == "[::1]"
    assert url_host("127.0.0.1") == "127.0.0.1"
    assert url_host("example") == "example"


def test_loopback_literals() -> None:
    assert is_loopback_host("127.0.0.1")
    assert is_loopback_host("127.255.3.9")
    assert is_loopback_host("::1")
    assert is_loopback_host("[::1]")
    assert not is_loopback_host("10.0.0.1")
    assert not is_loopback_host("0.0.0.0")
    assert not is_loopback_host("8.8.8.8")


def test_loopback_names_need_every_address_loopback() -> None:
    table = {"local": ["127.0.0.1", "::1"], "mixed": ["127.0.0.1", "192.168.1.2"], "none": []}

    def resolve(host: str) -> list[str]:
        if host not in table:
            raise OSError("unknown host")
        return table[host]

    assert is_loopback_host("local", resolve)
    assert not is_loopback_host("mixed", resolve)
    assert not is_loopback_host("none", resolve)
    assert not is_loopback_host("unknown", resolve)


def test_localhost_resolves_to_loopback() -> None:
    assert is_loopback_host("localhost")


def test_require_local_target() -> None:
    require_local_target("http://127.0.0.1:8080/x", allow_remote=False)
    require_local_target("https://[::1]/", allow_remote=False)
    with pytest.raises(UserError, match="not a loopback address; pass --allow-remote"):
        require_local_target("http://10.1.2.3/", allow_remote=False)
    require_local_target("http://10.1.2.3/", allow_remote=True)
    for bad in ("ftp://127.0.0.1/", "127.0.0.1:80", "http:///path"):
        with pytest.raises(UserError, match="not an http"):
            require_local_target(bad, allow_remote=True)


def test_number_type_ranges() -> None:
    port = commandline.number_type(int, 0, 65535)
    assert port("80") == 80
    assert isinstance(port("80"), int)
    positive = commandline.number_type(float, 0, None, low_open=True)
    assert positive("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="out of range"):
        port("70000")
    with pytest.raises(argparse.ArgumentTypeError, match="must be > 0"):
        positive("0")
    with pytest.raises(argparse.ArgumentTypeError, match="not an integer"):
        port("1.5")
    with pytest.raises(argparse.ArgumentTypeError, match="not a number"):
        positive("fast")
    with pytest.raises(argparse.ArgumentTypeError, match="not a finite"):
        positive("inf")


def test_parser_errors_are_user_errors() -> None:
    ap = commandline.ArgumentParser(prog="prog")
    ap.add_argument("--n", type=commandline.number_type(int, 1, 3), required=True)
    with pytest.raises(UserError, match=r"argument --n: 7 is out of range .* \(see 'prog --help'\)"):
        ap.parse_args(["--n", "7"])
    with pytest.raises(UserError, match="required"):
        ap.parse_args([])


def test_run_prints_one_line_and_exits_with_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    def bad(_argv: object) -> None:
        raise UserError("something is wrong", exit_code=3)

    with pytest.raises(SystemExit) as info:
        commandline.run(bad, [])
    assert info.value.code == 3
    assert capsys.readouterr().err == "error: something is wrong\n"

    def good(_argv: object) -> None:
        return None

    with pytest.raises(SystemExit) as info:
        commandline.run(good, [])
    assert info.value.code == 0
