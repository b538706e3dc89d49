"""Tools for the hostile-client tests: a real `taskraft serve` node, raw sockets, and the model.

- `start_node` runs one `taskraft serve` process through `LocalCluster` on a random free base
  port (a multiple of 10 in 50000-60000 whose client, peer and HTTP ports all bind), retrying
  on another port when the node cannot start, so pytest-xdist workers never collide.
- `RawConnection` is a blocking socket that sends whatever bytes a test wants and reads the
  node's frames with the protocol's own `FrameDecoder`, every read bounded by a deadline.
- `model_answer` runs the sans-IO `ServerConnection` on the same bytes: what the node must
  answer, byte for byte, as long as no request reaches execution.
- `flood` opens thousands of idle connections from one asyncio loop, a bounded number at a
  time, and says how each one ended.
- `check_node_serves` is the invariant every test ends with: the process runs, a well-behaved
  `Client` completes an enqueue, dequeue and ack round trip, the tasks enqueued before the
  abuse are all still there, and the node's log holds no Python traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from taskraft.client import Client
from taskraft.errors import TaskraftError
from taskraft.local_cluster import LocalCluster, free_base_port
from taskraft.protocol import (
    END_OF_STREAM,
    ConnectionClosed,
    ErrorFrame,
    Frame,
    FrameDecoder,
    Handshake,
    ProtocolError,
    ProtocolFailure,
    QueueCounts,
    Request,
    ServerConnection,
    encode_frame,
    error_from_wire,
)

HOST = "127.0.0.1"
NODE_ID = "n1"
DEADLINE_SECONDS = 20.0
"""The longest any single wait may take; generous, since another CPU job may run alongside."""

NODE_START_SECONDS = 45.0
PORT_LOW, PORT_HIGH = 50_000, 60_000
NODE_START_ATTEMPTS = 3
READ_SIZE = 65_536

KEPT_QUEUE = "hostile-kept"
"""Tasks enqueued before any abuse, counted after each test: nothing may be lost."""
ROUND_TRIP_QUEUE = "hostile-round-trip"
"""Where each check enqueues, dequeues and acknowledges one task of its own."""


# -- the node ---------------------------------------------------------------------------------


def pick_base_port(nodes: int = 1) -> int:
    """A random multiple of 10 in 50000-60000 whose whole `taskraft dev` layout is free."""
    return free_base_port(nodes, low=PORT_LOW, high=PORT_HIGH, randomness=random.SystemRandom())


def start_node(directory: Path, extra_arguments: list[str]) -> LocalCluster:
    """One `taskraft serve` process that leads its one-node cluster and is ready.

    A port found free may be taken (by another worker's ephemeral port) before the node binds
    it; the node then exits, and another base port is tried.
    """
    failures: list[str] = []
    for attempt in range(NODE_START_ATTEMPTS):
        cluster = LocalCluster(
            1,
            base_port=pick_base_port(),
            data_directory=directory / f"attempt-{attempt}",
            tick_interval_ms=20,
            extra_arguments=extra_arguments,
        )
        cluster.start()
        deadline = time.monotonic() + NODE_START_SECONDS
        while cluster.is_running(NODE_ID) and time.monotonic() < deadline:
            if cluster.leader() == NODE_ID and cluster.ready(NODE_ID):
                return cluster
            time.sleep(0.05)
        failures.append(f"attempt {attempt}: {cluster.log_tail(NODE_ID)}")
        cluster.stop()
    raise RuntimeError("the node did not start:\n" + "\n".join(failures))


def full_log(cluster: LocalCluster) -> str:
    return cluster.log_tail(NODE_ID, lines=10**9)


def client_address(cluster: LocalCluster) -> tuple[str, int]:
    return HOST, cluster.node(NODE_ID).client_port


def open_client(cluster: LocalCluster) -> Client:
    """A well-behaved client; it backs off and retries when the node answers `overloaded`."""
    return Client(
        cluster.servers,
        client_name="hostile-test-well-behaved",
        request_timeout_s=DEADLINE_SECONDS,
        connect_timeout_s=5.0,
    )


@dataclass
class NodeUnderAttack:
    """The node, and the tasks enqueued before any abuse (payload by task id)."""

    cluster: LocalCluster
    kept_tasks: dict[int, bytes] = field(default_factory=dict)
    checks: int = 0

    @property
    def address(self) -> tuple[str, int]:
        return client_address(self.cluster)

    def enqueue_kept_tasks(self, count: int) -> None:
        with open_client(self.cluster) as client:
            client.create_queue(KEPT_QUEUE)
            client.create_queue(ROUND_TRIP_QUEUE)
            for index in range(count):
                payload = f"kept-{index}".encode()
                task_id = client.enqueue(KEPT_QUEUE, payload, priority=index % 3)
                self.kept_tasks[task_id] = payload


def counter_value(node: NodeUnderAttack, name: str) -> float:
    """The value of an unlabelled counter (`NAME_total`) of the node's /metrics."""
    url = node.cluster.http_url(NODE_ID, "/metrics")
    with urllib.request.urlopen(url, timeout=DEADLINE_SECONDS) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}_total "):
            return float(line.split()[1])
    raise AssertionError(f"{name}_total is not in the metrics")


def check_node_serves(node: NodeUnderAttack, *, verify_payloads: bool = False) -> None:
    """The node runs, serves a full round trip, has lost nothing and logged no traceback.

    With `verify_payloads`, every kept task is also dequeued (leased), compared with what was
    enqueued, and nacked back to ready.
    """
    cluster = node.cluster
    assert cluster.is_running(NODE_ID), f"the node exited:\n{cluster.log_tail(NODE_ID)}"
    node.checks += 1
    payload = f"round-trip-{node.checks}-{uuid.uuid4().hex}".encode()
    with open_client(cluster) as client:
        task_id = client.enqueue(ROUND_TRIP_QUEUE, payload)
        task = client.dequeue(ROUND_TRIP_QUEUE, wait_ms=5_000)
        assert task is not None, "the round-trip task was not delivered"
        assert (task.id, task.payload) == (task_id, payload)
        client.ack(task)
        assert client.count(ROUND_TRIP_QUEUE) == QueueCounts(ready=0, delayed=0, leased=0)
        kept = len(node.kept_tasks)
        assert client.count(KEPT_QUEUE) == QueueCounts(ready=kept, delayed=0, leased=0)
        if verify_payloads:
            delivered = [client.dequeue(KEPT_QUEUE, lease_ms=60_000) for _ in range(kept)]
            found = {each.id: each.payload for each in delivered if each is not None}
            assert found == node.kept_tasks
            for each in delivered:
                assert each is not None
                client.nack(each)
            assert client.count(KEPT_QUEUE) == QueueCounts(ready=kept, delayed=0, leased=0)
    assert "Traceback" not in full_log(cluster), full_log(cluster)


# -- raw connections --------------------------------------------------------------------------


class StreamEnded(Exception):
    """The node ended the connection (EOF or reset) before the frame a test waited for."""


class RawConnection:
    """A blocking TCP connection to the node that sends any bytes and decodes what comes back."""

    def __init__(self, connected: socket.socket) -> None:
        self.socket = connected
        self.decoder = FrameDecoder()
        self.ended: str | None = None  # "eof" or "reset" once the node ended the stream
        self._next_request_id = 1

    @classmethod
    def open(cls, address: tuple[str, int]) -> RawConnection:
        return cls(socket.create_connection(address, timeout=DEADLINE_SECONDS))

    @classmethod
    def handshaken(cls, address: tuple[str, int]) -> RawConnection:
        connection = cls.open(address)
        try:
            connection.handshake()
        except BaseException:
            connection.close()
            raise
        return connection

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close()

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def send_frame(self, value: object) -> None:
        self.send(encode_frame(value))

    def half_close(self) -> None:
        """End our stream (FIN) while still reading the node's answers."""
        self.socket.shutdown(socket.SHUT_WR)

    def handshake(self, client: str = "hostile-test") -> None:
        self.send_frame(Handshake(client=client).to_wire())
        answer = self.next_frame()
        assert answer == {"taskraft": 1, "node": NODE_ID}, answer

    def next_frame(self, timeout: float = DEADLINE_SECONDS) -> object:
        """The next frame's value; StreamEnded when the node ended the stream first."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.decoder.next_frame()
            if isinstance(frame, Frame):
                return frame.value
            if frame is END_OF_STREAM or self.ended is not None:
                raise StreamEnded(self.ended or "eof")
            self._read(deadline)

    def frames_until_end(self, timeout: float = DEADLINE_SECONDS) -> list[object]:
        """Every frame until the node ends the stream; TimeoutError if it does not in time."""
        frames: list[object] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames.append(self.next_frame(max(deadline - time.monotonic(), 0.001)))
            except StreamEnded:
                return frames

    def _read(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the node neither answered nor closed the connection in time")
        self.socket.settimeout(remaining)
        try:
            data = self.socket.recv(READ_SIZE)
        except TimeoutError:
            raise TimeoutError(
                "the node neither answered nor closed the connection in time"
            ) from None
        except ConnectionResetError:
            self.ended = "reset"
            return
        if not data:
            self.ended = "eof"
        # An answer cut by the end of the stream makes the decoder raise: a node bug.
        self.decoder.receive_data(data)

    def request_frame(self, op: str, args: object) -> tuple[int, bytes]:
        """A request frame to send later, and its id (chosen here, never reused)."""
        request_id = self._next_request_id
        self._next_request_id += 1
        return request_id, encode_frame({"id": request_id, "op": op, "args": args})

    def request(self, op: str, args: object) -> int:
        """Send a request and return its id."""
        request_id, frame = self.request_frame(op, args)
        self.send(frame)
        return request_id

    def answers(self, request_ids: set[int], timeout: float = DEADLINE_SECONDS) -> dict[int, dict]:
        """The answers to `request_ids`, by id; fails on any frame that answers none of them."""
        found: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(request_ids):
            frame = self.next_frame(max(deadline - time.monotonic(), 0.001))
            assert isinstance(frame, dict) and frame.get("id") in request_ids, frame
            assert frame["id"] not in found, f"request {frame['id']} answered twice"
            found[frame["id"]] = frame
        return found

    def call(self, op: str, args: object) -> dict:
        request_id = self.request(op, args)
        return self.answers({request_id})[request_id]


def connection_error(frame: object) -> TaskraftError:
    """The error an error frame carries; fails unless `frame` is a well-formed error frame."""
    assert ErrorFrame.matches(frame), f"not an error frame: {frame!r}"
    assert isinstance(frame, dict)
    return checked_error(frame["error"])


def answer_error(answer: dict) -> TaskraftError:
    """The error an answer carries; fails unless it is an error answer."""
    assert "error" in answer and "ok" not in answer, answer
    return checked_error(answer["error"])


def checked_error(wire: object) -> TaskraftError:
    error = error_from_wire(wire)
    assert isinstance(wire, dict)
    assert wire["name"] == error.name, f"code {error.code} is {error.name}, not {wire['name']}"
    return error


def assert_ends_with_error(
    connection: RawConnection, code: int, message_start: str = "", timeout: float = DEADLINE_SECONDS
) -> TaskraftError:
    """The node sends exactly one frame, an error frame with `code`, then ends the stream."""
    frames = connection.frames_until_end(timeout)
    assert len(frames) == 1, frames
    error = connection_error(frames[0])
    assert error.code == code, (error.code, error.name, error.message)
    assert error.message.startswith(message_start), error.message
    return error


# -- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelAnswer:
    """What the protocol library answers to some bytes: the frames, and whether any request
    reached execution (then the node also sends that request's answer, not in `frames`)."""

    frames: list[object]
    executes_requests: bool
    fails: bool


def model_answer(sent: bytes, *, end_of_stream: bool) -> ModelAnswer:
    """Run a `ServerConnection` of node n1 on `sent` (then the end of the stream)."""
    connection = ServerConnection(node_id=NODE_ID)
    executes = False
    finished = False

    def drain() -> None:
        nonlocal executes, finished
        while (event := connection.next_event()) is not None:
            executes = executes or isinstance(event, Request)
            if isinstance(event, ProtocolFailure | ConnectionClosed):
                finished = True
                return

    connection.receive_data(sent)
    drain()
    if end_of_stream and not finished:
        connection.receive_data(b"")
        drain()
    decoder = FrameDecoder()
    decoder.receive_data(connection.data_to_send())
    frames: list[object] = []
    while isinstance(frame := decoder.next_frame(), Frame):
        frames.append(frame.value)
    return ModelAnswer(
        frames=frames,
        executes_requests=executes,
        fails=any(ErrorFrame.matches(frame) for frame in frames),
    )


# -- many connections at once -----------------------------------------------------------------


@dataclass
class FloodResult:
    outcomes: Counter[str]
    sockets: list[socket.socket]
    seconds: float


async def _idle_connection(
    address: tuple[str, int], sockets: list[socket.socket], timeout: float
) -> str:
    """Connect, send nothing, and say how the node ended it: `overloaded` (an overloaded error
    frame, then the end), `closed` (the end, no frame), or what else happened."""
    loop = asyncio.get_running_loop()
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.setblocking(False)
    sockets.append(connection)  # closed by the caller, at the end: the client never closes
    decoder = FrameDecoder()
    frames: list[object] = []
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(connection, address)
            while True:
                try:
                    data = await loop.sock_recv(connection, 4096)
                except ConnectionResetError:
                    break
                decoder.receive_data(data)
                while isinstance(frame := decoder.next_frame(), Frame):
                    frames.append(frame.value)
                if not data:
                    break
    except TimeoutError:
        return f"no end within {timeout:g} s after {len(frames)} frames"
    except OSError as error:
        return f"socket error {error!r}"
    except ProtocolError as error:  # a cut or malformed frame from the node
        return f"bad frame: {error!r}"
    if not frames:
        return "closed"
    if len(frames) == 1 and ErrorFrame.matches(frames[0]):
        error = ErrorFrame.from_wire(frames[0]).error
        return error.name
    return f"unexpected frames {frames!r}"


async def flood(
    address: tuple[str, int], count: int, *, concurrency: int, timeout: float
) -> FloodResult:
    """Open `count` idle connections, at most `concurrency` awaiting their end at once.

    The sockets are left open (the node closes its end) and returned for the caller to close.
    """
    sockets: list[socket.socket] = []
    outcomes: Counter[str] = Counter()
    slots = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one() -> None:
        async with slots:
            outcomes[await _idle_connection(address, sockets, timeout)] += 1

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(one())
    except BaseException:
        close_all(sockets)
        raise
    return FloodResult(outcomes, sockets, time.monotonic() - started)


def close_all(sockets: list[socket.socket]) -> None:
    for each in sockets:
        with contextlib.suppress(OSError):
            each.close()
