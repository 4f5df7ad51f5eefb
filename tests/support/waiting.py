"""Waiting on a condition that another process or task makes true."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy (a condition in another process)."""
    async with asyncio.timeout(within):
        # The condition lives in another process: poll it.
        while not (result := await check()):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    return result
