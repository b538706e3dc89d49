"""Hostile byte streams: valid frames damaged and cut into arbitrary pieces.

The Hypothesis strategies `damaged_stream` and `pieces` serve the tests in tests/fuzz/;
`fuzzed_pieces` does the same from the bytes libFuzzer gives the harnesses in
tests/fuzz/atheris/.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from hypothesis import strategies as st

if TYPE_CHECKING:
    import atheris

# The most pieces, and the largest piece, that `fuzzed_pieces` cuts before its last piece.
PIECE_COUNT_MAX = 16
PIECE_SIZE_MAX_BYTES = 64


@st.composite
def damaged_stream(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` as is, or with flipped bits, inserted garbage and a cut end."""
    stream = bytearray(valid)
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["flip", "insert", "cut"]))
        if action == "flip" and stream:
            position = draw(st.integers(0, len(stream) - 1))
            stream[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            position = draw(st.integers(0, len(stream)))
            stream[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif stream:
            del stream[draw(st.integers(0, len(stream) - 1)) :]
    return bytes(stream)


@st.composite
def pieces(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """`stream` cut at arbitrary points into non-empty pieces (b"" means the end of a stream)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(bounds) if end > start]


def fuzzed_pieces(provider: atheris.FuzzedDataProvider, valid: bytes) -> list[bytes]:
    """A prefix of `valid` (so that mutations get past its first frames) followed by all the
    bytes `provider` has left, cut into non-empty pieces of the sizes it gives, then b"" (the
    end of the stream) if it says so."""
    prefix = valid[: provider.ConsumeIntInRange(0, len(valid))]
    piece_sizes = provider.ConsumeIntListInRange(
        provider.ConsumeIntInRange(0, PIECE_COUNT_MAX), 1, PIECE_SIZE_MAX_BYTES
    )
    end = provider.ConsumeBool()
    stream = prefix + provider.ConsumeBytes(provider.remaining_bytes())
    stream_pieces: list[bytes] = []
    for size in piece_sizes:
        if stream:
            stream_pieces.append(stream[:size])
            stream = stream[size:]
    if stream:
        stream_pieces.append(stream)
    if end:
        stream_pieces.append(b"")
    return stream_pieces
