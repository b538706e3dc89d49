"""Tests of the client protocol library: framing, schema and connection state machines."""
