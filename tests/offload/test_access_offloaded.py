"""The end-to-end peer-rule tests (tests/hostile/test_access_e2e.py) again, with the kernel fast
path on: every Server they start runs `admin.offload_engine: TC` on lo (forced into each config
given to the constructor and to `apply`), and each start checks that the program is loaded.
So the same assertions prove that nothing flows, in the kernel or in Python, to or from a peer
the rules do not allow, also after a live config change."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.fast_path import access_e2e_tests
from helpers.gates import require_offload

from stunner_dp.config import StunnerConfig, parse_config
from stunner_dp.net.runtime import Server

globals().update(access_e2e_tests("access_e2e_offloaded"))


def _offloaded(config: StunnerConfig | Any) -> StunnerConfig:
    parsed = config if isinstance(config, StunnerConfig) else parse_config(config)
    admin = dataclasses.replace(parsed.admin, offload_engine="TC", offload_interfaces=("lo",))
    return dataclasses.replace(parsed, admin=admin)


@pytest.fixture(autouse=True)
def offload_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    require_offload()
    init, start, apply = Server.__init__, Server.start, Server.apply

    def patched_init(self: Server, config: Any, **kw: Any) -> None:
        init(self, _offloaded(config), **kw)

    async def patched_start(self: Server) -> Server:
        out = await start(self)
        assert self.offload.controller is not None, self.offload.reason
        return out

    async def patched_apply(self: Server, config: StunnerConfig, *a: Any, **kw: Any) -> None:
        await apply(self, _offloaded(config), *a, **kw)
        assert self.offload.controller is not None

    monkeypatch.setattr(Server, "__init__", patched_init)
    monkeypatch.setattr(Server, "start", patched_start)
    monkeypatch.setattr(Server, "apply", patched_apply)
    yield
