"""Every bound of the client protocol, in one place, each with the reason for its number.

A peer we do not trust decides what arrives on a connection, so everything it can make us hold
has an upper bound: the bytes of one frame, the objects one frame may decode into, the requests
one connection may have in flight and the time one request may be parked. docs/protocol.md
quotes these numbers; a client in another language needs them to stay inside the limits.

The bounds on queue names, payloads, keys, delays and leases are those of the queue state
machine (`taskraft.queue.limits`), repeated here so that the protocol never refuses what the
queue accepts nor lets through what it could already refuse, while this package stays
importable on its own. tests/protocol checks that the two agree.
"""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 1
"""The version this library speaks, sent in the handshake."""

SUPPORTED_PROTOCOL_VERSIONS: Final = frozenset({1})
"""The versions a server built from this library accepts in a client's handshake."""

FRAME_PREFIX_BYTES: Final = 4
"""Every frame starts with its body's length as a 4-byte big-endian unsigned integer."""

PAYLOAD_SIZE_MAX_BYTES: Final = 1024 * 1024
"""The largest task payload any queue accepts (1 MiB); a queue may set a smaller one.

Payloads pass whole through the Raft log and every follower's disk, so the cluster keeps them
small; bigger data belongs in object storage with a reference in the task.
"""

FRAME_SIZE_MAX_BYTES: Final = PAYLOAD_SIZE_MAX_BYTES + 64 * 1024
"""The largest frame body either side accepts (1 MiB + 64 KiB = 1,114,112 bytes).

The largest legitimate frames are an `enqueue` request and a `dequeue` answer carrying a payload
of PAYLOAD_SIZE_MAX_BYTES. Around it they hold under 1 KiB: a queue name and an idempotency key
(at most 255 bytes each), a few integers and the field names. 64 KiB of headroom covers that
with room for fields added later, while a peer that stalls in the middle of a frame pins at most
about 1.06 MiB of one connection's memory; a bound of 2 MiB would double that for no message
the protocol has.
"""

REQUESTS_IN_FLIGHT_MAX: Final = 1024
"""Requests one connection may have unanswered; a server answers more with `overloaded`.

Each request in flight holds its decoded arguments and, for a waiting `dequeue`, a waiter on the
leader. 1024 lets a client pipeline a thousand small requests in one round trip, which fills a
fast link, while one connection cannot make the server track an unbounded number of them.
"""

REQUEST_COLLECTION_LENGTH_MAX: Final = 1024
"""The longest array or map a request frame may contain: the 1000 tasks of a full batch
(`enqueue_many`, `ack_many`; BATCH_TASKS_MAX) with some room, as for responses.

A server decodes client frames with this bound, and every item takes at least one byte of a
frame of at most FRAME_SIZE_MAX_BYTES, so a small frame cannot expand into a large number of
Python objects.
"""

RESPONSE_COLLECTION_LENGTH_MAX: Final = 1024
"""The longest array or map a response frame may contain: a page of at most 1000 queues."""

NESTING_DEPTH_MAX: Final = 8
"""How deeply arrays and maps may nest in a frame. The deepest message, a `list_queues` answer,
nests 6 levels: response, result, list, queue, policies, priority range."""

LIST_QUEUES_LIMIT_MAX: Final = 1000
"""The most queues one `list_queues` answer describes.

A description takes at most about 800 bytes (two names of 255 bytes, the field names and a
dozen integers), so a full page stays under 800 KiB, inside one frame. The cluster holds at most
10,000 queues, so ten pages list them all.
"""

BATCH_TASKS_MAX: Final = 1000
"""The most tasks one `enqueue_many`, `dequeue_many` or `ack_many` carries.

A thousand tasks in one request and one Raft log entry amortize the round trip, the fsync and
the per-request work over many tasks; more would gain little and would not fit the collection
bounds (REQUEST_COLLECTION_LENGTH_MAX, RESPONSE_COLLECTION_LENGTH_MAX). Larger batches are
split by the client into several requests.
"""

BATCH_PAYLOAD_BYTES_MAX: Final = 640 * 1024
"""The most payload bytes a batch of more than one task carries (640 KiB = 655,360 bytes): the
payloads of an `enqueue_many` request, and of a `dequeue_many` answer.

Besides its payload a task takes at most about 310 bytes in an `enqueue_many` (a key of 255
bytes, a priority, a delay and the field names) and about 360 in a `dequeue_many` answer (the
queue's name of up to 255 bytes, id, lease, priority, deliveries and the field names). A
thousand of those plus 640 KiB of payloads stay under 1 MiB, more than 64 KiB below the frame
bound, as for the largest single task. A batch of one task may carry up to
PAYLOAD_SIZE_MAX_BYTES, so that no task is too large to travel in a batch: `dequeue_many`
always delivers the first ready task, however large, and stops before a task whose payload
would take the answer past this bound.
"""

QUEUE_NAME_MAX_BYTES: Final = 255
"""Queue names are 1 to 255 printable ASCII characters without spaces, as the queue state
machine requires: a name is a path segment in the HTTP API and a label in metrics."""

QUEUE_KIND_MAX_BYTES: Final = 32
"""A queue kind is a short word ("heap", "buckets"); anything longer is certainly unknown."""

KEY_MAX_BYTES: Final = 255
"""An idempotency key is 1 to 255 bytes of UTF-8: enough for a UUID or a content hash with a
prefix, small enough that the queue can remember many of them."""

CLIENT_NAME_MAX_BYTES: Final = 128
"""The client's self-description in the handshake, kept for logs; 128 bytes of UTF-8."""

TOKEN_MAX_BYTES: Final = 1024
"""A bearer token in the handshake: 1 to 1024 bytes of UTF-8.

Tokens are random strings chosen by the operator (32 random bytes in base64 take 44); 1 KiB
leaves room for longer ones, such as signed tokens, while the handshake stays small.
"""

NODE_ID_MAX_BYTES: Final = 128
"""A node id in an answer is at most 128 bytes of UTF-8."""

ADDRESS_MAX_BYTES: Final = 300
"""A leader address is `host:port`; a DNS name has at most 253 characters, so 300 bytes suffice."""

ERROR_MESSAGE_MAX_BYTES: Final = 4096
"""An error message is for humans; 4 KiB is plenty and keeps error frames small."""

WAIT_MS_MAX: Final = 60_000
"""The longest a `dequeue` may wait for a task (60 s).

A waiting dequeue occupies one of the connection's REQUESTS_IN_FLIGHT_MAX slots and a waiter on
the leader. 60 s lets an idle worker poll about once a minute, yet stays under the idle timeouts
of common proxies and load balancers (often 60 s or more) once the client adds its margin, and
bounds how long a client must wait before it may suspect a lost answer: its request timeout is
wait_ms plus a few seconds.
"""

DELAY_MS_MAX: Final = 7 * 24 * 60 * 60 * 1000
"""The longest an enqueued or nacked task may be delayed (7 days), as in the queue state machine.

Delayed tasks are held in memory and in every snapshot; a week covers retry back-offs and
deferrals, and scheduling further ahead belongs in a scheduler that enqueues when the time comes.
"""

LEASE_MS_MAX: Final = 12 * 60 * 60 * 1000
"""The longest lease (12 h): a crashed worker's task waits this long before redelivery; long
jobs extend their lease instead of taking a long one. A lease of 0 in a dequeue (or as a queue's
default) delivers the task without a lease: it is acknowledged as it is delivered."""

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
UINT64_MAX: Final = 2**64 - 1
