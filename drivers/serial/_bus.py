"""One transaction at a time on a port, writes first."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator

__all__ = ["BusLock"]


class BusLock:
    """A FIFO lock with two ranks: a waiting write goes before every waiting poll.

    RS-485 is half duplex and devices answer in turn, so a write never starts while a
    query waits for its answer; it only jumps the queue of queries not yet sent.
    """

    def __init__(self) -> None:
        self._held = False
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def locked(self) -> bool:
        return self._held

    @contextlib.asynccontextmanager
    async def hold(self, *, urgent: bool = False) -> AsyncIterator[None]:
        await self._acquire(0 if urgent else 1)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, rank: int) -> None:
        if not self._held and not self._queue:
            self._held = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (rank, next(self._seq), fut)
        heapq.heappush(self._queue, entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed over just before the cancel
                self._release()
            else:
                with contextlib.suppress(ValueError):
                    self._queue.remove(entry)
                    heapq.heapify(self._queue)
            raise

    def _release(self) -> None:
        while self._queue:
            _rank, _seq, fut = heapq.heappop(self._queue)
            if not fut.done():
                fut.set_result(None)  # the lock stays held, now by that waiter
                return
        self._held = False
