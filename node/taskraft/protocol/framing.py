"""Length-prefixed msgpack frames, decoded from bytes that arrive in any pieces.

A TCP stream has no message boundaries, so every message travels as one frame: a 4-byte
big-endian unsigned length, then that many bytes holding exactly one msgpack value. The decoder
here does no I/O (bytes go in through `receive_data`, values come out of `next_frame`) so it is
tested whole, byte by byte and with junk after, and any transport can drive it.

Nothing the peer sends may make us hold more than a bounded amount of memory:

- a length prefix is checked the moment its 4 bytes are here, before any of the body is kept,
  so a peer declaring a 4 GiB frame costs us 4 bytes;
- the msgpack body is decoded with explicit limits on string, binary, array and map lengths
  and on nesting depth, so a small frame cannot expand into a huge number of objects;
- once the caller has taken every complete frame, at most one incomplete frame is buffered:
  fewer than `FRAME_PREFIX_BYTES + frame_size_max_bytes` bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import msgpack  # type: ignore[import-untyped]

from taskraft.protocol.exceptions import LocalProtocolError, RemoteProtocolError
from taskraft.protocol.fields import shorten, wire_type_name
from taskraft.protocol.limits import (
    FRAME_PREFIX_BYTES,
    FRAME_SIZE_MAX_BYTES,
    NESTING_DEPTH_MAX,
    RESPONSE_COLLECTION_LENGTH_MAX,
)

_PREFIX: Final = struct.Struct(">I")
_PREFIX_VALUE_MAX: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. Wrapped because msgpack nil decodes to None, which means "no frame"."""

    value: object


class EndOfStream:
    """The peer ended the stream cleanly, between two frames."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_STREAM"


END_OF_STREAM: Final = EndOfStream()


def check_frame_size_max(frame_size_max_bytes: int) -> None:
    """Refuse a frame bound that the 4-byte length prefix cannot express."""
    if not 1 <= frame_size_max_bytes <= _PREFIX_VALUE_MAX:
        raise ValueError(
            f"frame_size_max_bytes must be between 1 and {_PREFIX_VALUE_MAX}, "
            f"got {frame_size_max_bytes}"
        )


def encode_frame(value: object, *, frame_size_max_bytes: int = FRAME_SIZE_MAX_BYTES) -> bytes:
    """The frame carrying `value`: its length prefix, then its msgpack encoding.

    Raises LocalProtocolError for a value msgpack cannot encode and for a frame larger than
    `frame_size_max_bytes`, which the peer would reject: sending it is a bug on this side.
    """
    check_frame_size_max(frame_size_max_bytes)
    try:
        body: bytes = msgpack.packb(value, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as error:
        raise LocalProtocolError(f"cannot encode a frame: {error}") from error
    if len(body) > frame_size_max_bytes:
        raise LocalProtocolError(
            f"a frame of {len(body)} bytes exceeds the maximum of {frame_size_max_bytes} bytes"
        )
    return _PREFIX.pack(len(body)) + body


class FrameDecoder:
    """Turns bytes received in any pieces into decoded frames, with bounded memory.

    Feed bytes with `receive_data` (b"" when the peer ended the stream), then call `next_frame`
    until it returns None (more bytes needed) or END_OF_STREAM. A `RemoteProtocolError` from
    `next_frame` means the peer broke the framing; the frames before the fault were returned
    first. After an error the decoder refuses any further use with a `LocalProtocolError`.
    """

    def __init__(
        self,
        *,
        frame_size_max_bytes: int = FRAME_SIZE_MAX_BYTES,
        collection_length_max: int = RESPONSE_COLLECTION_LENGTH_MAX,
        nesting_depth_max: int = NESTING_DEPTH_MAX,
    ) -> None:
        check_frame_size_max(frame_size_max_bytes)
        if collection_length_max < 0 or nesting_depth_max < 0:
            raise ValueError("collection_length_max and nesting_depth_max must be >= 0")
        self._frame_size_max_bytes = frame_size_max_bytes
        self._collection_length_max = collection_length_max
        self._nesting_depth_max = nesting_depth_max
        self._buffer = bytearray()
        # Offset in the buffer of the first length prefix not yet checked.
        self._unchecked_offset = 0
        # A bad length prefix found by receive_data; raised once the frames before it are taken.
        self._pending_error: RemoteProtocolError | None = None
        self._end_of_stream = False
        self._failed: RemoteProtocolError | None = None

    @property
    def frame_size_max_bytes(self) -> int:
        return self._frame_size_max_bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes held: frames not yet taken plus at most one incomplete frame."""
        return len(self._buffer)

    def discard(self) -> None:
        """Drop every byte held: the connection failed, and nothing more of it is read."""
        self._buffer.clear()
        self._unchecked_offset = 0

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the peer; b"" means the peer ended the stream."""
        self._refuse_if_failed()
        if self._end_of_stream:
            raise LocalProtocolError("receive_data called after the end of the stream")
        if not data:
            self._end_of_stream = True
            return
        if self._pending_error is not None:
            # The stream is already broken at an earlier point; what follows is never read.
            return
        self._buffer += data
        self._check_length_prefixes()

    def next_frame(self) -> Frame | EndOfStream | None:
        """The next complete frame, END_OF_STREAM, or None when more bytes are needed."""
        self._refuse_if_failed()
        try:
            return self._next_frame()
        except RemoteProtocolError as error:
            self._failed = error
            self._buffer = bytearray()
            raise

    def _refuse_if_failed(self) -> None:
        if self._failed is not None:
            raise LocalProtocolError(
                f"the frame decoder already failed ({self._failed}); close the connection"
            ) from self._failed

    def _check_length_prefixes(self) -> None:
        """Check every length prefix now buffered, and drop everything after a bad one.

        Walking the prefixes as bytes arrive, rather than when frames are taken, is what keeps
        a body behind a bad prefix out of memory even when it arrives in the same piece.
        """
        while self._unchecked_offset + FRAME_PREFIX_BYTES <= len(self._buffer):
            (length,) = _PREFIX.unpack_from(self._buffer, self._unchecked_offset)
            problem = self._length_problem(length)
            if problem is not None:
                del self._buffer[self._unchecked_offset :]
                self._pending_error = RemoteProtocolError(problem)
                return
            self._unchecked_offset += FRAME_PREFIX_BYTES + length

    def _length_problem(self, length: int) -> str | None:
        if length == 0:
            return "zero-length frame: every frame holds one msgpack value of at least 1 byte"
        if length > self._frame_size_max_bytes:
            return (
                f"frame length {length} exceeds the maximum of {self._frame_size_max_bytes} bytes"
            )
        return None

    def _next_frame(self) -> Frame | EndOfStream | None:
        buffered = len(self._buffer)
        if buffered >= FRAME_PREFIX_BYTES:
            (length,) = _PREFIX.unpack_from(self._buffer, 0)
            # Every prefix at the head was checked by receive_data, or was dropped with its error.
            end = FRAME_PREFIX_BYTES + length
            if buffered >= end:
                # Decoded in place: msgpack copies what it returns, so the body is never copied.
                with memoryview(self._buffer) as view, view[FRAME_PREFIX_BYTES:end] as body:
                    value = self._decode_body(body)
                del self._buffer[:end]
                self._unchecked_offset -= end
                return Frame(value)
        if self._pending_error is not None and not self._buffer:
            raise self._pending_error
        if self._end_of_stream:
            if self._buffer:
                raise RemoteProtocolError(self._truncation_message())
            return END_OF_STREAM
        return None

    def _truncation_message(self) -> str:
        buffered = len(self._buffer)
        if buffered < FRAME_PREFIX_BYTES:
            return (
                f"end of stream inside a length prefix ({buffered} of {FRAME_PREFIX_BYTES} bytes)"
            )
        (length,) = _PREFIX.unpack_from(self._buffer, 0)
        return (
            f"end of stream in the middle of a frame "
            f"({buffered - FRAME_PREFIX_BYTES} of {length} bytes)"
        )

    def _decode_body(self, body: memoryview) -> object:
        try:
            value = msgpack.unpackb(
                body,
                raw=False,
                strict_map_key=True,
                use_list=True,
                timestamp=0,
                object_pairs_hook=_map_from_pairs,
                ext_hook=_refuse_extension,
                max_str_len=self._frame_size_max_bytes,
                max_bin_len=self._frame_size_max_bytes,
                max_array_len=self._collection_length_max,
                max_map_len=self._collection_length_max,
                max_ext_len=0,
            )
        except msgpack.ExtraData as error:
            raise RemoteProtocolError(
                f"trailing bytes inside a frame of {len(body)} bytes after its msgpack value"
            ) from error
        except (ValueError, msgpack.UnpackException) as error:
            raise RemoteProtocolError(
                f"invalid msgpack in a frame of {len(body)} bytes: {error}"
            ) from error
        self._check_nesting(value)
        return value

    def _check_nesting(self, value: object) -> None:
        """Refuse nesting deeper than the bound, iteratively so depth never recurses here."""
        stack: list[tuple[object, int]] = [(value, 0)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, dict):
                children: list[object] = list(item.values())
            elif isinstance(item, list):
                children = item
            else:
                continue
            if depth + 1 > self._nesting_depth_max:
                raise RemoteProtocolError(
                    f"arrays and maps nest deeper than {self._nesting_depth_max} levels"
                )
            stack.extend((child, depth + 1) for child in children)


def _map_from_pairs(pairs: list[tuple[object, object]]) -> dict[str, object]:
    """Build a map, refusing keys that are not strings and keys given twice.

    A duplicate key would let two readers of the same frame see different values.
    """
    result: dict[str, object] = {}
    for key, value in pairs:
        if not isinstance(key, str):
            raise ValueError(f"map keys must be str, got {wire_type_name(key)}")
        if key in result:
            raise ValueError(f"map key {shorten(key)} appears twice")
        result[key] = value
    return result


def _refuse_extension(code: int, data: bytes) -> object:
    raise ValueError(f"msgpack extension type {code} is not part of the protocol")


__all__ = [
    "END_OF_STREAM",
    "EndOfStream",
    "Frame",
    "FrameDecoder",
    "encode_frame",
]
