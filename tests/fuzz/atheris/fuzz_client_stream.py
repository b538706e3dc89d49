"""Coverage-guided fuzzing of the node's end of a client connection (`ServerConnection`).

tests/fuzz/test_client_stream.py damages real client streams at random; atheris instead
mutates the bytes towards code the decoder has not run yet, so it reaches the corners of the
frame, msgpack and request checks that random damage rarely hits. Each input is a prefix of a
real client's stream (so that mutations get past the handshake) followed by arbitrary bytes,
fed in arbitrary pieces (`fuzz.streams.fuzzed_pieces`). The connection must raise nothing, give
only the events it documents, keep at most one incomplete frame and answer well-framed bytes:
`fuzz.checks.check_client_stream`, the check the Hypothesis test makes too.

Run: `python tests/fuzz/atheris/fuzz_client_stream.py -runs=100000` (libFuzzer options);
tests/fuzz/test_atheris.py runs it briefly, `make fuzz` for a minute.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

# The shared helpers are the package `fuzz` in tests/, which a script run from anywhere
# does not otherwise see.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["taskraft"]):
    from fuzz.checks import check_client_stream
    from fuzz.streams import fuzzed_pieces
    from taskraft.protocol import ClientConnection, Count, Dequeue, Enqueue, Status


def _valid_stream() -> bytes:
    """A real client's bytes: the handshake and a few pipelined requests."""
    client = ClientConnection(client_name="atheris")
    for operation in (
        Status(),
        Count(queue="jobs"),
        Enqueue(queue="jobs", payload=b"task", priority=3),
        Dequeue(queue="jobs", wait_ms=10),
    ):
        client.send_request(operation)
    return client.data_to_send()


VALID_STREAM = _valid_stream()


def test_one_input(data: bytes) -> None:
    check_client_stream(fuzzed_pieces(atheris.FuzzedDataProvider(data), VALID_STREAM))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
