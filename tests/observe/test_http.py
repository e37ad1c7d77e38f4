"""observe/http.py: paths of several endpoints on one (host, port), mounted and unmounted live."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest
from aiohttp import web

from stunner_dp.observe.http import Handler, HttpEndpoints, parse_http_endpoint
from stunner_dp.testing import free_port


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://:8086", ("", 8086, "/")),
        ("http://127.0.0.1:8080/metrics", ("127.0.0.1", 8080, "/metrics")),
        ("http://0.0.0.0", ("0.0.0.0", 9, "/x")),
        (":9000", ("", 9000, "/x")),
        ("[::1]:9000/m", ("::1", 9000, "/m")),
    ],
)
def test_parse_http_endpoint(url: str, expected: tuple[str, int, str]) -> None:
    default_path = "/" if url == "http://:8086" else "/x"
    assert parse_http_endpoint(url, 9, default_path) == expected


@pytest.mark.parametrize("url", ["https://:443", "http://:99999", "http://:port"])
def test_parse_http_endpoint_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_http_endpoint(url, 9)


def _text(body: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body)

    return handler


async def test_two_paths_share_one_port_and_unmount_stops_the_server() -> None:
    endpoints = HttpEndpoints()
    port = free_port(udp=False)
    try:
        await endpoints.mount("127.0.0.1", port, "/live", _text("alive"))
        await endpoints.mount("127.0.0.1", port, "/metrics", _text("m 1"))
        assert endpoints.bound_port("127.0.0.1", port) == port
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            async with http.get(base + "/live") as r:
                assert (r.status, await r.text()) == (200, "alive")
            async with http.get(base + "/metrics") as r:
                assert (r.status, await r.text()) == (200, "m 1")
            async with http.get(base + "/nope") as r:
                assert r.status == 404
            await endpoints.unmount("127.0.0.1", port, "/metrics")
            async with http.get(base + "/metrics") as r:
                assert r.status == 404
            await endpoints.unmount("127.0.0.1", port, "/live")
            assert endpoints.mounted() == {}
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(base + "/live"):
                    pass
    finally:
        await endpoints.close()


async def test_port_zero_and_bind_failure() -> None:
    endpoints = HttpEndpoints()
    other = HttpEndpoints()
    try:
        await endpoints.mount("127.0.0.1", 0, "/a", _text("a"))
        bound = endpoints.bound_port("127.0.0.1", 0)
        assert bound
        with pytest.raises(OSError):
            await other.mount("127.0.0.1", bound, "/b", _text("b"))
        assert other.mounted() == {}
    finally:
        await endpoints.close()
        await other.close()


def _silent(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass  # an answer (e.g. 408) before the close is fine
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


async def test_a_slow_request_is_cut_and_caps_hold_per_source() -> None:
    """A request trickled in byte by byte is closed after request_timeout; a source past its
    connection cap is closed at accept, and another source is still served."""
    endpoints = HttpEndpoints(request_timeout=1.0, max_connections=8, max_connections_per_ip=2)
    try:
        await endpoints.mount("127.0.0.1", 0, "/live", _text("alive"))
        port = endpoints.bound_port("127.0.0.1", 0)
        assert port
        loop = asyncio.get_running_loop()

        def slowloris() -> bool:
            with _silent(port, "127.0.0.2") as sock:
                sock.settimeout(0.3)
                for byte in b"GET /live HTTP/1.1\r\nHost: x\r\n" * 10:  # bounded: 300 bytes
                    try:
                        sock.send(bytes([byte]))
                        if sock.recv(1) == b"":
                            return True
                    except TimeoutError:
                        continue
                    except OSError:
                        return True
                return False

        assert await loop.run_in_executor(None, slowloris)

        def over_the_cap() -> bool:
            with _silent(port, "127.0.0.3") as third:
                return _closed_by_server(third, 0.5)  # well before the request timeout

        held = [_silent(port, "127.0.0.3") for _ in range(2)]
        try:
            assert await loop.run_in_executor(None, over_the_cap)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/live") as r,
            ):
                assert (r.status, await r.text()) == (200, "alive")
        finally:
            for sock in held:
                sock.close()
    finally:
        await endpoints.close()


async def test_a_malformed_request_is_one_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    endpoints = HttpEndpoints()
    try:
        await endpoints.mount("127.0.0.1", 0, "/live", _text("alive"))
        port = endpoints.bound_port("127.0.0.1", 0)
        assert port
        caplog.set_level(logging.DEBUG, logger="aiohttp.server")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /live HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        await writer.drain()
        assert (await reader.read(100)).startswith(b"HTTP/1.0 400")
        writer.close()
        lines = [r for r in caplog.records if r.name == "aiohttp.server"]
        assert lines, "the malformed request is logged at debug"
        assert all(r.levelno == logging.DEBUG and r.exc_info is None for r in lines)
        assert all("\n" not in r.getMessage() for r in lines)
    finally:
        await endpoints.close()
