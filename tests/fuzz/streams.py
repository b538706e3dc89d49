"""Hostile byte streams: valid frames damaged and cut into arbitrary pieces."""

from __future__ import annotations

import itertools

from hypothesis import strategies as st


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
