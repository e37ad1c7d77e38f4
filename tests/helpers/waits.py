"""Bounded waits for a state, for tests that assert on the answer (`assert await until(...)`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    """True as soon as `pred()` holds, polling every 10 ms; `pred()` once more at the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()
