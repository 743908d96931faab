"""Ack-ordered commits: a poll's offsets are committed once its replies are acked.

The at-least-once runner hands each poll to a `CommitQueue` as soon as its
replies are with the producer, and goes on to the next poll. The queue's
committer (`run`, one task beside the poll loop) commits polls in poll order,
one commit for every poll acknowledged since the last, so a reply never waits
for a commit round trip. A poll with a failed reply stays first in line: no
commit gets past it. The failure is handed to the poll loop (`raise_failure`),
which rewinds to the committed offsets and `abandon`s what was in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from consumers.handler import Outgoing


@dataclass
class InFlight:
    """A poll whose replies were handed to the producer, awaiting acks."""

    offsets: dict[Any, int]
    #: One per produced batch: its records as delivered (replies, or the dead
    #: letters that replaced replies the broker refused).
    acks: list[asyncio.Future[list[Outgoing]]]
    records: int
    started: float

    def outgoing(self) -> list[Outgoing]:
        """What the poll produced, once every ack succeeded."""
        return [o for ack in self.acks for o in ack.result()]

    def acked(self) -> bool:
        """Every reply of the poll is acknowledged (or failed)."""
        return all(a.done() for a in self.acks)

    def succeeded(self) -> bool:
        """Every reply of the poll is acknowledged, none failed."""
        return all(
            a.done() and not a.cancelled() and a.exception() is None for a in self.acks
        )


def silence(future: asyncio.Future[Any]) -> None:
    """Mark a future's failure as seen (no 'exception never retrieved' noise)."""
    if not future.cancelled():
        future.exception()


class CommitQueue:
    """Polls in flight, committed oldest first once their replies are acked."""

    def __init__(
        self,
        commit: Callable[[dict[Any, int]], Awaitable[None]],
        committed: Callable[[list[InFlight]], None],
        lock: asyncio.Lock,
    ) -> None:
        """`commit` commits offsets; `committed` is told of polls once committed.

        `lock` is the runner's: commits, drains (a rebalance) and exactly-once
        transactions exclude one another.
        """
        self._commit = commit
        self._committed = committed
        self._lock = lock
        self._pending: deque[InFlight] = deque()
        # Set when a poll is added; wakes the committer.
        self._added = asyncio.Event()
        # A produce or commit failure seen by the committer, for the loop.
        self._failure: BaseException | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, poll: InFlight) -> None:
        """Queue a poll whose replies are with the producer."""
        self._pending.append(poll)
        self._added.set()

    async def wait_for_room(self, max_unacked: int) -> None:
        """Hold the poll loop while too many polls await acks or a commit.

        Past `max_unacked` polls awaiting acks, wait for the oldest's; past
        four times as many acknowledged but not committed (a slow or absent
        group coordinator), wait for the commits instead of piling up.
        """
        unacked = [p for p in self._pending if not p.acked()]
        if len(unacked) >= max_unacked:
            await asyncio.gather(*unacked[0].acks)
        if len(self._pending) >= 4 * max_unacked:
            await self.drain()

    async def run(self) -> None:
        """Commit polls as their replies are acknowledged, oldest first.

        One commit covers every poll acknowledged since the previous one, so
        at a high rate commits stay few, and at a low rate each poll is
        committed a round trip after its acks. A failure is kept for the poll
        loop (`raise_failure`); nothing after the failed poll is committed
        meanwhile.
        """
        while True:
            await self._added.wait()
            self._added.clear()
            try:
                while self._pending and self._failure is None:
                    async with self._lock:
                        if not self._pending:
                            break
                        await asyncio.gather(*self._pending[0].acks)
                        # A poll with a failed reply stays first in line: no
                        # commit (here or in `drain`) gets past it.
                        done = []
                        while self._pending and self._pending[0].succeeded():
                            done.append(self._pending.popleft())
                        if done:  # none when a rewind emptied the queue
                            await self._complete(done)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # stopping
                # An ack future was cancelled, not this task: a failure too.
                self._failure = RuntimeError("a reply's acknowledgement was cancelled")
            except Exception as exc:  # noqa: BLE001 - the loop rewinds
                self._failure = exc

    def raise_failure(self) -> None:
        """Raise the failure the committer saw (once), if any."""
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise exc

    def fail(self, exc: BaseException) -> None:
        """Hold back every commit and poll until the loop has rewound again."""
        self._failure = exc

    async def drain(self) -> None:
        """Complete every poll in flight (acks, then one commit)."""
        async with self._lock:
            if self._failure is not None:
                # The committer saw a reply fail: committing what followed it
                # would skip its records. The loop rewinds instead.
                raise self._failure
            if self._pending:
                done = list(self._pending)
                self._pending.clear()
                await self._complete(done)

    def abandon(self) -> None:
        """Forget the polls in flight and any failure: a rewind covers them."""
        self.silence()
        self._pending.clear()
        self._failure = None

    def silence(self) -> None:
        """Mark the acks of the polls in flight as seen; they will not be awaited."""
        for item in self._pending:
            for ack in item.acks:
                ack.add_done_callback(silence)

    async def _complete(self, items: list[InFlight]) -> None:
        """Await the replies of these polls (oldest first), then commit them at once."""
        offsets: dict[Any, int] = {}
        for item in items:
            await asyncio.gather(*item.acks)
            offsets.update(item.offsets)
        await self._commit(offsets)
        self._committed(items)
