"""The end-to-end peer-rule tests (tests/hostile/test_access_e2e.py) again, once per forwarder
mode, by running that module's tests with every Server constructed under a forced
`forwarder=` (the trick of tests/offload/test_access_offloaded.py):

- "python": the pure-Python hot paths keep this coverage now that the default ("auto") runs
  the compiled thread wherever it loads;
- "compiled": each started server is checked to run the thread (also after `apply`), so the
  same assertions prove that nothing flows through it to or from a peer the rules do not
  allow, also after a live config change takes the route away."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers.fast_path import access_e2e_tests

from forwarder.kit import require_forwarder
from stunner_dp.config import StunnerConfig
from stunner_dp.net.runtime import Server

globals().update(access_e2e_tests("access_e2e_forwarder_modes"))


@pytest.fixture(autouse=True, params=["python", "compiled"])
def forwarder_mode(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    mode = str(request.param)
    if mode == "compiled":
        require_forwarder()
    init, start, apply = Server.__init__, Server.start, Server.apply

    def patched_init(self: Server, config: Any, **kw: Any) -> None:
        kw["forwarder"] = mode
        init(self, config, **kw)

    def check(server: Server) -> None:
        if mode == "compiled":
            assert server.forwarder is not None, "forwarder='compiled' but none runs"
        else:
            assert server.forwarder is None

    async def patched_start(self: Server) -> Server:
        out = await start(self)
        check(self)
        return out

    async def patched_apply(self: Server, config: StunnerConfig, *a: Any, **kw: Any) -> None:
        await apply(self, config, *a, **kw)
        check(self)

    monkeypatch.setattr(Server, "__init__", patched_init)
    monkeypatch.setattr(Server, "start", patched_start)
    monkeypatch.setattr(Server, "apply", patched_apply)
    yield mode
