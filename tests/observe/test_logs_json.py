"""`--log-format json`: every line the daemon writes is one JSON object, its own and those of
asyncio, aiohttp and the warnings module, exception tracebacks included (as data)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from helpers.stunnerd_proc import stop, wait_ready

from stunner_dp.observe.logs import configure_logging, get_logger
from stunner_dp.testing import free_port, make_config, relay_window

# stunnerd, with one fault put in: its /live handler schedules a callback that raises (asyncio
# logs it, with a traceback) and then raises itself (aiohttp logs "Error handling request")
FAULTY_STUNNERD = """
import asyncio, sys
from stunner_dp.observe.health import HealthServer

async def faulty_live(self, request):
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    raise RuntimeError("injected fault in /live")

HealthServer._live = faulty_live
from stunner_dp.cli import stunnerd_main
sys.exit(stunnerd_main(sys.argv[1:]))
"""
WAIT_FOR_LINES = 10.0
JSON_DEBUG = ("-l", "all:DEBUG", "--log-format", "json")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each line of `text` as the object it holds; a line that is not a JSON object fails."""
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line!r}\nall of it:\n{text}")
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


def http_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)  # the server closes after its answer (Connection: close)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def faulty_stunnerd(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    """The faulty stunnerd at DEBUG in JSON on free ports, ready: (process, TURN port, health
    port, log); started again on other ports if it loses a race for one."""
    for attempt in range(3):
        port, health_port = free_port(), free_port()
        low, high = relay_window(50)
        admin = {
            "name": "json-logs",
            "loglevel": "all:DEBUG",
            "metrics_endpoint": "",
            "healthcheck_endpoint": f"http://127.0.0.1:{health_port}",
        }
        config = tmp_path / f"stunnerd-{attempt}.yaml"
        config.write_text(
            yaml.safe_dump(
                make_config(port=port, min_relay_port=low, max_relay_port=high, admin=admin)
            )
        )
        log = tmp_path / f"stunnerd-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", FAULTY_STUNNERD, *("-c", str(config)), *JSON_DEBUG],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait_ready(proc, port) and f'"port": {health_port}' in log.read_text():
            return proc, port, health_port, log
        stop(proc)
        if "could not start" not in log.read_text(errors="replace"):
            break  # not a port race: report it
    raise AssertionError(f"stunnerd did not come up; its log:\n{log.read_text(errors='replace')}")


def test_every_daemon_line_is_json_with_asyncio_aiohttp_and_tracebacks(tmp_path: Path) -> None:
    proc, _, health_port, log = faulty_stunnerd(tmp_path)
    try:
        assert b" 500 " in http_exchange(
            health_port, b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert b" 400 " in http_exchange(health_port, b"GET /\x00 \x01\r\nno header\r\n\r\n")
        deadline = time.monotonic() + WAIT_FOR_LINES
        while "Exception in callback" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
    finally:
        assert stop(proc) == 0, log.read_text(errors="replace")
    lines = json_lines(log.read_text(errors="replace"))
    by_logger: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_logger.setdefault(line["logger"], []).append(line)
    errors = [x["exception"][0] for x in by_logger["aiohttp.server"] if "exception" in x]
    assert {"exc_type": "RuntimeError", "exc_value": "injected fault in /live"}.items() <= (
        errors[0].items()
    )
    assert len(errors) == 1  # the malformed request is one debug line, without a traceback
    [malformed] = [x for x in by_logger["aiohttp.server"] if "malformed" in x["event"]]
    assert malformed["level"] == "debug" and "exception" not in malformed
    [callback] = [x for x in by_logger["asyncio"] if "Exception in callback" in x["event"]]
    assert callback["exception"][0]["exc_type"] == "ZeroDivisionError"
    assert callback["exception"][0]["frames"]
    assert any(name.startswith("stunner_dp.") for name in by_logger)  # the daemon's own lines
    assert all({"event", "level", "timestamp"} <= line.keys() for line in lines)


@pytest.fixture
def json_logging(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """The daemon's JSON logging in this process, to the captured stderr; put back after."""
    top = logging.getLogger()
    saved = (list(top.handlers), top.level, sys.excepthook, threading.excepthook)
    configure_logging("all:INFO", "json")
    try:
        yield capsys
    finally:
        top.handlers[:], level, sys.excepthook, threading.excepthook = saved
        top.setLevel(level)
        logging.getLogger("stunner_dp").handlers.clear()
        logging.captureWarnings(False)
        structlog.reset_defaults()


def test_foreign_loggers_warnings_and_tracebacks_are_json(
    json_logging: pytest.CaptureFixture[str],
) -> None:
    logging.getLogger("asyncio").error("from asyncio: %s", "its own text")
    logging.getLogger("aiohttp.server").warning("from aiohttp")
    try:
        raise KeyError("boom")
    except KeyError:
        logging.getLogger("aiohttp.web").exception("Error handling request")
        get_logger("net").error("our own failure", exc_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(False)  # catch_warnings put back the plain showwarning:
        logging.captureWarnings(True)  # route it through logging again, as in the daemon
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    lines = json_lines(json_logging.readouterr().err)
    assert [(x["logger"], x["level"]) for x in lines] == [
        ("asyncio", "error"),
        ("aiohttp.server", "warning"),
        ("aiohttp.web", "error"),
        ("stunner_dp.net", "error"),
        ("py.warnings", "warning"),
    ]
    assert lines[0]["event"] == "from asyncio: its own text"
    for line in lines[2:4]:
        [error] = line["exception"]
        assert error["exc_type"] == "KeyError"
        assert all("locals" not in f or f["locals"] is None for f in error["frames"])


async def test_an_asyncio_callback_failure_is_one_json_line(
    json_logging: pytest.CaptureFixture[str],
) -> None:
    done = asyncio.get_running_loop().create_future()

    def fails() -> None:
        done.set_result(None)
        raise ValueError("in a callback")

    asyncio.get_running_loop().call_soon(fails)
    await asyncio.wait_for(done, 5)
    await asyncio.sleep(0)  # the loop's exception handler has run by now
    [line] = json_lines(json_logging.readouterr().err)
    assert line["logger"] == "asyncio" and line["exception"][0]["exc_type"] == "ValueError"


def test_an_uncaught_exception_is_a_json_line(json_logging: pytest.CaptureFixture[str]) -> None:
    configure_logging("all:INFO", "json")  # again: pytest swaps threading.excepthook per phase
    try:
        raise RuntimeError("nobody caught me")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    thread = threading.Thread(target=lambda: 1 / 0)
    thread.start()
    thread.join(5)
    lines = json_lines(json_logging.readouterr().err)
    assert [x["exception"][0]["exc_type"] for x in lines] == ["RuntimeError", "ZeroDivisionError"]
    assert all(x["level"] == "critical" for x in lines)


def test_client_text_stays_escaped_in_json(json_logging: pytest.CaptureFixture[str]) -> None:
    get_logger("turn").info("authentication failed", username="evil\x00\x1b[2J\r\nfake")
    logging.getLogger("aiohttp.server").error("bad header %r", "x\r\ny")
    err = json_logging.readouterr().err
    assert err.count("\n") == 2
    first, second = json_lines(err)
    assert first["username"] == "evil\\x00\\x1b[2J\\x0d\\x0afake"
    assert "\n" not in second["event"] and "\r" not in second["event"]
