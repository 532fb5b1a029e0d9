"""Concurrent callers that need the same answer share one run of the work that computes it."""

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """One run per key at a time, on the event loop: a caller that asks for a key whose work is
    running awaits that run's result (or its exception) instead of starting another.

    Nothing is kept once a run ends: a later caller runs the work again. A caller cancelled
    while it waits leaves the run going for the others.
    """

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[T]] = {}

    async def run(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(work())
            self._running[key] = running
            running.add_done_callback(lambda done: self._ended(key, done))
        return await asyncio.shield(running)

    def _ended(self, key: K, done: "asyncio.Future[T]") -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved, even when every caller was cancelled meanwhile

    def running(self) -> int:
        """How many runs are going on."""
        return len(self._running)
