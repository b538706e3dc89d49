"""`Client`: the blocking client, an `AsyncClient` driven by a private event loop thread.

Each method submits the matching coroutine to the loop and waits for its result, so `Client`
may be used from ordinary synchronous code and from several threads at once (requests from
different threads pipeline on the one connection). `close` closes the connection, stops the
loop and joins its thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from types import TracebackType
from typing import Any, TypeVar

from taskraft.client.async_client import (
    AsyncClient,
    EnqueueItems,
    Task,
    enqueue_many_requests,
)
from taskraft.errors import TaskraftError
from taskraft.protocol import BATCH_TASKS_MAX, NodeStatus, QueueCounts, QueueDescription

_T = TypeVar("_T")

# Beyond a call's own deadline, how long to wait for the loop thread before giving up on it.
_LOOP_MARGIN_S = 10.0


class Client:
    """A taskraft client for synchronous code: `Client(servers=["127.0.0.1:7100", ...])`.

    Takes the same keyword options as `AsyncClient` (`token=...` for a cluster that requires
    one); its methods are the same, blocking.
    """

    def __init__(self, servers: Sequence[str], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="taskraft-client", daemon=True)
        self._thread.start()
        self._closed = False
        self._close_lock = threading.Lock()
        # Calls submitted to the loop and not finished, from any thread.
        self._in_flight: set[Future[Any]] = set()
        try:
            self._client: AsyncClient = self._run(self._make_client(servers, options), None)
        except BaseException:
            self._stop_loop()
            raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @staticmethod
    async def _make_client(servers: Sequence[str], options: dict[str, Any]) -> AsyncClient:
        return AsyncClient(servers, **options)

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a Client method was called from its own event loop thread")
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        self._in_flight.add(future)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise
        finally:
            self._in_flight.discard(future)

    def _call(self, coroutine: Coroutine[Any, Any, _T], extra_time_s: float = 0.0) -> _T:
        if self._closed:
            coroutine.close()
            raise RuntimeError("the client is closed")
        timeout = self._client.request_timeout_s + extra_time_s + _LOOP_MARGIN_S
        return self._run(coroutine, timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- operations --------------------------------------------------------------------------

    def create_queue(
        self,
        name: str,
        kind: str = "heap",
        *,
        max_size: int | None = None,
        max_payload_bytes: int | None = None,
        priority_range: tuple[int, int] | None = None,
        lease_ms_default: int | None = None,
        max_deliveries: int | None = None,
        dead_letter_queue: str | None = None,
    ) -> QueueDescription:
        return self._call(
            self._client.create_queue(
                name,
                kind,
                max_size=max_size,
                max_payload_bytes=max_payload_bytes,
                priority_range=priority_range,
                lease_ms_default=lease_ms_default,
                max_deliveries=max_deliveries,
                dead_letter_queue=dead_letter_queue,
            )
        )

    def delete_queue(self, name: str) -> None:
        self._call(self._client.delete_queue(name))

    def list_queues(self) -> list[QueueDescription]:
        return self._call(self._client.list_queues())

    def count(self, queue: str) -> QueueCounts:
        return self._call(self._client.count(queue))

    def enqueue(
        self,
        queue: str,
        payload: bytes,
        priority: int = 0,
        *,
        key: str | None = None,
        delay_ms: int = 0,
    ) -> int:
        return self._call(
            self._client.enqueue(queue, payload, priority, key=key, delay_ms=delay_ms)
        )

    def dequeue(self, queue: str, *, wait_ms: int = 0, lease_ms: int | None = None) -> Task | None:
        return self._call(
            self._client.dequeue(queue, wait_ms=wait_ms, lease_ms=lease_ms), wait_ms / 1000
        )

    def enqueue_many(
        self, queue: str, items: EnqueueItems, *, priority: int = 0, delay_ms: int = 0
    ) -> list[int]:
        # Split here, so that the wait covers every request's own deadline.
        operations = enqueue_many_requests(queue, items, priority=priority, delay_ms=delay_ms)
        return self._call(
            self._client._enqueue_batches(operations),
            self._client.request_timeout_s * max(len(operations) - 1, 0),
        )

    def dequeue_many(
        self, queue: str, max_tasks: int, *, wait_ms: int = 0, lease_ms: int | None = None
    ) -> list[Task]:
        requests = max(-(-max_tasks // BATCH_TASKS_MAX), 1)
        return self._call(
            self._client.dequeue_many(queue, max_tasks, wait_ms=wait_ms, lease_ms=lease_ms),
            wait_ms / 1000 + self._client.request_timeout_s * (requests - 1),
        )

    def ack(self, task: Task) -> None:
        self._call(self._client.ack(task))

    def ack_many(self, tasks: Iterable[Task]) -> list[tuple[Task, TaskraftError]]:
        settled = list(tasks)
        requests = max(-(-len(settled) // BATCH_TASKS_MAX), 1)
        return self._call(
            self._client.ack_many(settled), self._client.request_timeout_s * (requests - 1)
        )

    def nack(self, task: Task, *, delay_ms: int = 0) -> None:
        self._call(self._client.nack(task, delay_ms=delay_ms))

    def extend(self, task: Task, lease_ms: int) -> None:
        self._call(self._client.extend(task, lease_ms))

    def status(self) -> NodeStatus:
        return self._call(self._client.status())

    def close(self) -> None:
        """Close the connection, stop the event loop and join its thread; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._run(self._client.close(), self._client.connect_timeout_s + _LOOP_MARGIN_S)
            # Calls of other threads now fail on the loop (AsyncClient.close ends them); let
            # them finish there before the loop stops, or they would wait for nothing.
            others = [future for future in list(self._in_flight) if not future.done()]
            if others:
                wait_for_futures(others, timeout=self._client.connect_timeout_s + _LOOP_MARGIN_S)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()


__all__ = ["Client"]
