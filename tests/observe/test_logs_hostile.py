"""Issue 13, logs: client text is escaped in every line, and what a stranger raises at packet
rate (failed logins, requests that hit a bug) is sampled, with a count of what was left out."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
import structlog

from stunner_dp.observe import events_log
from stunner_dp.observe.events_log import LogSampler, log_event
from stunner_dp.observe.logs import configure_logging, printable
from stunner_dp.turn import events as ev

CLIENT = ("192.0.2.7", 4000)


@contextlib.contextmanager
def daemon_logging(fmt: str = "text") -> Iterator[None]:
    """The daemon's logging, to the (captured) stderr of the test; put back afterwards."""
    configure_logging("all:INFO", fmt)
    try:
        yield
    finally:
        structlog.reset_defaults()
        logging.getLogger("stunner_dp").handlers.clear()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("alice", "alice"),
        ("zoë", "zoë"),  # printable non-ASCII stays
        ("a\x00b", "a\\x00b"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("one\nforged line", "one\\x0aforged line"),
        ("\u202eevil", "\\u202eevil"),  # a bidi override
        ("a\\x00", "a\\\\x00"),  # a literal backslash cannot pass for an escape
    ],
)
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(shown) == shown.replace("\\", "\\\\")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_username_with_nul_and_ansi_escapes_is_escaped_in_the_line(
    capsys: pytest.CaptureFixture[str], fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_log, "AUTH_FAILED_LINES", LogSampler(1.0, 10))
    with daemon_logging(fmt):
        log_event(ev.AuthFailed("udp", CLIENT, "evil\x00\x1b[2J\x1b[31m\r\nfake", "wrong password"))
    err = capsys.readouterr().err
    assert "authentication failed" in err
    assert "\x00" not in err and "\x1b" not in err and "\r" not in err
    assert err.count("\n") == 1  # one line, however many line breaks the name held
    assert "evil" in err and "fake" in err


def test_failed_logins_are_sampled_with_a_count_of_the_rest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with daemon_logging():
        _sampled_failed_logins(capsys, monkeypatch)


def _sampled_failed_logins(
    text_log: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(events_log, "AUTH_FAILED_LINES", LogSampler(1.0, 3, clock))
    for i in range(100):
        log_event(ev.AuthFailed("udp", CLIENT, f"guess-{i}", "unknown username"))
    lines = text_log.readouterr().err.splitlines()
    assert len(lines) == 3  # the burst
    clock.now += 1.0
    log_event(ev.AuthFailed("udp", CLIENT, "guess-100", "unknown username"))
    [line] = text_log.readouterr().err.splitlines()
    assert "guess-100" in line and "suppressed=97" in line
    clock.now += 60.0
    log_event(ev.AuthFailed("udp", CLIENT, "alice", "wrong password"))
    [line] = text_log.readouterr().err.splitlines()
    assert "suppressed" not in line  # nothing was left out since


def test_a_bug_is_logged_rate_limited_with_one_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with daemon_logging():
        _one_traceback(capsys, monkeypatch)


def _one_traceback(text_log: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(events_log, "REQUEST_FAILED_LINES", LogSampler(1.0, 1, clock))
    monkeypatch.setattr(events_log, "_last_traceback", [-1e9])

    def failure() -> ev.RequestFailed:
        try:
            int("\u00b2")
        except ValueError as exc:
            return ev.RequestFailed("udp", CLIENT, exc)
        raise AssertionError

    for _ in range(5000):
        log_event(failure())
    err = text_log.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1  # not one per packet
    assert "Traceback" in lines[0] and "ValueError" in lines[0]
    clock.now += 1.0
    log_event(failure())
    [line] = text_log.readouterr().err.splitlines()
    assert "suppressed=4999" in line
    assert "Traceback" not in line  # one traceback a minute at most
    assert len(line) < 400
