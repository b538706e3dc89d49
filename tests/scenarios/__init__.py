"""Scenario tests for the Raft core: a text interpreter and its transcripts in testdata/."""
