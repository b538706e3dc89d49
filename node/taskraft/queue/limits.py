"""Every bound of the queue state machine in one place, each with the reason for its value.

These numbers are part of the replicated semantics: every replica must apply the same bounds, or
the same command could succeed on one replica and fail on another. Changing one is therefore a
change of the state machine's behaviour and must ship together with a new log entry version (see
`codec.py`), never as a configuration knob.
"""

from __future__ import annotations

from typing import Final

# Priorities, times and counters are carried as msgpack integers and compared in tuples; keeping
# them within a signed 64-bit range lets every client language represent them exactly.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

# A queue name is a path segment in the HTTP API and a label in metrics: 255 bytes is the common
# limit of both (and of file names), and printable ASCII without spaces needs no escaping.
QUEUE_NAME_SIZE_MAX_BYTES: Final = 255
QUEUE_NAME_CHARACTER_MIN: Final = 33
QUEUE_NAME_CHARACTER_MAX: Final = 126

# The queue every fresh state starts with, so that a client can enqueue without any setup.
DEFAULT_QUEUE_NAME: Final = "default"

# `list_queues` answers with every queue in one reply; 10,000 descriptions of a few hundred bytes
# keep that reply around a few megabytes, far above what one cluster is meant to hold.
QUEUE_COUNT_MAX: Final = 10_000

# Every payload travels in one log entry that each follower receives and fsyncs before the write
# is acknowledged. One mebibyte matches the bytes the Raft leader sends in one AppendEntries
# (RaftOptions.batch_size_max_bytes), so a single task never takes more than one replication
# round trip, and it keeps a snapshot object comfortably inside one snapshot chunk's order of size.
# Larger blobs belong in object storage, with the task carrying their address.
PAYLOAD_SIZE_MAX_BYTES: Final = 1024 * 1024

# A buckets queue keeps one FIFO per priority value, and a bitmap with one bit per bucket finds
# the lowest non-empty one. With 1024 buckets that bitmap is 128 bytes, so finding its lowest set
# bit is a handful of machine-word operations (constant time), and the bucket table of an empty
# queue stays at 8 KiB (deques are created only when first used). Workloads needing a wider range
# use a heap queue, whose operations cost O(log n) instead of O(1).
BUCKET_COUNT_MAX: Final = 1024

# What a dequeue without an explicit lease gets unless the queue says otherwise: long enough for
# typical short jobs and for a worker to extend, short enough that a crashed worker's task is
# redelivered within half a minute.
LEASE_MS_DEFAULT: Final = 30_000

# A worker that needs a task longer extends its lease; a single lease longer than 12 hours almost
# always means a unit mistake (seconds or microseconds passed as milliseconds) or a dead worker.
LEASE_MS_MAX: Final = 12 * 60 * 60 * 1000

# Delayed tasks are held in memory and in every snapshot. A week covers retry backoffs and
# "after the weekend" deferrals; scheduling further ahead belongs in a scheduler that enqueues
# when the time comes. It also keeps every deadline far inside the 64-bit range.
DELAY_MS_MAX: Final = 7 * 24 * 60 * 60 * 1000

# The state machine's clock never goes past this (about the year 2255), so that a deadline
# computed from it always fits in 64 bits even if a leader stamps an absurd time.
CLOCK_MS_MAX: Final = 2**53

# Idempotency keys: a client retries an enqueue whose answer it did not receive (a timeout, a
# leader change). Leader elections take one to two seconds and client timeouts tens of seconds,
# so ten minutes of log time covers retries with generous backoff. The count bound caps memory:
# 100,000 keys of at most 255 bytes is at most about 40 MB including the bookkeeping. A key is
# forgotten after whichever bound it reaches first: at more than about 170 keyed enqueues per
# second the count bound shortens the window (at 1,000 per second it still spans 100 seconds).
# A retry after the window may enqueue a duplicate; consumers must tolerate that (at-least-once).
IDEMPOTENCY_WINDOW_MS: Final = 10 * 60 * 1000
IDEMPOTENCY_KEY_COUNT_MAX: Final = 100_000
IDEMPOTENCY_KEY_SIZE_MAX_BYTES: Final = 255

# Lease expiries and delayed releases live in one heap with lazy deletion: an ack, a nack or an
# extension leaves the old entry behind. The heap is rebuilt without them once they are more
# than half of it (amortized O(1) per operation); below this count a rebuild is not worth it.
STALE_DEADLINES_REBUILD_MIN: Final = 4096

# Snapshot chunks are at most this size: the Raft core's InstallSnapshot chunk and the snapshot
# file reader use the same mebibyte, so a chunk passes through without being split or merged.
SNAPSHOT_CHUNK_SIZE_MAX_BYTES: Final = 1024 * 1024

# Tasks and idempotency keys are written to a snapshot in batches of at most this many records
# (and, for tasks, about this many bytes of payload): large enough that per-object overhead
# vanishes, small enough that restoring keeps only one batch (plus one chunk) decoded at a time.
SNAPSHOT_BATCH_RECORD_COUNT_MAX: Final = 1024
SNAPSHOT_BATCH_SIZE_TARGET_BYTES: Final = 256 * 1024

# A restoring replica buffers at most this much undecoded snapshot data: one chunk plus the
# largest object in the stream (a batch reaching the target size plus one maximal payload).
SNAPSHOT_DECODE_BUFFER_SIZE_MAX_BYTES: Final = 8 * 1024 * 1024
