"""Every bound of the peer protocol and transport, in one place, each with its reason.

Peers are other members of the cluster, but their bytes cross a network and their software may
be a different version, or broken: nothing a peer sends may make this node hold unbounded
memory or hand the Raft core a value it does not expect. The transport's own queues are bounded
as well, because Raft tolerates lost messages and does not tolerate a node that runs out of
memory while a peer is down.
"""

from __future__ import annotations

from typing import Final

PEER_PROTOCOL_VERSION: Final = 1
"""The version of the peer protocol this node speaks, sent in the handshake."""

SUPPORTED_PEER_PROTOCOL_VERSIONS: Final = frozenset({PEER_PROTOCOL_VERSION})
"""The versions this node accepts in an incoming handshake."""

HANDSHAKE_MAGIC: Final = "taskraft-peer"
"""The first item of every handshake. A client of the client protocol, an HTTP probe or any
other stranger that reaches the peer port fails on it at once, with a clear error."""

CHALLENGE_MAGIC: Final = "taskraft-peer-challenge"
RESPONSE_MAGIC: Final = "taskraft-peer-response"
PROOF_MAGIC: Final = "taskraft-peer-proof"
"""The first items of the three frames of the authentication exchange that follows the
handshake when the cluster has a secret (see `taskraft.peer.auth`). Named frames, rather than
tags, so that a node without the secret fails on them with an error that says what they are."""

WIRE_INTEGER_MAX: Final = 2**63 - 1
"""Terms, indexes, offsets and counters are non-negative and below 2**63 on the wire.

Every Raft number grows by one at a time from zero and never comes near 2**63; a larger value
can only be corruption or an attack. 63 bits also keep every value a signed 64-bit integer for
implementations in other languages.
"""

NODE_ID_SIZE_MAX_BYTES: Final = 255
"""A node id is 1 to 255 bytes of UTF-8: a DNS label (63) or a pod name (253) fits."""

CLUSTER_ID_SIZE_MAX_BYTES: Final = 255
"""A cluster id, sent in the handshake so that two clusters never exchange messages."""

ADDRESS_SIZE_MAX_BYTES: Final = 300
"""A `host:port` address (a member's peer address in a configuration, a node's client and HTTP
addresses in its handshake): a DNS name of 253 bytes, a colon and a port fit."""

BATCH_SIZE_MAX_BYTES: Final = 1024 * 1024
"""The largest `RaftOptions.batch_size_max_bytes` the protocol carries: its default, 1 MiB.

The core fills an AppendEntries with entries while their `Entry.size_bytes()` estimates (data +
16 bytes) add up to at most this bound, or with a single entry of any size. On the wire an entry
takes at most 15 bytes besides its data (term 9, kind 1, binary header 5), less than the 16 of
the estimate, so a batch of many entries encodes to less than 1 MiB.
"""

ENTRIES_PER_MESSAGE_MAX: Final = BATCH_SIZE_MAX_BYTES // 16
"""The most entries in one AppendEntries (65,536): a full batch of entries without data, each
estimated at 16 bytes. An entry past the byte bound is only ever sent alone."""

ENTRY_DATA_SIZE_MAX_BYTES: Final = 2 * 1024 * 1024
"""The largest entry data (2 MiB): twice the largest command.

A queue command carries a payload of at most 1 MiB plus a few hundred bytes of names and
numbers. A follower that refused a legitimate entry would refuse it again on every retry and
stop replicating, so the bound leaves room for a larger command format rather than sitting at
the exact maximum; it still keeps one entry far below the frame bound.
"""

SNAPSHOT_CHUNK_SIZE_MAX_BYTES: Final = 2 * 1024 * 1024
"""The largest data of one InstallSnapshot chunk (2 MiB): twice the core's default chunk of
`RaftOptions.snapshot_chunk_size_max_bytes` (1 MiB), for the same reason as entries."""

CONFIGURATION_MEMBERS_MAX: Final = 256
"""The most voters plus learners in a configuration carried by a snapshot or an entry.

Raft clusters have 3 to 7 voters and a few learners; 256 is far past any sensible cluster while
a configuration of 256 ids of 255 bytes and their addresses still takes only 140 KiB.
"""

PEER_FRAME_SIZE_MAX_BYTES: Final = 4 * 1024 * 1024
"""The largest peer frame body (4 MiB).

The largest legitimate frames are an AppendEntries with a single entry of
ENTRY_DATA_SIZE_MAX_BYTES and an InstallSnapshot chunk of SNAPSHOT_CHUNK_SIZE_MAX_BYTES with a
configuration of CONFIGURATION_MEMBERS_MAX members: about 2.1 MiB each, and a batch of many
entries stays under 1 MiB (see BATCH_SIZE_MAX_BYTES). 4 MiB gives that almost twofold headroom,
while a peer that stalls in the middle of a frame pins at most 4 MiB of its connection, and
this node keeps at most one connection per peer once the handshake is done.
"""

HANDSHAKE_FRAME_SIZE_MAX_BYTES: Final = 2048
"""The largest handshake frame. A handshake holds the magic, the version, a node id, a cluster
id and three addresses (about 1,450 bytes at most), so a stranger cannot make this node buffer a
large frame before it has proven that it speaks the peer protocol."""

CLUSTER_SECRET_SIZE_MIN_BYTES: Final = 32
"""The shortest cluster secret a node accepts (32 bytes, the size of an HMAC-SHA256 key that
adds no weakness of its own): a shorter one is a password that could be guessed offline from
one recorded authentication exchange."""

AUTH_NONCE_SIZE_BYTES: Final = 32
"""The random nonce each side of a connection contributes to the authentication exchange.
32 bytes from the system's random source never repeat, so no recorded proof fits a later
connection."""

AUTH_PROOF_SIZE_BYTES: Final = 32
"""An authentication proof is one HMAC-SHA256 value."""

AUTH_FRAME_SIZE_MAX_BYTES: Final = 128
"""The largest challenge, response or proof frame: a tag, at most two binaries of 32 bytes and
their headers take under 100 bytes."""

WIRE_COLLECTION_LENGTH_MAX: Final = 3 * ENTRIES_PER_MESSAGE_MAX
"""The longest array a peer frame may contain: a full AppendEntries sends its entries as one
flat array of (term, kind, data) triples."""

WIRE_NESTING_DEPTH_MAX: Final = 2
"""Arrays nest at most two levels in a peer frame: a message holding its flat entry array or a
configuration's member arrays.

Keeping the messages flat bounds the number of arrays a frame can decode into by the length of
the outer array, so a 4 MiB frame cannot expand into millions of Python lists.
"""

SEND_QUEUE_FRAMES_MAX: Final = 1024
"""Frames waiting to be written to one peer; past it a new message is dropped and counted.

The leader keeps at most `RaftOptions.inflight_messages_max` (64) appends in flight per
follower and sends a heartbeat per tick (10 a second); 1024 frames hold a full pipeline plus
many seconds of heartbeats, votes and read confirmations. A message that waited longer would be
stale: Raft resends what still matters.
"""

SEND_QUEUE_SIZE_MAX_BYTES: Final = 16 * 1024 * 1024
"""Bytes of frames waiting to be written to one peer (16 MiB).

16 MiB is more than the bandwidth-delay product of a 1 Gbit/s link with a 100 ms round trip
(12.5 MB), so a longer queue would only hold messages longer without delivering more of them.
It is below inflight_messages_max (64) full batches of 1 MiB on purpose: a dropped append costs
one rejection and a resend, while an unbounded queue costs the node its memory.
"""

WRITE_BATCH_SIZE_MAX_BYTES: Final = 1024 * 1024
"""Bytes of queued frames handed to the socket in one write (at least one frame): enough to
amortize a system call over many small messages, small enough that `drain` applies back
pressure in steps of one batch."""

READ_CHUNK_SIZE_BYTES: Final = 64 * 1024
"""Bytes read from an incoming connection at a time. The frame decoder holds at most one
incomplete frame besides the frames of the last chunk, so a connection buffers less than
PEER_FRAME_SIZE_MAX_BYTES plus one chunk."""

INCOMING_CONNECTIONS_MAX: Final = 64
"""Incoming connections served at once, handshake done or not; more are closed on accept.

A cluster has a handful of peers and each keeps one connection to this node (a newer one from
the same node replaces the older), so 64 leaves ample room for reconnections that overlap,
while a flood of connections cannot exhaust file descriptors or memory.
"""

HANDSHAKE_TIMEOUT_MS: Final = 5_000
"""How long an incoming connection may take to send its handshake (and, with a cluster secret,
to complete the authentication exchange) before it is closed, so that idle strangers do not hold
one of the INCOMING_CONNECTIONS_MAX slots; with a secret, also how long the connecting side
waits for the other's answer to its challenge."""

REFUSAL_LOG_INTERVAL_MS: Final = 10_000
"""At most one log line per interval about refused peer connections (strangers, nodes without
the cluster secret, removed members); the next line says how many were left out. A process
that connects in a loop must not fill the disk with logs; the metrics count every refusal."""

CONNECT_TIMEOUT_MS: Final = 2_000
"""How long one outgoing connection attempt may take. A peer that does not answer a SYN within
two seconds is unreachable for now; the attempt fails and backs off like a refused one."""

RECONNECT_DELAY_MIN_MS: Final = 50
RECONNECT_DELAY_MAX_MS: Final = 2_000
"""The delay between attempts to connect to a peer grows from 50 ms to at most 2 s.

50 ms reconnects quickly after a blip, well within one election timeout (1 to 2 s). The cap of
2 s keeps a restarted peer from waiting long for its first message, while a peer that stays down
costs one attempt every second on average instead of twenty a second.
"""

CLOSE_TIMEOUT_MS: Final = 1_000
"""How long closing a connection may wait for its buffered bytes to be sent before it aborts."""

WRITE_STALL_TIMEOUT_MS: Final = 10_000
"""How long a write to a peer may wait for the socket to accept it before the connection is
given up and made again. A peer that reads nothing for ten seconds is stopped or cut off by a
network that drops packets silently, where TCP would keep retrying for many minutes; a fresh
connection finds a restarted peer at once."""
