"""Keeps disk writes off the event loop, so a node keeps receiving while its disk works.

The node server is one asyncio loop. An fsync takes milliseconds; done on the loop, it would stall
every connection for that long. `StorageWriter` runs the log's writes on one dedicated thread
(one thread keeps them in order) and snapshot files on another (a large snapshot must not hold
up the log), and hands the results back to the loop as awaitables. The caller still awaits
`persist` before sending what depends on it: moving the write off the loop changes who waits,
never what is promised.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from taskraft.raft import Entry, HardState, Snapshot, SnapshotMetadata
from taskraft.storage.protocol import RaftStorage

# Ready batches handed to the log thread and not yet written. The server awaits each batch
# before the next Ready, so one is the norm; the bound keeps a misbehaving caller from queueing
# unbounded memory behind a slow disk.
PENDING_LOG_BATCHES_MAX = 16

Result = TypeVar("Result")


class StorageWriter:
    def __init__(
        self, storage: RaftStorage, *, pending_log_batches_max: int = PENDING_LOG_BATCHES_MAX
    ) -> None:
        self.storage = storage
        self._log_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskraft-log")
        self._snapshot_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="taskraft-snapshot"
        )
        self._log_slots = asyncio.Semaphore(pending_log_batches_max)
        # The term and vote handed to the log thread last: a batch that keeps them and has no
        # entries and no snapshot only moves the commit index.
        self._term_and_vote: tuple[int, str | None] | None = None

    async def persist(
        self,
        *,
        snapshot: Snapshot | None,
        entries: Sequence[Entry],
        hard_state: HardState | None,
    ) -> None:
        """Write one Ready batch durably (one fsync); returns once it is on disk.

        A batch that only moves the commit index touches no disk (RaftStorage.persist): it runs
        here, on the loop, without the two thread hand-offs that would otherwise sit in the
        path of every commit, on the leader and on every follower.
        """
        if hard_state is not None:
            term_and_vote = (hard_state.term, hard_state.vote)
            if snapshot is None and not entries and term_and_vote == self._term_and_vote:
                self.storage.persist(snapshot=None, entries=(), hard_state=hard_state)
                return
        async with self._log_slots:
            await self._run(
                self._log_thread,
                functools.partial(
                    self.storage.persist,
                    snapshot=snapshot,
                    entries=entries,
                    hard_state=hard_state,
                ),
            )
        if hard_state is not None:
            self._term_and_vote = (hard_state.term, hard_state.vote)

    async def write_snapshot(self, metadata: SnapshotMetadata, chunks: Iterable[bytes]) -> None:
        """Stream a snapshot to disk in the background, then compact the log behind it.

        `chunks` is consumed on the snapshot thread: it must read a consistent copy of the
        state (one that later commands do not change), so the loop can keep applying meanwhile.
        """
        await self._run(
            self._snapshot_thread, functools.partial(self.storage.write_snapshot, metadata, chunks)
        )
        async with self._log_slots:
            await self._run(
                self._log_thread, functools.partial(self.storage.compact_log, metadata.index)
            )

    async def close(self) -> None:
        """Finish what was handed over, then close the storage."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._snapshot_thread.shutdown, True)
        await loop.run_in_executor(None, self._log_thread.shutdown, True)
        self.storage.close()

    async def _run(self, thread: ThreadPoolExecutor, work: Callable[[], Result]) -> Result:
        return await asyncio.get_running_loop().run_in_executor(thread, work)
