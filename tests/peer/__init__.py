"""Tests of the peer layer: the sans-IO peer codec and the TCP transport between nodes."""
