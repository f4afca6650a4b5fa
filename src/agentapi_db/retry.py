"""Retrying a block that the caller marks as safe to run again.

::

    def create() -> Session:
        with db.as_user(user_id) as tx:
            return tx.sessions.create(workspace_path="/w")

    session = retry(create)            # re-runs create() across a failover

A block is *safe to retry* when running it twice does no harm: it reads only, or
its writes are idempotent (a fixed id with ``ON CONFLICT DO NOTHING``, an upsert,
a check before the insert in the same transaction). That matters because a
connection lost while ``COMMIT`` was in flight
(:attr:`~agentapi_db.errors.Unavailable.during_commit`) leaves the outcome
unknown: the first run may have committed. Only the caller knows whether a block
is safe, so nothing is retried implicitly.

Retried: :class:`~agentapi_db.errors.Unavailable` (failover, restart, connection
lost, read-only server) and :class:`~agentapi_db.errors.TransactionConflict`
(serialization failure, deadlock). Waits grow from ``first_delay`` by doubling to
``max_delay``; the last error is raised once ``timeout`` seconds have passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from agentapi_db.errors import TransactionConflict, Unavailable

__all__ = ["RETRYABLE", "retry", "retry_async"]

T = TypeVar("T")
RETRYABLE: tuple[type[Exception], ...] = (Unavailable, TransactionConflict)
log = logging.getLogger("agentapi_db")


class _Backoff:
    """Doubling waits until a deadline; ``give_up`` says the next wait would pass it."""

    def __init__(self, timeout: float, first_delay: float, max_delay: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.delay = first_delay
        self.max_delay = max_delay

    def give_up(self, exc: Exception) -> bool:
        if time.monotonic() + self.delay > self.deadline:
            return True
        log.debug("agentapi_db: retrying after %s", type(exc).__name__)
        return False

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.max_delay)
        return delay


def retry(
    block: Callable[[], T],
    *,
    timeout: float = 30.0,
    first_delay: float = 0.05,
    max_delay: float = 1.0,
) -> T:
    """Run ``block()``; on a retryable error run it again until ``timeout`` passes."""
    backoff = _Backoff(timeout, first_delay, max_delay)
    while True:
        try:
            return block()
        except RETRYABLE as exc:
            if backoff.give_up(exc):
                raise
        time.sleep(backoff.next())


async def retry_async(
    block: Callable[[], Awaitable[T]],
    *,
    timeout: float = 30.0,
    first_delay: float = 0.05,
    max_delay: float = 1.0,
) -> T:
    """The asyncio twin of :func:`retry`: ``block`` is a coroutine function."""
    backoff = _Backoff(timeout, first_delay, max_delay)
    while True:
        try:
            return await block()
        except RETRYABLE as exc:
            if backoff.give_up(exc):
                raise
        await asyncio.sleep(backoff.next())
