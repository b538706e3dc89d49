"""Hostile clients against a real `taskraft serve` process, over real TCP on 127.0.0.1.

What is proven: whatever a client sends (random bytes, first or after a valid handshake; frames
cut short before a half-close; a length prefix of zero or above the maximum; a handshake for
another protocol version, or a malformed one; unknown operations; a wrong type in any field of
any operation, a missing or an unexpected argument; frames whose request id cannot be read; an
id reused while in flight; nothing at all; answers it never reads; ten thousand connections
beyond the bound; requests beyond the per-connection bound), the abusive connection gets a
clear answer (an error frame, or an error answer to the one request, decoded with the protocol
package and checked by code, name and message) or is closed, and the node keeps serving: after
each abuse the process still runs, a well-behaved `taskraft.client.Client` completes an
enqueue, dequeue and ack round trip, the tasks enqueued before any abuse are all still there
with their payloads, and the node's log holds no Python traceback.

How: one single-node cluster per test module (`LocalCluster`, so a real process with its own
event loop, storage and ports), started with `--connections-max 100` and
`--client-handshake-timeout-ms 500`, on a random free base port so pytest-xdist workers never
collide. Abusive clients are raw blocking sockets (`RawConnection`) or, for the flood of ten
thousand connections, non-blocking sockets in one asyncio loop. Where the answer is determined
by the bytes alone, the node's frames are compared with what the sans-IO `ServerConnection`
answers to the same bytes (`model_answer`). Random inputs come from seeded `random.Random`
instances: a bounded, reproducible set of cases, each on its own connection. Every wait has a
deadline; nothing sleeps to synchronize.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import resource
import select
import struct
import time
from collections.abc import Iterator

import msgpack
import pytest
from hostile_support import (
    DEADLINE_SECONDS,
    KEPT_QUEUE,
    NODE_ID,
    FloodResult,
    NodeUnderAttack,
    RawConnection,
    StreamEnded,
    answer_error,
    assert_ends_with_error,
    check_node_serves,
    close_all,
    connection_error,
    counter_value,
    flood,
    full_log,
    model_answer,
    open_client,
    start_node,
)

from taskraft.errors import BadRequest, Overloaded, UnsupportedProtocolVersion
from taskraft.protocol import (
    FRAME_SIZE_MAX_BYTES,
    OPERATIONS,
    REQUESTS_IN_FLIGHT_MAX,
    WAIT_MS_MAX,
    Ack,
    AckMany,
    Count,
    CreateQueue,
    DeleteQueue,
    Dequeue,
    DequeueMany,
    Enqueue,
    EnqueueItem,
    EnqueueMany,
    ErrorFrame,
    Extend,
    Handshake,
    ListQueues,
    Nack,
    Operation,
    Request,
    Status,
    TaskLease,
    encode_frame,
)
from taskraft.protocol.fields import wire_type_name

pytestmark = pytest.mark.timeout(60)

CONNECTIONS_MAX = 100
HANDSHAKE_TIMEOUT_MS = 500
KEPT_TASKS = 20
RANDOM_CASES = 200
FLOOD_CONNECTIONS = 10_000
FLOOD_CONCURRENCY = 50
BAD_REQUEST = BadRequest.code
OVERLOADED = Overloaded.code
UNSUPPORTED_PROTOCOL_VERSION = UnsupportedProtocolVersion.code
HANDSHAKE = encode_frame(Handshake(client="hostile-test").to_wire())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeUnderAttack]:
    cluster = start_node(
        tmp_path_factory.mktemp("hostile"),
        [
            "--connections-max",
            str(CONNECTIONS_MAX),
            "--client-handshake-timeout-ms",
            str(HANDSHAKE_TIMEOUT_MS),
        ],
    )
    try:
        under_attack = NodeUnderAttack(cluster)
        under_attack.enqueue_kept_tasks(KEPT_TASKS)
        yield under_attack
    finally:
        statuses = cluster.stop()
    assert statuses == {NODE_ID: 0}, f"unclean stop {statuses}:\n{full_log(cluster)}"
    assert "Traceback" not in full_log(cluster), full_log(cluster)


def compare_with_model(frames: list[object], sent: bytes) -> bool:
    """Check the node's frames against the protocol library's answer; whether it failed."""
    model = model_answer(sent, end_of_stream=True)
    if model.executes_requests:
        # A request made of noise happened to be valid and ran: its answer is not modelled.
        errors = [frame for frame in frames if ErrorFrame.matches(frame)]
        assert errors == [frame for frame in model.frames if ErrorFrame.matches(frame)]
    else:
        assert frames == model.frames
    return model.fails


# -- random bytes -----------------------------------------------------------------------------

NOISE_KEYS = ["id", "op", "args", "taskraft", "client", "queue", "task"]
NOISE_OPERATIONS = ["status", "count", "enqueue", "dequeue", "ack", "nack", "extend", "purge", ""]
NOISE_ARGUMENTS = ["queue", "payload", "priority", "key", "wait_ms", "lease_ms", "task", "after"]
# No queue that exists appears here, so a request of noise that happens to run changes nothing.
NOISE_VALUES: list[object] = [
    None,
    True,
    -1,
    0,
    7,
    2**64 - 1,
    -(2**63),
    1.5,
    "",
    "x",
    "é",
    "status",
    b"\x00",
    [],
    [1, "x"],
    {},
    {"queue": "x"},
    {"id": 1, "lease": 1},
    msgpack.ExtType(1, b"x"),
]


def noise(generator: random.Random) -> bytes:
    """Random bytes of one of several shapes, to reach past the first check now and then."""
    shape = generator.randrange(6)
    body = generator.randbytes(generator.randint(1, 48))
    if shape == 0:  # anything at all: the length prefix is usually far above the maximum
        return generator.randbytes(generator.randint(1, 64))
    if shape == 1:  # one complete frame of noise
        return struct.pack(">I", len(body)) + body
    if shape == 2:  # a frame of noise cut short
        return struct.pack(">I", len(body) + generator.randint(1, 100)) + body
    if shape == 3:  # a frame of noise, then more noise
        return struct.pack(">I", len(body)) + body + generator.randbytes(generator.randint(1, 16))
    if shape == 4:  # a map of protocol words and values of random types
        value = {
            generator.choice(NOISE_KEYS): generator.choice(NOISE_VALUES)
            for _ in range(generator.randint(0, 4))
        }
        return encode_frame(value)
    # Something shaped like a request, with random arguments.
    request = {
        "id": generator.choice([0, 1, 2**64 - 1, -1, "1"]),
        "op": generator.choice(NOISE_OPERATIONS),
        "args": {
            generator.choice(NOISE_ARGUMENTS): generator.choice(NOISE_VALUES)
            for _ in range(generator.randint(0, 3))
        },
    }
    return encode_frame(request)


def noise_cases(seed: str) -> list[bytes]:
    generator = random.Random(seed)
    return [noise(generator) for _ in range(RANDOM_CASES)]


def test_random_bytes_as_the_first_bytes(node: NodeUnderAttack) -> None:
    failed = 0
    for sent in noise_cases("hostile: the first bytes"):
        with RawConnection.open(node.address) as connection:
            connection.send(sent)
            connection.half_close()
            frames = connection.frames_until_end()
        failed += compare_with_model(frames, sent)
    # Noise almost never makes a handshake: nearly every case is refused with an error frame.
    assert failed >= RANDOM_CASES * 3 // 4
    check_node_serves(node, verify_payloads=True)


def test_random_bytes_after_a_valid_handshake(node: NodeUnderAttack) -> None:
    failed = 0
    for sent in noise_cases("hostile: after the handshake"):
        with RawConnection.handshaken(node.address) as connection:
            connection.send(sent)
            connection.half_close()
            frames = connection.frames_until_end()
        # The model also answers the handshake, which `handshaken` already read.
        failed += compare_with_model([{"taskraft": 1, "node": NODE_ID}, *frames], HANDSHAKE + sent)
    assert failed >= RANDOM_CASES // 2
    check_node_serves(node, verify_payloads=True)


# -- frames cut short, frames too long --------------------------------------------------------

STATUS_REQUEST = encode_frame(Request(request_id=1, operation=Status()).to_wire())
ENQUEUE_REQUEST = encode_frame(
    Request(
        request_id=2, operation=Enqueue(queue=KEPT_QUEUE, payload=b"never", priority=0)
    ).to_wire()
)

TRUNCATED = {
    "inside the length prefix": (False, b"\x00\x00"),
    "a length prefix alone": (False, struct.pack(">I", 50)),
    "half a handshake": (False, HANDSHAKE[: len(HANDSHAKE) // 2]),
    "a maximal frame with 1 KiB of body": (
        False,
        struct.pack(">I", FRAME_SIZE_MAX_BYTES) + b"\x00" * 1024,
    ),
    "inside a request's length prefix": (True, ENQUEUE_REQUEST[:3]),
    "half an enqueue request": (True, ENQUEUE_REQUEST[: len(ENQUEUE_REQUEST) // 2]),
    "an enqueue without its last byte": (True, ENQUEUE_REQUEST[:-1]),
}


@pytest.mark.parametrize("case", sorted(TRUNCATED))
def test_truncated_frame_then_half_close(node: NodeUnderAttack, case: str) -> None:
    after_handshake, sent = TRUNCATED[case]
    with RawConnection.open(node.address) as connection:
        if after_handshake:
            connection.handshake()
        connection.send(sent)
        connection.half_close()
        error = assert_ends_with_error(connection, BAD_REQUEST, "end of stream in")
    prefix = HANDSHAKE if after_handshake else b""
    model = model_answer(prefix + sent, end_of_stream=True)
    assert connection_error(model.frames[-1]).message == error.message
    # The cut enqueue was never applied: the kept queue holds what it held.
    check_node_serves(node)


OVERSIZED = {
    "one byte above the maximum": FRAME_SIZE_MAX_BYTES + 1,
    "4 GiB": 2**32 - 1,
    "zero": 0,
}
# Were the node reading the declared body, it would take all of this without complaint.
BODY_BYTES_TRIED = 16 * 1024 * 1024


@pytest.mark.parametrize("after_handshake", [False, True], ids=["first", "after handshake"])
@pytest.mark.parametrize("case", sorted(OVERSIZED))
def test_length_prefix_out_of_bounds_is_refused_on_the_prefix_alone(
    node: NodeUnderAttack, case: str, after_handshake: bool
) -> None:
    length = OVERSIZED[case]
    prefix = struct.pack(">I", length)
    failures_before = counter_value(node, "taskraft_client_protocol_failures")
    with RawConnection.open(node.address) as connection:
        if after_handshake:
            connection.handshake()
        # Only the 4 bytes of the prefix, no body and no half-close: the node must decide now.
        connection.send(prefix)
        error = assert_ends_with_error(connection, BAD_REQUEST)
        expected = "zero-length frame" if length == 0 else f"frame length {length} exceeds"
        assert error.message.startswith(expected), error.message
        model = model_answer((HANDSHAKE if after_handshake else b"") + prefix, end_of_stream=False)
        assert connection_error(model.frames[-1]).message == error.message
        # The node has closed its end and reads nothing more: sending the body fails long
        # before the 16 MiB are through (a reset answers the first bytes that arrive).
        sent = 0
        chunk = b"\x00" * 65_536
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while sent < BODY_BYTES_TRIED:
                connection.socket.settimeout(DEADLINE_SECONDS)
                sent += connection.socket.send(chunk)
    # The bound bit, and the metrics say so.
    assert counter_value(node, "taskraft_client_protocol_failures") == failures_before + 1
    check_node_serves(node)


# -- handshakes -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, -1, 2**64 - 1])
def test_unsupported_protocol_version(node: NodeUnderAttack, version: int) -> None:
    # A request pipelined behind the refused handshake must never be read.
    sent = encode_frame({"taskraft": version, "client": "from-the-future"}) + STATUS_REQUEST
    with RawConnection.open(node.address) as connection:
        connection.send(sent)
        error = assert_ends_with_error(connection, UNSUPPORTED_PROTOCOL_VERSION)
    assert error.name == "unsupported_protocol_version"
    assert f"protocol version {version} is not supported" in error.message
    assert error.message.endswith("this server speaks 1"), error.message
    model = model_answer(sent, end_of_stream=False)
    assert connection_error(model.frames[-1]).message == error.message
    check_node_serves(node)


MALFORMED_HANDSHAKES: dict[str, object] = {
    "not a map": [1, 2],
    "version missing": {"client": "x"},
    "version a str": {"taskraft": "1"},
    "version a bool": {"taskraft": True},
    "version a float": {"taskraft": 1.0},
    "an unknown field": {"taskraft": 1, "colour": "blue"},
    "client name too long": {"taskraft": 1, "client": "x" * 129},
    "a request instead": {"id": 1, "op": "status", "args": {}},
}


@pytest.mark.parametrize("case", sorted(MALFORMED_HANDSHAKES))
def test_malformed_handshake_is_a_bad_request(node: NodeUnderAttack, case: str) -> None:
    sent = encode_frame(MALFORMED_HANDSHAKES[case])
    with RawConnection.open(node.address) as connection:
        connection.send(sent)
        error = assert_ends_with_error(connection, BAD_REQUEST)
    model = model_answer(sent, end_of_stream=False)
    assert connection_error(model.frames[-1]).message == error.message
    check_node_serves(node)


SILENCES = {
    "nothing at all": b"",
    "two bytes of a length prefix": HANDSHAKE[:2],
    "a handshake without its last byte": HANDSHAKE[:-1],
}


def test_silent_clients_are_closed_after_the_handshake_timeout(node: NodeUnderAttack) -> None:
    timeout_s = HANDSHAKE_TIMEOUT_MS / 1000
    # Opened first, so that its handshake deadline (were it still armed) would pass first.
    with RawConnection.handshaken(node.address) as patient:
        silent: dict[str, tuple[RawConnection, float]] = {}
        try:
            for case, sent in SILENCES.items():
                connection = RawConnection.open(node.address)
                silent[case] = (connection, time.monotonic())
                if sent:
                    connection.send(sent)
            for case, (connection, opened) in silent.items():
                error = assert_ends_with_error(
                    connection, BAD_REQUEST, f"no handshake within {timeout_s:g} s"
                )
                elapsed = time.monotonic() - opened
                # Never before the timeout (a little slack for the timer's resolution).
                assert elapsed >= timeout_s * 0.9, (case, elapsed, error.message)
        finally:
            for connection, _ in silent.values():
                connection.close()
        # The connection that completed its handshake is still served.
        answer = patient.call("status", {})
        assert answer["ok"]["node"] == NODE_ID, answer
    check_node_serves(node)


# -- requests ---------------------------------------------------------------------------------


def test_unknown_operation_is_a_bad_request_and_the_connection_goes_on(
    node: NodeUnderAttack,
) -> None:
    with RawConnection.handshaken(node.address) as connection:
        for op in ["purge", "", "STATUS", "x" * 100_000]:
            error = answer_error(connection.call(op, {}))
            assert error.code == BAD_REQUEST
            assert error.message.startswith("op: unknown operation "), error.message
            assert "known: create_queue" in error.message
            assert len(error.message.encode()) <= 4096
        answer = connection.call("status", {})
        assert answer["ok"]["node"] == NODE_ID and answer["ok"]["role"] == "leader", answer
        answer = connection.call("count", {"queue": KEPT_QUEUE})
        assert answer["ok"] == {"ready": KEPT_TASKS, "delayed": 0, "leased": 0}, answer
    check_node_serves(node)


TASK = TaskLease(task_id=41, lease=7)
# One example of every operation with every argument set, all valid for the protocol (no
# queue needs to exist: a request refused for its arguments never reaches the queue).
FULL_OPERATIONS: list[Operation] = [
    CreateQueue(
        queue="hostile-never-created",
        kind="buckets",
        max_size=10,
        max_payload_bytes=100,
        priority_range=(-10, 10),
        lease_ms_default=1_000,
        max_deliveries=3,
        dead_letter_queue="hostile-never-created.dead",
    ),
    DeleteQueue(queue="hostile-never-created"),
    ListQueues(after="a", limit=10),
    Count(queue="hostile-never-created"),
    Enqueue(queue="hostile-never-created", payload=b"x", priority=1, key="k", delay_ms=5),
    Dequeue(queue="hostile-never-created", wait_ms=0, lease_ms=1_000),
    Ack(task=TASK),
    Nack(task=TASK, delay_ms=1),
    Extend(task=TASK, lease_ms=1),
    EnqueueMany(
        queue="hostile-never-created",
        tasks=(EnqueueItem(payload=b"x", priority=1, key="k", delay_ms=5),),
    ),
    DequeueMany(queue="hostile-never-created", max_tasks=2, wait_ms=0, lease_ms=1_000),
    AckMany(tasks=(TASK,)),
    Status(),
]
WRONG_VALUES: dict[str, object] = {
    "nil": None,
    "bool": True,
    "int": 1,
    "float": 1.5,
    "str": "x",
    "bin": b"x",
    "array": [1, 2],
    "map": {"a": 1},
}


def required_arguments(operation: type[Operation]) -> set[str]:
    return {
        each.name
        for each in dataclasses.fields(operation)
        if each.default is dataclasses.MISSING and each.default_factory is dataclasses.MISSING
    }


def replaced(value: object, route: list[str | int], new: object) -> object:
    """A copy of `value` with the item at `route` (keys and indexes) replaced by `new`."""
    if not route:
        return new
    head, *rest = route
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    assert isinstance(value, list) and isinstance(head, int)
    return [
        replaced(item, rest, new) if index == head else item for index, item in enumerate(value)
    ]


def wrong_type_cases() -> list[tuple[str, dict[str, object], str, str]]:
    """(op, args, path, expected type) with one field, or one item of a field, of a wrong type.

    Generated from the schema: the fields of every operation's class (every one set in
    FULL_OPERATIONS), the wire type of each from a valid value, required or not from its
    default, and the same again for the fields of a nested map and the items of an array.
    """
    assert {type(operation) for operation in FULL_OPERATIONS} == set(OPERATIONS.values())
    cases: list[tuple[str, dict[str, object], str, str]] = []
    for operation in FULL_OPERATIONS:
        args = operation.to_args()
        fields = {each.name for each in dataclasses.fields(operation)}
        assert set(args) == fields, f"{operation.name}: set every argument in FULL_OPERATIONS"
        required = required_arguments(type(operation))
        places: list[tuple[list[str | int], str, object, bool]] = []
        for name, valid in args.items():
            places.append(([name], f"args.{name}", valid, name in required))
            if isinstance(valid, dict):
                places += [([name, key], f"args.{name}.{key}", v, True) for key, v in valid.items()]
            if isinstance(valid, list):
                places += [([name, i], f"args.{name}[{i}]", v, True) for i, v in enumerate(valid)]
        for route, path, valid, is_required in places:
            expected = wire_type_name(valid)
            for type_name, wrong in WRONG_VALUES.items():
                if type_name == expected or (type_name == "nil" and not is_required):
                    continue
                cases.append((operation.name, replaced(args, route, wrong), path, expected))
    return cases


def test_wrong_types_in_every_field_of_every_operation(node: NodeUnderAttack) -> None:
    cases = wrong_type_cases()
    for operation in FULL_OPERATIONS:  # every case changes one field of a valid request
        Request.from_wire({"id": 1, "op": operation.name, "args": operation.to_args()})
    with RawConnection.handshaken(node.address) as connection:
        frames: dict[int, tuple[str, str]] = {}
        data = bytearray()
        for op, args, path, expected in cases:
            request_id, frame = connection.request_frame(op, args)
            frames[request_id] = (path, expected)
            data += frame
        # Missing and unexpected arguments too, for every operation.
        for operation in FULL_OPERATIONS:
            args = operation.to_args()
            for name in sorted(required_arguments(type(operation))):
                missing = {key: value for key, value in args.items() if key != name}
                request_id, frame = connection.request_frame(operation.name, missing)
                frames[request_id] = (f"args.{name}", "missing")
                data += frame
            request_id, frame = connection.request_frame(operation.name, {**args, "colour": 1})
            frames[request_id] = ("args.colour", "unexpected field")
            data += frame
        connection.send(bytes(data))  # all pipelined: none is ever in flight
        answers = connection.answers(set(frames))
        for request_id, (path, expected) in frames.items():
            error = answer_error(answers[request_id])
            assert error.code == BAD_REQUEST, (path, error.name, error.message)
            if expected in ("missing", "unexpected field"):
                assert error.message == f"{path}: {expected}"
            else:
                assert error.message.startswith(f"{path}: expected {expected}, got "), (
                    path,
                    error.message,
                )
        # The connection is still usable.
        answer = connection.call("count", {"queue": KEPT_QUEUE})
        assert answer["ok"] == {"ready": KEPT_TASKS, "delayed": 0, "leased": 0}, answer
    assert len(frames) > 200
    check_node_serves(node)


UNANSWERABLE = {
    "not a map": encode_frame([1, "status", {}]),
    "id missing": encode_frame({"op": "status", "args": {}}),
    "id negative": encode_frame({"id": -1, "op": "status", "args": {}}),
    "id a str": encode_frame({"id": "1", "op": "status", "args": {}}),
    "id a float": encode_frame({"id": 1.0, "op": "status", "args": {}}),
    "id a bool": encode_frame({"id": True, "op": "status", "args": {}}),
    "an extension type": encode_frame({"id": 1, "op": "status", "args": msgpack.ExtType(5, b"")}),
    "a map key twice": b"\x00\x00\x00\x07\x82\xa1a\x01\xa1a\x02",
    "nested too deep": encode_frame({"id": 1, "op": "status", "args": [[[[[[[[[1]]]]]]]]]}),
    "an array of 1025 items": encode_frame({"id": 1, "op": "status", "args": list(range(1025))}),
    "trailing bytes": b"\x00\x00\x00\x02\xc0\xc0",
}


@pytest.mark.parametrize("case", sorted(UNANSWERABLE))
def test_request_that_cannot_be_answered_ends_the_connection(
    node: NodeUnderAttack, case: str
) -> None:
    sent = UNANSWERABLE[case]
    with RawConnection.handshaken(node.address) as connection:
        connection.send(sent)
        error = assert_ends_with_error(connection, BAD_REQUEST)
    model = model_answer(HANDSHAKE + sent, end_of_stream=False)
    assert model.fails
    assert connection_error(model.frames[-1]).message == error.message
    check_node_serves(node)


@pytest.mark.parametrize("after_handshake", [False, True], ids=["as handshake", "as request"])
def test_a_nil_frame_is_refused(node: NodeUnderAttack, after_handshake: bool) -> None:
    # A nil is not a map: per docs/protocol.md an error frame (bad_request), then the close.
    # The half-close makes the node read on, so this ends at once whatever the node does.
    # What follows the nil is valid: a handshake (if none came before) and a status request.
    before, after = (HANDSHAKE, b"") if after_handshake else (b"", HANDSHAKE)
    with RawConnection.open(node.address) as connection:
        connection.send(before + encode_frame(None) + after + STATUS_REQUEST)
        connection.half_close()
        frames = connection.frames_until_end()
    try:
        check_node_serves(node)
    finally:
        skipped = 1 if after_handshake else 0  # the answer to the valid handshake
        assert len(frames) == skipped + 1, frames
        assert connection_error(frames[-1]).code == BAD_REQUEST


def test_reusing_an_id_in_flight_ends_the_connection(node: NodeUnderAttack) -> None:
    waiting = {"id": 7, "op": "dequeue", "args": {"queue": "hostile-empty", "wait_ms": 30_000}}
    with open_client(node.cluster) as client:
        client.create_queue("hostile-empty")
    with RawConnection.handshaken(node.address) as connection:
        connection.send(encode_frame(waiting) + encode_frame(waiting))
        frames = connection.frames_until_end()
    # The waiting dequeue is cancelled with the connection: no answer, one error frame.
    assert len(frames) == 1, frames
    error = connection_error(frames[0])
    assert error.code == BAD_REQUEST
    assert error.message == "id: request 7 is already in flight on this connection"
    with open_client(node.cluster) as client:
        client.delete_queue("hostile-empty")
    check_node_serves(node)


def test_requests_beyond_the_in_flight_bound_are_answered_overloaded(
    node: NodeUnderAttack,
) -> None:
    queue = "hostile-in-flight"
    excess = 100
    with open_client(node.cluster) as client:
        client.create_queue(queue)
    with RawConnection.handshaken(node.address) as connection:
        # Dequeues that wait the longest allowed on an empty queue: all stay in flight.
        waiting: set[int] = set()
        beyond: set[int] = set()
        data = bytearray()
        for index in range(REQUESTS_IN_FLIGHT_MAX + excess):
            args = {"queue": queue, "wait_ms": WAIT_MS_MAX, "lease_ms": 60_000}
            request_id, frame = connection.request_frame("dequeue", args)
            (waiting if index < REQUESTS_IN_FLIGHT_MAX else beyond).add(request_id)
            data += frame
        connection.send(bytes(data))
        for answer in connection.answers(beyond).values():
            error = answer_error(answer)
            assert error.code == OVERLOADED, (error.name, error.message)
            assert error.name == "overloaded"
        # One task for each waiting dequeue, pipelined on another connection.
        with RawConnection.handshaken(node.address) as producer:
            enqueues: dict[int, bytes] = {}
            data = bytearray()
            for index in range(REQUESTS_IN_FLIGHT_MAX):
                payload = f"in-flight-{index}".encode()
                args = {"queue": queue, "payload": payload, "priority": 0}
                request_id, frame = producer.request_frame("enqueue", args)
                enqueues[request_id] = payload
                data += frame
            producer.send(bytes(data))
            enqueued = producer.answers(set(enqueues))
        assert all("ok" in answer for answer in enqueued.values()), enqueued
        # Every waiting dequeue is answered, each with a task of its own.
        delivered = connection.answers(waiting)
        tasks = [answer["ok"] for answer in delivered.values()]
        assert all(task is not None for task in tasks), "a dequeue woke without a task"
        assert sorted(task["payload"] for task in tasks) == sorted(enqueues.values())
        assert len({task["id"] for task in tasks}) == REQUESTS_IN_FLIGHT_MAX
        # Acknowledge them all: exactly the bound in flight, so none is refused.
        data = bytearray()
        acks: set[int] = set()
        for task in tasks:
            args = {"task": {"id": task["id"], "lease": task["lease"]}}
            request_id, frame = connection.request_frame("ack", args)
            acks.add(request_id)
            data += frame
        connection.send(bytes(data))
        for answer in connection.answers(acks).values():
            assert answer == {"id": answer["id"], "ok": None}, answer
        answer = connection.call("count", {"queue": queue})
        assert answer["ok"] == {"ready": 0, "delayed": 0, "leased": 0}, answer
    with open_client(node.cluster) as client:
        client.delete_queue(queue)
    check_node_serves(node, verify_payloads=True)


def test_a_client_that_never_reads_its_answers(node: NodeUnderAttack) -> None:
    """Pipelined requests whose answers are never read: the node stops reading the connection
    once its answers back up (bounded memory) and goes on serving everyone else."""
    never_read_bytes = 64 * 1024 * 1024
    with RawConnection.handshaken(node.address) as hog:
        hog.socket.setblocking(False)
        sent = 0
        pending = b""
        # Send until the connection stays full for two seconds: the node stopped reading.
        while sent < never_read_bytes:
            if not pending:
                # Every id is new: none is answered (as far as this client knows) yet.
                pending = b"".join(hog.request_frame("status", {})[1] for _ in range(1_000))
            try:
                written = hog.socket.send(pending)
            except BlockingIOError:
                _, writable, _ = select.select([], [hog.socket], [], 2.0)
                if not writable:
                    break
                continue
            sent += written
            pending = pending[written:]
        assert sent < never_read_bytes, "the node read 64 MiB of requests nobody reads answers to"
        check_node_serves(node)
    # Closed with answers unread (a reset): the node forgets the connection and its requests.
    check_node_serves(node)


# -- connections beyond the bound -------------------------------------------------------------


@contextlib.contextmanager
def open_files_limit(needed: int) -> Iterator[None]:
    """Raise this process's soft limit on open files to `needed` (skip if the hard one is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit on open files is {hard}, below the {needed} needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def try_handshake(node: NodeUnderAttack) -> RawConnection | None:
    """A handshaken connection, or None when the node refuses it as `overloaded`."""
    connection = RawConnection.open(node.address)
    connection.send(HANDSHAKE)
    try:
        answer = connection.next_frame()
    except StreamEnded:
        connection.close()
        raise
    if answer == {"taskraft": 1, "node": NODE_ID}:
        return connection
    connection.close()
    assert connection_error(answer).code == OVERLOADED, answer
    return None


def fill_every_slot(node: NodeUnderAttack) -> list[RawConnection]:
    """CONNECTIONS_MAX idle handshaken connections; retried while the node still counts
    connections closed by earlier tests (it learns of a close a moment after it happens)."""
    connections: list[RawConnection] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while len(connections) < CONNECTIONS_MAX:
            connection = try_handshake(node)
            if connection is not None:
                connections.append(connection)
                continue
            assert time.monotonic() < deadline, f"only {len(connections)} connections admitted"
            time.sleep(0.01)
        # The bound is exact: one more is refused.
        assert try_handshake(node) is None, "a connection beyond the bound was admitted"
    except BaseException:
        for connection in connections:
            connection.close()
        raise
    return connections


@pytest.mark.timeout(120)
def test_ten_thousand_idle_connections_beyond_the_bound(node: NodeUnderAttack) -> None:
    with open_files_limit(CONNECTIONS_MAX + FLOOD_CONNECTIONS + 1_000):
        idle = fill_every_slot(node)
        result: FloodResult | None = None
        try:
            result = asyncio.run(
                flood(
                    node.address,
                    FLOOD_CONNECTIONS,
                    concurrency=FLOOD_CONCURRENCY,
                    timeout=DEADLINE_SECONDS,
                )
            )
            # Each one refused with an `overloaded` error frame or closed; never admitted,
            # which would have shown as a `bad_request` at the handshake timeout.
            assert set(result.outcomes) <= {"overloaded", "closed"}, result.outcomes
            assert sum(result.outcomes.values()) == FLOOD_CONNECTIONS
            # Meanwhile, with all ten thousand still open on this side, free ten slots: a
            # well-behaved client gets one and works.
            for connection in idle[:10]:
                connection.close()
            check_node_serves(node)
            # The idle connections that kept their slot were served all along.
            for connection in idle[10:]:
                answer = connection.call("status", {})
                assert answer["ok"]["node"] == NODE_ID, answer
        finally:
            if result is not None:
                close_all(result.sockets)
            for connection in idle:
                connection.close()
        # Every slot comes back once everything is closed.
        for connection in fill_every_slot(node):
            connection.close()
    check_node_serves(node, verify_payloads=True)
