"""Hypothesis strategies that damage a file's bytes the ways disks and crashes do."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def corrupted(draw: st.DrawFn, content: bytes) -> bytes:
    """`content` with flipped bytes, cut short at any point, with garbage appended, or several
    of these at once; always different from `content`."""
    damaged = bytearray(content)
    kinds = draw(st.lists(st.sampled_from(["flip", "truncate", "append"]), min_size=1, max_size=3))
    for kind in kinds:
        if kind == "flip" and damaged:
            for _ in range(draw(st.integers(1, 4))):
                position = draw(st.integers(0, len(damaged) - 1))
                damaged[position] ^= draw(st.integers(1, 255))
        elif kind == "truncate" and damaged:
            del damaged[draw(st.integers(0, len(damaged) - 1)) :]
        else:
            damaged += draw(st.binary(min_size=1, max_size=64))
    if bytes(damaged) == content:
        damaged += b"\0"
    return bytes(damaged)
