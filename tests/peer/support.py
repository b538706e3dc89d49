"""Helpers for the transport tests: an event loop that must end clean, and waits with deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import TypeVar

T = TypeVar("T")

# Every wait in these tests ends at a deadline rather than hanging the run; five seconds is far
# beyond anything that succeeds on a loaded machine, and well inside a test's ten.
WAIT_DEADLINE_S = 5.0
POLL_INTERVAL_S = 0.005


def run(test: Callable[[], Coroutine[object, object, None]]) -> None:
    """Run one async test in a fresh loop and fail if it leaves any task behind."""

    async def main() -> None:
        await test()
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, f"tasks left behind: {leftover}"

    asyncio.run(main())


async def wait_until(
    condition: Callable[[], bool],
    what: str,
    *,
    deadline_s: float = WAIT_DEADLINE_S,
    while_waiting: Callable[[], None] | None = None,
) -> None:
    """Poll `condition` until it holds; fail naming `what` at the deadline.

    `while_waiting` runs at every poll, for tests that must keep sending while they wait.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        if while_waiting is not None:
            while_waiting()
        await asyncio.sleep(POLL_INTERVAL_S)


async def within_deadline(awaitable: Awaitable[T], what: str) -> T:
    try:
        async with asyncio.timeout(WAIT_DEADLINE_S):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"timed out after {WAIT_DEADLINE_S} s waiting for {what}") from None
