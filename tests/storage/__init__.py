"""Tests of the durable storage: file formats, write-ahead log, locking."""
