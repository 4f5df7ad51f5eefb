"""Waiting on a condition that another process or task makes true: the one polling loop."""

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

POLL_S = 0.1


async def eventually(
    check: Callable[[], Awaitable[Any]] | Callable[[], Any],
    within: float = 30.0,
    what: str = "the condition",
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy, and return that.

    The condition lives in another process (a file, a topic, an HTTP answer), so there is
    nothing in this one to await: polling is the honest wait. Fails the test after `within` s.
    """
    try:
        async with asyncio.timeout(within):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None
