"""Run a pure, stepwise computation (a generator that yields between steps) on the event loop
without stalling it: steps run for at most `budget` seconds at a time, then the loop serves.

The state machine's expensive pure work, such as indexing the peer rules of a config with
100,000 endpoints (`PeerAccess.build_steps`), comes as such a generator: it knows no clock,
this does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TypeVar

__all__ = ["STEP_BUDGET", "run_stepwise"]

R = TypeVar("R")

STEP_BUDGET = 0.005  # seconds of work before the loop gets its turn


async def run_stepwise(steps: Generator[None, None, R], budget: float = STEP_BUDGET) -> R:
    clock = time.perf_counter
    while True:
        deadline = clock() + budget
        try:
            while clock() < deadline:
                next(steps)
        except StopIteration as done:
            result: R = done.value
            return result
        await asyncio.sleep(0)
