"""observe/http.py: paths of several endpoints on one (host, port), mounted and unmounted live."""

from __future__ import annotations

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
