"""The message schema: round trips, and every field of every operation checked for type, range."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.strategies import errors, operations, results
from taskraft.errors import (
    BadRequest,
    InvalidArgument,
    InvalidMaxPayloadSize,
    InvalidMaxSize,
    InvalidPriorityRange,
    InvalidQueueName,
    NotLeader,
    PayloadTooLarge,
    PriorityOutOfRange,
    QueueFull,
    TaskraftError,
    UnknownQueueKind,
    UnsupportedProtocolVersion,
)
from taskraft.protocol import (
    OPERATIONS,
    Ack,
    AckedMany,
    AckMany,
    Count,
    CreateQueue,
    DeleteQueue,
    DeliveredTask,
    DeliveredTasks,
    Dequeue,
    DequeueMany,
    Enqueue,
    Enqueued,
    EnqueuedMany,
    EnqueueItem,
    EnqueueMany,
    ErrorFrame,
    Extend,
    Frame,
    FrameDecoder,
    Handshake,
    HandshakeAccepted,
    ListQueues,
    LocalProtocolError,
    Nack,
    NodeStatus,
    Operation,
    QueueCounts,
    QueueDescription,
    QueuePage,
    QueuePolicies,
    Request,
    Response,
    Result,
    Status,
    TaskLease,
    encode_frame,
    error_from_wire,
    error_to_wire,
)
from taskraft.protocol.fields import FieldReader
from taskraft.protocol.limits import (
    BATCH_PAYLOAD_BYTES_MAX,
    BATCH_TASKS_MAX,
    DELAY_MS_MAX,
    ERROR_MESSAGE_MAX_BYTES,
    LEASE_MS_MAX,
    PAYLOAD_SIZE_MAX_BYTES,
    WAIT_MS_MAX,
)


def over_the_wire(value: object) -> object:
    """`value` after framing, msgpack and decoding, as a peer would receive it."""
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(value))
    frame = decoder.next_frame()
    assert isinstance(frame, Frame)
    return frame.value


TASK = TaskLease(task_id=41, lease=7)
OTHER_TASK = TaskLease(task_id=2**64 - 1, lease=0)
ITEMS = (
    EnqueueItem(payload=b"\x00first", priority=-3, key="order-18", delay_ms=500),
    EnqueueItem(payload=b"", priority=2**63 - 1),
)

FULL_OPERATIONS: list[Operation] = [
    CreateQueue(
        queue="jobs",
        kind="buckets",
        max_size=10_000,
        max_payload_bytes=65_536,
        priority_range=(-10, 10),
        lease_ms_default=30_000,
        max_deliveries=5,
        dead_letter_queue="jobs.dead",
    ),
    DeleteQueue(queue="jobs"),
    ListQueues(after="jobs", limit=10),
    Count(queue="jobs"),
    Enqueue(queue="jobs", payload=b"\x00payload", priority=-3, key="order-17", delay_ms=500),
    Dequeue(queue="jobs", wait_ms=WAIT_MS_MAX, lease_ms=60_000),
    Ack(task=TASK),
    Nack(task=TASK, delay_ms=1_000),
    Extend(task=TASK, lease_ms=1),
    EnqueueMany(queue="jobs", tasks=ITEMS),
    DequeueMany(queue="jobs", max_tasks=BATCH_TASKS_MAX, wait_ms=WAIT_MS_MAX, lease_ms=60_000),
    AckMany(tasks=(TASK, OTHER_TASK)),
    Status(),
]

MINIMAL_OPERATIONS: list[Operation] = [
    CreateQueue(queue="jobs"),
    ListQueues(),
    Enqueue(queue="jobs", payload=b"", priority=0),
    Dequeue(queue="jobs"),
    Dequeue(queue="jobs", lease_ms=0),
    Nack(task=TASK),
    EnqueueMany(queue="jobs", tasks=(EnqueueItem(payload=b"", priority=0),)),
    DequeueMany(queue="jobs", max_tasks=1),
    DequeueMany(queue="jobs", max_tasks=1, lease_ms=0),
    AckMany(tasks=(TASK,)),
]


def test_every_operation_has_a_full_example() -> None:
    assert {operation.name for operation in FULL_OPERATIONS} == set(OPERATIONS)


@pytest.mark.parametrize("operation", FULL_OPERATIONS + MINIMAL_OPERATIONS, ids=repr)
def test_request_round_trip(operation: Operation) -> None:
    request = Request(request_id=2**64 - 1, operation=operation)
    assert Request.from_wire(over_the_wire(request.to_wire())) == request


def test_optional_arguments_left_unset_are_omitted_from_the_wire() -> None:
    assert CreateQueue(queue="q").to_args() == {"queue": "q"}
    assert Dequeue(queue="q").to_args() == {"queue": "q", "wait_ms": 0}
    # Absent and nil both mean "the default".
    wire = {"id": 1, "op": "dequeue", "args": {"queue": "q", "wait_ms": None, "lease_ms": None}}
    assert Request.from_wire(wire).operation == Dequeue(queue="q")
    # A batch's tasks leave out their unset key and delay.
    assert [item.to_wire() for item in ITEMS] == [
        {"payload": b"\x00first", "priority": -3, "key": "order-18", "delay_ms": 500},
        {"payload": b"", "priority": 2**63 - 1},
    ]
    task = {"payload": b"", "priority": 0, "key": None, "delay_ms": None}
    wire = {"id": 1, "op": "enqueue_many", "args": {"queue": "q", "tasks": [task]}}
    assert Request.from_wire(wire).operation == EnqueueMany(
        queue="q", tasks=(EnqueueItem(payload=b"", priority=0),)
    )


HEAP = QueuePolicies(
    kind="heap",
    max_size=None,
    max_payload_bytes=None,
    priority_range=None,
    lease_ms_default=30_000,
    max_deliveries=None,
    dead_letter_queue=None,
)
BUCKETS = QueuePolicies(
    kind="buckets",
    max_size=10,
    max_payload_bytes=2**63 - 1,
    priority_range=(-(2**63), -(2**63) + 5),
    lease_ms_default=0,
    max_deliveries=3,
    dead_letter_queue="dead",
)
EMPTY = QueueCounts(ready=0, delayed=0, leased=0)
DESCRIPTION = QueueDescription(name="jobs", policies=BUCKETS, counts=EMPTY)

DELIVERED = DeliveredTask(
    task_id=8,
    lease=3,
    queue="q",
    priority=-(2**63),
    payload=b"p",
    deliveries=3,
    lease_ms=30_000,
)

RESULT_EXAMPLES: list[tuple[Operation, Result | None]] = [
    (CreateQueue(queue="jobs"), DESCRIPTION),
    (DeleteQueue(queue="q"), None),
    (
        ListQueues(),
        QueuePage(
            queues=(
                QueueDescription(name="default", policies=HEAP, counts=EMPTY),
                DESCRIPTION,
            ),
            more=True,
        ),
    ),
    (ListQueues(), QueuePage(queues=(), more=False)),
    (Count(queue="q"), QueueCounts(ready=3, delayed=0, leased=2**64 - 1)),
    (Enqueue(queue="q", payload=b"", priority=0), Enqueued(task_id=9, duplicate=True)),
    (Dequeue(queue="q"), DELIVERED),
    (
        Dequeue(queue="q", lease_ms=0),
        DeliveredTask(
            task_id=8, lease=None, queue="q", priority=0, payload=b"", deliveries=1, lease_ms=None
        ),
    ),
    (Dequeue(queue="q"), None),
    (Ack(task=TASK), None),
    (Nack(task=TASK), None),
    (Extend(task=TASK, lease_ms=1), None),
    (
        EnqueueMany(queue="q", tasks=ITEMS),
        EnqueuedMany(task_ids=(9, 2**64 - 1), duplicates=(False, True)),
    ),
    (
        DequeueMany(queue="q", max_tasks=3),
        DeliveredTasks(
            tasks=(
                DELIVERED,
                DeliveredTask(
                    task_id=9,
                    lease=None,
                    queue="q",
                    priority=0,
                    payload=b"",
                    deliveries=1,
                    lease_ms=None,
                ),
            )
        ),
    ),
    (DequeueMany(queue="q", max_tasks=1, wait_ms=10), DeliveredTasks(tasks=())),
    (AckMany(tasks=(TASK, OTHER_TASK)), AckedMany(errors=(None, 12))),
    (AckMany(tasks=(TASK,)), AckedMany(errors=(None,))),
    (
        Status(),
        NodeStatus(
            node="n1",
            role="follower",
            term=4,
            leader_id="n2",
            leader_address="10.0.0.2:7000",
            commit_index=10,
            applied_index=9,
        ),
    ),
]


@pytest.mark.parametrize(("operation", "result"), RESULT_EXAMPLES, ids=repr)
def test_response_round_trip(operation: Operation, result: Result | None) -> None:
    response = Response(request_id=5, result=result)
    assert Response.from_wire(over_the_wire(response.to_wire(operation)), operation) == response


def test_a_delivered_task_names_its_lease() -> None:
    assert DELIVERED.task == TaskLease(task_id=8, lease=3)
    unleased = DeliveredTask(
        task_id=8, lease=None, queue="q", priority=0, payload=b"", deliveries=1, lease_ms=None
    )
    assert unleased.task is None


def test_answers_ignore_fields_a_newer_server_adds() -> None:
    wire = {"id": 1, "ok": {"task_id": 3, "duplicate": False, "shard": 2}, "trace": "x"}
    response = Response.from_wire(wire, Enqueue(queue="q", payload=b"", priority=0))
    assert response.result == Enqueued(task_id=3, duplicate=False)


def test_a_result_must_be_what_the_operation_answers() -> None:
    with pytest.raises(LocalProtocolError, match="count answers QueueCounts, not Enqueued"):
        Response(1, result=Enqueued(task_id=1, duplicate=False)).to_wire(Count(queue="q"))
    with pytest.raises(LocalProtocolError, match="ack answers nil"):
        Response(1, result=QueuePage(queues=(), more=False)).to_wire(Ack(task=TASK))
    with pytest.raises(LocalProtocolError, match="count answers QueueCounts, not NoneType"):
        Response(1).to_wire(Count(queue="q"))


@pytest.mark.parametrize(
    ("operation", "ok", "field"),
    [
        (Count(queue="q"), {"ready": -1, "delayed": 0, "leased": 0}, "ok.ready"),
        (Count(queue="q"), {"ready": 1, "delayed": 0}, "ok.leased"),
        (Count(queue="q"), None, "ok"),
        (
            Enqueue(queue="q", payload=b"", priority=0),
            {"task_id": 1, "duplicate": 0},
            "ok.duplicate",
        ),
        (Ack(task=TASK), True, "ok"),
        (ListQueues(), {"queues": [DESCRIPTION.to_wire(), "a"], "more": False}, "ok.queues[1]"),
        (
            ListQueues(),
            {"queues": [{**DESCRIPTION.to_wire(), "counts": {}}], "more": False},
            "ok.queues[0].counts.ready",
        ),
        (
            CreateQueue(queue="q"),
            {**DESCRIPTION.to_wire(), "policies": {**BUCKETS.to_wire(), "priority_range": [2, 1]}},
            "ok.policies.priority_range",
        ),
        (
            Dequeue(queue="q"),
            {**DELIVERED.to_wire(), "deliveries": 0},
            "ok.deliveries",
        ),
        (Status(), {"node": "n"}, "ok.role"),
        (EnqueueMany(queue="q", tasks=ITEMS), None, "ok"),
        (
            EnqueueMany(queue="q", tasks=ITEMS),
            {"task_ids": [1], "duplicates": [False]},
            "ok.task_ids",
        ),
        (
            EnqueueMany(queue="q", tasks=ITEMS),
            {"task_ids": [1, 2], "duplicates": [False]},
            "ok.duplicates",
        ),
        (
            EnqueueMany(queue="q", tasks=ITEMS),
            {"task_ids": [1, -2], "duplicates": [False, False]},
            "ok.task_ids[1]",
        ),
        (
            EnqueueMany(queue="q", tasks=ITEMS),
            {"task_ids": [1, 2], "duplicates": [False, 1]},
            "ok.duplicates[1]",
        ),
        (EnqueueMany(queue="q", tasks=ITEMS), {"duplicates": []}, "ok.task_ids"),
        (DequeueMany(queue="q", max_tasks=2), None, "ok"),
        (DequeueMany(queue="q", max_tasks=2), {"tasks": [DELIVERED.to_wire()] * 3}, "ok.tasks"),
        (DequeueMany(queue="q", max_tasks=2), {"tasks": {}}, "ok.tasks"),
        (
            DequeueMany(queue="q", max_tasks=2),
            {"tasks": [DELIVERED.to_wire(), {**DELIVERED.to_wire(), "payload": "p"}]},
            "ok.tasks[1].payload",
        ),
        (AckMany(tasks=(TASK, TASK)), {"errors": [None]}, "ok.errors"),
        (AckMany(tasks=(TASK, TASK)), {"errors": [None, "unknown_lease"]}, "ok.errors[1]"),
        (AckMany(tasks=(TASK,)), {"errors": [1.5]}, "ok.errors[0]"),
    ],
)
def test_malformed_answers_name_the_field(operation: Operation, ok: object, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        Response.from_wire({"id": 1, "ok": ok}, operation)
    assert caught.value.message.startswith(f"{field}:")


def test_a_response_is_built_with_a_result_or_an_error() -> None:
    with pytest.raises(LocalProtocolError, match="not both"):
        Response(1, result=EMPTY, error=QueueFull("full"))


def test_a_response_holds_exactly_one_of_ok_and_error() -> None:
    operation = Ack(task=TASK)
    error = error_to_wire(QueueFull("full"))
    for wire in ({"id": 1}, {"id": 1, "ok": None, "error": error}):
        with pytest.raises(BadRequest, match="exactly one of 'ok' and 'error'"):
            Response.from_wire(wire, operation)


@settings(max_examples=150, deadline=None)
@given(error=errors())
def test_error_round_trip(error: TaskraftError) -> None:
    wire = over_the_wire(Response(request_id=3, error=error).to_wire())
    received = Response.from_wire(wire, Status()).error
    assert type(received) is type(error)
    assert received is not None
    assert (received.code, received.name, received.message) == (
        error.code,
        error.name,
        error.message,
    )
    assert isinstance(wire, dict) and isinstance(wire["error"], dict)
    if isinstance(error, NotLeader):
        assert isinstance(received, NotLeader)
        assert (received.leader_id, received.leader_address) == (
            error.leader_id,
            error.leader_address,
        )
    else:
        assert "leader_id" not in wire["error"]


def test_not_leader_carries_the_leader() -> None:
    error = NotLeader("not the leader", leader_id="n3", leader_address="node-3.taskraft:7000")
    assert error_to_wire(error) == {
        "code": 13,
        "name": "not_leader",
        "message": "not the leader",
        "leader_id": "n3",
        "leader_address": "node-3.taskraft:7000",
    }
    assert error_to_wire(NotLeader("no leader known")) == {
        "code": 13,
        "name": "not_leader",
        "message": "no leader known",
    }


def test_unknown_error_codes_stay_readable() -> None:
    error = error_from_wire({"code": 99, "name": "from_the_future", "message": "hm"})
    assert type(error) is TaskraftError
    assert "99" in error.message and "hm" in error.message


def test_long_error_messages_are_cut() -> None:
    wire = error_to_wire(BadRequest("é" * ERROR_MESSAGE_MAX_BYTES))
    message = wire["message"]
    assert isinstance(message, str)
    assert len(message.encode()) <= ERROR_MESSAGE_MAX_BYTES


@settings(max_examples=300, deadline=None)
@given(operation=operations, request_id=st.integers(0, 2**64 - 1))
def test_fuzz_request_round_trip(operation: Operation, request_id: int) -> None:
    request = Request(request_id=request_id, operation=operation)
    assert Request.from_wire(over_the_wire(request.to_wire())) == request


def operation_answering(result: Result) -> Operation:
    # A batch's answer matches the batch: as many ids or errors as tasks, tasks up to max_tasks.
    if isinstance(result, EnqueuedMany):
        item = EnqueueItem(payload=b"", priority=0)
        return EnqueueMany(queue="q", tasks=(item,) * len(result.task_ids))
    if isinstance(result, AckedMany):
        return AckMany(tasks=(TASK,) * len(result.errors))
    if isinstance(result, DeliveredTasks):
        return DequeueMany(queue="q", max_tasks=max(len(result.tasks), 1))
    for operation in FULL_OPERATIONS:
        if operation.result_type is type(result):
            return operation
    raise AssertionError(result)


@settings(max_examples=200, deadline=None)
@given(result=results, request_id=st.integers(0, 2**64 - 1))
def test_fuzz_response_round_trip(result: Result, request_id: int) -> None:
    operation = operation_answering(result)
    response = Response(request_id=request_id, result=result)
    assert Response.from_wire(over_the_wire(response.to_wire(operation)), operation) == response


# ---------------------------------------------------------------------------------------------
# Handshake and connection-level messages.
# ---------------------------------------------------------------------------------------------


def test_handshake_round_trips() -> None:
    for handshake in (Handshake(), Handshake(version=1, client="billing-worker/2.1")):
        assert Handshake.from_wire(over_the_wire(handshake.to_wire())) == handshake
    accepted = HandshakeAccepted(version=1, node="n1")
    assert HandshakeAccepted.from_wire(over_the_wire(accepted.to_wire())) == accepted
    assert Handshake().to_wire() == {"taskraft": 1}


@pytest.mark.parametrize("version", [0, 2, -1, 2**64 - 1])
def test_unknown_protocol_version(version: int) -> None:
    with pytest.raises(UnsupportedProtocolVersion, match=f"version {version} is not supported"):
        Handshake.from_wire({"taskraft": version, "client": "c"})


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ({}, "taskraft"),
        ({"id": 1, "op": "status", "args": {}}, "taskraft"),
        ({"taskraft": "1"}, "taskraft"),
        ({"taskraft": True}, "taskraft"),
        ({"taskraft": 1.0}, "taskraft"),
        ({"taskraft": None}, "taskraft"),
        ({"taskraft": 1, "client": 7}, "client"),
        ({"taskraft": 1, "client": "c" * 129}, "client"),
        ({"taskraft": 1, "features": []}, "features"),
    ],
)
def test_malformed_handshake(wire: dict[str, object], field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        Handshake.from_wire(wire)
    assert caught.value.message.startswith(f"{field}:")


def test_handshake_must_be_a_map() -> None:
    with pytest.raises(BadRequest, match="expected map, got array"):
        Handshake.from_wire([1])


def test_error_frame_round_trip() -> None:
    frame = ErrorFrame(UnsupportedProtocolVersion("speak 1"))
    wire = over_the_wire(frame.to_wire())
    assert ErrorFrame.matches(wire)
    received = ErrorFrame.from_wire(wire).error
    assert isinstance(received, UnsupportedProtocolVersion)
    assert received.message == "speak 1"
    assert not ErrorFrame.matches({"id": 1, "error": {}})


# ---------------------------------------------------------------------------------------------
# Requests: every field of every operation, wrong types, missing, extra and out of range.
# ---------------------------------------------------------------------------------------------

TASK_WIRE = {"id": 41, "lease": 7}
VALID_ARGS: dict[str, dict[str, object]] = {
    operation.name: operation.to_args() for operation in FULL_OPERATIONS
}
# The wire type of each argument and whether it is required.
ARGUMENT_TYPES: dict[str, dict[str, tuple[str, bool]]] = {
    "create_queue": {
        "queue": ("str", True),
        "kind": ("str", False),
        "max_size": ("int", False),
        "max_payload_bytes": ("int", False),
        "priority_range": ("array", False),
        "lease_ms_default": ("int", False),
        "max_deliveries": ("int", False),
        "dead_letter_queue": ("str", False),
    },
    "delete_queue": {"queue": ("str", True)},
    "list_queues": {"after": ("str", False), "limit": ("int", False)},
    "count": {"queue": ("str", True)},
    "enqueue": {
        "queue": ("str", True),
        "payload": ("bin", True),
        "priority": ("int", True),
        "key": ("str", False),
        "delay_ms": ("int", False),
    },
    "dequeue": {"queue": ("str", True), "wait_ms": ("int", False), "lease_ms": ("int", False)},
    "ack": {"task": ("map", True)},
    "nack": {"task": ("map", True), "delay_ms": ("int", False)},
    "extend": {"task": ("map", True), "lease_ms": ("int", True)},
    "enqueue_many": {"queue": ("str", True), "tasks": ("array", True)},
    "dequeue_many": {
        "queue": ("str", True),
        "max_tasks": ("int", True),
        "wait_ms": ("int", False),
        "lease_ms": ("int", False),
    },
    "ack_many": {"tasks": ("array", True)},
    "status": {},
}
# The fields of each item of a batch's `tasks`: wire type, and whether required.
ITEM_TYPES: dict[str, dict[str, tuple[str, bool]]] = {
    "enqueue_many": {
        "payload": ("bin", True),
        "priority": ("int", True),
        "key": ("str", False),
        "delay_ms": ("int", False),
    },
    "ack_many": {"id": ("int", True), "lease": ("int", True)},
}
SAMPLES: dict[str, object] = {
    "nil": None,
    "bool": True,
    "int": 1,
    "float": 1.5,
    "str": "x",
    "bin": b"x",
    "array": [1, 2],
    "map": {"a": 1},
}


def request_with(op: str, args: object) -> dict[str, object]:
    return {"id": 12, "op": op, "args": args}


def rejection(wire: object) -> TaskraftError:
    """The error a request is refused with, after a trip over the wire."""
    with pytest.raises(TaskraftError) as caught:
        Request.from_wire(over_the_wire(wire))
    return caught.value


def wrong_type_cases() -> list[tuple[str, str, str, object]]:
    """(operation, path, expected type, wrong value) for every argument and every wrong type."""
    cases: list[tuple[str, str, str, object]] = []
    for op, fields in ARGUMENT_TYPES.items():
        for field, (expected, required) in fields.items():
            for sample_type, sample in SAMPLES.items():
                if sample_type == expected or (sample_type == "nil" and not required):
                    continue
                cases.append((op, f"args.{field}", expected, sample))
    for op in ("ack", "nack", "extend"):
        for field in ("id", "lease"):
            for sample_type, sample in SAMPLES.items():
                if sample_type != "int":
                    cases.append((op, f"args.task.{field}", "int", sample))
    for index in (0, 1):
        for sample_type, sample in SAMPLES.items():
            if sample_type != "int":
                cases.append(("create_queue", f"args.priority_range[{index}]", "int", sample))
    # Each item of a batch, and each field of an item, in the first and the last item.
    for op, fields in ITEM_TYPES.items():
        for index in (0, 1):
            for sample_type, sample in SAMPLES.items():
                if sample_type != "map":
                    cases.append((op, f"args.tasks[{index}]", "map", sample))
            for field, (expected, required) in fields.items():
                for sample_type, sample in SAMPLES.items():
                    if sample_type == expected or (sample_type == "nil" and not required):
                        continue
                    cases.append((op, f"args.tasks[{index}].{field}", expected, sample))
    return cases


def set_path(args: dict[str, object], path: str, value: object) -> dict[str, object]:
    """A copy of `args` with the field at `path` (as in errors: args.task.id) replaced."""
    updated = dict(args)
    parts = path.removeprefix("args.").split(".")
    if parts[0].startswith("priority_range["):
        items: list[object] = [-10, 10]
        items[int(parts[0][-2])] = value
        updated["priority_range"] = items
    elif parts[0].startswith("tasks["):
        tasks = args["tasks"]
        assert isinstance(tasks, list)
        replaced: list[object] = list(tasks)
        index = int(parts[0].removeprefix("tasks[").removesuffix("]"))
        item = replaced[index]
        assert isinstance(item, dict)
        replaced[index] = value if len(parts) == 1 else {**item, parts[1]: value}
        updated["tasks"] = replaced
    elif len(parts) == 2:
        updated[parts[0]] = {**TASK_WIRE, parts[1]: value}
    else:
        updated[parts[0]] = value
    return updated


@pytest.mark.parametrize(("op", "path", "expected", "value"), wrong_type_cases())
def test_wrong_type_in_every_field_is_a_bad_request_naming_it(
    op: str, path: str, expected: str, value: object
) -> None:
    error = rejection(request_with(op, set_path(VALID_ARGS[op], path, value)))
    assert type(error) is BadRequest
    assert error.message.startswith(f"{path}: expected {expected}, got "), error.message


def required_fields() -> list[tuple[str, str]]:
    return [
        (op, field)
        for op, fields in ARGUMENT_TYPES.items()
        for field, (_, required) in fields.items()
        if required
    ]


@pytest.mark.parametrize(("op", "field"), required_fields())
def test_missing_argument(op: str, field: str) -> None:
    args = dict(VALID_ARGS[op])
    del args[field]
    error = rejection(request_with(op, args))
    assert type(error) is BadRequest
    assert error.message == f"args.{field}: missing"


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_extra_argument(op: str) -> None:
    error = rejection(request_with(op, {**VALID_ARGS[op], "colour": "blue"}))
    assert type(error) is BadRequest
    assert error.message == "args.colour: unexpected field"


@pytest.mark.parametrize(
    ("op", "index", "field"),
    [
        (op, index, field)
        for op, fields in ITEM_TYPES.items()
        for index in (0, 1)
        for field, (_, required) in fields.items()
        if required
    ],
)
def test_missing_field_of_a_batch_item(op: str, index: int, field: str) -> None:
    tasks = VALID_ARGS[op]["tasks"]
    assert isinstance(tasks, list)
    item = tasks[index]
    assert isinstance(item, dict)
    without = {key: value for key, value in item.items() if key != field}
    error = rejection(request_with(op, set_path(VALID_ARGS[op], f"args.tasks[{index}]", without)))
    assert type(error) is BadRequest
    assert error.message == f"args.tasks[{index}].{field}: missing"


@pytest.mark.parametrize("op", sorted(ITEM_TYPES))
def test_extra_field_of_a_batch_item(op: str) -> None:
    tasks = VALID_ARGS[op]["tasks"]
    assert isinstance(tasks, list) and isinstance(tasks[1], dict)
    wire = request_with(op, set_path(VALID_ARGS[op], "args.tasks[1]", {**tasks[1], "queue": "q"}))
    error = rejection(wire)
    assert type(error) is BadRequest
    assert error.message == "args.tasks[1].queue: unexpected field"


@pytest.mark.parametrize("field", ["id", "lease"])
def test_missing_or_extra_task_field(field: str) -> None:
    task = {key: value for key, value in TASK_WIRE.items() if key != field}
    error = rejection(request_with("ack", {"task": task}))
    assert error.message == f"args.task.{field}: missing"
    error = rejection(request_with("ack", {"task": {**TASK_WIRE, "x": 1}}))
    assert error.message == "args.task.x: unexpected field"


def test_unknown_operation() -> None:
    error = rejection(request_with("purge", {}))
    assert type(error) is BadRequest
    assert error.message.startswith("op: unknown operation 'purge'; known: create_queue")


def test_long_unknown_operation_names_are_cut_in_the_message() -> None:
    error = rejection(request_with("x" * 100_000, {}))
    assert len(error.message) < 400


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ([1, "status", {}], "message: expected map, got array"),
        ({"op": "status", "args": {}}, "id: missing"),
        ({"id": -1, "op": "status", "args": {}}, "id: must be between 0 and"),
        ({"id": "1", "op": "status", "args": {}}, "id: expected int, got str"),
        ({"id": 1, "args": {}}, "op: missing"),
        ({"id": 1, "op": 3, "args": {}}, "op: expected str, got int"),
        ({"id": 1, "op": "status"}, "args: missing"),
        ({"id": 1, "op": "status", "args": []}, "args: expected map, got array"),
        ({"id": 1, "op": "status", "args": {}, "deadline": 5}, "deadline: unexpected field"),
    ],
)
def test_malformed_request_envelope(wire: object, message: str) -> None:
    error = rejection(wire)
    assert type(error) is BadRequest
    assert error.message.startswith(message)


def bad(op: str, field: str, value: object) -> dict[str, object]:
    return request_with(op, {**VALID_ARGS[op], field: value})


def item(**fields: object) -> dict[str, object]:
    """The wire form of a valid `enqueue_many` task, with `fields` replaced."""
    return {"payload": b"x", "priority": 0, **fields}


ITEM = item()


OUT_OF_RANGE: list[tuple[dict[str, object], type[TaskraftError], str]] = [
    (bad("count", "queue", ""), InvalidQueueName, "args.queue"),
    (bad("count", "queue", "q" * 256), InvalidQueueName, "args.queue"),
    (bad("count", "queue", "a b"), InvalidQueueName, "args.queue"),
    (bad("count", "queue", "jobs\n"), InvalidQueueName, "args.queue"),
    (bad("count", "queue", "j\x7fobs"), InvalidQueueName, "args.queue"),
    (bad("count", "queue", "jöbs"), InvalidQueueName, "args.queue"),
    (bad("create_queue", "dead_letter_queue", "a b"), InvalidQueueName, "args.dead_letter_queue"),
    (bad("list_queues", "after", ""), InvalidQueueName, "args.after"),
    (bad("create_queue", "kind", ""), UnknownQueueKind, "args.kind"),
    (bad("create_queue", "kind", "k" * 33), UnknownQueueKind, "args.kind"),
    (bad("create_queue", "max_size", 0), InvalidMaxSize, "args.max_size"),
    (bad("create_queue", "max_size", 2**63), InvalidMaxSize, "args.max_size"),
    (bad("create_queue", "max_payload_bytes", 0), InvalidMaxPayloadSize, "args.max_payload_bytes"),
    (bad("create_queue", "priority_range", [5, 1]), InvalidPriorityRange, "args.priority_range"),
    (
        bad("create_queue", "priority_range", [0, 2**63]),
        InvalidPriorityRange,
        "args.priority_range[1]",
    ),
    (bad("create_queue", "priority_range", [1]), BadRequest, "args.priority_range"),
    (bad("create_queue", "priority_range", [1, 2, 3]), BadRequest, "args.priority_range"),
    (bad("create_queue", "lease_ms_default", -1), InvalidArgument, "args.lease_ms_default"),
    (
        bad("create_queue", "lease_ms_default", LEASE_MS_MAX + 1),
        InvalidArgument,
        "args.lease_ms_default",
    ),
    (bad("create_queue", "max_deliveries", 0), InvalidArgument, "args.max_deliveries"),
    (bad("create_queue", "max_deliveries", 2**63), InvalidArgument, "args.max_deliveries"),
    (bad("list_queues", "limit", 0), InvalidArgument, "args.limit"),
    (bad("list_queues", "limit", 1001), InvalidArgument, "args.limit"),
    (
        bad("enqueue", "payload", b"x" * (PAYLOAD_SIZE_MAX_BYTES + 1)),
        PayloadTooLarge,
        "args.payload",
    ),
    (bad("enqueue", "priority", 2**63), PriorityOutOfRange, "args.priority"),
    (bad("enqueue", "key", ""), InvalidArgument, "args.key"),
    (bad("enqueue", "key", "é" * 128), InvalidArgument, "args.key"),
    (bad("enqueue", "delay_ms", -1), InvalidArgument, "args.delay_ms"),
    (bad("enqueue", "delay_ms", DELAY_MS_MAX + 1), InvalidArgument, "args.delay_ms"),
    (bad("dequeue", "wait_ms", -1), InvalidArgument, "args.wait_ms"),
    (bad("dequeue", "wait_ms", WAIT_MS_MAX + 1), InvalidArgument, "args.wait_ms"),
    (bad("dequeue", "lease_ms", -1), InvalidArgument, "args.lease_ms"),
    (bad("dequeue", "lease_ms", LEASE_MS_MAX + 1), InvalidArgument, "args.lease_ms"),
    (bad("nack", "delay_ms", -5), InvalidArgument, "args.delay_ms"),
    (bad("extend", "lease_ms", 0), InvalidArgument, "args.lease_ms"),
    (bad("extend", "lease_ms", LEASE_MS_MAX + 1), InvalidArgument, "args.lease_ms"),
    (bad("ack", "task", {"id": -1, "lease": 7}), BadRequest, "args.task.id"),
    (bad("ack", "task", {"id": 1, "lease": -7}), BadRequest, "args.task.lease"),
    (bad("enqueue_many", "queue", "a b"), InvalidQueueName, "args.queue"),
    (bad("enqueue_many", "tasks", []), InvalidArgument, "args.tasks"),
    (bad("enqueue_many", "tasks", [ITEM] * (BATCH_TASKS_MAX + 1)), InvalidArgument, "args.tasks"),
    (
        bad("enqueue_many", "tasks", [ITEM, item(payload=b"x" * (PAYLOAD_SIZE_MAX_BYTES + 1))]),
        PayloadTooLarge,
        "args.tasks[1].payload",
    ),
    (
        bad("enqueue_many", "tasks", [item(payload=b"x" * (BATCH_PAYLOAD_BYTES_MAX // 2 + 1))] * 2),
        PayloadTooLarge,
        "args.tasks",
    ),
    (
        bad("enqueue_many", "tasks", [ITEM, item(priority=2**63), ITEM]),
        PriorityOutOfRange,
        "args.tasks[1].priority",
    ),
    (bad("enqueue_many", "tasks", [item(key="")]), InvalidArgument, "args.tasks[0].key"),
    (bad("enqueue_many", "tasks", [item(key="é" * 128)]), InvalidArgument, "args.tasks[0].key"),
    (bad("enqueue_many", "tasks", [item(delay_ms=-1)]), InvalidArgument, "args.tasks[0].delay_ms"),
    (
        bad("enqueue_many", "tasks", [item(delay_ms=DELAY_MS_MAX + 1)]),
        InvalidArgument,
        "args.tasks[0].delay_ms",
    ),
    (bad("dequeue_many", "queue", ""), InvalidQueueName, "args.queue"),
    (bad("dequeue_many", "max_tasks", 0), InvalidArgument, "args.max_tasks"),
    (bad("dequeue_many", "max_tasks", BATCH_TASKS_MAX + 1), InvalidArgument, "args.max_tasks"),
    (bad("dequeue_many", "wait_ms", -1), InvalidArgument, "args.wait_ms"),
    (bad("dequeue_many", "wait_ms", WAIT_MS_MAX + 1), InvalidArgument, "args.wait_ms"),
    (bad("dequeue_many", "lease_ms", -1), InvalidArgument, "args.lease_ms"),
    (bad("dequeue_many", "lease_ms", LEASE_MS_MAX + 1), InvalidArgument, "args.lease_ms"),
    (bad("ack_many", "tasks", []), InvalidArgument, "args.tasks"),
    (bad("ack_many", "tasks", [TASK_WIRE] * (BATCH_TASKS_MAX + 1)), InvalidArgument, "args.tasks"),
    (bad("ack_many", "tasks", [TASK_WIRE, {"id": -1, "lease": 7}]), BadRequest, "args.tasks[1].id"),
    (bad("ack_many", "tasks", [{"id": 1}]), BadRequest, "args.tasks[0].lease"),
]


@pytest.mark.parametrize(("wire", "error_class", "path"), OUT_OF_RANGE)
def test_values_out_of_range(
    wire: dict[str, object], error_class: type[TaskraftError], path: str
) -> None:
    error = rejection(wire)
    assert type(error) is error_class, error
    assert error.message.startswith(f"{path}:"), error.message


@pytest.mark.parametrize(
    "wire",
    [
        bad("count", "queue", "q" * 255),
        bad("count", "queue", "A.b_c-9/~!{}"),
        bad("count", "queue", ".hidden"),
        bad("create_queue", "kind", "k" * 32),
        bad("create_queue", "lease_ms_default", 0),
        bad("create_queue", "max_payload_bytes", 2**63 - 1),
        bad("create_queue", "max_deliveries", 2**63 - 1),
        bad("create_queue", "priority_range", [-(2**63), 2**63 - 1]),
        bad("create_queue", "priority_range", [3, 3]),
        bad("enqueue", "payload", b"x" * PAYLOAD_SIZE_MAX_BYTES),
        bad("enqueue", "key", "é" * 127 + "a"),
        bad("enqueue", "priority", -(2**63)),
        bad("enqueue", "delay_ms", DELAY_MS_MAX),
        bad("dequeue", "lease_ms", LEASE_MS_MAX),
        bad("dequeue", "lease_ms", 0),
        bad("extend", "lease_ms", LEASE_MS_MAX),
        bad("ack", "task", {"id": 2**64 - 1, "lease": 0}),
        bad("enqueue_many", "tasks", [ITEM] * BATCH_TASKS_MAX),
        # One task may carry the largest payload; more share BATCH_PAYLOAD_BYTES_MAX.
        bad("enqueue_many", "tasks", [item(payload=b"x" * PAYLOAD_SIZE_MAX_BYTES)]),
        bad("enqueue_many", "tasks", [item(payload=b"x" * (BATCH_PAYLOAD_BYTES_MAX // 2))] * 2),
        bad(
            "enqueue_many",
            "tasks",
            [item(priority=-(2**63), key="é" * 127 + "a", delay_ms=DELAY_MS_MAX)] * 2,
        ),
        bad("enqueue_many", "tasks", [item(key="k" * 255, delay_ms=0)]),
        bad("dequeue_many", "max_tasks", BATCH_TASKS_MAX),
        bad("dequeue_many", "lease_ms", 0),
        bad("ack_many", "tasks", [TASK_WIRE] * BATCH_TASKS_MAX),
        bad("ack_many", "tasks", [{"id": 2**64 - 1, "lease": 2**64 - 1}]),
    ],
)
def test_values_at_the_limits_are_accepted(wire: dict[str, object]) -> None:
    Request.from_wire(over_the_wire(wire))


# ---------------------------------------------------------------------------------------------
# Batches: the fast path of their items reads exactly what the field-by-field path reads.
# ---------------------------------------------------------------------------------------------

ITEM_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.sampled_from([-1, 0, 1, DELAY_MS_MAX, DELAY_MS_MAX + 1, -(2**63), 2**63 - 1, 2**63]),
    st.binary(max_size=8),
    st.sampled_from([b"x" * PAYLOAD_SIZE_MAX_BYTES, b"x" * (PAYLOAD_SIZE_MAX_BYTES + 1)]),
    st.text(max_size=8),
    st.sampled_from(["", "k" * 63, "k" * 64, "k" * 255, "k" * 256, "é" * 127, "é" * 128]),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=2),
)
ITEM_DICTS = st.dictionaries(
    st.sampled_from(["payload", "priority", "key", "delay_ms", "colour"]), ITEM_VALUES
) | st.fixed_dictionaries(
    {"payload": st.binary(max_size=8), "priority": st.integers(-(2**63), 2**63 - 1)},
    optional={"key": st.none() | st.text(max_size=70), "delay_ms": ITEM_VALUES},
)


def outcome(read: Callable[[], object]) -> object:
    """What `read` returns, or the class and message of the TaskraftError it raises."""
    try:
        return read()
    except TaskraftError as error:
        return (type(error), error.message)


@settings(max_examples=400, deadline=None)
@given(value=ITEM_DICTS | ITEM_VALUES)
def test_an_enqueue_many_item_reads_as_the_arguments_of_an_enqueue(value: object) -> None:
    def as_item() -> object:
        task = EnqueueItem.from_wire(value, "t")
        return (task.payload, task.priority, task.key, task.delay_ms)

    def as_enqueue() -> object:
        # The same checks, field by field, as a strict request reads them.
        FieldReader(value, "t")
        assert isinstance(value, dict)
        reader = FieldReader({"queue": "q", **value}, "t")
        enqueue = Enqueue.from_args(reader)
        reader.finish()
        return (enqueue.payload, enqueue.priority, enqueue.key, enqueue.delay_ms)

    assert outcome(as_item) == outcome(as_enqueue)


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.sampled_from(["id", "lease", "x"]), ITEM_VALUES) | ITEM_VALUES)
def test_an_ack_many_item_reads_as_the_task_of_an_ack(value: object) -> None:
    assert outcome(lambda: TaskLease.from_batch_item(value, "t")) == outcome(
        lambda: TaskLease.from_wire(value, "t")
    )
